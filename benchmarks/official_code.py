"""Import modules of the official SemanticGAN code (nv-tlabs/semanticGAN_code) from a user's
checkout, for benchmarks/official.py and tools/make_reference_fixtures.py. Nothing of that code
is stored in this repository; it is imported from `repo` at run time.

On CPU, `torch.utils.cpp_extension.load` is replaced by a stub while importing, so models/op does
not compile its CUDA extensions: on CPU tensors `upfirdn2d` and `fused_leaky_relu` take their
native PyTorch paths and never touch the extension. On a GPU nothing is replaced and the official
code compiles its ops as it does itself (ninja and nvcc needed). `build_cuda_ops` compiles both
ops at once beforehand (importing models.op builds them one after the other), and prints what
failed first rather than inside every official case:

    python benchmarks/official_code.py --build-cuda-ops /tmp/official

Optional packages the official scripts import at module level but the timed code never calls
(tensorboard's SummaryWriter for logging, cv2 / albumentations for the data loader,
skimage.measure.compare_ssim (gone from scikit-image >= 0.19) for LPIPS helpers, torchvision for
transforms / save_image / Inception) are replaced by stubs while importing when they are missing
or broken, and sys.modules is restored afterwards. Calling anything in a stub raises. The torchvision
stub does provide `models.vgg16` (the VGG16 feature stack, random weights), the one torchvision
network the timed code runs: the backbone of the official LPIPS.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import subprocess
import sys
import time
import types
from pathlib import Path

# module -> attributes the official code imports from it
OPTIONAL = {
    "torch.utils.tensorboard": ("SummaryWriter",),
    "cv2": (),
    "albumentations": (),
    "albumentations.augmentations": (),
    "skimage": (),
    "skimage.measure": ("compare_ssim",),
    "torchvision": ("models", "transforms", "utils"),
}
# the official models/op modules; each compiles its CUDA extension with cpp_extension.load on import
CUDA_OPS = ("models/op/upfirdn2d.py", "models/op/fused_act.py")
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class Stub(types.ModuleType):
    """Stands in for a missing optional module: any attribute is a function that raises."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{name} is a stub (benchmarks/official_code.py)")
        return unavailable


def vgg16(pretrained=False, **kwargs):
    """torchvision's VGG16 layer stack as `.features` (randomly initialised), for the LPIPS
    backbone when torchvision is unavailable."""
    from torch import nn  # torch only where the official modules are used (build_cuda_ops needs none)

    layers, width = [], 3
    for v in VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(width, v, 3, padding=1), nn.ReLU(inplace=True)]
            width = v
    return types.SimpleNamespace(features=nn.Sequential(*layers))


def importable(name: str, attrs) -> bool:
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken install (e.g. a CUDA torchvision on CPU torch) counts as missing
        return False
    return all(hasattr(module, a) for a in attrs)


def stubs() -> dict[str, types.ModuleType]:
    """{module name: stub} for the optional modules that cannot be imported here."""
    out = {name: Stub(name) for name, attrs in OPTIONAL.items() if not importable(name, attrs)}
    if "torchvision" in out:
        models = out["torchvision"].models = out["torchvision.models"] = Stub("torchvision.models")
        models.vgg16 = vgg16
        out["torchvision.models.inception"] = Stub("torchvision.models.inception")
    return out


@contextlib.contextmanager
def patched_modules(replacements: dict[str, types.ModuleType]):
    """sys.modules with `replacements` inside the block, as it was after it."""
    saved = {name: sys.modules.get(name) for name in replacements}
    sys.modules.update(replacements)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def import_official(repo, modules, device: str = "cpu") -> dict[str, types.ModuleType]:
    """{name: module} for the dotted `modules` of the official checkout at `repo` (e.g.
    "models.stylegan2_seg", "semanticGAN.train_seg_gan"); CUDA ops are compiled only when
    `device` is not cpu."""
    root = str(Path(repo).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    import torch.utils.cpp_extension as cpp_extension

    load = cpp_extension.load
    if device == "cpu":
        cpp_extension.load = lambda *args, **kwargs: types.SimpleNamespace()
    try:
        with patched_modules(stubs()):
            return {name: importlib.import_module(name) for name in modules}
    finally:
        cpp_extension.load = load


def perceptual_loss(lpips_module, device: str, **kwargs):
    """The official `lpips.PerceptualLoss(model='net-lin', net='vgg', **kwargs)` on `device`: its
    linear layers from the checkout's models/lpips/weights, its VGG16 backbone randomly
    initialised (the ImageNet weights it would download cannot be fetched here; the cost is the
    same)."""
    pn = sys.modules[lpips_module.__name__ + ".pretrained_networks"]
    tv = pn.tv
    pn.tv = types.SimpleNamespace(vgg16=lambda pretrained=True: tv.vgg16())  # weights=None: random
    try:
        return lpips_module.PerceptualLoss(model="net-lin", net="vgg", **kwargs).to(device)
    finally:
        pn.tv = tv


def build_cuda_ops(repo, timeout: float = 1200) -> float:
    """Compile the official CUDA extensions (upfirdn2d, fused_bias_act) of the checkout at `repo`
    at the same time, each op module run in its own process. torch caches each build (under
    TORCH_EXTENSIONS_DIR, by default ~/.cache/torch_extensions) and every later import of
    models.op loads it. Returns the seconds taken; raises RuntimeError naming each op module that
    failed, with the tail of its output."""
    t0 = time.perf_counter()
    procs = {op: subprocess.Popen([sys.executable, "-c", f"import runpy; runpy.run_path({str(Path(repo) / op)!r})"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for op in CUDA_OPS}
    failed = []
    for op, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            failed.append(f"{op}: not built within {timeout:.0f} s\n{out[-3000:]}")
            continue
        if proc.returncode:
            failed.append(f"{op}: exit status {proc.returncode}\n{out[-3000:]}")
    if failed:
        raise RuntimeError(f"building the official CUDA ops of {repo} failed:\n" + "\n".join(failed))
    return time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Compile the official code's CUDA ops (needs nvcc and a CUDA torch).")
    p.add_argument("--build-cuda-ops", metavar="OFFICIAL", required=True, help="checkout of nv-tlabs/semanticGAN_code")
    a = p.parse_args(argv)
    seconds = build_cuda_ops(a.build_cuda_ops)
    print(f"official CUDA ops built in {seconds:.0f} s: {', '.join(CUDA_OPS)}", flush=True)


if __name__ == "__main__":
    main()
