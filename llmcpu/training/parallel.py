"""Devices, hosts and meshes: where the training step runs.

Default: ``jax.jit`` over a ``Mesh`` with axes ('data', 'fsdp', 'tensor') and NamedShardings (parameters laid out by
the models' logical annotations). ``pmap``: the same step under ``jax.pmap`` with the state replicated per device.
Multi-host: ``jax.distributed.initialize`` first (see ``initialize``), then every process feeds its own rows.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llmcpu import fs
from llmcpu.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None, auto: bool) -> None:
  """Joins a multi-process run: explicit coordinator flags, or ``auto`` (TPU VMs / SLURM detect themselves)."""
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise UserError("--coordinator_address needs --num_processes and --process_id")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif auto:
    jax.distributed.initialize()


def make_mesh(fsdp: int = 1, tensor: int = 1) -> Mesh:
  """All global devices as (data, fsdp, tensor), with Auto axis types: ``jax.make_mesh`` defaults to Explicit axes
  in jax 0.10, where an embedding lookup on a batch sharded over 'data' raises ``ShardingTypeError``."""
  devices = jax.devices()
  n = len(devices)
  if fsdp < 1 or tensor < 1 or n % (fsdp * tensor):
    raise UserError(f"mesh.fsdp={fsdp} × mesh.tensor={tensor} does not divide the {n} devices")
  return Mesh(np.array(devices).reshape(n // (fsdp * tensor), fsdp, tensor), MESH_AXES)


def check_batch(global_batch: int, mesh: Mesh, grad_accum: int) -> None:
  """The global batch must split evenly over batch-parallel devices, hosts and micro-batches."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  procs = jax.process_count()
  for what, n in (("batch-parallel devices (data × fsdp)", shards), ("processes", procs)):
    if global_batch % n:
      raise UserError(f"train.batch_size={global_batch} is not divisible by the {n} {what}; pick a multiple of {n}")
  if grad_accum < 1 or global_batch % (grad_accum * shards):
    raise UserError(
      f"train.batch_size={global_batch} must divide into train.grad_accum={grad_accum} micro-batches of a "
      f"multiple of {shards} rows"
    )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process' rows → global arrays sharded over the batch axis (works on one host and many)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def pmap_batch(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """[rows, …] → [local devices, rows / local devices, …] for pmap."""
  n = jax.local_device_count()
  return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in local.items()}


def replicate(tree):
  """One host copy per local device along a new leading axis; pmap places them (``device_put_replicated`` is gone)."""
  n = jax.local_device_count()
  return jax.tree.map(lambda x: np.broadcast_to(np.asarray(jax.device_get(x)), (n, *x.shape)), tree)


def unreplicate(tree):
  return jax.tree.map(lambda x: x[0], tree)


def measure_matmul_peak(dtype=jnp.float32, n: int = 1024, repeats: int = 5) -> float:
  """Achievable FLOP/s of one device on a square matmul, measured with XLA (the MFU denominator)."""
  device = jax.local_devices()[0]
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  f = jax.jit(lambda x: (x @ x) @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * 2 * n**3 / best


def shared_directory(path: str) -> bool:
  """Whether every process sees the same ``path`` (a bucket, a network disk) rather than each its own copy (a
  worker's local disk). Process 0 leaves a token file there and every process looks for it, between two barriers.
  Collective: every process must call it. One process: True."""
  if jax.process_count() == 1:
    return True
  from jax.experimental import multihost_utils

  token = multihost_utils.broadcast_one_to_all(np.frombuffer(os.urandom(8), np.uint32))  # process 0's
  name = fs.join(path, ".process0-" + "".join(f"{int(x):08x}" for x in np.asarray(token)))
  if jax.process_index() == 0:
    fs.makedirs(path)
    fs.write_text(name, "")
  multihost_utils.sync_global_devices("llmcpu.shared_directory: token written")
  seen = fs.exists(name)
  multihost_utils.sync_global_devices("llmcpu.shared_directory: token looked for")
  if jax.process_index() == 0:
    fs.remove(name)
  return seen
