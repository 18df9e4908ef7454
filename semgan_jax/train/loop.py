"""The host loop shared by the training stages: feed batches to a jitted step, log, write
sample grids, checkpoint (every `save_every`, at the end, on SIGTERM / SIGINT and after
`max_minutes`), and resume from the latest checkpoint with the data iterators' positions."""

from __future__ import annotations

import signal
import time
from typing import Any, Callable

import jax
from semgan_jax.checkpoint import Checkpointer, abstract_like
from semgan_jax.parallel import StepCompiler
from semgan_jax.train import guard


class StopSignal:
    """While active, SIGTERM / SIGINT set `received` instead of killing the process."""

    def __init__(self):
        self.received = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.received = signum

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def restore_latest(ckpt: Checkpointer, state, iterators: dict):
    """The latest checkpoint's state (and iterator positions, set in place), else `state`."""
    if ckpt.latest_step() is None:
        return state
    state, data_state = ckpt.restore(abstract_like(state))
    for name, it in iterators.items():
        it.set_state(data_state[name])
    print(f"resumed from step {int(state.step)} in {ckpt.directory}")
    return state


def run(state, step_fn, next_batch: Callable[[], Any], *, total: int, log_cfg, ckpt: Checkpointer,
        iterators: dict, logger, write_samples: Callable[[Any, int], None], updates: tuple[str, ...],
        on_nonfinite: str = "stop", consts: tuple = (), flags: Callable[[int], tuple] = lambda i: (),
        evaluate: Callable[[Any, int], dict] | None = None, eval_every: int = 0):
    """Iterations state.step .. total-1: `state, metrics = step_fn(state, next_batch(), *consts,
    *flags(i))`, `step_fn` jitted with the flags static (compiled per variant by
    `parallel.StepCompiler`).

    log_cfg: log_every, viz_every, save_every, max_minutes (0 = no limit; training time: the
    wall time less compiling the step and `evaluate`, so a budget buys the same iterations with a
    cold or a warm compilation cache). `state.health` (see
    train/guard.py; `updates` names its bits) is checked at every log and before every save: with
    on_nonfinite='stop' a refused non-finite update raises FloatingPointError naming the step,
    the networks and the last good checkpoint (nothing later is saved). `evaluate(state, step) ->
    metrics` runs every `eval_every` steps and at the end; its metrics are logged.
    Returns the state.
    """
    def save(state):
        ckpt.save(int(state.step), state, {name: it.get_state() for name, it in iterators.items()})

    def check(state):
        last = ckpt.latest_step()
        guard.check(state.health, updates, on_nonfinite,
                    f"step {last} in {ckpt.directory}" if last is not None else "none")

    check(state)  # also validates on_nonfinite before any work
    step = StepCompiler(step_fn, "train step")
    stop = StopSignal()
    t_start, eval_seconds = time.perf_counter(), 0.0
    try:
        for i in range(int(state.step), total):
            state, metrics = step(state, next_batch(), *consts, static=flags(i))
            logger.advance()
            done = i + 1
            if done % log_cfg.log_every == 0 or done == total:
                check(state)
                logger.log(done, jax.device_get(metrics))
            if done % log_cfg.viz_every == 0 or done == total:
                write_samples(state, done)
            if evaluate is not None and eval_every and (done % eval_every == 0 or done == total):
                t_eval = time.perf_counter()
                logger.log(done, evaluate(state, done))
                eval_seconds += time.perf_counter() - t_eval
            trained = time.perf_counter() - t_start - step.compile_seconds - eval_seconds
            out_of_time = log_cfg.max_minutes and trained > 60 * log_cfg.max_minutes
            if done % log_cfg.save_every == 0 or done == total or stop.received or out_of_time:
                check(state)
                save(state)
            if stop.received or out_of_time:
                why = "time limit" if out_of_time else f"signal {stop.received}"
                print(f"stopping at step {done} ({why}); checkpoint saved in {ckpt.directory}")
                if done % log_cfg.viz_every:
                    write_samples(state, done)
                break
    finally:
        stop.restore()
        logger.close()
        ckpt.close()
        for it in iterators.values():
            if hasattr(it, "close"):
                it.close()
    return state
