"""SEMGAN_JAX_COMPILE_REPORT (tests/conftest.py) records each test's XLA compiles, and
tools/compile_report.py lists them."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_compile_report_names_the_test_and_its_compiles(tmp_path):
    (tmp_path / "test_jit.py").write_text(
        "import jax, jax.numpy as jnp\n\n"
        "def test_two_programs():\n"
        "    assert float(jax.jit(lambda x: jnp.sin(x) * 2)(1.0)) > 0\n"
        "    assert float(jax.jit(lambda x: jnp.cos(x) + 3)(1.0)) > 0\n\n"
        "def test_no_program():\n"
        "    assert 1 + 1 == 2\n")
    env = {**os.environ, "SEMGAN_JAX_COMPILE_REPORT": str(tmp_path / "report"),
           "SEMGAN_JAX_TEST_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO / "tests")}
    env.pop("PYTEST_XDIST_WORKER", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                          str(tmp_path / "test_jit.py"), "--rootdir", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = json.loads((tmp_path / "report" / "main.json").read_text())
    assert rows["test_jit.py::test_two_programs"]["compiles"] == 2
    assert rows["test_jit.py::test_two_programs"]["compile_s"] > 0
    assert "test_jit.py::test_no_program" not in rows
    out = subprocess.run([sys.executable, str(REPO / "tools" / "compile_report.py"), str(tmp_path / "report")],
                         capture_output=True, text=True, check=True).stdout
    assert "in 2 compiles" in out and "test_jit.py::test_two_programs" in out
    assert "2 programs with a cache key: compiled 2 times" in out
