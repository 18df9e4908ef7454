"""StyleGAN2 ops in Flax linen: equalised-lr layers, upfirdn2d, modulated convolution."""
