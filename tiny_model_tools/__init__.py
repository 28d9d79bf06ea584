"""Command-line tools around the small model (not part of the runtime: neither the nodes nor
``dummy_forcing_core`` import anything from here; tests/core/test_architecture.py checks it).

- :mod:`.dataset`: the procedural shapes world (drawing clips, ground truth, colour tracking);
- :mod:`.train` (+ ``config.json``): teacher-forcing training, ``python -m tiny_model_tools.train``;
- :mod:`.demo`: full cache vs Dummy Forcing on one prompt, ``python -m tiny_model_tools.demo``;
- :mod:`.metrics`, :mod:`.evaluate`, :mod:`.evaluate_switch`: quality measures and the
  evaluations behind docs/tiny_eval.md and docs/tiny_switch_eval.md.

The runtime parts they build on (model file, text encoder, codec, the world's words) are in
``dummy_forcing_core.tiny``.
"""
