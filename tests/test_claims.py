"""experiments/claims.py, the SemanticGAN-vs-U-Net sweep, without training anything: the budget
arithmetic, aggregation into the Markdown table (mean ± std), the Pillow plot, the sweep's
skip / resume / failure handling with a stand-in for the `semgan` CLI, every command line it
builds (parsed by the real parser, overrides applied to the named config), and that both
evaluation commands score the same first K images of a split in the same order."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from test_launch import check_cli  # parses like `semgan` and applies --config.x=y to the named config

ROOT = Path(__file__).resolve().parents[1]


def _load_claims():
    spec = importlib.util.spec_from_file_location("claims_harness", ROOT / "experiments" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


claims = _load_claims()


# --------------------------------------------------------------------------- budgets

def test_default_budgets_fit_the_sweep_into_an_hour():
    # 11 processes per pair; evaluation: two optimised columns and the encoder-only one, both splits
    assert claims.overhead_minutes(64) == pytest.approx(11 * 0.25 + 2 * 64 * (2 * 0.6 + 0.15) / 60)
    budgets = claims.plan_budgets(60, 3, 64)
    assert budgets == {"gan": 7.1, "encoder": 3.5, "unet": 3.5}
    assert 55 <= claims.estimated_minutes(budgets, 3, 64) <= 60
    args = claims.parse_args([])
    assert (args.labels, args.seeds, args.limit, args.methods) == ([8, 32, 128], [0], 64, ["semgan", "unet"])
    assert claims.resolve_budgets(claims.parse_args(["--no-warmup"])) == budgets
    with_warmup = claims.resolve_budgets(args)  # the warm-up's minutes come out of the hour
    assert with_warmup == claims.plan_budgets(60 - claims.WARMUP_MIN, 3, 64)
    assert claims.estimated_minutes(with_warmup, 3, 64) + claims.WARMUP_MIN <= 60


def test_budget_minutes_scale_the_per_run_budgets():
    base = claims.plan_budgets(60, 3, 64)
    double = claims.plan_budgets(120, 3, 64)
    assert all(double[k] > 2 * base[k] for k in base)  # the overhead is fixed, the rest doubles
    assert claims.estimated_minutes(double, 3, 64) <= 120
    # three seeds in three hours: the same budget per run as one seed in one hour
    assert claims.resolve_budgets(claims.parse_args(["--seeds", "0,1,2", "--budget-minutes", "180",
                                                     "--no-warmup"])) == base
    three_seeds = claims.resolve_budgets(claims.parse_args(["--seeds", "0,1,2", "--budget-minutes", "150"]))
    assert all(three_seeds[k] < base[k] for k in base)
    assert claims.estimated_minutes(three_seeds, 9, 64) + claims.WARMUP_MIN <= 150
    with pytest.raises(ValueError, match="budget-minutes"):
        claims.plan_budgets(10, 3, 64)
    explicit = claims.resolve_budgets(claims.parse_args(["--gan-minutes", "2.5", "--no-warmup"]))
    assert explicit == dict(base, gan=2.5)
    quick = claims.parse_args(["--quick", "--labels", "8"])
    assert claims.resolve_budgets(quick) == claims.QUICK_BUDGETS and quick.limit == claims.QUICK_LIMIT == 4


# --------------------------------------------------------------------------- aggregation

def record(method, labels, seed, test=None, ood=None, status="ok", encoder=None):
    """A run record; SemanticGAN's optimised column gets test / ood, its encoder-only column
    `encoder` = (test, ood) when given."""
    def splits(t, o):
        return {split: {"miou": miou, "pixel_accuracy": 0.5 + miou / 2, "mdice": miou, "iou": {}, "num_images": 64}
                for split, miou in (("test", t), ("test_ood", o)) if miou is not None}
    main = splits(test, ood)
    columns = ({"semgan_optimised": main} | ({"semgan_encoder": splits(*encoder)} if encoder else {})
               if method == "semgan" else {"unet": main})
    return {"method": method, "labels": labels, "seed": seed, "status": status,
            "failure": {"step": "eval_test_ood", "returncode": 1, "log": "x.log"} if status != "ok" else None,
            "train": {"train": {"iterations": 100, "iterations_configured": 3000}}, "train_minutes": 1.0,
            "splits": main, "columns": columns,
            "stage1": {"step": 100, "oracle_agreement_ema": 0.41, "oracle_ofd_ema": 0.3} if method == "semgan" else None}


def test_summary_mean_std_and_markdown_table():
    records = [record("semgan", 8, s, t, o, encoder=(t - 0.1, o + 0.1))
               for s, t, o in ((0, 0.4, 0.30), (1, 0.5, 0.35), (2, 0.6, 0.40))]
    records += [record("unet", 8, 0, 0.45, 0.2), record("unet", 8, 1, 0.55, 0.1),
                record("unet", 8, 2, 0.65, None, status="failed")]
    rows = claims.summarize(records)
    sg = claims.lookup(rows, 8, "semgan_optimised", "test")
    assert sg["n"] == 3 and sg["seeds"] == [0, 1, 2]
    assert sg["miou"]["mean"] == pytest.approx(0.5) and sg["miou"]["std"] == pytest.approx(0.1)  # sample std
    un_ood = claims.lookup(rows, 8, "unet", "test_ood")
    assert un_ood["n"] == 2 and un_ood["miou"]["mean"] == pytest.approx(0.15)
    assert claims.fmt_stat(sg, seeds=3) == "0.500 ± 0.100"
    assert claims.fmt_stat(un_ood, seeds=3) == "0.150 ± 0.071 (n=2)"
    assert claims.fmt_stat(None) == "–"
    assert claims.delta(rows, 8, "test") == pytest.approx(0.5 - 0.55)
    assert claims.delta(rows, 8, "test_ood") == pytest.approx(0.35 - 0.15)
    assert claims.delta(rows, 8, "test", column="semgan_encoder") == pytest.approx(0.4 - 0.55)
    flat = claims.flat_rows(records)  # claims.json's "rows": one per (column, labels, seed, split)
    assert len(flat) == 6 + 6 + 5 and {r["method"] for r in flat} == {"unet", "semgan_encoder", "semgan_optimised"}
    one_row = [r for r in flat if (r["method"], r["seed"], r["split"]) == ("semgan_encoder", 1, "test_ood")]
    assert len(one_row) == 1 and one_row[0]["labels"] == 8 and one_row[0]["miou"] == pytest.approx(0.45)
    assert all(set(r) == {"method", "labels", "seed", "split", "miou"} for r in flat)

    settings = {"labels": [8, 32], "seeds": [0, 1, 2], "limit": 64, "budgets": {"gan": 8, "encoder": 4, "unet": 4}}
    md = claims.markdown(records, rows, settings)
    # columns: U-Net | E(x) | optimised | optimised, Dr | Δ E(x) | Δ optimised | Δ optimised, Dr
    assert "| 8 | 0.550 ± 0.100 | 0.400 ± 0.100 | 0.500 ± 0.100 | – | -0.150 | -0.050 | – |" in md
    assert "| 8 | 0.150 ± 0.071 (n=2) | 0.450 ± 0.050 | 0.350 ± 0.050 | – | +0.300 | +0.200 | – |" in md
    assert "| 32 | – | – | – | – | – | – | – |" in md
    assert "fewest labels (8), in-domain: SemanticGAN (better column) − U-Net = -0.050: target ≥ 0 missed" in md
    assert "out of domain, 8 labels: SemanticGAN (better column) − U-Net = +0.300: target ≥ +0.10 met" in md
    assert "optimisation − encoder only, 8 labels, `test`: +0.100: target ≥ 0 met" in md
    assert "optimisation − encoder only, 8 labels, `test_ood`: -0.100: target ≥ 0 missed" in md
    assert "| SemanticGAN | 8 | 0 | ok | train 100 / 3000 | 1.0 | 0.410 | 0.300 |" in md
    assert "## Failures" in md and "step `eval_test_ood` exited 1" in md

    one = claims.summarize([record("semgan", 8, 0, 0.42, 0.3)])
    assert claims.fmt_stat(claims.lookup(one, 8, "semgan_optimised", "test")) == "0.420"  # one seed: no ±
    legacy = dict(record("semgan", 8, 0, 0.42, 0.3))
    del legacy["columns"]  # a record written before the columns: its splits are the optimised column
    assert claims.summarize([legacy]) == one


# --------------------------------------------------------------------------- the plot

def test_plot_writes_a_png_of_the_requested_size(tmp_path):
    series = [{"label": "a", "x": [8, 32, 128], "y": [0.3, 0.5, 0.6], "err": [0.05, None, 0.02],
               "color": (31, 119, 180), "marker": "circle"},
              {"label": "b", "x": [8, 32, 128], "y": [0.2, 0.3, 0.35], "color": (214, 39, 40), "dashed": True,
               "marker": "square"}]
    path = tmp_path / "plot.png"
    claims.plot_lines(path, series, title="t", xlabel="labels", ylabel="mIoU", size=(640, 400))
    img = Image.open(path)
    assert img.format == "PNG" and img.size == (640, 400)
    px = np.asarray(img.convert("RGB")).astype(int)
    assert (px.sum(-1) < 3 * 250).mean() > 0.01  # axes, text, lines: not a blank image
    for color in ((31, 119, 180), (214, 39, 40)):  # both lines drawn in their colours
        assert (np.abs(px - np.array(color)).sum(-1) < 30).sum() > 50

    empty = tmp_path / "empty.png"
    claims.plot_claims(empty, [], [8, 32, 128])
    assert Image.open(empty).size == (800, 500)


# --------------------------------------------------------------------------- the sweep, with a stand-in CLI

class FakeSemgan:
    """Stands in for `semgan`: training writes checkpoints/<step> and config.json, evaluation its
    JSON; `fail` holds (run-dir name, command) pairs that exit 1 with an error in the log."""

    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def __call__(self, argv, log_path, timeout_s):
        self.calls.append(list(argv))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        run = log_path.parent.parent.name
        if (run, argv[0], argv[argv.index("--split") + 1] if "--split" in argv else None) in self.fail:
            log_path.write_text("loading...\nerror: something broke\n")
            return 1
        if argv[0].startswith("train-"):
            workdir = Path(argv[argv.index("--workdir") + 1])
            (workdir / "checkpoints" / "120").mkdir(parents=True, exist_ok=True)
            (workdir / "config.json").write_text(json.dumps({"train": {"iterations": 1500}}))
        else:
            out = Path(argv[argv.index("--out") + 1])
            k = int(argv[argv.index("--limit") + 1])
            # SemanticGAN's columns: optimised 0.6, encoder only (--step 0) 0.55, Dr perceptual 0.58
            miou = (0.5 if argv[0] != "evaluate" else 0.55 if "--step" in argv
                    else 0.58 if "--perceptual-net" in argv else 0.6)
            out.write_text(json.dumps({"num_images": k, "class_names": ["bg", "fg"],
                                       "dataset": {"iou": [0.9, miou], "miou": miou, "mdice": miou + 0.1,
                                                   "pixel_accuracy": 0.9},
                                       "per_image": {"miou": miou}, "seconds": 1.0}))
        return 0


def sweep_args(out):
    return ["--labels", "8,32", "--limit", "4", "--gan-minutes", "1", "--encoder-minutes", "0.5",
            "--unet-minutes", "0.5", "--no-warmup", "--out", str(out)]


def test_sweep_skips_done_runs_resumes_cut_off_ones_and_records_failures(tmp_path, capsys):
    out = tmp_path / "claims"
    fake = FakeSemgan(fail={("labels32_seed0", "evaluate", "test_ood")})
    assert claims.main(sweep_args(out), runner=fake) == 1  # one run failed, the sweep went on
    # SemanticGAN: 2 trainings + 3 columns x 2 splits; U-Net 1 + 2; labels32's stops at its 4th
    assert len(fake.calls) == (8 + 3) + (4 + 3)
    assert not any("--resume" in c for c in fake.calls)
    result = json.loads((out / "claims.json").read_text())
    runs = {(r["method"], r["labels"]): r for r in result["runs"]}
    assert len(runs) == 4
    bad = runs[("semgan", 32)]
    assert bad["status"] == "failed" and bad["failure"]["step"] == "eval_test_ood"
    assert bad["failure"]["returncode"] == 1 and "error: something broke" in bad["failure"]["log_tail"]
    assert set(bad["splits"]) == {"test"}  # what it did score is kept
    ok = runs[("semgan", 8)]
    assert ok["status"] == "ok" and ok["splits"]["test_ood"]["miou"] == 0.6
    assert {c: v["test"]["miou"] for c, v in ok["columns"].items()} == {
        "semgan_optimised": 0.6, "semgan_encoder": 0.55, "semgan_optimised_dr": 0.58}
    assert ok["train"]["stage1"] == {"iterations": 120, "iterations_configured": 1500,
                                     "minutes": ok["train"]["stage1"]["minutes"], "budget_minutes": 1.0}
    assert runs[("unet", 32)]["splits"]["test"]["iou"] == {"bg": 0.9, "fg": 0.5}
    assert result["settings"]["budgets"] == {"gan": 1.0, "encoder": 0.5, "unet": 0.5}
    md = (out / "claims.md").read_text()
    assert "| 8 | 0.500 | 0.550 | 0.600 | 0.580 | +0.050 | +0.100 | +0.080 |" in md
    assert "| 32 | 0.500 | – | 0.600 | – | – | +0.100 | – |" in md and "## Failures" in md  # test
    assert "| 32 | 0.500 | – | – | – | – | – | – |" in md  # test_ood: failed before any column scored it
    flat = result["rows"]
    assert len(flat) == 2 * 2 + 2 * 2 + 1 and {r["method"] for r in flat} == set(claims.FLAT_COLUMNS)
    assert len(result["rows_dr_perceptual"]) == 2
    assert Image.open(out / "claims.png").size == (800, 500)
    printed = capsys.readouterr().out
    assert "[1/4" in printed and "FAILED (exit 1)" in printed and "stage1 done in" in printed

    # second invocation: only the failed step runs again
    fake2 = FakeSemgan()
    assert claims.main(sweep_args(out), runner=fake2) == 0
    assert [c[:1] + c[c.index("--split") + 1:c.index("--split") + 2] for c in fake2.calls] == [
        ["evaluate", "test_ood"], ["evaluate", "test"], ["evaluate", "test_ood"], ["evaluate", "test"],
        ["evaluate", "test_ood"]]
    assert ["--step", "0"] == fake2.calls[1][fake2.calls[1].index("--step"):][:2]
    assert "dr" == fake2.calls[3][fake2.calls[3].index("--perceptual-net") + 1]
    assert "labels32_seed0" in fake2.calls[0][fake2.calls[0].index("--checkpoint") + 1]
    assert all(r["status"] == "ok" for r in json.loads((out / "claims.json").read_text())["runs"])

    # a run cut off in stage 1 (checkpoints, no marker): stage 1 resumes, everything after it reruns
    run = out / "semgan" / "labels8_seed0"
    (run / "result.json").unlink()
    (run / "stage1.json").unlink()
    fake3 = FakeSemgan()
    assert claims.main(sweep_args(out), runner=fake3) == 0
    assert [c[0] for c in fake3.calls] == ["train-gan", "train-encoder"] + ["evaluate"] * 6
    for c in fake3.calls[:2]:
        assert c[c.index("--workdir") + 2] == "--resume"
    assert (run / "stage2.json").is_file() and (run / "eval_test_ood.json").is_file()


def test_warmup_compiles_every_command_once_before_the_sweep(tmp_path):
    """The warm-up runs each training command for the few iterations that reach all its compiled
    variants, without a time limit, and each evaluation at the sweep's batch sizes, in OUT/warmup,
    before any budgeted run; once done it is not repeated."""
    out = tmp_path / "claims"
    args = [a for a in sweep_args(out) if a != "--no-warmup"]
    fake = FakeSemgan()
    assert claims.main(args, runner=fake) == 0
    warm, sweep = fake.calls[:7], fake.calls[7:]
    assert len(sweep) == 2 * (8 + 3) and all(str(out / "warmup") not in " ".join(c) for c in sweep)
    assert [c[0] for c in warm] == ["train-gan", "train-encoder", "evaluate", "evaluate", "evaluate",
                                    "train-supervised", "evaluate-supervised"]
    assert all(str(out / "warmup" / m / "labels8_seed0") in " ".join(c)
               for c, m in zip(warm, ["semgan"] * 5 + ["unet"] * 2))
    iterations = {c[0]: c[-1] for c in warm if c[0].startswith("train-")}
    assert iterations == {"train-gan": "--config.train.iterations=5", "train-encoder": "--config.train.iterations=2",
                          "train-supervised": "--config.train.iterations=2"}
    assert all("--config.log.max_minutes=0" in c for c in warm if c[0].startswith("train-"))
    batches = {(c[0], c[c.index("--batch") + 1]) for c in warm + sweep if c[0].startswith("evaluate")}
    assert batches == {("evaluate", "4"), ("evaluate-supervised", "4")}  # the same programs as the sweep's
    (out / "semgan" / "labels8_seed0" / "result.json").unlink()
    (out / "semgan" / "labels8_seed0" / "eval_test_ood.json").unlink()
    fake2 = FakeSemgan()
    assert claims.main(args, runner=fake2) == 0
    assert [c[0] for c in fake2.calls] == ["evaluate"]  # the warm-up is done already; evaluations
    # do not invalidate each other (only a training step invalidates what comes after it)


# --------------------------------------------------------------------------- the command lines

def test_every_command_parses_and_its_overrides_apply(tmp_path):
    budgets = {"gan": 7.5, "encoder": 3.5, "unet": 4.0}
    runs = claims.plan_runs(tmp_path, [8, 128], [0, 3], claims.METHODS, budgets, 16)
    assert len(runs) == 8
    (runs[0].dir / "stage1" / "checkpoints" / "10").mkdir(parents=True)  # one cut-off run: --resume
    seen = set()
    for run in runs:
        for step in run.steps:
            argv = step.command()
            args, config = check_cli(argv, f"{run.title} {step.name}")
            seen.add(argv[0])
            if step.is_training:
                assert args.workdir == str(step.workdir) and args.resume == ("--resume" in argv)
                assert config.data.num_labeled == run.labels and config.data.label_seed == run.seed
                assert config.seed == run.seed
                assert config.log.max_minutes == step.budget == budgets[{"stage1": "gan", "stage2": "encoder",
                                                                         "train": "unet"}[step.name]]
                if step.name == "stage1":
                    assert config.data.name == "synthetic" and config.model.size == 32
                if step.name == "stage2":
                    assert config.stage1 == str(run.dir / "stage1")
                if step.name == "train":
                    assert config.data.name == "synthetic" and config.model.base_width == 16
            else:
                assert config is None and args.limit == 16 and args.split == step.split
                assert args.out == str(step.done)
                assert (args.checkpoint if argv[0] == "evaluate" else args.workdir) == str(
                    run.dir / ("stage2" if run.method == "semgan" else "train"))
    assert "--resume" in runs[0].steps[0].command() and "--resume" not in runs[2].steps[0].command()
    assert seen == {"train-gan", "train-encoder", "evaluate", "train-supervised", "evaluate-supervised"}


def test_both_evaluations_score_the_same_first_images_in_the_same_order():
    """`semgan evaluate` reads `segment._split_examples` (stage 1's data config); `semgan
    evaluate-supervised` reads `make_eval_batches` over `load_split` with the U-Net's data
    config, as `supervised.evaluate` does. The first K must be the same images and masks."""
    from semgan_jax import segment
    from semgan_jax.config import load_config_file
    from semgan_jax.data.datasets import load_split
    from semgan_jax.data.pipeline import make_eval_batches

    gan_data = load_config_file(ROOT / claims.CONFIGS["gan"]).data
    d = load_config_file(ROOT / claims.CONFIGS["unet"]).data
    k = 40
    for split in claims.SPLITS:
        inverter = SimpleNamespace(stage1=SimpleNamespace(data=gan_data), channels=3)
        _, _, _, load = segment._split_examples(inverter, None, split, None)
        semgan = [load(i)[1:] for i in range(k)]
        source = load_split(d.name, split, data_dir=d.data_dir or None, resolution=d.resolution)
        batches = list(itertools.islice(make_eval_batches(source, 32, 6), 2))
        unet = {key: np.concatenate([b[key] for b in batches])[:k] for key in ("image", "mask")}
        np.testing.assert_array_equal(np.stack([m for _, m in semgan]), unet["mask"])
        np.testing.assert_allclose(np.stack([x for x, _ in semgan]), unet["image"], atol=1e-6)
        assert len({m.tobytes() for _, m in semgan}) == k  # distinct images, not one repeated


def test_budgets_are_replanned_from_the_measured_warmup(tmp_path, monkeypatch):
    """--budget-minutes is the sweep's whole wall time: the minutes the warm-up actually took come
    off it before the runs' budgets are set (a slow warm-up leaves less per run, not an overrun)."""
    now = [0.0]
    monkeypatch.setattr(claims.time, "perf_counter", lambda: now[0])
    fake = FakeSemgan()

    def slow_warmup(argv, log_path, timeout_s):
        if "warmup" in " ".join(argv):
            now[0] += 5 * 60.0  # seven warm-up commands, 35 minutes
        return fake(argv, log_path, timeout_s)

    out = tmp_path / "claims"
    args = ["--labels", "8,32", "--limit", "4", "--budget-minutes", "60", "--out", str(out)]
    assert claims.main(args, runner=slow_warmup) == 0
    planned_up_front = claims.plan_budgets(60 - claims.WARMUP_MIN, 2, 4)
    replanned = claims.plan_budgets(60 - 35, 2, 4)
    assert replanned["gan"] < planned_up_front["gan"]
    sweep = [c for c in fake.calls if "warmup" not in " ".join(c)]
    limits = {(c[0], a) for c in sweep for a in c if a.startswith("--config.log.max_minutes=")}
    assert limits == {(cmd, f"--config.log.max_minutes={replanned[k]:g}")
                      for cmd, k in (("train-gan", "gan"), ("train-encoder", "encoder"), ("train-supervised", "unet"))}
    settings = json.loads((out / "claims.json").read_text())["settings"]
    assert settings["budgets"] == replanned and settings["warmup_minutes"] == 35.0
    assert "planned after a 35-min compile warm-up" in (out / "claims.md").read_text()


def test_comparison_grid_puts_both_methods_beside_the_truth(tmp_path):
    """input | U-Net | SemanticGAN E(x) | SemanticGAN optimised | truth, cut from the evaluate
    commands' grids (same layout: viz.grid, 3 columns, 4 per row, upscaled to 128 px)."""
    from semgan_jax import viz

    rng = np.random.default_rng(0)
    res, n = 16, 6
    inputs, truth = (rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8) for _ in range(2))
    preds = {name: rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8) for name in ("unet", "enc", "opt")}
    sg, un = claims.run_dir(tmp_path, "semgan", 8, 0), claims.run_dir(tmp_path, "unet", 8, 0)
    (sg / "stage1").mkdir(parents=True)
    (sg / "stage1" / "config.json").write_text(json.dumps({"model": {"size": res}}))
    un.mkdir(parents=True)
    for path, pred in ((un / "eval_test.png", preds["unet"]), (sg / "eval_test_encoder.png", preds["enc"]),
                       (sg / "eval_test.png", preds["opt"])):
        viz.save_png(path, viz.grid([inputs, pred, truth], ncol=4), scale=128 // res)
    out = tmp_path / "grid.png"
    assert not claims.comparison_grid(tmp_path, 8, 0, "test_ood", out)  # no grids for that split
    assert claims.comparison_grid(tmp_path, 8, 0, "test", out, n=4)
    cols = viz.ungrid(np.asarray(Image.open(out).convert("RGB")), 4, n_columns=5, size=(res, res), ncol=2,
                      scale=128 // res)
    for got, want in zip(cols, (inputs, preds["unet"], preds["enc"], preds["opt"], truth)):
        np.testing.assert_array_equal(got, want[:4])
    viz.save_png(sg / "eval_test.png", viz.grid([inputs[::-1], preds["opt"], truth], ncol=4), scale=128 // res)
    with pytest.raises(ValueError, match="different input images"):
        claims.comparison_grid(tmp_path, 8, 0, "test", out, n=4)
