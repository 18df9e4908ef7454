"""The benchmark scripts' plumbing: timing statistics, the amortised iteration, the comparison
table and plot, the profile summary, and one real (tiny) run of ours.py. Nothing here asserts a
speed."""

import gzip
import importlib
import json
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
common = importlib.import_module("common")
compare = importlib.import_module("compare")


def test_time_calls_reports_median_and_spread():
    calls = []
    stats = common.time_calls(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and len(stats["values"]) == 5
    assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]


def test_amortised_iteration_follows_the_lazy_schedule():
    ms = {"plain": 100.0, "r1": 260.0, "path": 140.0}
    assert common.amortised_iteration(ms, 16, 4) == pytest.approx(100 + 160 / 16 + 40 / 4)


def test_cpu_peak_is_positive_and_gpu_peaks_are_known():
    assert common.peak_flops("cpu", "cpu", "float32") > 1e9
    assert common.peak_flops("NVIDIA H100 80GB HBM3", "gpu", "bfloat16") == pytest.approx(989.4e12)
    assert np.isnan(common.peak_flops("Mystery", "gpu", "float32"))


def test_cpu_peak_is_the_best_measured_so_far(monkeypatch):
    fresh = common.cpu_peak_flops("float32")
    # an earlier, faster sample (here an impossible 1 PFLOP/s) is kept over a slower fresh one
    monkeypatch.setitem(common._CPU_PEAK, "float32", 1e15)
    assert common.cpu_peak_flops("float32") == 1e15
    monkeypatch.setitem(common._CPU_PEAK, "float32", 1.0)
    assert common.cpu_peak_flops("float32") >= fresh / 2  # a slower earlier one is replaced


def _row(impl, what, batch, ips, **kw):
    r = {"impl": impl, "what": what, "size": 64, "channel_multiplier": 2, "batch": batch, "dtype": "float32",
         "ms_iteration": 1e3 * batch / ips, "spread_ms": "1-2", "images_per_s": ips, "compile_s": 10.0,
         "gflop_per_iteration": 50.0, "mfu_percent": 20.0, "peak_memory_mib": 100.0, "device": "cpu (cpu)",
         "group": "main"}
    r.update(kw)
    return r


def test_compare_pairs_rows_prints_ratios_and_plots(tmp_path):
    rows = [_row("ours", "stage1", 8, 1.0), _row("official", "stage1", 8, 0.25),
            _row("ours", "stage1", 8, 2.0, dtype="bfloat16"),
            _row("ours", "segment", 64, 0.5), _row("official", "segment", 1, 0.02),
            _row("ours", "stage1", 4, 0.8, group=compare.SWEEP), _row("official", "stage1", 4, 0.2, group=compare.SWEEP),
            {"impl": "official", "what": "encoder", "size": 64, "batch": 8, "error": "boom", "command": "x"},
            _row("ours", "stage1", 16, float("nan"), size=256, group="compile", compile_only=True, compile_s=160.0,
                 compile_s_variants={"plain": 30.0, "r1": 40.0, "path": 40.0, "both": 50.0})]
    pairs = compare.ratio_rows(rows)
    ratios = {(p["ours"]["what"], p["ours"]["batch"], p["ours"]["dtype"]): p["ratio"] for p in pairs}
    assert ratios[("stage1", 8, "float32")] == pytest.approx(4.0)
    assert ratios[("stage1", 8, "bfloat16")] is None  # no official bf16 run to compare with
    assert ratios[("segment", 64, "float32")] == pytest.approx(25.0)  # batched vs one at a time
    table = compare.markdown(rows, pairs, "cpu (cpu)")
    assert "**4.00x**" in table and "**25.00x**" in table and "(official batch 1)" in table
    assert "Failed: official encoder" in table
    assert len(pairs) == 4  # the compile-only row is reported apart, not paired
    assert "stage1 at 256 px, batch 16, float32: plain 30.0 s, r1 40.0 s, path 40.0 s, both 50.0 s; 160.0 s" in table
    compare.plot_sweep(tmp_path / "sweep.png", rows)
    img = np.asarray(Image.open(tmp_path / "sweep.png").convert("RGB")).astype(int)
    for color in ((31, 119, 180), (214, 39, 40)):  # a line per implementation
        assert (np.abs(img - np.array(color)).sum(-1) < 30).sum() > 50


def test_profile_summary_groups_ops_by_kind(tmp_path):
    profile = importlib.import_module("profile_stage1")
    events = [{"ph": "X", "name": "ynn_fusion.3", "dur": 600.0}, {"ph": "X", "name": "ynn_fusion", "dur": 200.0},
              {"ph": "X", "name": "transpose_copy_fusion.1", "dur": 150.0}, {"ph": "X", "name": "add_fusion", "dur": 50.0},
              {"ph": "X", "name": "PjitFunction(step)", "dur": 5000.0}, {"ph": "i", "name": "marker"}]
    path = tmp_path / "t.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    s = profile.summarise(str(path), top=5)
    assert s["total_op_ms"] == pytest.approx(1.0)
    assert s["ops"][0] == {"op": "ynn_fusion", "ms": 0.8, "percent": pytest.approx(80.0)}
    assert s["kinds"]["convolution / matmul"] == pytest.approx(80.0)
    assert s["kinds"]["transpose / copy"] == pytest.approx(15.0)


@pytest.mark.slow  # compiles a stage-2 step (about 2 minutes on 2 cores)
def test_ours_times_a_tiny_encoder_iteration(tmp_path):
    ours = importlib.import_module("ours")
    out = tmp_path / "rows.json"
    r = ours.main(["--what", "encoder", "--size", "16", "--width", "narrow", "--batch", "2", "--no-lpips",
                   "--repeats", "2", "--warmup", "0", "--json", str(out)])
    assert r["images_per_s"] > 0 and r["gflop_per_iteration"] > 0 and r["compile_s"] > 0
    assert r["params"]["e"] > 0 and json.loads(out.read_text())[-1]["what"] == "encoder"


@pytest.mark.slow  # lowers the stage-2 step three times (about a minute on 2 cores)
def test_ours_flops_only_counts_the_encoder_step_without_compiling():
    """--flops-only lowers the stage-2 step: the count is affine in the batch (the same work per
    image on top of the per-step work) and stage 1 is pointed to seg_branch.py's count."""
    ours = importlib.import_module("ours")
    args = ["--what", "encoder", "--size", "16", "--width", "narrow", "--no-lpips", "--flops-only"]
    two, four, six = (ours.main([*args, "--batch", str(b)])["gflop_per_iteration"] for b in (2, 4, 6))
    assert 0 < two < four < six and (six - four) == pytest.approx(four - two, rel=1e-3)
    with pytest.raises(SystemExit, match="encoder only"):
        ours.main(["--what", "stage1", "--flops-only"])


@pytest.mark.slow  # compiles four stage-1 programs (about 2 minutes on 2 cores)
def test_ours_compile_only_compiles_the_four_stage1_variants():
    ours = importlib.import_module("ours")
    r = ours.main(["--what", "stage1", "--size", "16", "--width", "narrow", "--batch", "2", "--compile-only"])
    assert list(r["compile_s_variants"]) == ["plain", "r1", "path", "both"]
    assert r["compile_s"] == pytest.approx(sum(r["compile_s_variants"].values()))
    assert r["compile_only"] and r["gflop_per_iteration"] > 0 and np.isnan(r["ms_iteration"])


def test_ours_compile_only_segment_reports_the_loop_and_its_memory():
    ours = importlib.import_module("ours")
    r = ours.main(["--what", "segment", "--size", "16", "--width", "narrow", "--batch", "4", "--no-lpips",
                   "--steps-timed", "2", "--compile-only"])
    assert r["compile_only"] and r["compile_s_variants"] == {"loop": r["compile_s"]} and r["compile_s"] > 0
    assert r["peak_memory_mib"] > 0 and np.isnan(r["ms_iteration"]) and r["steps_timed"] == 2
    assert "segment at 16 px, batch 4, float32: loop" in compare.markdown([r], [], "cpu")


def test_bf16_curves_summary_and_plot(tmp_path):
    curves = importlib.import_module("bf16_curves")
    assert curves.running_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    rows = [{"step": 10 * (i + 1), "d_img": 1.0 + i, "d_seg": 2.0, "g": float("nan") if i == 0 else 0.5,
             "skipped_updates": float(i > 2), "images_per_s": 10.0 + i} for i in range(8)]
    s = curves.summarise(rows)
    assert s["last_quarter_mean"]["d_img"] == pytest.approx(7.5)  # steps 70, 80
    assert s["non_finite"] == {"d_img": 0, "d_seg": 0, "g": 1}
    assert s["skipped_updates"] == 1.0 and s["images_per_s_median"] == 13.5 and s["logged_steps"] == 8
    from semgan_jax.plot import plot_lines
    plot_lines(tmp_path / "c.png", [{"label": "d_img fp32", "x": [10, 20, 30], "y": [1.0, 0.8, 0.9], "marker": None,
                                     "color": (0, 0, 255)}], log_x=False, x_ticks=[0, 15, 30], y_range=(0.0, 1.5),
               y_step=0.5)
    assert Image.open(tmp_path / "c.png").size == (800, 500)


def test_every_preset_runs_known_cases_and_each_sweep_has_both_sides():
    """Each preset case names a benchmark of the scripts (stage1, encoder, segment); every preset
    with a batch sweep sweeps ours and the official code over the same batches at one resolution
    (the plot's lines)."""
    ours = importlib.import_module("ours")  # official.py needs torch; both define the same three benchmarks
    for name, cases in compare.PRESETS.items():
        for c in cases:
            assert c["what"] in ours.BENCHES and set(c["impls"]) <= {"ours", "official"}, (name, c)
        sweep = [c for c in cases if c["group"] == compare.SWEEP]
        if sweep:
            assert len({c["size"] for c in sweep}) == 1 and len({c["batch"] for c in sweep}) >= 3, name
            assert all(set(c["impls"]) == {"ours", "official"} for c in sweep), name
    assert any(c["group"] == compare.SWEEP for c in compare.PRESETS["cpu-sweep"])


def test_scan_flops_counts_every_step_of_the_loop():
    """XLA's cost analysis counts a scan body once; scan_flops gives steps x the body's FLOPs
    plus what runs outside the loop (here: one 64^3 matmul per step, one more after it)."""
    import jax
    import jax.numpy as jnp

    ours = importlib.import_module("ours")
    matmul = 2 * 64 ** 3

    def program(steps):
        def f(x):
            y, _ = jax.lax.scan(lambda c, _: (jnp.tanh(c @ x), None), x, None, length=steps)
            return y @ x
        return jax.jit(f)

    x = jnp.ones((64, 64), jnp.float32)
    one_body = ours.compile_timed(program(7), x)[2]
    assert one_body < 3 * matmul  # the plain cost analysis: the body once, not 7 times
    assert ours.scan_flops(program, x, steps=7, loop_flops=one_body) == pytest.approx(8 * matmul, rel=0.05)


def test_compare_deadline_lists_the_cases_it_could_not_start(tmp_path):
    """With no time left nothing starts: the table names each skipped case and nothing failed."""
    assert compare.main(["--preset", "cpu", "--only", "ours", "--deadline", "0", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "table.md").read_text()
    skipped = table.split("Not run (deadline): ")[1].strip().split("; ")
    assert skipped[:2] == ["ours stage1 64 px batch 8", "ours stage1 64 px batch 8 bfloat16"]
    assert len(skipped) == sum("ours" in c["impls"] for c in compare.PRESETS["cpu"])
    assert json.loads((tmp_path / "results.json").read_text()) == []


def test_compare_reports_a_case_past_its_time_as_a_failed_row():
    args = compare.argparse.Namespace(channel_multiplier=2, repeats=1, official=None, device="cpu", tf32=False)
    r = compare.run_case("ours", compare.case("stage1", 16, 2), args, timeout=0.05)  # python starts slower
    assert r["error"].startswith("stopped after 0 s") and "ours.py --what stage1 --size 16" in r["command"]


def test_every_case_argv_parses_on_our_side_with_the_shared_flags():
    ours = importlib.import_module("ours")
    args = compare.argparse.Namespace(channel_multiplier=2, repeats=3, official="/x", device="cuda", tf32=True)
    for cases in compare.PRESETS.values():
        for c in cases:
            a = ours.build_parser().parse_args(compare.argv_for("ours", c, args)[2:])
            assert a.tf32 and a.what == c["what"] and a.batch == c["batch"] and a.size == c["size"]
            assert a.repeats == c["flags"].get("repeats", 3)  # a case's own --repeats wins
            official = compare.argv_for("official", c, args)
            assert official[official.index("--device") + 1] == "cuda" and "--tf32" in official


def _fake_ops(root, body):
    for op in importlib.import_module("official_code").CUDA_OPS:
        (root / op).parent.mkdir(parents=True, exist_ok=True)
        (root / op).write_text(body.format(name=(root / op).stem))


def test_official_cuda_ops_build_at_the_same_time(tmp_path):
    """Each fake op module writes its marker, then waits for every other op's: only a concurrent
    build finishes (one after the other, the first would time out and fail)."""
    oc = importlib.import_module("official_code")
    others = [str(tmp_path / (p.rsplit("/", 1)[1] + ".done")) for p in oc.CUDA_OPS]
    _fake_ops(tmp_path, "import pathlib, time\n"
                        f"pathlib.Path({str(tmp_path)!r}, '{{name}}.py.done').touch()\n"
                        "t = time.time()\n"
                        f"while not all(pathlib.Path(p).exists() for p in {others!r}):\n"
                        "    assert time.time() - t < 60, 'built alone'\n"
                        "    time.sleep(0.05)\n")
    assert oc.build_cuda_ops(tmp_path) > 0
    assert all(pathlib.Path(p).exists() for p in others)


def test_official_cuda_op_build_failure_names_the_op(tmp_path):
    oc = importlib.import_module("official_code")
    _fake_ops(tmp_path, "raise SystemExit('nvcc fatal : {name} broken' if '{name}' == 'fused_act' else 0)\n")
    with pytest.raises(RuntimeError, match=r"(?s)fused_act\.py: exit status 1.*nvcc fatal : fused_act broken") as e:
        oc.build_cuda_ops(tmp_path)
    assert "upfirdn2d" not in str(e.value)
