"""Checkpoints with orbax `CheckpointManager`: the train-state pytree plus the data iterators'
positions (JSON), written atomically (orbax writes a step into a temporary directory and renames
it when complete; leftovers of a killed write are ignored and cleaned up), the last `keep`
retained, restored onto the current mesh. A checkpoint that no longer reads (corrupt or
truncated files) is reported with a warning and the previous one is used; the bad one is moved
to WORKDIR/checkpoints.corrupt/ so that the step can be written again.

Multi-process: every process calls save/restore with the same arguments (orbax writes the
arrays collectively); the data positions are the same in every process (each reads its slice of
the same global batches, data/pipeline.py), which `save` verifies, so one JSON serves all.

Layout: WORKDIR/checkpoints/<step>/{state, data}.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    """Save / restore (state, data_state) by step under `directory`."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = self._open(keep)
        self.keep = keep

    def _open(self, keep: int) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory, item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                                 enable_async_checkpointing=False))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict) -> None:
        """Write step `step` (overwriting nothing: an existing step is left as it is)."""
        if step in self.manager.all_steps():
            return
        if jax.process_count() > 1:
            _assert_same_in_all_processes(data_state, f"data iterator positions at step {step}")
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data_state)))
        self.manager.wait_until_finished()

    def _restore_step(self, abstract_state, step: int):
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return out["state"], out["data"]

    def restore(self, abstract_state, step: int | None = None):
        """(state, data_state) of `step`, or by default of the newest checkpoint that reads:
        unreadable newer ones are moved to `<directory>.corrupt/` with a warning (only once an
        older one has restored, so a config that no longer matches any checkpoint raises the
        newest one's error and moves nothing). `abstract_state`: a pytree of
        `jax.ShapeDtypeStruct`s with shardings (e.g. `abstract_like(state)`)."""
        if step is not None:
            return self._restore_step(abstract_state, step)
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        failed = []
        for s in steps:
            try:
                restored = self._restore_step(abstract_state, s)
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: try the previous one
                if not failed:
                    first_error = err
                failed.append((s, err))
                continue
            if failed:
                self._set_aside(failed, s)
            return restored
        raise first_error

    def _set_aside(self, failed: list, used: int) -> None:
        aside = self.directory.with_name(self.directory.name + ".corrupt")
        for s, err in failed:
            warnings.warn(f"checkpoint step {s} in {self.directory} cannot be read ({type(err).__name__}: "
                          f"{str(err)[:300]}); using step {used}; moved it to {aside}", stacklevel=3)
        if jax.process_index() == 0:
            aside.mkdir(exist_ok=True)
            for s, _ in failed:
                shutil.move(str(self.directory / str(s)), str(aside / f"{s}-{time.strftime('%Y%m%d-%H%M%S')}"))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("checkpoint: corrupt steps moved aside")
        self.manager.close()
        self.manager = self._open(self.keep)

    def close(self) -> None:
        self.manager.close()


def _assert_same_in_all_processes(value, what: str) -> None:
    from jax.experimental import multihost_utils

    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).digest()
    multihost_utils.assert_equal(np.frombuffer(digest, np.uint32), f"{what} differ between processes")


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) describing `tree`, for `Checkpointer.restore`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_latest(directory: str | Path, init_fn, sharding, what: str = "checkpoint"):
    """(state, data_state) of the latest checkpoint in `directory`, restored in the shapes and
    dtypes `init_fn()` would give (traced with `jax.eval_shape`, nothing is computed) and placed
    with `sharding`. No checkpoint: FileNotFoundError "no {what} in DIR"."""
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                            jax.eval_shape(init_fn))
    ckpt = Checkpointer(directory)
    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no {what} in {ckpt.directory}")
        return ckpt.restore(abstract)
    finally:
        ckpt.close()
