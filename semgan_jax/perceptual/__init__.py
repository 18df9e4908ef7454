"""Perceptual networks in Flax: LPIPS v0.1 (VGG16 / AlexNet) and the reference's metric Inception-v3.

    perceptual.lpips      LPIPS(net="vgg" | "alex")
    perceptual.inception  InceptionV3 (torchvision's, as the reference's FID / IS use it)
    perceptual.convert    torch state dicts -> Flax variables; load_lpips(), load_inception()
    perceptual.cli        `semgan inception-stats`, `semgan fid`

Weights come from local torch files (nothing is downloaded): see `convert.find_weights` and
docs/metrics.md. This package file imports nothing, so registering the CLI stays cheap.
"""
