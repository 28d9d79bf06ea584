"""The small trained causal video model shipped with the pack: what running it needs.

Plain PyTorch / numpy, imported by the ComfyUI nodes and the command-line tools alike: the
model file (:mod:`.model`: load / save, the Wan transformer and its text encoder), the tiny
text encoder (:mod:`.text`), the exact pixels <-> latent map standing in for a VAE
(:mod:`.codec`) and the world's words (:mod:`.world`: what a prompt may say, and the
warnings for one that will not be followed). Drawing the world, training, the demo and the
evaluation are command-line tools in the top-level ``tiny_model_tools`` package, which the
runtime never imports. See ``docs/tiny_model.md``.
"""
