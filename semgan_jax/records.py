"""Per-image results of `semgan evaluate`, appended as JSON lines while they are computed, so an
interrupted run keeps what it finished and `--resume` continues it.

File layout: one header line {"settings": {...}} (what the results depend on: checkpoint, data,
inversion settings, batch and seed), then one line per image
{"index": i, "name": str, "confusion": (K, K) ints, rows = target, cols = prediction}.
A line cut by a kill (no trailing newline, or not JSON) is dropped on resume; for an index written
twice the last line counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class ImageRecords:
    """The records file `path` for a run with `settings` (a JSON-able dict).

    resume=False starts the file afresh; resume=True reads the images it holds into `done`
    ({index: (K, K) int64 confusion matrix}) and appends after them, or starts afresh if there is
    no file. ValueError when the file was written with other settings (the results would mix)."""

    def __init__(self, path: str | Path, settings: dict, resume: bool):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))
        self.done: dict[int, np.ndarray] = {}
        if resume and self.path.is_file():
            keep = self._read()
            with open(self.path, "r+b") as f:  # drop a cut last line before appending
                f.truncate(keep)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"settings": self.settings}) + "\n")
        self._file = open(self.path, "a", encoding="utf-8")

    def _read(self) -> int:
        """Fills `done`; returns the byte length of the complete lines."""
        data = self.path.read_bytes()
        lines = data.split(b"\n")[:-1]  # the part after the last newline is incomplete
        keep = sum(len(line) + 1 for line in lines)
        if not lines:
            self.path.write_text(json.dumps({"settings": self.settings}) + "\n")
            return self.path.stat().st_size
        try:
            saved = json.loads(lines[0])["settings"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{self.path}: first line is not the settings header of a `semgan evaluate` "
                             "records file; remove the file or drop --resume") from None
        if saved != self.settings:
            diff = sorted(k for k in saved.keys() | self.settings.keys() if saved.get(k) != self.settings.get(k))
            detail = "; ".join(f"{k}: {saved.get(k)!r} then, {self.settings.get(k)!r} now" for k in diff)
            raise ValueError(f"{self.path} holds results of other settings ({detail}); rerun those settings, or "
                             "drop --resume to start afresh")
        for line in lines[1:]:
            try:
                row = json.loads(line)
                self.done[int(row["index"])] = np.asarray(row["confusion"], np.int64)
            except (ValueError, KeyError, TypeError):
                continue
        return keep

    def append(self, indices, names, confusions) -> None:
        """Record images `indices` (their `names` and (N, K, K) `confusions`), flushed to the file."""
        for i, name, conf in zip(indices, names, confusions):
            self._file.write(json.dumps({"index": int(i), "name": str(name), "confusion": np.asarray(conf).tolist()})
                             + "\n")
            self.done[int(i)] = np.asarray(conf, np.int64)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
