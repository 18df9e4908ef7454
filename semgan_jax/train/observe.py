"""What a person watches during training: a progress bar with losses and images/s, metrics as
JSON lines (WORKDIR/metrics.jsonl), and TensorBoard events when tensorboardX is installed.
Only process 0 writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
from tqdm.auto import tqdm


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` so that a reader (or a killed writer) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_config(workdir: Path, config) -> None:
    """WORKDIR/config.json (process 0, atomic): what `--resume` without `--config` reads."""
    if jax.process_index() == 0:
        write_text_atomic(Path(workdir) / "config.json", config.to_json_best_effort(indent=2))


class MetricsLogger:
    """Append metrics rows; show a tqdm bar from `start` to `total` steps."""

    def __init__(self, workdir: str | Path, start: int, total: int, images_per_step: int,
                 show: tuple[str, ...] = ()):
        self.main = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        if self.main:
            self._forget_after(start)
        self.images_per_step = images_per_step
        self.show = show
        self.bar = tqdm(total=total, initial=start, disable=not self.main, dynamic_ncols=True)
        self._last = (time.perf_counter(), start)
        self.tb = None
        if self.main:
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(str(Path(workdir) / "tb"))
            except ImportError:
                pass

    def _forget_after(self, step: int) -> None:
        """Drop rows past `step` (logged after the checkpoint a resumed run starts from, and
        about to be logged again) and a row cut short by a killed process, atomically."""
        if not self.path.is_file():
            return

        def kept(line):
            try:
                return json.loads(line)["step"] <= step
            except (json.JSONDecodeError, KeyError, TypeError):
                return False

        lines = self.path.read_text().splitlines(keepends=True)
        keep = [line for line in lines if line.endswith("\n") and kept(line)]
        if len(keep) < len(lines):
            write_text_atomic(self.path, "".join(keep))

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def log(self, step: int, metrics: dict) -> dict:
        """Record host-side floats for `step`, adding images_per_s since the last log call."""
        now = time.perf_counter()
        t0, s0 = self._last
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        if step > s0:
            row["images_per_s"] = (step - s0) * self.images_per_step / (now - t0)
        self._last = (now, step)
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if self.tb is not None:
                for k, v in row.items():
                    if k != "step":
                        self.tb.add_scalar(k, v, step)
            self.bar.set_postfix({k: f"{row[k]:.3g}" for k in (*self.show, "images_per_s") if k in row})
        return row

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
