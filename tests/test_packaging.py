"""Dependencies as published: setup.cfg's compatible ranges admit constraints.txt's exact pins (what
CI installs), and every accelerator extra resolves on PyPI together with those pins."""

import configparser
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple/"
ACCELERATOR_EXTRAS = ("cuda12", "cuda13", "tpu")


def setup_cfg_requirements() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    """(install_requires, {extra: requirements}) parsed from setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    parse = lambda text: [Requirement(line) for line in text.strip().splitlines()]  # noqa: E731
    extras = {name: parse(text) for name, text in cfg["options.extras_require"].items()}
    return parse(cfg["options"]["install_requires"]), extras


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: exact version}; every line must be an `==` pin."""
    out = {}
    for n, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==" and "*" not in spec.version, f"constraints.txt:{n}: not an exact pin: {line}"
        out[canonicalize_name(req.name)] = spec.version
    return out


def test_ranges_admit_the_pinned_versions():
    base, extras = setup_cfg_requirements()
    pinned = pins()
    assert set(extras) >= {"test", "torch", *ACCELERATOR_EXTRAS}
    for req in base + extras["test"] + extras["torch"]:
        name = canonicalize_name(req.name)
        assert req.specifier, f"setup.cfg: {req.name} has no version range"
        assert name in pinned, f"{req.name} is a dependency but constraints.txt does not pin it"
        assert req.specifier.contains(pinned[name]), f"setup.cfg's {req} excludes constraints.txt's {pinned[name]}"
    for extra in ACCELERATOR_EXTRAS:  # each names jax with the same range as install_requires
        (req,) = extras[extra]
        assert canonicalize_name(req.name) == "jax" and req.extras == {extra}, (extra, str(req))
        assert req.specifier.contains(pinned["jax"]), f"setup.cfg's {extra} extra {req} excludes jax {pinned['jax']}"


def pypi_reachable() -> str | None:
    """None when PyPI answers, else why not."""
    try:
        urllib.request.urlopen(PYPI + "jax/", timeout=20).close()
    except (urllib.error.URLError, OSError) as e:
        return f"PyPI ({PYPI}) unreachable: {e}"
    return None


@pytest.mark.slow  # minutes of metadata downloads (one resolution with the CUDA and TPU wheels' dependencies)
def test_every_accelerator_extra_resolves_with_the_pins():
    """`pip install --dry-run` of all accelerator extras at once with constraints.txt, on PyPI for this
    interpreter (a joint resolution implies each extra resolves alone). Each extra's requirements,
    and those of the jax extra it names, are in the resolved set at versions they admit."""
    if (why := pypi_reachable()) is not None:
        pytest.skip(why)
    base, extras = setup_cfg_requirements()
    reqs = base + [r for e in ACCELERATOR_EXTRAS for r in extras[e]]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--index-url", PYPI,
           "--report", "-", "-c", str(ROOT / "constraints.txt"), *(str(r) for r in reqs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    errors = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("WARNING: Location"))
    assert proc.returncode == 0, f"pip could not resolve the extras {ACCELERATOR_EXTRAS}:\n{errors[-4000:]}"
    resolved = {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in json.loads(proc.stdout)["install"]}
    pinned = pins()
    for name, version in pinned.items():
        if name in resolved:
            assert resolved[name]["version"] == version, f"{name}: resolved {resolved[name]['version']}, pinned {version}"
    for extra in ACCELERATOR_EXTRAS:
        for req in extras[extra]:
            meta = resolved[canonicalize_name(req.name)]
            assert req.specifier.contains(meta["version"]), (extra, str(req), meta["version"])
            plugin_reqs = [Requirement(r) for r in meta.get("requires_dist", [])]
            plugin_reqs = [r for r in plugin_reqs if r.marker is not None and r.marker.evaluate({"extra": extra})
                           and not r.marker.evaluate({"extra": ""})]
            assert plugin_reqs, f"jax {meta['version']} has no [{extra}] extra"
            for r in plugin_reqs:
                got = resolved.get(canonicalize_name(r.name))
                assert got is not None, f"[{extra}]: {r} was not resolved"
                assert r.specifier.contains(got["version"], prereleases=True), (extra, str(r), got["version"])
