"""Data parallelism with a `jax.sharding.Mesh` over one 'data' axis (the modern form of pmap).

Train states are replicated (`replicated(mesh)`), batches are split along their leading axis
(`batch_sharding(mesh)`); `jax.jit` with these shardings inserts the gradient all-reduce. Each
process feeds its own slice of the global batch (`global_batch`), so the same code runs on one
CPU, 8 fake CPU devices, a GPU node or a TPU pod (`maybe_initialize_distributed` first).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize()` when launched as one of several processes, before any
    other JAX call: detected from JAX_COORDINATOR_ADDRESS, a multi-task SLURM job or a multi-host
    TPU slice (whose coordinates `initialize` then reads itself). One process does nothing."""
    env = os.environ
    if (env.get("JAX_COORDINATOR_ADDRESS") or int(env.get("SLURM_NTASKS", "1")) > 1
            or "," in env.get("TPU_WORKER_HOSTNAMES", "")):
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

