"""SemanticGAN's two claims in miniature, against the supervised U-Net baseline, on the built-in
synthetic faces (32 px, 6 classes): (a) better segmentation than supervised training when labels
are few, (b) better out-of-domain generalisation (split `test_ood`: the same face geometry with
rotated colours, a checkerboard texture, blur and lower contrast; docs/data.md).

    python experiments/claims.py                          # default sweep, about 60 minutes on 2 CPU cores
    python experiments/claims.py --seeds 0,1,2 --budget-minutes 180
    python experiments/claims.py --quick --labels 8 --out /tmp/claims_quick   # smoke run, minutes
    python experiments/claims.py --report-only            # rebuild claims.json / .md / .png from the runs

For every labeled-set size N (--labels, default 8,32,128; unlabeled: the whole train split) and
seed S (--seeds, default 0) it runs, as subprocesses of the `semgan` CLI (exactly what a user
would type; `sys.executable -m semgan_jax.cli`):

  SemanticGAN (OUT/semgan/labels{N}_seed{S}/)
    semgan train-gan     --config experiments/synthetic_32.py --workdir R/stage1
                         --config.data.num_labeled=N --config.data.label_seed=S --config.seed=S
                         --config.log.max_minutes=G
    semgan train-encoder --config experiments/synthetic_32_encoder.py --workdir R/stage2
                         --config.stage1=R/stage1 --config.data.num_labeled=N --config.data.label_seed=S
                         --config.seed=S --config.log.max_minutes=E
    semgan evaluate      --checkpoint R/stage2 --split {test,test_ood} --limit K ...  (test-time optimisation)
  U-Net baseline (OUT/unet/labels{N}_seed{S}/)
    semgan train-supervised    --config experiments/synthetic_32_unet.py --workdir R/train
                               --config.data.num_labeled=N --config.data.label_seed=S --config.seed=S
                               --config.log.max_minutes=U
    semgan evaluate-supervised --workdir R/train --split {test,test_ood} --limit K ...

Both methods see the same labeled subset (datasets.select_labeled(N, label_seed=S)) and are scored
on the same images: both evaluate commands read the split in index order
(`segment._split_examples`: source[0], source[1], ...; `supervised.evaluate`:
`pipeline.make_eval_batches`, one ordered pass) and stop after the first K, with the same
`metrics.SegmentationMetrics` (tests/test_claims.py checks the order). The numbers reported are
dataset-level mIoU over the 6 classes (`dataset.miou`), pixel accuracy and per-class IoU.

Time budgets. Training runs are capped by `log.max_minutes` (training time: the loop's clock
leaves out compiling the step, here mostly cache reads after the warm-up; a capped run saves a checkpoint and exits 0;
the configs' iteration counts, 1500 / 1000 / 3000, are the upper limit). Measured on this 2-core
CPU: stage 1 at 32 px, narrow networks ≈ 30 images/s (benchmarks/ours.py --what stage1 --size 32 --width narrow --batch 16); stage 2
≈ 50 images/s (metrics.jsonl of `make demo`); the U-Net ≈ 200 images/s; inversion (100 steps)
≈ 1 image/s (`make demo`: 64 images in 59 s and 63 s, compile included); every process also pays
start-up (imports, data, init, final checkpoint; about 0.1 min in `make demo`, taken as 0.25);
first compiles take 20-60 s each and are cached afterwards in ~/.cache/semgan_jax/xla.

  pairs          P = len(labels) * len(seeds)                               default 3
  warm-up        W = measured once it has run (WARMUP_MIN in the plan before) 5.4 min cold
  overhead / P   O = 7 processes * 0.25 min + 2 splits * K * 1.0 s / 60      K = 64: 1.75 + 2.13 = 3.88 min
  training / P   T = (budget - W) / P - O                                    (60 - 5.4) / 3 - 3.88 = 14.3 min
  G = 0.50 T, E = 0.25 T, U = 0.25 T, rounded down to 0.1 min               7.1 / 3.5 / 3.5 min
  sweep          W + P * (O + G + E + U)                                     5.4 + 3 * 18.0 = 59.4 min

Measured (docs/claims.md, cold cache, 2 cores): 57.6 min in all; stage 1 reached 740-780 of its
1500 iterations, stage 2 501-560 of 1000, the U-Net 2324-3000 of 3000 (it fits its 8-128 training
images within a few hundred; docs/baseline.md). The budget is the sweep's wall time including the compile warm-up (below): the
plan printed up front assumes WARMUP_MIN; once the warm-up has run, G, E and U are re-planned from
the minutes actually left. --budget-minutes rescales G, E and U by the same formula (more seeds or
label counts: less per run); --gan-minutes / --encoder-minutes / --unet-minutes set them directly.
The iterations each run reached are recorded and shown, since a shared CPU or a cold compile
cache gives some runs fewer.

Resumable: every step's output marks it done (training: R/stage1.json, R/stage2.json,
R/train.json, written by this script after the command exits 0; evaluation: the command's own
R/eval_SPLIT.json); a finished run has R/result.json and is skipped. A training step that was cut
off (checkpoints, no marker) is rerun with --resume, as the Makefile's `resume_if`; it then trains
for another full budget. A run that failed is recorded (R/result.json with status "failed", the
step, exit code and the tail of its log in R/logs/) and the sweep goes on; the next invocation
retries it from the failed step. Outputs (rewritten after every run, so a partial sweep already
has them): OUT/claims.json (every number), OUT/claims.md (tables, mean ± std over seeds),
OUT/claims.png (mIoU against labeled images, log x axis, drawn with Pillow).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from semgan_jax.plot import plot_lines

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"gan": "experiments/synthetic_32.py", "encoder": "experiments/synthetic_32_encoder.py",
           "unet": "experiments/synthetic_32_unet.py"}
METHODS = ("semgan", "unet")
METHOD_NAMES = {"semgan": "SemanticGAN", "unet": "U-Net"}
# The columns a run's evaluations fill (claims.json's `method`): the U-Net; SemanticGAN's encoder
# alone (E(x), `--step 0`); encoder + the reference's 100-step test-time optimisation (MSE without
# LPIPS weights, λ_encoder 10: infer.LAMBDA_ENCODER_WITHOUT_LPIPS); the same with the stage-1 Dr's
# normalised features as the perceptual term (`--perceptual-net dr`: label-free, in LPIPS's place),
# λ_encoder the same 10 so that only the perceptual term differs.
COLUMNS = ("unet", "semgan_encoder", "semgan_optimised", "semgan_optimised_dr")
COLUMN_NAMES = {"unet": "U-Net", "semgan_encoder": "SemanticGAN E(x)",
                "semgan_optimised": "SemanticGAN E(x) + optimisation",
                "semgan_optimised_dr": "SemanticGAN + optimisation, Dr perceptual"}
SEMGAN_EVALS = {"semgan_optimised": ("", []), "semgan_encoder": ("_encoder", ["--step", "0"]),
                "semgan_optimised_dr": ("_dr", ["--perceptual-net", "dr", "--lambda-encoder", "10"])}
FLAT_COLUMNS = ("unet", "semgan_encoder", "semgan_optimised")  # claims.json "rows" (the schema)
SPLITS = ("test", "test_ood")
SPLIT_NAMES = {"test": "in-domain (test)", "test_ood": "out-of-domain (test_ood)"}

# Budget model (module docstring): minutes per process start-up, seconds per inverted image,
# processes per (labels, seed) pair, and the training time's shares.
STARTUP_MIN = 0.25
INVERT_S_PER_IMAGE = 0.6  # one optimised column (100 steps, batch 32; 31 s for 64 images measured)
ENCODE_S_PER_IMAGE = 0.15  # the encoder-only column (9 s for 64)
PROCESSES_PER_PAIR = 11  # stage 1, stage 2, 3 columns x 2 splits; U-Net training + 2 splits
SHARES = {"gan": 0.50, "encoder": 0.25, "unet": 0.25}
QUICK_BUDGETS = {"gan": 0.5, "encoder": 0.3, "unet": 0.3}
# The warm-up (warmup_runs): minutes it takes with a cold compile cache, and the iterations that
# reach every compiled variant of each training step (stage 1: i = 0 both regularisers, 1 none,
# 4 path length only; R1 alone never occurs with d_reg_every 16 = 4 * g_reg_every).
WARMUP_MIN = 12.0  # the plan printed up front (cold: 5.4 min measured, 13.3 with an earlier build); re-planned after
WARMUP_ITERATIONS = {"stage1": 5, "stage2": 2, "train": 2}
QUICK_LIMIT = 4
EVAL_BATCH = 32  # images inverted together (vmap)


# --------------------------------------------------------------------------- budgets

def overhead_minutes(limit: int) -> float:
    """Estimated minutes per (labels, seed) pair outside the training budgets."""
    return PROCESSES_PER_PAIR * STARTUP_MIN + semgan_eval_minutes(limit)


def semgan_eval_minutes(limit: int) -> float:
    """Estimated minutes of SemanticGAN's evaluations of one run (both splits, every column)."""
    return len(SPLITS) * limit * (2 * INVERT_S_PER_IMAGE + ENCODE_S_PER_IMAGE) / 60


def plan_budgets(total_minutes: float, pairs: int, limit: int) -> dict[str, float]:
    """`log.max_minutes` for stage 1 ('gan'), stage 2 ('encoder') and the U-Net ('unet') so that
    `pairs` (labels, seed) pairs fit in `total_minutes` (module docstring). ValueError when the
    overhead alone does not fit."""
    per_pair = total_minutes / pairs
    train = per_pair - overhead_minutes(limit)
    if train < 1.0:
        need = pairs * (overhead_minutes(limit) + 1.0)
        raise ValueError(f"{total_minutes:g} minutes for {pairs} runs per method leave {train:.2f} min of training "
                         f"per run; give --budget-minutes {math.ceil(need)} or more, fewer labels / seeds, "
                         "a smaller --limit, or set --gan-minutes / --encoder-minutes / --unet-minutes")
    return {k: math.floor(train * share * 10 + 1e-9) / 10 for k, share in SHARES.items()}


def estimated_minutes(budgets: dict[str, float], pairs: int, limit: int, methods=METHODS) -> float:
    """The sweep's expected wall time under the budget model."""
    semgan = 8 * STARTUP_MIN + semgan_eval_minutes(limit) + budgets["gan"] + budgets["encoder"]
    unet = 3 * STARTUP_MIN + budgets["unet"]
    return pairs * ((semgan if "semgan" in methods else 0.0) + (unet if "unet" in methods else 0.0))


def resolve_budgets(args, warmup_minutes: float | None = None) -> dict[str, float]:
    """Budgets from --quick, else --budget-minutes less the warm-up (`warmup_minutes` once it has
    been measured, WARMUP_MIN before); explicit --*-minutes take precedence."""
    explicit = {"gan": args.gan_minutes, "encoder": args.encoder_minutes, "unet": args.unet_minutes}
    if args.quick:
        budgets = dict(QUICK_BUDGETS)
    elif all(v is not None for v in explicit.values()):
        budgets = {}
    else:
        if warmup_minutes is None:
            warmup_minutes = WARMUP_MIN if args.warmup else 0.0
        total = args.budget_minutes - warmup_minutes
        budgets = plan_budgets(total, len(args.labels) * len(args.seeds), args.limit)
    budgets.update({k: float(v) for k, v in explicit.items() if v is not None})
    return budgets


# --------------------------------------------------------------------------- the runs

@dataclasses.dataclass
class Step:
    """One `semgan` command of a run. `done` exists once it has succeeded; training steps have a
    `workdir` (checkpoints -> --resume) and a `budget` (log.max_minutes)."""
    name: str
    argv: list[str]
    done: Path
    workdir: Path | None = None
    budget: float | None = None
    split: str | None = None
    column: str | None = None
    timeout_s: float = 3600.0

    @property
    def is_training(self) -> bool:
        return self.workdir is not None

    def command(self) -> list[str]:
        """argv with --resume after the workdir when the workdir already holds checkpoints."""
        if self.is_training and has_checkpoints(self.workdir):
            i = self.argv.index("--workdir") + 2
            return self.argv[:i] + ["--resume"] + self.argv[i:]
        return list(self.argv)


@dataclasses.dataclass
class Run:
    method: str
    labels: int
    seed: int
    dir: Path
    steps: list[Step]

    @property
    def result_path(self) -> Path:
        return self.dir / "result.json"

    @property
    def title(self) -> str:
        return f"{METHOD_NAMES[self.method]} labels={self.labels} seed={self.seed}"


def has_checkpoints(workdir: Path) -> bool:
    ckpt = Path(workdir) / "checkpoints"
    return ckpt.is_dir() and any(ckpt.iterdir())


def run_dir(out: Path, method: str, labels: int, seed: int) -> Path:
    return Path(out) / method / f"labels{labels}_seed{seed}"


def semgan_run(out: Path, labels: int, seed: int, budgets: dict, limit: int) -> Run:
    r = run_dir(out, "semgan", labels, seed)
    common = [f"--config.data.num_labeled={labels}", f"--config.data.label_seed={seed}", f"--config.seed={seed}"]
    steps = [
        Step("stage1", ["train-gan", "--config", CONFIGS["gan"], "--workdir", str(r / "stage1"), *common,
                        f"--config.log.max_minutes={budgets['gan']:g}"],
             done=r / "stage1.json", workdir=r / "stage1", budget=budgets["gan"],
             timeout_s=60 * (budgets["gan"] + 15)),
        Step("stage2", ["train-encoder", "--config", CONFIGS["encoder"], "--workdir", str(r / "stage2"),
                        f"--config.stage1={r / 'stage1'}", *common, f"--config.log.max_minutes={budgets['encoder']:g}"],
             done=r / "stage2.json", workdir=r / "stage2", budget=budgets["encoder"],
             timeout_s=60 * (budgets["encoder"] + 15)),
    ]
    for column, (suffix, extra) in SEMGAN_EVALS.items():
        for split in SPLITS:
            name = f"eval_{split}{suffix}"
            steps.append(Step(name, [
                "evaluate", "--checkpoint", str(r / "stage2"), "--split", split, "--limit", str(limit),
                "--batch", str(min(EVAL_BATCH, limit)), "--seed", str(seed), *extra,
                "--out", str(r / f"{name}.json"), "--grid", str(r / f"{name}.png")],
                done=r / f"{name}.json", split=split, column=column, timeout_s=600 + 10 * limit * INVERT_S_PER_IMAGE))
    return Run("semgan", labels, seed, r, steps)


def unet_run(out: Path, labels: int, seed: int, budgets: dict, limit: int) -> Run:
    r = run_dir(out, "unet", labels, seed)
    steps = [Step("train", ["train-supervised", "--config", CONFIGS["unet"], "--workdir", str(r / "train"),
                            f"--config.data.num_labeled={labels}", f"--config.data.label_seed={seed}",
                            f"--config.seed={seed}", f"--config.log.max_minutes={budgets['unet']:g}"],
                  done=r / "train.json", workdir=r / "train", budget=budgets["unet"],
                  timeout_s=60 * (budgets["unet"] + 15))]
    for split in SPLITS:
        steps.append(Step(f"eval_{split}", [
            "evaluate-supervised", "--workdir", str(r / "train"), "--split", split, "--limit", str(limit),
            "--batch", str(min(32, limit)), "--out", str(r / f"eval_{split}.json"), "--grid", str(min(16, limit))],
            done=r / f"eval_{split}.json", split=split, column="unet", timeout_s=900))
    return Run("unet", labels, seed, r, steps)


def plan_runs(out: Path, labels, seeds, methods, budgets: dict, limit: int) -> list[Run]:
    """Every run of the sweep, seeds outermost, then label counts, then methods."""
    makers = {"semgan": semgan_run, "unet": unet_run}
    return [makers[m](Path(out), n, s, budgets, limit) for s in seeds for n in labels for m in methods]


def warmup_runs(out: Path, labels, seeds, methods, limit: int) -> list[Run]:
    """Short runs, before the sweep, of every command it will run (same shapes: same configs,
    batches and evaluation batch sizes), with no time limit and WARMUP_ITERATIONS iterations, in
    OUT/warmup/, evaluating one split (the others run the same programs). They fill XLA's
    persistent compile cache, so that no run's training budget pays
    for compiling (cold, 1-2 min per compiled variant on 2 CPU cores, three in stage 1)."""
    none = {"gan": 0.0, "encoder": 0.0, "unet": 0.0}
    runs = plan_runs(Path(out) / "warmup", [min(labels)], [seeds[0]], methods, none, limit)
    for run in runs:
        run.steps = [step for step in run.steps if step.split in (None, SPLITS[0])]  # splits share programs
        for step in run.steps:
            if step.is_training:
                step.argv.append(f"--config.train.iterations={WARMUP_ITERATIONS[step.name]}")
                step.budget = None
            step.timeout_s = max(step.timeout_s, 3600.0)  # a cold compile on a busy machine
    return runs


# --------------------------------------------------------------------------- executing

def run_subprocess(argv: list[str], log_path: Path, timeout_s: float) -> int:
    """`semgan ARGV` as `python -m semgan_jax.cli ARGV` from the repository root, stdout and
    stderr into `log_path`. Past `timeout_s`: SIGTERM (training saves a checkpoint), then SIGKILL
    a minute later; returns 124 then."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "semgan_jax.cli", *argv]
    with open(log_path, "a") as log:
        log.write(f"$ semgan {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the session this Popen created: only its processes
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.write(f"\n[claims.py] killed after {timeout_s:.0f} s\n")
            return 124
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def iterations_reached(workdir: Path) -> int | None:
    """The latest checkpoint step of a training run directory."""
    ckpt = Path(workdir) / "checkpoints"
    steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.is_dir() else []
    return max(steps) if steps else None


def iterations_configured(workdir: Path) -> int | None:
    config = read_json(Path(workdir) / "config.json")
    try:
        return int(config["train"]["iterations"])
    except (TypeError, KeyError, ValueError):
        return None


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    text = "\n".join(part.rsplit("\r", 1)[-1] for part in text.splitlines())  # progress bars: last state
    return "\n".join(text.splitlines()[-lines:])


def split_scores(path: Path) -> dict | None:
    """The numbers kept from an evaluate / evaluate-supervised JSON."""
    r = read_json(path)
    if not r:
        return None
    d = r["dataset"]
    return {"miou": d["miou"], "mdice": d["mdice"], "pixel_accuracy": d["pixel_accuracy"],
            "iou": dict(zip(r["class_names"], d["iou"])), "per_image_miou": r["per_image"]["miou"],
            "num_images": r["num_images"], "seconds": r.get("seconds")}


def collect(run: Run, settings: dict, failure: dict | None) -> dict:
    """The run's record (R/result.json) from the files its steps left."""
    train = {}
    for step in run.steps:
        if step.is_training:
            marker = read_json(step.done) or {}
            train[step.name] = {"iterations": iterations_reached(step.workdir),
                                "iterations_configured": iterations_configured(step.workdir),
                                "minutes": marker.get("minutes"), "budget_minutes": step.budget}
    columns: dict[str, dict] = {}
    for step in run.steps:
        if step.split and step.done.is_file():
            columns.setdefault(step.column, {})[step.split] = split_scores(step.done)
    minutes = [t["minutes"] for t in train.values() if t["minutes"] is not None]
    main = "semgan_optimised" if run.method == "semgan" else "unet"
    return {"method": run.method, "labels": run.labels, "seed": run.seed, "dir": str(run.dir),
            "status": "failed" if failure else "ok", "failure": failure, "train": train,
            "train_minutes": round(sum(minutes), 3) if minutes else None, "splits": columns.get(main, {}),
            "columns": columns, "stage1": stage1_oracle(run.dir / "stage1") if run.method == "semgan" else None,
            "settings": settings}


def stage1_oracle(workdir: Path) -> dict | None:
    """The last oracle metrics stage 1 logged (metrics.jsonl): mask agreement and oracle Fréchet
    distance of G and G_ema (semgan_jax/oracle.py), with the step they were taken at."""
    try:
        lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "oracle_agreement_ema" in row:
            return {k: row.get(k) for k in ("step", "oracle_agreement", "oracle_agreement_ema", "oracle_ofd",
                                            "oracle_ofd_ema")}
    return None


def execute_run(run: Run, settings: dict, runner=run_subprocess, say=print) -> dict:
    """Run the steps not done yet, in order; returns (and writes) the run's record. A training
    step that runs invalidates the outputs of the steps after it."""
    previous = read_json(run.result_path)
    if previous and previous.get("status") == "ok":
        changed = {k: (previous.get("settings", {}).get(k), v) for k, v in settings.items()
                   if previous.get("settings", {}).get(k) != v}
        say(f"  done already ({run.result_path})" + (f"; made with other settings {changed}: delete {run.dir} "
                                                      "to redo it" if changed else ""))
        return previous
    if previous:
        say(f"  retrying: the last attempt failed at {previous.get('failure', {}).get('step')}")
    failure = None
    for i, step in enumerate(run.steps):
        if step.done.is_file():
            say(f"  {step.name}: done already")
            continue
        if step.is_training:  # later steps read what it writes; evaluations are independent
            for later in run.steps[i + 1:]:
                if later.done.is_file():
                    later.done.unlink()
        argv = step.command()
        log = run.dir / "logs" / f"{step.name}.log"
        budget = f" (max {step.budget:g} min)" if step.budget is not None else ""
        say(f"  {step.name}{budget}{' --resume' if '--resume' in argv else ''}: semgan {' '.join(argv)}")
        t0 = time.perf_counter()
        try:
            rc = runner(argv, log, step.timeout_s)
        except OSError as err:
            rc, log_note = -1, str(err)
        else:
            log_note = None
        minutes = (time.perf_counter() - t0) / 60
        if rc != 0:
            failure = {"step": step.name, "returncode": rc, "command": ["semgan", *argv], "log": str(log),
                       "log_tail": log_note or log_tail(log), "minutes": round(minutes, 3)}
            say(f"  {step.name} FAILED (exit {rc}) after {minutes:.1f} min; log {log}:")
            say("    " + (failure["log_tail"] or "(empty)").replace("\n", "\n    "))
            break
        note = ""
        if step.is_training:
            its, total = iterations_reached(step.workdir), iterations_configured(step.workdir)
            write_json(step.done, {"returncode": rc, "minutes": round(minutes, 3), "iterations": its,
                                   "iterations_configured": total, "budget_minutes": step.budget,
                                   "command": ["semgan", *argv]})
            note = f", {its} of {total} iterations"
        elif step.split:
            scores = split_scores(step.done)
            if scores:
                note = f", mIoU {scores['miou']:.3f} on {scores['num_images']} images"
        say(f"  {step.name} done in {minutes:.1f} min{note}")
    record = collect(run, settings, failure)
    write_json(run.result_path, record)
    return record


# --------------------------------------------------------------------------- aggregation

def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def record_columns(record: dict) -> dict:
    """{column: {split: scores}} of a run record (records written before the columns existed hold
    one column, under `splits`)."""
    if "columns" in record:
        return record["columns"]
    return {"semgan_optimised" if record["method"] == "semgan" else "unet": record.get("splits") or {}}


def flat_rows(records: list[dict], columns=FLAT_COLUMNS) -> list[dict]:
    """[{method, labels, seed, split, miou}] over every scored (column, split) of the records."""
    rows = []
    for r in records:
        for column, splits in record_columns(r).items():
            if column in columns:
                rows += [{"method": column, "labels": r["labels"], "seed": r["seed"], "split": split,
                          "miou": scores["miou"]} for split, scores in splits.items()
                         if scores and scores.get("miou") is not None]
    return sorted(rows, key=lambda x: (x["labels"], COLUMNS.index(x["method"]), x["split"], x["seed"]))


def summarize(records: list[dict]) -> list[dict]:
    """One row per (labels, method, split) with mean / std over the seeds that have a score;
    `method` is a column of COLUMNS."""
    groups: dict[tuple, list] = {}
    for r in records:
        for column, splits in record_columns(r).items():
            for split, scores in splits.items():
                if scores and scores.get("miou") is not None:
                    groups.setdefault((r["labels"], column, split), []).append((r["seed"], scores))
    def order(key):
        labels, method, split = key
        return labels, COLUMNS.index(method) if method in COLUMNS else len(COLUMNS), split

    rows = []
    for (labels, method, split), items in sorted(groups.items(), key=lambda kv: order(kv[0])):
        row = {"labels": labels, "method": method, "split": split, "n": len(items),
               "seeds": [seed for seed, _ in items]}
        for key in ("miou", "pixel_accuracy", "mdice"):
            values = [s[key] for _, s in items if s.get(key) is not None]
            m, sd = mean_std(values)
            row[key] = {"mean": m, "std": sd, "values": values}
        rows.append(row)
    return rows


def lookup(rows: list[dict], labels: int, method: str, split: str) -> dict | None:
    return next((r for r in rows if (r["labels"], r["method"], r["split"]) == (labels, method, split)), None)


def fmt_stat(row: dict | None, key: str = "miou", seeds: int = 1) -> str:
    """'0.512', '0.512 ± 0.023', with '(n=2)' when fewer seeds than asked have a score; '–' if none."""
    if row is None or row[key]["mean"] is None:
        return "–"
    s = f"{row[key]['mean']:.3f}"
    if row[key]["std"] is not None:
        s += f" ± {row[key]['std']:.3f}"
    if row["n"] < seeds:
        s += f" (n={row['n']})"
    return s


def best_semgan_delta(rows: list[dict], labels: int, split: str) -> float | None:
    """The better of SemanticGAN's two main columns (E(x), optimised) minus the U-Net's mean mIoU."""
    ds = [d for d in (delta(rows, labels, split, column=c) for c in ("semgan_encoder", "semgan_optimised"))
          if d is not None]
    return max(ds) if ds else None


def delta(rows: list[dict], labels: int, split: str, key: str = "miou", column: str = "semgan_optimised") -> float | None:
    """`column`'s mean minus the U-Net's (None when either is missing)."""
    a, b = lookup(rows, labels, column, split), lookup(rows, labels, "unet", split)
    if a is None or b is None or a[key]["mean"] is None or b[key]["mean"] is None:
        return None
    return a[key]["mean"] - b[key]["mean"]


def markdown(records: list[dict], rows: list[dict], settings: dict) -> str:
    labels, seeds = settings["labels"], settings["seeds"]
    b = settings["budgets"]
    lines = [
        "# SemanticGAN vs the supervised U-Net on synthetic faces (32 px)", "",
        f"Labeled images {', '.join(map(str, labels))}; seeds {', '.join(map(str, seeds))}; scored on the first "
        f"{settings['limit']} images of `test` and `test_ood`; training budgets (`log.max_minutes`): stage 1 "
        f"{b['gan']:g} min, stage 2 {b['encoder']:g} min, U-Net {b['unet']:g} min"
        + (f", planned after a {settings['warmup_minutes']:g}-min compile warm-up" if settings.get("warmup_minutes") else "")
        + (" (--quick smoke run: not a measurement)" if settings.get("quick") else "") + ". "
        + ("Mean ± sample standard deviation over seeds. " if len(seeds) > 1 else "One seed: no spread. ")
        + "Δ = SemanticGAN − U-Net (positive favours SemanticGAN). Written by experiments/claims.py "
        f"at {settings.get('updated', '')}.", ""]
    sg = [c for c in COLUMNS if c != "unet"]
    for key, title in (("miou", "mIoU (dataset-level, 6 classes)"), ("pixel_accuracy", "Pixel accuracy")):
        lines += [f"## {title}", ""]
        for split in SPLITS:
            lines += [f"`{split}`:", "",
                      "| labels | " + " | ".join(COLUMN_NAMES[c] for c in COLUMNS)
                      + " | Δ E(x) | Δ optimised | Δ optimised, Dr |",
                      "|---|" + "---|" * (len(COLUMNS) + 3)]
            for n in labels:
                cells = [fmt_stat(lookup(rows, n, c, split), key, len(seeds)) for c in COLUMNS]
                for c in sg:
                    d = delta(rows, n, split, key, c)
                    cells.append("–" if d is None else f"{d:+.3f}")
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## The claims (the issue's targets, on mean mIoU)", ""]
    def verdict(d, target, shown):
        return "–" if d is None else f"{d:+.3f}: target ≥ {shown} {'met' if d >= target else 'missed'}"

    lines.append(f"- (a) fewest labels ({labels[0]}), in-domain: SemanticGAN (better column) − U-Net = "
                 f"{verdict(best_semgan_delta(rows, labels[0], 'test'), 0, '0')}.")
    for n in labels:
        lines.append(f"- (b) out of domain, {n} labels: SemanticGAN (better column) − U-Net = "
                     f"{verdict(best_semgan_delta(rows, n, 'test_ood'), 0.10, '+0.10')}.")
    for n in labels:
        for split in SPLITS:
            a, b = lookup(rows, n, "semgan_optimised", split), lookup(rows, n, "semgan_encoder", split)
            if a and b and a["miou"]["mean"] is not None and b["miou"]["mean"] is not None:
                d = a["miou"]["mean"] - b["miou"]["mean"]
                lines.append(f"- (c) optimisation − encoder only, {n} labels, `{split}`: {verdict(d, 0, '0')}.")
    if len(seeds) < 2:
        lines.append("- One seed per cell: differences of a few points are within run-to-run noise.")
    lines += ["", "## Training reached", "",
              "Stage 1's oracle metrics (semgan_jax/oracle.py), last logged, for G_ema: mask agreement (mIoU of "
              "G's mask against the oracle's mask of G's image) and oracle Fréchet distance (to the test split).", "",
              "| method | labels | seed | status | iterations (reached / configured) | train minutes "
              "| agreement G_ema | oracle FD G_ema |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["seed"], r["labels"], r["method"])):
        its = ", ".join(f"{name} {t['iterations']} / {t['iterations_configured']}" for name, t in r["train"].items())
        mins = "–" if r.get("train_minutes") is None else f"{r['train_minutes']:.1f}"
        oracle = r.get("stage1") or {}
        cells = [("–" if oracle.get(k) is None else f"{oracle[k]:.3f}") for k in ("oracle_agreement_ema", "oracle_ofd_ema")]
        lines.append(f"| {METHOD_NAMES.get(r['method'], r['method'])} | {r['labels']} | {r['seed']} | {r['status']} "
                     f"| {its or '–'} | {mins} | " + " | ".join(cells) + " |")
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failures", ""]
        for r in failed:
            f = r["failure"] or {}
            lines.append(f"- {METHOD_NAMES.get(r['method'], r['method'])} labels={r['labels']} seed={r['seed']}: "
                         f"step `{f.get('step')}` exited {f.get('returncode')}; log `{f.get('log')}`")
    lines += ["", "Per-class IoU, Dice and every value per seed: claims.json. Plot: claims.png.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the plot

COLORS = {"semgan_encoder": (44, 160, 44), "semgan_optimised": (31, 119, 180), "unet": (214, 39, 40)}
MARKERS = {"semgan_encoder": "circle", "semgan_optimised": "circle", "unet": "square"}
PLOT_NAMES = {"semgan_encoder": "SemanticGAN E(x)", "semgan_optimised": "SemanticGAN optimised", "unet": "U-Net"}


def plot_claims(path, rows: list[dict], labels, subtitle: str = "") -> None:
    """mIoU against labeled images: U-Net and SemanticGAN's two main columns, in- (solid) and
    out-of-domain (dashed), error bars the seeds' standard deviation."""
    series = []
    for method in COLORS:
        for split in SPLITS:
            pts = [(n, lookup(rows, n, method, split)) for n in labels]
            pts = [(n, r) for n, r in pts if r is not None and r["miou"]["mean"] is not None]
            series.append({"label": f"{PLOT_NAMES[method]}, {split}", "x": [n for n, _ in pts],
                           "y": [r["miou"]["mean"] for _, r in pts], "err": [r["miou"]["std"] for _, r in pts],
                           "color": COLORS[method], "dashed": split != "test", "marker": MARKERS[method]})
    plot_lines(path, series, title="SemanticGAN vs U-Net, synthetic faces 32 px" + (f" ({subtitle})" if subtitle else ""),
               xlabel="labeled training images (log scale)", ylabel="mIoU")


# the evaluate commands' --grid layout (segment.py, supervised.save_grid): input | prediction |
# truth per example, four examples per row, upscaled by viz.grid_scale
EVAL_GRID = {"n_columns": 3, "ncol": 4}


def comparison_grid(out: Path, labels: int, seed: int, split: str, path: Path, n: int = 8) -> bool:
    """PNG of input | U-Net | SemanticGAN E(x) | SemanticGAN optimised | truth for the first `n`
    images of `split`, cut from the runs' evaluation grids; False when one is missing."""
    from PIL import Image

    from semgan_jax import viz

    sg, un = run_dir(out, "semgan", labels, seed), run_dir(out, "unet", labels, seed)
    files = [un / f"eval_{split}.png", sg / f"eval_{split}_encoder.png", sg / f"eval_{split}.png"]
    if not all(f.is_file() for f in files):
        return False
    res = int(read_json(sg / "stage1" / "config.json")["model"]["size"])
    scale = viz.grid_scale(res)
    parts = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    cols = [viz.ungrid(img, n, size=(res, res), scale=scale, **EVAL_GRID) for img in parts]
    if any(not np.array_equal(cols[0][0], c[0]) for c in cols[1:]):
        raise ValueError(f"{files}: the grids show different input images")
    viz.save_png(path, viz.grid([cols[0][0], cols[0][1], cols[1][1], cols[2][1], cols[0][2]], ncol=2), scale=scale)
    return True


def write_reports(out: Path, records: list[dict], settings: dict) -> dict:
    """OUT/claims.json, claims.md and claims.png from the run records."""
    rows = summarize(records)
    settings = dict(settings, updated=datetime.datetime.now().isoformat(timespec="seconds"))
    deltas = [{"labels": n, "split": split, "method": c, "miou_minus_unet": delta(rows, n, split, column=c),
               "pixel_accuracy_minus_unet": delta(rows, n, split, "pixel_accuracy", c)}
              for n in settings["labels"] for split in SPLITS for c in COLUMNS if c != "unet"]
    write_json(out / "claims.json", {"rows": flat_rows(records),
                                     "rows_dr_perceptual": flat_rows(records, ("semgan_optimised_dr",)),
                                     "settings": settings, "summary": rows, "deltas": deltas, "runs": records})
    (out / "claims.md").write_text(markdown(records, rows, settings))
    seeds = settings["seeds"]
    for n in settings["labels"]:
        for split in SPLITS:
            comparison_grid(out, n, seeds[0], split, out / f"grid_{split}_labels{n}.png")
    plot_claims(out / "claims.png", rows, settings["labels"],
                subtitle=("quick smoke run" if settings.get("quick") else
                          f"mean ± std of {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"))
    return {"rows": rows, "deltas": deltas}


# --------------------------------------------------------------------------- main

def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=int_list, default=[8, 32, 128], help="labeled-set sizes (default 8,32,128)")
    p.add_argument("--seeds", type=int_list, default=[0], help="seeds: label subset, init, data order (default 0)")
    p.add_argument("--methods", default="semgan,unet", help="semgan, unet or both (default)")
    p.add_argument("--out", default="runs/claims", help="output folder (default runs/claims)")
    p.add_argument("--budget-minutes", type=float, default=60.0,
                   help="wall time the whole sweep should take (default 60); sets the per-run budgets")
    p.add_argument("--gan-minutes", type=float, help="stage-1 log.max_minutes (overrides the budget)")
    p.add_argument("--encoder-minutes", type=float, help="stage-2 log.max_minutes (overrides the budget)")
    p.add_argument("--unet-minutes", type=float, help="U-Net log.max_minutes (overrides the budget)")
    p.add_argument("--limit", type=int, default=64, help="score the first K images of each split (default 64)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: budgets {QUICK_BUDGETS} min, --limit {QUICK_LIMIT} (not a measurement)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="compile everything first in short unbudgeted runs (OUT/warmup; 5.4 min cold on 2 cores, its "
                        "measured minutes taken from --budget-minutes) so that no training budget pays for compiling")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing; rebuild claims.json / .md / .png from the runs' result.json")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        raise SystemExit(f"error: --methods takes {', '.join(METHODS)}; got {args.methods}")
    if args.quick:
        args.limit = QUICK_LIMIT
    if args.limit < 1:
        raise SystemExit("error: --limit must be at least 1")
    if min(args.labels) < 1:
        raise SystemExit("error: --labels must be positive")
    return args


def main(argv=None, runner=run_subprocess) -> int:
    """The sweep; `runner(argv, log_path, timeout_s) -> exit code` runs one semgan command."""
    args = parse_args(argv)
    try:
        budgets = resolve_budgets(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    runs = plan_runs(out, args.labels, args.seeds, args.methods, budgets, args.limit)
    pairs = len(args.labels) * len(args.seeds)
    settings = {"labels": args.labels, "seeds": args.seeds, "methods": args.methods, "limit": args.limit,
                "budgets": budgets, "budget_minutes": None if args.quick else args.budget_minutes,
                "quick": args.quick, "splits": list(SPLITS), "configs": CONFIGS}
    if args.report_only:  # records rebuilt from the files the steps left (columns added since included)
        records = [collect(r, p.get("settings", {}), p.get("failure")) for r in runs
                   if (p := read_json(r.result_path))]
        write_reports(out, records, settings)
        print(f"{len(records)} of {len(runs)} runs have results -> {out}/claims.{{json,md,png}}")
        return 0
    est = estimated_minutes(budgets, pairs, args.limit, args.methods) + (WARMUP_MIN if args.warmup else 0.0)
    if not args.quick and "semgan" in args.methods and budgets["gan"] < 3:
        print(f"warning: {budgets['gan']:g} min for stage 1 is little more than its first compile (1-2 min "
              "cold); give a larger --budget-minutes for this many runs", file=sys.stderr)
    print(f"{len(runs)} runs into {out}: labels {args.labels}, seeds {args.seeds}, methods {args.methods}, "
          f"first {args.limit} images of {' and '.join(SPLITS)}")
    print(f"budgets (log.max_minutes): stage 1 {budgets['gan']:g}, stage 2 {budgets['encoder']:g}, "
          f"U-Net {budgets['unet']:g}; estimated {est:.0f} min for runs not done yet")
    if args.dry_run:
        for run in runs:
            print(f"{run.title}: {run.dir}")
            for step in run.steps:
                print(f"  semgan {' '.join(step.command())}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    t0, records = time.perf_counter(), []
    if args.warmup and not all(r.result_path.is_file() for r in runs):
        for run in warmup_runs(out, args.labels, args.seeds, args.methods, min(args.limit, 32)):
            print(f"[warm-up] {run.title} -> {run.dir}", flush=True)
            record = execute_run(run, {"limit": args.limit}, runner=runner, say=lambda m: print(m, flush=True))
            if record["status"] != "ok":
                print("warm-up failed: the sweep would fail the same way; see the log above", file=sys.stderr)
                return 1
        warmup_minutes = (time.perf_counter() - t0) / 60
        try:
            budgets = resolve_budgets(args, warmup_minutes)
        except ValueError as err:
            print(f"error: after the warm-up: {err}", file=sys.stderr)
            return 2
        runs = plan_runs(out, args.labels, args.seeds, args.methods, budgets, args.limit)
        settings["budgets"] = budgets
        settings["warmup_minutes"] = round(warmup_minutes, 2)
        print(f"warm-up done in {warmup_minutes:.1f} min; budgets re-planned from the {args.budget_minutes - warmup_minutes:.1f} "
              f"min left: stage 1 {budgets['gan']:g}, stage 2 {budgets['encoder']:g}, U-Net {budgets['unet']:g}", flush=True)
    run_settings = {"limit": args.limit, "budgets": budgets}
    for i, run in enumerate(runs, 1):
        print(f"[{i}/{len(runs)} {(time.perf_counter() - t0) / 60:5.1f} min] {run.title} -> {run.dir}", flush=True)
        start = time.perf_counter()
        record = execute_run(run, run_settings, runner=runner, say=lambda m: print(m, flush=True))
        records.append(record)
        scores = ", ".join(f"{split} mIoU {s['miou']:.3f}" for split, s in record["splits"].items() if s)
        print(f"  {run.title}: {record['status']} after {(time.perf_counter() - start) / 60:.1f} min"
              + (f"; {scores}" if scores else ""), flush=True)
        write_reports(out, records, settings)
    failed = [r for r in records if r["status"] != "ok"]
    print(f"sweep finished in {(time.perf_counter() - t0) / 60:.1f} min; {len(records) - len(failed)} runs ok, "
          f"{len(failed)} failed -> {out}/claims.{{json,md,png}}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
