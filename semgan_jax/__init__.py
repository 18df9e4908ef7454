"""semgan_jax: SemanticGAN (Li et al., CVPR 2021) in JAX/Flax.

Arrays are NHWC throughout; images are float in [-1, 1]; label maps are integer (H, W).
"""

__version__ = "0.1.0"
