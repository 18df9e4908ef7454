"""Data parallelism with a `jax.sharding.Mesh` over one 'data' axis (the modern form of pmap).

Train states are replicated (`replicated(mesh)`), batches are split along their leading axis
(`batch_sharding(mesh)`); `jax.jit` with these shardings inserts the gradient all-reduce. Each
process feeds its own slice of the global batch (`global_batch`), so the same code runs on one
CPU, 8 fake CPU devices, a GPU node or a TPU pod (`maybe_initialize_distributed` first).
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize()` when launched as one of several processes, before any
    other JAX call. Explicit: JAX_COORDINATOR_ADDRESS (host:port of process 0) with
    JAX_NUM_PROCESSES and JAX_PROCESS_ID; otherwise JAX's own detection of a multi-task SLURM job
    or a multi-host TPU slice. One process does nothing."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not env.get(v)]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} not")
        jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]),
                                   int(env["JAX_PROCESS_ID"]))
    elif int(env.get("SLURM_NTASKS", "1")) > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        jax.distributed.initialize()


def make_mesh(num_data: int = -1) -> Mesh:
    """A 1-D mesh over the first `num_data` devices (-1: all devices, across processes)."""
    devices = jax.devices()
    n = len(devices) if num_data in (-1, 0, None) else num_data
    if not 1 <= n <= len(devices):
        raise ValueError(f"mesh_data={num_data} but {len(devices)} devices are available")
    return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data'."""
    return NamedSharding(mesh, P(DATA_AXIS))


def compiler_options(mesh: Mesh) -> dict:
    """XLA options for programs on the mesh's devices (`xla_cpu.compiler_options`)."""
    from semgan_jax.xla_cpu import compiler_options as for_platform

    return for_platform(mesh.devices.flat[0].platform)


def check_batch_size(batch_size: int, mesh: Mesh) -> int:
    """Global batch must split evenly over devices and processes; returns the per-process size."""
    n_dev = mesh.shape[DATA_AXIS]
    if batch_size % n_dev:
        raise ValueError(f"batch size {batch_size} is not divisible by {n_dev} devices on the data axis")
    return batch_size // jax.process_count()


def global_batch(local: dict, mesh: Mesh) -> dict:
    """Per-process numpy batch (leading axis = this process's share) -> global sharded arrays."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Wait until every process reaches `name` (unique per call) on the coordination service's
    key-value store, not a device collective: no XLA program runs. One process: no-op."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client jax.distributed.initialize() created

    distributed.global_state.client.wait_at_barrier(name, timeout_s * 1000)


class StepCompiler:
    """`jitted(*args, *static)` compiled ahead of time once per static variant, then called.

    With several processes every process waits at a `barrier` after compiling a variant, before
    running it: processes compile at different speeds (process 0 alone reads the persistent
    compilation cache) and XLA:CPU's gloo collectives give up when a peer arrives more than 30 s
    later. Compiling is what jit would do at the first call anyway."""

    def __init__(self, jitted, name: str):
        self.jitted, self.name, self.compiled = jitted, name, {}
        self.compile_seconds = 0.0  # wall time spent compiling (and waiting at the barriers)

    def __call__(self, *args, static: tuple = ()):
        if static not in self.compiled:
            t0 = time.perf_counter()
            self.compiled[static] = self.jitted.lower(*args, *static).compile()
            barrier(f"{self.name} {static} compiled")
            self.compile_seconds += time.perf_counter() - t0
        return self.compiled[static](*args)

