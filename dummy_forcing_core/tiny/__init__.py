"""The small trained causal video model shipped with the pack.

Everything here is plain PyTorch / numpy: a procedural video world (:mod:`.dataset`), an
exact invertible pixel <-> latent map standing in for a VAE (:mod:`.codec`), a tiny word
embedding text encoder (:mod:`.text`), the teacher-forcing trainer (:mod:`.train`) and,
once the sampler exists, loading, the demo and the evaluation. See ``docs/tiny_model.md``.
"""
