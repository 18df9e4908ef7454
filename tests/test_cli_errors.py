"""Commands given a missing or wrong run directory end with one `error:` line naming it and a
non-zero exit status, no traceback; `--resume` with nothing to resume refuses to start."""

import argparse

import pytest

from semgan_jax import cli
from semgan_jax.train.commands import load_run_config


def run(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out + out.err


def assert_one_error_line(code: int, text: str, *needles: str) -> str:
    assert code != 0, text
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("command", ["segment", "evaluate", "export", "evaluate-supervised"])
def test_missing_run_directory_is_one_error_line(command, tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    argv = {
        "segment": ["segment", str(image), "--checkpoint", str(missing), "--out", str(tmp_path / "out")],
        "evaluate": ["evaluate", "--checkpoint", str(missing), "--out", str(tmp_path / "s.json")],
        "export": ["export", str(missing), "--to-torch", str(tmp_path / "x.pt")],
        "evaluate-supervised": ["evaluate-supervised", "--workdir", str(missing)],
    }[command]
    code, text = run(argv, capsys)
    assert_one_error_line(code, text, str(missing))
    assert not missing.exists() and not (tmp_path / "out").exists()


def test_segment_names_a_directory_that_is_no_run(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "x.png").write_bytes(b"")
    code, text = run(["segment", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "run"),
                      "--out", str(tmp_path / "out")], capsys)
    assert_one_error_line(code, text, str(tmp_path / "run" / "config.json"), "train-encoder")


@pytest.mark.parametrize("command", ["train-gan", "train-encoder", "train-supervised"])
@pytest.mark.parametrize("state", ["missing", "empty"])
def test_resume_with_nothing_to_resume_refuses(command, state, tmp_path, capsys):
    workdir = tmp_path / "run"
    if state == "empty":
        workdir.mkdir()
    code, text = run([command, "--workdir", str(workdir), "--resume"], capsys)
    line = assert_one_error_line(code, text, "nothing to resume", str(workdir / "checkpoints"),
                                 str(workdir / "config.json"))
    assert ("does not exist" in line) == (state == "missing")
    assert code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == (["run"] if state == "empty" else [])
    if state == "empty":
        assert not any(workdir.iterdir())  # nothing was started


def _args(workdir, resume=True, config=None):
    return argparse.Namespace(workdir=str(workdir), resume=resume, config=config,
                              default_config="experiments/synthetic_32.py")


def test_resume_with_a_config_or_a_run_still_starts(tmp_path):
    """The launch recipes pass --config and --resume on every launch, the first included."""
    from conftest import REPO

    config = load_run_config(_args(tmp_path / "new", config=str(REPO / "experiments" / "synthetic_32.py")), [])
    assert config.data.name == "synthetic"
    (tmp_path / "crashed").mkdir()  # a run cut off before its first checkpoint: its config.json
    (tmp_path / "crashed" / "config.json").write_text(config.to_json())
    assert load_run_config(_args(tmp_path / "crashed"), ["--config.train.iterations=7"]).train.iterations == 7
