"""Why does test-time optimisation change the encoder's masks? `semgan evaluate` of one stage-2
checkpoint under inversion settings that each change one thing against the reference's
inference.py defaults (100 Adam steps, lr 0.1, lambda_mse 0.1, lambda_encoder 1e-3, noise maps
optimised), on the first `--limit` images of `test` and `test_ood`.

    python experiments/inversion_study.py --checkpoint runs/demo/stage2 --out runs/inversion
    python experiments/inversion_study.py --checkpoint ... --out ... --settings encoder_only,reference

Writes OUT/NAME_SPLIT.json (the `semgan evaluate` output) and OUT/inversion.md (mIoU table).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (what it changes, `semgan evaluate` arguments). LPIPS is off in every setting (its
# weights cannot be downloaded here), so 'reference' is the reference's loss less LPIPS; the
# stage-1 Dm's verdict is off (--lambda-dm 0) unless a setting names its weight (dm_*: a run whose
# Dm trained with train.dm_mismatch, e.g. experiments/synthetic_32_aligned.py).
SETTINGS = {
    "encoder_only": ("E(x) alone, no optimisation", ["--step", "0"]),
    "reference": ("the reference's settings (without LPIPS)", ["--lambda-encoder", "0.001"]),
    "no_noises": ("noise maps not optimised", ["--lambda-encoder", "0.001", "--no-noises"]),
    "lr_0.01": ("lr 0.01", ["--lambda-encoder", "0.001", "--lr", "0.01"]),
    "enc_0.1": ("lambda_encoder 0.1", ["--lambda-encoder", "0.1"]),
    "enc_1": ("lambda_encoder 1", ["--lambda-encoder", "1"]),
    "enc_10": ("lambda_encoder 10", ["--lambda-encoder", "10"]),
    "enc_1_lr_0.01": ("lambda_encoder 1, lr 0.01", ["--lambda-encoder", "1", "--lr", "0.01"]),
    "steps_300_enc_1": ("300 steps, lambda_encoder 1", ["--lambda-encoder", "1", "--step", "300"]),
    **{f"dm_{w}": (f"lambda_encoder 10, the stage-1 Dm's verdict at weight {w}",
                   ["--lambda-encoder", "10", "--lambda-dm", w]) for w in ("0.3", "1", "3", "10")},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train-encoder workdir")
    p.add_argument("--out", required=True)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--splits", default="test,test_ood")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names, splits = args.settings.split(","), args.splits.split(",")
    for name in names:
        for split in splits:
            result = out / f"{name}_{split}.json"
            if result.is_file():
                continue
            cmd = [sys.executable, "-m", "semgan_jax.cli", "evaluate", "--checkpoint", args.checkpoint, "--split",
                   split, "--limit", str(args.limit), "--batch", str(args.batch), "--lpips", "off",
                   "--no-progress", "--out", str(result), *SETTINGS[name][1]]
            if "--lambda-dm" not in cmd:
                cmd += ["--lambda-dm", "0"]
            print(f"[inversion] {name} {split}", flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    lines = ["| setting | what | " + " | ".join(f"mIoU {s}" for s in splits) + " |",
             "|---|---|" + "---|" * len(splits)]
    for name in names:
        cells = []
        for split in splits:
            f = out / f"{name}_{split}.json"
            cells.append(f"{json.loads(f.read_text())['dataset']['miou']:.3f}" if f.is_file() else "–")
        lines.append(f"| {name} | {SETTINGS[name][0]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "inversion.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
