"""Logical → mesh axis rules and the NamedShardings of a model's state.

Parameters carry logical axis names (flax ``out_sharding`` metadata): 'vocab', 'embed', 'mlp', 'heads', 'kv' (and
None). Mesh axes are named 'data' (pure data parallelism), 'fsdp' (data parallelism that also shards parameters,
ZeRO-3 style) and 'tensor' (Megatron-style model parallelism over heads/mlp/vocab). A mesh may hold any subset of
them; axes it lacks, and shardings that do not divide a dimension, fall back to replication.

Trainer usage::

  mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "tensor"))   # Auto axes (see parallel.make_mesh)
  graphdef, state = nnx.split(model)
  shardings = param_shardings(state, mesh, logical_axis_rules(fsdp=False))
  state = jax.device_put(state, shardings)
  batch = jax.device_put(ids, batch_sharding(mesh, logical_axis_rules()))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def logical_axis_rules(fsdp: bool = False) -> Rules:
  """Rules for ``nnx.logical_axis_rules`` / ``param_shardings``. 'batch' is the activations' batch axis."""
  return (
    ("batch", ("data", "fsdp") if fsdp else "data"),
    ("vocab", "tensor"),
    ("embed", "fsdp" if fsdp else None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("length", None),
  )


def _spec(logical: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh, rules: Rules) -> PartitionSpec:
  """Maps logical names to mesh axes, dropping axes the mesh lacks, axes already used, and non-dividing ones."""
  if not logical:
    return PartitionSpec()
  table = dict(rules)
  used: set[str] = set()
  out: list[Any] = []
  for name, dim in zip(logical, shape, strict=True):
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a in mesh.shape and a not in used and mesh.shape[a] > 1)
    if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
      used.update(axes)
      out.append(axes[0] if len(axes) == 1 else axes)
    else:
      out.append(None)
  return PartitionSpec(*out)


def param_shardings(state: nnx.State, mesh: Mesh, rules: Rules | None = None) -> nnx.State:
  """A tree like ``state`` (from ``nnx.split``/``nnx.state``) with a NamedSharding per Variable; Variables without
  logical names (e.g. the illegal-opcode counter) are replicated."""
  rules = logical_axis_rules() if rules is None else rules

  def one(var: Any) -> Any:
    if isinstance(var, nnx.Variable):
      spec = _spec(var.get_metadata().get("out_sharding"), var.shape, mesh, rules)
      return var.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, rules: Rules | None = None) -> NamedSharding:
  """Sharding for [B, L] input batches: B over the rules' 'batch' axes present in the mesh."""
  rules = logical_axis_rules() if rules is None else rules
  table = dict(rules)
  target = table.get("batch")
  axes = tuple(a for a in ((target,) if isinstance(target, str) else tuple(target or ())) if a in mesh.shape)
  return NamedSharding(mesh, PartitionSpec(axes if axes else None, None))
