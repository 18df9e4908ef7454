"""experiments/launch: the launch recipes (TPU pod, multi-GPU node, SLURM) and their README.

Checks: shell syntax; every `semgan ...` command line in the recipes and the README parses with
the real CLI parser and its `--config.x=y` overrides apply to the named config (a misspelt field
fails); named config files exist; the README's mesh / batch tables agree with
`parallel.check_batch_size` and with the recipes' own device counting; the SLURM directives and
gcloud flags; and the relaunch / requeue / slice re-creation logic, run with stand-ins for
gcloud, curl, srun, scontrol and semgan (which records its arguments and writes checkpoint
directories as planned). No JAX compilation, no network.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "experiments" / "launch"
README = LAUNCH / "README.md"
SCRIPTS = {name: LAUNCH / name for name in ("tpu_pod.sh", "multi_gpu.sh", "slurm.sbatch")}
BASH = shutil.which("bash")
SUBCOMMANDS = ("prepare", "train-gan", "train-encoder", "segment", "evaluate", "convert", "export",
               "inception-stats", "fid")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")

# Values for the shell variables of the recipes' command lines (lower-case names are arrays).
SAMPLE_VARS = {
    "SEMGAN": "/opt/venv/bin/semgan", "WORKDIR": "/mnt/bucket/runs/x", "RUN_DIR": "/shared/runs/x",
    "DATA_DIR": "/data/tfds", "MANUAL_DIR": "/data/download", "BATCH": "32", "MESH_DATA": "-1",
    "DATASET": "celebamask_hq", "RESOLUTION": "256", "NUM_NODES": "4",
}
SAMPLE_ARRAYS = {
    "gan_args": ["--config.data.num_labeled=1500", "--config.log.max_minutes=480"],
    "encoder_args": ["--config.train.iterations=1000"],
    "per_node": ["--nodes=1", "--ntasks=1"],
}


# --------------------------------------------------------------------------- helpers

def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    out, cur = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
        else:
            out.append(cur + line)
            cur = ""
    if cur:
        out.append(cur)
    return out


def shell_code(text: str) -> str:
    """A script without comment lines and here-document bodies (usage text, inline Python)."""
    keep, end = [], None
    for line in text.splitlines():
        if end is not None:
            if line.strip() == end:
                end = None
            continue
        m = re.search(r"<<-?\s*'?(\w+)'?", line)
        if m:
            end = m.group(1)
        if line.lstrip().startswith("#"):
            continue
        keep.append(line)
    return "\n".join(keep)


def cut_at_operator(s: str) -> str:
    """`s` up to its first unquoted shell operator or comment (>, <, &, |, ;, #)."""
    quote = None
    for i, ch in enumerate(s):
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch in "><&|;" or (ch == "#" and (i == 0 or s[i - 1].isspace())):
            return s[:i]
    return s


SEMGAN_RE = re.compile(r'(?<![\w/.-])(?:"\$SEMGAN"|\$SEMGAN|semgan)\s+(?=(?:%s)\b)' % "|".join(SUBCOMMANDS))


def semgan_commands(text: str) -> list[str]:
    """The `semgan SUBCOMMAND ...` command lines in shell text (unexpanded)."""
    cmds = []
    for line in logical_lines(text):
        m = SEMGAN_RE.search(line)
        if m:
            cmds.append(cut_at_operator(line[m.start():]).strip())
    return cmds


def readme_code() -> str:
    """The README's fenced code blocks."""
    return "\n".join(re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), re.S))


def script_defaults(text: str) -> dict[str, str]:
    """`: "${VAR:=default}"` defaults of a script."""
    return dict(re.findall(r'^\s*: "\$\{([A-Z_]+):=([^}$]*)\}"\s*$', text, re.M))


def expand(cmd: str, defaults: dict[str, str]) -> list[str]:
    """The words bash makes of `cmd` with the sample variables (unset ones are an error)."""
    assert "$(" not in cmd and "`" not in cmd, f"command substitution in a semgan line: {cmd}"
    lines = ["set -u"]
    lines += [f"{k}={shlex.quote(v)}" for k, v in {**SAMPLE_VARS, **defaults}.items()]
    lines += [f"{k}=({' '.join(map(shlex.quote, v))})" for k, v in SAMPLE_ARRAYS.items()]
    lines += [f"args=( {cmd} )", "printf '%s\\0' \"${args[@]}\""]
    out = subprocess.run([BASH, "-c", "\n".join(lines)], capture_output=True, text=True)
    assert out.returncode == 0, f"cannot expand {cmd!r}: {out.stderr}"
    return out.stdout.split("\0")[:-1]


def check_cli(argv: list[str], where: str):
    """Parse with the real parser; training commands: config + overrides as `semgan` does."""
    from semgan_jax.cli import build_parser
    from semgan_jax.train.commands import load_run_config

    try:
        args, extra = build_parser().parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `semgan {' '.join(argv)}` does not parse (argparse error above)")
    if getattr(args, "accepts_overrides", False):
        bad = [e for e in extra if not e.startswith("--config.")]
        assert not bad, f"{where}: unknown arguments {bad}"
        cwd = os.getcwd()
        os.chdir(ROOT)  # config paths are relative to the repository root, as the recipes run
        try:
            config = load_run_config(args, extra)
        except (ValueError, FileNotFoundError) as err:
            pytest.fail(f"{where}: `semgan {' '.join(argv)}`: {err}")
        finally:
            os.chdir(cwd)
        return args, config
    assert not extra, f"{where}: unrecognized arguments {extra}"
    return args, None


def bash_functions(path: Path, names: list[str]) -> str:
    src = path.read_text()
    out = []
    for name in names:
        m = re.search(rf"^{name}\(\) \{{(?:[^\n]*\}}$|.*?\n\}}$)", src, re.M | re.S)
        assert m, f"{path.name} defines no {name}()"
        out.append(m.group(0))
    return "\n".join(out)


def call_functions(path: Path, names: list[str], call: str) -> str:
    out = subprocess.run([BASH, "-c", bash_functions(path, names) + "\n" + call], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def md_table(marker: str) -> list[dict[str, str]]:
    text = README.read_text()
    assert f"<!-- {marker} -->" in text, f"README has no {marker}"
    rows = []
    for line in text.split(f"<!-- {marker} -->", 1)[1].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    header, _sep, *body = rows
    return [dict(zip(header, row)) for row in body]


# --------------------------------------------------------------------------- static checks

def test_recipes_exist_and_are_valid_bash():
    assert README.is_file()
    for name, path in SCRIPTS.items():
        assert path.is_file(), name
        out = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, f"{name}: {out.stderr}"
        assert "set -euo pipefail" in path.read_text(), name


@pytest.mark.parametrize("name", ["tpu_pod.sh", "multi_gpu.sh"])
def test_help_prints_usage_and_does_nothing(tmp_path, name):
    fake = make_fakes(tmp_path)
    out = subprocess.run([BASH, str(SCRIPTS[name]), "-h"], capture_output=True, text=True,
                         env=fake.env({}), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage:")
    assert not (fake.dir / "gcloud.log").exists()


@pytest.mark.parametrize("name", list(SCRIPTS) + ["README.md"])
def test_semgan_command_lines_parse_with_the_real_cli(name):
    if name == "README.md":
        text, defaults = readme_code(), script_defaults(SCRIPTS["tpu_pod.sh"].read_text())
    else:
        raw = SCRIPTS[name].read_text()
        text, defaults = shell_code(raw), script_defaults(raw)
    cmds = semgan_commands(text)
    seen = set()
    for cmd in cmds:
        argv = expand(cmd, defaults)[1:]  # drop the program
        args, config = check_cli(argv, f"{name}: {cmd}")
        seen.add(args.command)
        if args.command.startswith("train-"):
            assert args.resume, f"{name}: a launch must pass --resume (fresh dirs start anyway): {cmd}"
            assert args.config, f"{name}: name the config explicitly: {cmd}"
            assert config.train.mesh_data == -1, f"{name}: the mesh spans all devices: {cmd}"
    assert {"train-gan", "train-encoder"} <= seen, f"{name}: found only {sorted(seen)} in {cmds}"
    if name != "README.md":
        assert "prepare" in seen and len(cmds) >= 4, cmds


def test_overrides_in_recipes_are_checked():
    """The command check fails on a misspelt field (guards the test itself)."""
    argv = expand('"$SEMGAN" train-gan --config experiments/synthetic_32.py --workdir "$WORKDIR" '
                  '--resume --config.train.mesh=-1', {})[1:]
    with pytest.raises(pytest.fail.Exception, match="no field 'mesh'"):
        check_cli(argv, "probe")


def test_named_config_files_exist():
    texts = [p.read_text() for p in SCRIPTS.values()] + [README.read_text()]
    named = {m for t in texts for m in re.findall(r"experiments/[\w/.-]+?\.py\b", t)}
    assert "experiments/celebamask_256.py" in named
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, missing
    for path in SCRIPTS.values():
        d = script_defaults(path.read_text())
        for key in ("CONFIG", "ENCODER_CONFIG"):
            assert (ROOT / d[key]).is_file(), (path.name, key, d.get(key))


def test_mesh_table_agrees_with_check_batch_size(monkeypatch):
    from semgan_jax import parallel

    gpus_per_node = int(sbatch_options()["gpus-per-node"])
    rows = md_table("mesh-table")
    assert len(rows) >= 6
    for row in rows:
        p, d, b = int(row["processes P"]), int(row["devices D"]), int(row["global batch B"])
        assert d % p == 0, row
        monkeypatch.setattr(parallel.jax, "process_count", lambda p=p: p)
        mesh = SimpleNamespace(shape={parallel.DATA_AXIS: d})
        if row["valid"] == "yes":
            assert parallel.check_batch_size(b, mesh) == int(row["per process B/P"]), row
            assert b % d == 0 and b // d == int(row["per device B/D"]), row
        else:
            assert row["valid"] == "no", row
            with pytest.raises(ValueError, match="not divisible"):
                parallel.check_batch_size(b, mesh)
        recipe = row["recipe"]
        script = next(SCRIPTS[n] for n in SCRIPTS if n in recipe)
        m = re.search(r"BATCH=(\d+)", recipe)
        default = int(call_functions(script, ["default_batch"], f"default_batch {d}"))
        assert b == (int(m.group(1)) if m else default), row
        if (m := re.search(r"ACCELERATOR=([\w-]+)", recipe)):
            assert int(call_functions(script, ["tpu_devices"], f"tpu_devices {m.group(1)}")) == d, row
            assert int(call_functions(script, ["tpu_hosts"], f"tpu_hosts {m.group(1)}")) == p, row
        elif "multi_gpu.sh" in recipe:
            assert p == 1 and d == int(re.match(r"(\d+)×", row["setup"]).group(1)), row
        else:
            nodes = int(re.search(r"--nodes=(\d+)", recipe).group(1))
            assert (p, d) == (nodes, nodes * gpus_per_node), row


def test_default_batch_table_and_scripts_agree():
    rows = md_table("default-batch-table")
    assert len(rows) == 1
    row = rows[0]
    pairs = [(int(k), int(v)) for k, v in row.items() if k != "devices D"]
    for path in SCRIPTS.values():
        got = call_functions(path, ["default_batch"], "for d in %s; do default_batch $d; done"
                             % " ".join(str(d) for d, _ in pairs)).split()
        assert [int(g) for g in got] == [b for _, b in pairs], path.name
    for d, b in pairs:  # the smallest multiple of d that is >= 16
        assert b % d == 0 and b >= 16 and b - d < 16


def test_tpu_table_agrees_with_tpu_pod_counting():
    script = SCRIPTS["tpu_pod.sh"]
    for row in md_table("tpu-table"):
        acc = row["ACCELERATOR"].strip("`")
        got = call_functions(script, ["tpu_devices", "tpu_hosts", "default_batch"],
                             f"d=$(tpu_devices {acc}); echo $(tpu_hosts {acc}) $d $(default_batch $d)")
        assert got.split() == [row["hosts (processes)"], row["devices"], row["default BATCH"]], acc


def test_install_steps_use_setup_cfg_extras_and_the_constraints(tmp_path):
    """The recipes install `.[EXTRA]` (an accelerator extra of setup.cfg) with constraints.txt's pins."""
    fake_python = tmp_path / "bin" / "python"
    fake_python.parent.mkdir()
    fake_python.write_text('#!/bin/sh\necho "$@"\n')
    fake_python.chmod(0o755)
    runs = {f"multi_gpu.sh {x}": (SCRIPTS["multi_gpu.sh"], ["die", "step_install"],
                                  f"VENV={tmp_path} INSTALL={x} step_install") for x in ("cuda12", "cuda13")}
    runs["tpu_pod.sh"] = (SCRIPTS["tpu_pod.sh"], ["worker_setup"],
                          f'uv() {{ echo "$@"; }}; mount_bucket() {{ :; }}; PY={fake_python} worker_setup')
    extras = re.search(r"^\[options.extras_require\]\n(.*?)^\[", (ROOT / "setup.cfg").read_text(), re.M | re.S).group(1)
    for what, (script, functions, call) in runs.items():
        (argv,) = [line.split() for line in call_functions(script, functions, call).splitlines() if " -e " in line]
        assert argv[argv.index("-c") + 1] == "constraints.txt" and (ROOT / "constraints.txt").is_file(), what
        extra = re.fullmatch(r"\.\[(\w+)\]", argv[argv.index("-e") + 1]).group(1)
        assert re.search(rf"^{extra} =\n\s+jax\[{extra}\]", extras, re.M), f"{what}: setup.cfg has no extra {extra}"


def sbatch_options() -> dict:
    lines = SCRIPTS["slurm.sbatch"].read_text().splitlines()
    assert lines[0].startswith("#!")
    opts, first_command = {}, None
    for i, line in enumerate(lines[1:], 1):
        if line.startswith("#SBATCH"):
            assert first_command is None, f"#SBATCH on line {i + 1} after a command: sbatch ignores it"
            key, _, value = line.split(None, 1)[1].lstrip("-").partition("=")
            opts[key] = value or True
        elif line.strip() and not line.startswith("#") and first_command is None:
            first_command = i
    return opts


def test_sbatch_directives():
    opts = sbatch_options()
    assert opts["ntasks-per-node"] == "1"
    assert int(opts["nodes"]) >= 1 and int(opts["gpus-per-node"]) >= 1
    assert opts.get("requeue") is True
    # SIGTERM (which the trainer turns into a checkpoint) to the job steps, not only the batch shell
    assert re.fullmatch(r"(?:R:)?(?:TERM|SIGTERM|15)@\d+", opts["signal"]), opts["signal"]
    assert opts.get("open-mode") == "append"


# gcloud 528's flags of the commands tpu_pod.sh uses (`gcloud compute tpus tpu-vm VERB --help`).
GCLOUD_FLAGS = {
    "create": {"accelerator-type", "topology", "type", "async", "data-disk", "description", "internal-ips",
               "labels", "metadata", "metadata-from-file", "network", "preemptible", "queue-count", "range",
               "reserved", "scopes", "service-account", "shielded-secure-boot", "spot", "subnetwork", "tags",
               "version"},
    "ssh": {"command", "dry-run", "force-key-file-overwrite", "internal-ip", "plain", "ssh-flag", "ssh-key-file",
            "strict-host-key-checking", "worker"},
    "scp": {"compress", "dry-run", "force-key-file-overwrite", "internal-ip", "plain", "recurse", "scp-flag",
            "ssh-key-file", "strict-host-key-checking", "worker"},
    "describe": set(),
    "delete": {"async"},
}
GCLOUD_GLOBAL = {"project", "zone", "quiet", "format", "verbosity"}


def test_gcloud_flags_exist():
    text = shell_code(SCRIPTS["tpu_pod.sh"].read_text())
    verbs = set()
    for line in logical_lines(text):
        m = re.search(r"gcloud compute tpus tpu-vm (\w+)(.*)", line)
        if not m:
            continue
        verb, rest = m.groups()
        verbs.add(verb)
        rest = re.sub(r"--command=\"[^\"]*\"", "--command", rest)
        flags = set(re.findall(r"(?<![\w-])--([a-z][a-z-]*)", rest))
        assert flags <= GCLOUD_FLAGS[verb] | GCLOUD_GLOBAL, (verb, flags - GCLOUD_FLAGS[verb] - GCLOUD_GLOBAL)
    assert verbs == set(GCLOUD_FLAGS), verbs
    for flag in re.findall(r"kind=\((--[a-z-]+)\)", text) + re.findall(r'GC=\(([^)]*)\)', text):
        for f in re.findall(r"--([a-z-]+)", flag):
            assert f in GCLOUD_FLAGS["create"] | GCLOUD_GLOBAL, f


# --------------------------------------------------------------------------- the launch logic

FAKE_SEMGAN = '''
import json, os, sys
from pathlib import Path
from semgan_jax.cli import build_parser

argv = sys.argv[1:]
args, extra = build_parser().parse_known_args(argv)
keys = ("JAX_LOCAL_DEVICE_IDS", "SRUN_CPUS_PER_TASK", "TPU_WORKER_HOSTNAMES", "XLA_PYTHON_CLIENT_MEM_FRACTION",
        "SEMGAN_JAX_CACHE", "JAX_COORDINATOR_ADDRESS")
with open(os.environ["FAKE_DIR"] + "/semgan.log", "a") as f:
    f.write(json.dumps({"argv": argv, "env": {k: os.environ.get(k) for k in keys}}) + "\\n")
plan = Path(os.environ["FAKE_DIR"]) / "plan"
lines = plan.read_text().split("\\n")
rc, step = map(int, lines[0].split())
plan.write_text("\\n".join(lines[1:]))
if step >= 0:
    (Path(args.workdir) / "checkpoints" / str(step)).mkdir(parents=True, exist_ok=True)
sys.exit(rc)
'''

FAKE_GCLOUD = r'''#!/usr/bin/env bash
# gcloud stand-in: logs the call; the slice state lives in $FAKE_DIR/state
printf '%q ' "$@" >> "$FAKE_DIR/gcloud.log"; echo >> "$FAKE_DIR/gcloud.log"
case "$1 $2 $3 $4" in
  "compute tpus tpu-vm describe") [ -s "$FAKE_DIR/state" ] && cat "$FAKE_DIR/state" || exit 1 ;;
  "compute tpus tpu-vm create")
    n=$(cat "$FAKE_DIR/create_failures" 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then echo $((n - 1)) > "$FAKE_DIR/create_failures"; exit 1; fi
    echo READY > "$FAKE_DIR/state" ;;
  "compute tpus tpu-vm delete") rm -f "$FAKE_DIR/state" ;;
  "compute tpus tpu-vm ssh")
    for a in "$@"; do
      case $a in --command=*progress-*)
        head -n 1 "$FAKE_DIR/progress"; sed -i 1d "$FAKE_DIR/progress" ;;
      esac
    done ;;
esac
exit 0
'''

FAKE_CURL = r'''#!/usr/bin/env bash
# metadata-server stand-in
case "${@: -1}" in
  */tpu-env) [ -n "${FAKE_TPU_ENV:-}" ] && printf "ACCELERATOR_TYPE: 'v4-32'\nTPU_WORKER_HOSTNAMES: '%s'\n" "$FAKE_TPU_ENV" || exit 22 ;;
  */worker-network-endpoints) echo "t1v-w-0:0:10.0.0.2,t1v-w-1:1:10.0.0.3" ;;
  */agent-worker-number) echo 0 ;;
  *) exit 22 ;;
esac
'''

FAKE_SRUN = r'''#!/usr/bin/env bash
printf '%q ' "$@" >> "$FAKE_DIR/srun.log"; echo >> "$FAKE_DIR/srun.log"
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
exec "$@"
'''

FAKE_SCONTROL = r'''#!/usr/bin/env bash
echo "$*" >> "$FAKE_DIR/scontrol.log"
'''


def make_fakes(tmp_path: Path) -> SimpleNamespace:
    fake = tmp_path / "fake"
    bin_ = fake / "bin"
    venv = fake / "venv"
    (venv / "bin").mkdir(parents=True)
    bin_.mkdir()
    (fake / "semgan_fake.py").write_text(FAKE_SEMGAN)
    scripts = {
        bin_ / "gcloud": FAKE_GCLOUD, bin_ / "curl": FAKE_CURL, bin_ / "srun": FAKE_SRUN,
        bin_ / "scontrol": FAKE_SCONTROL,
        venv / "bin" / "python": f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n',
        venv / "bin" / "semgan": f'#!/bin/sh\nexec {shlex.quote(sys.executable)} '
                                 f'{shlex.quote(str(fake / "semgan_fake.py"))} "$@"\n',
    }
    for path, text in scripts.items():
        path.write_text(text)
        path.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()

    def env(extra: dict) -> dict:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("SLURM_", "JAX_", "TPU_", "XLA_", "CUDA_", "SEMGAN_"))}
        base.update(PATH=f"{bin_}:{os.environ['PATH']}", HOME=str(home), FAKE_DIR=str(fake), VENV=str(venv))
        base.update(extra)
        return base

    def plan(*steps):
        (fake / "plan").write_text("\n".join(f"{rc} {step}" for rc, step in steps))

    def calls(name):
        path = fake / f"{name}.log"
        if not path.exists():
            return []
        if name == "semgan":
            return [json.loads(line) for line in path.read_text().splitlines()]
        return [shlex.split(line) for line in path.read_text().splitlines()]

    return SimpleNamespace(dir=fake, venv=venv, home=home, env=env, plan=plan, calls=calls)


def run_script(name: str, fake, env: dict, *args, timeout=60):
    return subprocess.run([BASH, str(SCRIPTS[name]), *args], capture_output=True, text=True, cwd=ROOT,
                          env=fake.env(env), timeout=timeout)


def opt(argv: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith(name + "="))


MG_ENV = dict(NUM_GPUS="4", CONFIG="experiments/synthetic_32.py", GAN_ARGS="--config.train.iterations=20",
              RESTART_DELAY="0")


def test_multi_gpu_relaunches_a_crash_with_resume_until_done(tmp_path):
    fake = make_fakes(tmp_path)
    fake.plan((1, 5), (1, 10), (0, 20))  # crash after checkpoint 5, again after 10, then finish
    out = run_script("multi_gpu.sh", fake, dict(MG_ENV, RUN_DIR=str(tmp_path / "run"),
                                                 DATA_DIR=str(tmp_path / "data")), "gan")
    assert out.returncode == 0, out.stderr
    runs = fake.calls("semgan")
    assert len(runs) == 3
    for run in runs:
        argv = run["argv"]
        assert argv[0] == "train-gan" and "--resume" in argv
        assert argv[argv.index("--workdir") + 1] == str(tmp_path / "run" / "stage1")
        assert opt(argv, "--config.train.batch_size") == "16"  # 4 GPUs: the reference's 16
        assert opt(argv, "--config.data.data_dir") == str(tmp_path / "data")
        assert run["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.90"
        assert run["env"]["SEMGAN_JAX_CACHE"]
        check_cli(argv, "multi_gpu.sh as run")
    assert "relaunching with --resume" in out.stderr


def test_multi_gpu_gives_up_after_crashes_without_progress(tmp_path):
    fake = make_fakes(tmp_path)
    fake.plan((1, -1), (1, -1), (0, 20))
    out = run_script("multi_gpu.sh", fake, dict(MG_ENV, RUN_DIR=str(tmp_path / "run"), NO_PROGRESS_LIMIT="2",
                                                 DATA_DIR=str(tmp_path / "data")), "gan")
    assert out.returncode != 0 and "2 launches in a row failed (exit 1)" in out.stderr, out.stderr
    assert len(fake.calls("semgan")) == 2


@pytest.mark.parametrize("plan, message", [((2, -1), "refused the command line"),
                                           ((0, 10), "stopped at checkpoint 10 of 20")])
def test_multi_gpu_does_not_relaunch_a_refusal_or_a_deliberate_stop(tmp_path, plan, message):
    fake = make_fakes(tmp_path)
    fake.plan(plan, (0, 20))
    out = run_script("multi_gpu.sh", fake, dict(MG_ENV, RUN_DIR=str(tmp_path / "run"), NUM_GPUS="8",
                                                 BATCH="64", DATA_DIR=str(tmp_path / "data")), "gan")
    assert out.returncode != 0 and message in out.stderr, out.stderr
    runs = fake.calls("semgan")
    assert len(runs) == 1 and opt(runs[0]["argv"], "--config.train.batch_size") == "64"


def test_multi_gpu_refuses_a_batch_the_gpus_do_not_divide(tmp_path):
    fake = make_fakes(tmp_path)
    out = run_script("multi_gpu.sh", fake, dict(MG_ENV, NUM_GPUS="8", BATCH="12", RUN_DIR=str(tmp_path / "r")),
                     "gan")
    assert out.returncode != 0 and "not a multiple of the 8 devices" in out.stderr
    assert not fake.calls("semgan")


SLURM_ENV = dict(SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2", SLURM_GPUS_ON_NODE="8", SLURM_CPUS_PER_TASK="16",
                 SLURM_SUBMIT_DIR=str(ROOT), STAGES="gan", CONFIG="experiments/synthetic_32.py",
                 GAN_ARGS="--config.train.iterations=20")


def test_slurm_requeues_after_the_time_limit_signal(tmp_path):
    fake = make_fakes(tmp_path)
    fake.plan((0, 10))  # SIGTERM before the time limit: checkpoint 10 of 20 saved, exit 0
    out = run_script("slurm.sbatch", fake, dict(SLURM_ENV, RUN_DIR=str(tmp_path / "run"),
                                                DATA_DIR=str(tmp_path / "data")))
    assert out.returncode == 0, out.stderr
    assert fake.calls("scontrol") == [["requeue", "4242"]]
    (srun,) = fake.calls("srun")
    assert "--ntasks-per-node=1" in srun and "--nodes=2" in srun and "--kill-on-bad-exit=1" in srun
    (run,) = fake.calls("semgan")
    assert run["env"]["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"  # every GPU of the node
    assert run["env"]["SRUN_CPUS_PER_TASK"] == "16"
    assert opt(run["argv"], "--config.train.batch_size") == "16"  # 2 nodes x 8 GPUs
    assert "--resume" in run["argv"]
    check_cli(run["argv"], "slurm.sbatch as run")


def test_slurm_does_not_requeue_a_crash_without_progress(tmp_path):
    fake = make_fakes(tmp_path)
    fake.plan((1, -1))
    out = run_script("slurm.sbatch", fake, dict(SLURM_ENV, RUN_DIR=str(tmp_path / "run"),
                                                DATA_DIR=str(tmp_path / "data"), SLURM_RESTART_COUNT="1"))
    assert out.returncode != 0 and "not requeued" in out.stderr, out.stderr
    assert fake.calls("scontrol") == []


TPU_ENV = dict(PROJECT="proj", ZONE="us-central2-b", ACCELERATOR="v4-32", SPOT="1", BUCKET="gs://bkt/ignored",
               CONFIG="experiments/synthetic_32.py", REPO_URL="https://example.invalid/semgan.git",
               GAN_ARGS="--config.train.iterations=20 --config.log.save_every=10", RESTART_DELAY="0")


def worker_env(ssh_argv: list[str]) -> tuple[dict, str]:
    """The settings and the step of a `tpu_pod.sh --on-worker` command sent over ssh."""
    command = opt(ssh_argv, "--command")
    words = shlex.split(command)
    i = words.index("env")
    j = words.index("bash", i)
    env = dict(w.split("=", 1) for w in words[i + 1:j])
    assert words[j + 1:j + 3] == ["experiments/launch/tpu_pod.sh", "--on-worker"], command
    return env, words[j + 3]


def test_tpu_pod_recreates_a_preempted_slice_and_resumes(tmp_path):
    fake = make_fakes(tmp_path)
    (fake.dir / "state").write_text("PREEMPTED\n")
    (fake.dir / "progress").write_text("-1 20\n10 20\n10 20\n20 20\n")
    out = run_script("tpu_pod.sh", fake, TPU_ENV, "gan")
    assert out.returncode == 0, out.stderr
    calls = fake.calls("gcloud")
    verbs = [c[3] for c in calls if c[:3] == ["compute", "tpus", "tpu-vm"]]
    assert "delete" in verbs and verbs.index("delete") < verbs.index("create")
    (create,) = [c for c in calls if c[3] == "create"]
    assert create[4] == "semgan-v4-32"
    for flag in ("--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot", "--project=proj",
                 "--zone=us-central2-b"):
        assert flag in create, (flag, create)
    steps = [worker_env(c)[1] for c in calls if c[3] == "ssh"]
    assert steps == ["setup", "data", "progress-gan", "gan", "progress-gan", "progress-gan", "gan",
                     "progress-gan"], steps
    setup = next(c for c in calls if c[3] == "ssh" and worker_env(c)[1] == "setup")
    assert "git clone" in opt(setup, "--command") and "--worker=all" in setup
    gan = [c for c in calls if c[3] == "ssh" and worker_env(c)[1] == "gan"]
    assert all("--worker=all" in c for c in gan)
    env, _ = worker_env(gan[0])
    assert env["BATCH"] == "16" and env["MESH_DATA"] == "-1"  # v4-32: 16 devices
    assert env["GAN_ARGS"] == TPU_ENV["GAN_ARGS"]
    assert env["WORKDIR"] == "/mnt/bkt/runs/synthetic_32" and env["MOUNT_DIR"] == "/mnt/bkt"
    assert env["BUCKET_NAME"] == "bkt" and env["MOUNT"] == "gcsfuse"


def test_tpu_pod_retries_a_failed_create(tmp_path):
    fake = make_fakes(tmp_path)
    (fake.dir / "create_failures").write_text("1\n")  # e.g. no spot capacity the first time
    (fake.dir / "progress").write_text("20 20\n")
    out = run_script("tpu_pod.sh", fake, TPU_ENV, "gan")
    assert out.returncode == 0, out.stderr
    calls = fake.calls("gcloud")
    assert sum(1 for c in calls if c[3] == "create") == 2
    assert [worker_env(c)[1] for c in calls if c[3] == "ssh"] == ["setup", "data", "progress-gan"]


def test_tpu_pod_gives_up_without_progress(tmp_path):
    fake = make_fakes(tmp_path)
    (fake.dir / "state").write_text("READY\n")
    (fake.dir / "progress").write_text("-1 20\n" * 10)
    out = run_script("tpu_pod.sh", fake, dict(TPU_ENV, NO_PROGRESS_LIMIT="2"), "gan")
    assert out.returncode != 0 and "saved no new checkpoint" in out.stderr, out.stderr
    assert [c for c in fake.calls("gcloud") if c[3] == "create"] == []
    assert sum(1 for c in fake.calls("gcloud") if c[3] == "ssh" and worker_env(c)[1] == "gan") == 2


@pytest.mark.parametrize("tpu_env, hosts", [("t1v-w-0,t1v-w-1", "t1v-w-0,t1v-w-1"), ("", "10.0.0.2,10.0.0.3")])
def test_tpu_pod_worker_side_starts_the_trainer_and_reports_progress(tmp_path, tpu_env, hosts):
    """`--on-worker gan` / `progress-gan` as a TPU worker runs them (metadata from a curl stand-in:
    the worker list from tpu-env, else from worker-network-endpoints)."""
    fake = make_fakes(tmp_path)
    fake.plan((0, 20))
    env = dict(CONFIG="experiments/synthetic_32.py", ENCODER_CONFIG="experiments/synthetic_32_encoder.py",
               WORKDIR=str(tmp_path / "run"), BATCH="16", MESH_DATA="-1", MOUNT="none",
               DATA_DIR=str(tmp_path / "data"), GAN_ARGS="--config.train.iterations=20", FAKE_TPU_ENV=tpu_env)
    out = run_script("tpu_pod.sh", fake, env, "--on-worker", "gan")
    assert out.returncode == 0, out.stderr
    (run,) = fake.calls("semgan")
    assert run["env"]["TPU_WORKER_HOSTNAMES"] == hosts  # several hosts -> jax.distributed.initialize()
    assert run["argv"][:2] == ["train-gan", "--config"] and "--resume" in run["argv"]
    assert opt(run["argv"], "--config.data.data_dir") == str(tmp_path / "data")
    check_cli(run["argv"], "tpu_pod.sh worker as run")
    assert (fake.home / "semgan_logs" / "gan.pid").is_file()
    if not tpu_env:
        return
    out = run_script("tpu_pod.sh", fake, env, "--on-worker", "progress-gan")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["20", "20"]
