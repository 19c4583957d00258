"""``distill``: train only ISA B's new rows so the ported CPU's hidden states match the source's on the same text.

The target starts from another method's rows (align by default). Contexts are windows of the train split (B's
machine code) holding at least one of B's pieces that A lacks; the source reads the same text in A's segmentation.
At every byte offset where a token ends in both segmentations the two CPUs have read the same text, so their states
there are compared: mean squared error on the residual stream after the middle block and on the final states.
Only the embedding rows of B's non-shared pieces move (their gradient is masked and the update applied to those
rows alone), so every other parameter stays bit-identical; an untied head gets no gradient from hidden states and
keeps its starting rows.

A small optax loop of its own rather than ``trainer.train``: the objective needs a second, frozen model's states on
another ISA's ids for every batch, which the one training loop (one model, one ISA's pipeline) does not carry.
Decoders only (the porting table's architecture); deterministic for a seed (host-side window order, jit on fixed
shapes).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from llmcpu import specials
from llmcpu.compilers import Compiler
from llmcpu.errors import UserError
from llmcpu.models.architectures import Decoder
from llmcpu.porting.donor import missing_ids, shared_ids

DEFAULT_TOKENS = 65_536


def windows(docs: Sequence[np.ndarray], new_ids: np.ndarray, length: int, seed: int) -> list[np.ndarray]:
  """Non-overlapping ``length``-id windows of B's documents that hold at least one of ``new_ids``, in a seeded
  order."""
  out = [np.asarray(d[s : s + length]) for d in docs for s in range(0, len(d), length)]
  out = [w for w in out if np.isin(w, new_ids).any()]
  order = np.random.default_rng(seed).permutation(len(out))
  return [out[i] for i in order]


def pair(ids_b: np.ndarray, compiler_a: Compiler, compiler_b: Compiler, length: int):
  """(A's ids, positions in B, positions in A) of the byte offsets where a token ends in both segmentations of the
  window's text, or None when the window does not decode to whole characters (it starts or ends inside one)."""
  text = compiler_b.decode(ids_b.tolist())
  if len(text.encode("utf-8")) != int(compiler_b.piece_bytes[ids_b].sum()):
    return None
  ids_a = np.asarray(compiler_a.encode(text)[:length], np.int64)
  ends_b, ends_a = np.cumsum(compiler_b.piece_bytes[ids_b]), np.cumsum(compiler_a.piece_bytes[ids_a])
  _, pos_b, pos_a = np.intersect1d(ends_b, ends_a, assume_unique=True, return_indices=True)
  return ids_a, pos_b, pos_a


def _batch(chunk, compiler_a, compiler_b, length):
  """Padded ids of both ISAs, the aligned positions and their weights for a list of B windows."""
  ids_b = np.full((len(chunk), length), specials.PAD_ID, np.int32)
  ids_a = np.full_like(ids_b, specials.PAD_ID)
  pos_b, pos_a, weight = np.zeros_like(ids_b), np.zeros_like(ids_b), np.zeros(ids_b.shape, np.float32)
  for i, (w, (a, pb, pa)) in enumerate(chunk):
    ids_b[i, : len(w)], ids_a[i, : len(a)] = w, a
    pos_b[i, : len(pb)], pos_a[i, : len(pa)], weight[i, : len(pb)] = pb, pa, 1.0
  return ids_b, ids_a, pos_b, pos_a, weight


def distill(
  source: nnx.Module,
  target: nnx.Module,
  compiler_a: Compiler,
  compiler_b: Compiler,
  docs_b: Sequence[np.ndarray],
  *,
  tokens: int = DEFAULT_TOKENS,
  length: int = 64,
  batch: int = 8,
  learning_rate: float = 1e-3,
  seed: int = 0,
) -> dict:
  """Trains ``target``'s rows of B's non-shared pieces in place (module docstring) until ``tokens`` ids of B have
  been read; returns the provenance: rows trained, tokens read, steps, and the loss on the first batch's windows
  before and after."""
  if not isinstance(source, Decoder) or not isinstance(target, Decoder):
    raise UserError("method distill ports decoders only (it matches a causal CPU's hidden states on a text prefix)")
  if tokens <= 0:
    raise UserError(f"distill needs a positive budget of tokens, got {tokens}; set --config.distill_tokens")
  new = missing_ids(compiler_a, compiler_b, shared_ids(compiler_a, compiler_b)[0])
  out = {"rows": len(new), "tokens": 0, "steps": 0, "loss_before": None, "loss_after": None}
  length = min(length, source.config.max_len)
  found, enough = [], 0  # A's segmentation only of the windows the budget reads (then they repeat)
  for w in windows(docs_b, new, length, seed):
    if enough >= tokens:
      break
    if (p := pair(w, compiler_a, compiler_b, length)) is not None:
      found.append((w, p))
      enough += len(w)
  if not len(new) or not found:
    return out
  tap = max(1, source.config.num_layers // 2)
  step, init, evaluate = _step_fn(source, target, new, tap, learning_rate)
  table = target.embed.table[...]
  opt_state = init(table)
  probe = _batch(found[:batch], compiler_a, compiler_b, length)  # the same windows scored before and after
  out["loss_before"] = float(evaluate(table, *probe))
  i = 0
  while out["tokens"] < tokens:
    chunk = [found[(i + j) % len(found)] for j in range(batch)]
    i += batch
    table, opt_state = step(table, opt_state, *_batch(chunk, compiler_a, compiler_b, length))
    out["tokens"] += sum(len(w) for w, _ in chunk)
    out["steps"] += 1
  target.embed.table[...] = table
  out["loss_after"] = float(evaluate(table, *probe))
  return out


def _step_fn(source: Decoder, target: Decoder, new: np.ndarray, tap: int, learning_rate: float):
  """(a jitted step on the embedding table alone, ``step(table, opt_state, ids_b, ids_a, pos_b, pos_a, weight)``,
  the optimizer's init, ``evaluate(table, ids_b, ...)`` the loss). The source and the rest of the target are frozen
  arguments, not constants of the trace."""
  mask = jnp.zeros((target.config.vocab_size, 1), bool).at[new].set(True)
  tx = optax.adam(learning_rate)
  graphdef, rest = nnx.split(target)
  src_graphdef, src_state = nnx.split(source)

  def states(model, ids, pos):  # (middle, last) states at the aligned positions, float32
    middle, last = model.decoder.tapped(model.embed_ids(ids), tap)
    return tuple(jnp.take_along_axis(h, pos[:, :, None], axis=1).astype(jnp.float32) for h in (middle, last))

  def loss_fn(table, rest, ids_b, pos_b, want, weight):
    model = nnx.merge(graphdef, rest, copy=True)
    model.embed.table[...] = table
    got = states(model, ids_b, pos_b)
    err = sum(jnp.mean((g - w) ** 2, axis=-1) for g, w in zip(got, want, strict=True))
    return jnp.sum(err * weight) / jnp.maximum(weight.sum(), 1.0)

  @jax.jit
  def jitted(table, opt_state, rest, src_state, ids_b, ids_a, pos_b, pos_a, weight):
    want = states(nnx.merge(src_graphdef, src_state, copy=True), ids_a, pos_a)
    grad = jax.grad(loss_fn)(table, rest, ids_b, pos_b, want, weight)
    updates, opt_state = tx.update(jnp.where(mask, grad, 0.0), opt_state, table)
    return jnp.where(mask, optax.apply_updates(table, updates), table), opt_state

  @jax.jit
  def scored(table, rest, src_state, ids_b, ids_a, pos_b, pos_a, weight):
    want = states(nnx.merge(src_graphdef, src_state, copy=True), ids_a, pos_a)
    return loss_fn(table, rest, ids_b, pos_b, want, weight)

  def step(table, opt_state, *batch):
    return jitted(table, opt_state, rest, src_state, *batch)

  def evaluate(table, *batch):
    return scored(table, rest, src_state, *batch)

  return step, tx.init, evaluate
