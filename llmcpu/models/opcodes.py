"""Illegal opcodes: ids outside the model's vocabulary.

JAX gathers clamp out-of-range indices, so an id ≥ vocab_size would silently read the last embedding row. Every
model input goes through ``sanitize_ids`` first, which maps such ids (and negative ones) to UNK_ID and counts them
into an ``IllegalOpcodes`` variable on the model. Policy 'unk' tolerates them; policy 'error' maps them the same
way (so traced code keeps running) but a non-zero count is an error: eager calls raise ``UserError`` at once, and
jitted callers must check ``illegal_count(model)`` (or the ``IllegalOpcodes`` state they carry) themselves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmcpu.errors import UserError
from llmcpu.specials import UNK_ID


class IllegalOpcodes(nnx.Variable):
  """Running count (int32 scalar) of out-of-vocabulary ids a model has been fed. Not a Param: optimizers skip it;
  a functional step must carry it (``nnx.split(model, nnx.Param, ...)`` keeps it in the rest-state)."""


def sanitize_ids(
  ids: jax.Array, vocab_size: int, policy: str = "unk", unk_id: int = UNK_ID
) -> tuple[jax.Array, jax.Array]:
  """Maps ids outside [0, vocab_size) to ``unk_id`` (the model's ``ModelConfig.unk_id``); returns (ids int32, number
  of illegal ids as an int32 scalar).

  Pure; the same for both policies ('error' differs only in what the caller does with a non-zero count).
  """
  if policy not in ("unk", "error"):
    raise UserError(f"illegal_id_policy={policy!r} is not one of unk, error")
  if not isinstance(ids, jax.Array):  # host ids (e.g. int64 numpy): judge them before any narrowing to int32
    host = np.asarray(ids)
    if not np.issubdtype(host.dtype, np.integer):
      raise UserError(f"token ids must be integers, got dtype {host.dtype}")
    illegal = (host < 0) | (host >= vocab_size)
    return jnp.asarray(np.where(illegal, unk_id, host).astype(np.int32)), jnp.asarray(np.int32(illegal.sum()))
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise UserError(f"token ids must be integers, got dtype {ids.dtype}")
  illegal = (ids < 0) | (ids >= vocab_size)
  return jnp.where(illegal, unk_id, ids).astype(jnp.int32), jnp.sum(illegal, dtype=jnp.int32)


def check_eager(num_illegal: jax.Array, policy: str, vocab_size: int) -> None:
  """Under policy 'error', raises if concrete (not traced) ids held illegal opcodes."""
  if policy == "error" and not isinstance(num_illegal, jax.core.Tracer) and int(num_illegal) > 0:
    raise UserError(
      f"{int(num_illegal)} token ids are outside this model's vocabulary [0, {vocab_size}) "
      "(illegal opcodes: was the input compiled for another ISA?)"
    )


def illegal_count(model: nnx.Module) -> int:
  """Total illegal ids this model (all its submodules) has seen since creation or the last reset."""
  counts = jax.tree.leaves(nnx.state(model, IllegalOpcodes))
  return int(sum(int(c) for c in counts))


def reset_illegal_count(model: nnx.Module) -> None:
  for _, var in nnx.iter_graph(model):
    if isinstance(var, IllegalOpcodes):
      var[...] = jnp.zeros((), jnp.int32)
