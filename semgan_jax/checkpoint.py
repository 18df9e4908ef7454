"""Checkpoints with orbax `CheckpointManager`: the train-state pytree plus the data iterators'
positions (JSON), written atomically (orbax finalises a step directory only when complete), the
last `keep` retained, restored onto the current mesh.

Layout: WORKDIR/checkpoints/<step>/{state, data}.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Save / restore (state, data_state) by step under `directory`."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=False))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict) -> None:
        """Write step `step` (overwriting nothing: an existing step is left as it is)."""
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data_state)))
        self.manager.wait_until_finished()

    def restore(self, abstract_state, step: int | None = None):
        """(state, data_state) of `step` (default: latest). `abstract_state`: a pytree of
        `jax.ShapeDtypeStruct`s with shardings (e.g. `abstract_like(state)`)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return out["state"], out["data"]

    def close(self) -> None:
        self.manager.close()


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
