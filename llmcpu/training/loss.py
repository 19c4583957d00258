"""What a CPU is scored on: the forward pass for each objective's batch and its loss/metric sums.

Every objective reduces to next-token (or masked-token) cross-entropy over ``targets`` with ``weights``; only the
forward call differs by architecture. Sums (not means) are returned so that they add up across devices, hosts,
accumulation steps and eval batches; ``finalize`` turns them into the reported figures.

Bits per byte is Σ NLL over *content* targets (weighted targets that are a document's own ids: regular ids and UNK;
never EOS or a sentinel) / (ln 2 · Σ ``target_bytes``), where the pipeline puts each content target's piece bytes
in ``target_bytes`` (0 elsewhere). Numerator and denominator cover the same targets, so the figure is exact for
any batch, and at most the bits per content token divided by the fewest bytes of a content token.

``batch_sums`` never materialises the float32 [B, L, V] logits: ``chunked_sums`` applies the output head to a few
positions at a time (a scan over the length) and, under ``jax.grad``, computes the head's gradient in that same pass
(``custom_vjp``), so neither direction keeps more than one chunk's logits. ``forward``/``metric_sums`` are the
plain full-logits path (scoring, tests, the reference the chunked sums are checked against).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from llmcpu.specials import is_content

# The additive statistics of ``metric_sums`` (weighted by the loss weights), in one place for everything that
# accumulates them.
METRIC_SUM_KEYS = ("nll", "weight", "bpb_nll", "bytes", "correct")


# Float32 logits per chunk of ``chunked_sums``. A chunk of about 1M logits (4 MiB) stays in the cores' caches
# through its softmax, select and gradient passes: the tiny training step (16 x 128 tokens, vocabulary 4000) takes 75
# ms against 86 with one 32 MiB chunk (53 against 84 with ``ops.host_malloc``), `small`'s (16 x 256, vocabulary
# 8000) the same (paired in one process).
# Fewer than 256 rows make the head's matmuls small and slow (at vocabulary 32k, 32-64 rows were up to 1.4x slower),
# so a chunk holds at least that many rows while that stays within 8M logits (32 MiB), the memory cap.
CHUNK_LOGITS = 1 << 20
MIN_CHUNK_ROWS = 256
MAX_CHUNK_LOGITS = 1 << 23


def forward_hidden(model, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(final hidden states [B, L, D], targets [B, L], weights [B, L]) for any objective's batch."""
  if "decoder_inputs" in batch:
    h = model.hidden(
      batch["encoder_inputs"],
      batch["decoder_inputs"],
      encoder_segment_ids=batch["encoder_segment_ids"],
      decoder_segment_ids=batch["decoder_segment_ids"],
      encoder_positions=batch["encoder_positions"],
      decoder_positions=batch["decoder_positions"],
    )
    return h, batch["decoder_targets"], batch["decoder_weights"]
  h = model.hidden(batch["inputs"], segment_ids=batch["segment_ids"], positions=batch["positions"])
  return h, batch["targets"], batch["weights"]


def forward(model, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(logits [B, L, V] float32, targets [B, L], weights [B, L]) for any objective's batch."""
  h, targets, weights = forward_hidden(model, batch)
  return model.logits(h), targets, weights


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """−log p(target) per position, in float32 (nats)."""
  logits = logits.astype(jnp.float32)
  return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]


def content_mask(targets: jax.Array, weights: jax.Array, content: jax.Array | None) -> jax.Array:
  """Weighted content targets (what bits per byte counts: not EOS, not span sentinels), float32, each once whatever
  its loss weight (prefix LM's ``head_weight``). ``content``: the batch's own mask (its ISA's roles,
  ``Roles.is_content``); without one, the project's fixed special layout."""
  scored = (weights > 0).astype(jnp.float32)
  return scored * (is_content(targets) if content is None else content.astype(jnp.float32))


def metric_sums(
  logits: jax.Array, targets: jax.Array, weights: jax.Array, target_bytes: jax.Array, content: jax.Array | None = None
) -> dict:
  """Additive statistics: loss numerator/denominator, bits-per-byte numerator (content targets) and bytes, hits."""
  nll = token_nll(logits, targets)
  weights = weights.astype(jnp.float32)
  content = content_mask(targets, weights, content)
  return {
    "nll": jnp.sum(nll * weights),
    "weight": jnp.sum(weights),
    "bpb_nll": jnp.sum(nll * content),
    "bytes": jnp.sum(target_bytes.astype(jnp.float32)),
    "correct": jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights),
  }


def default_chunk(batch: int, length: int, vocab: int) -> int:
  """Positions per chunk: about ``CHUNK_LOGITS`` float32 logits (batch · chunk · vocab) but at least
  ``MIN_CHUNK_ROWS`` rows (batch · chunk) where those fit in ``MAX_CHUNK_LOGITS``; at least 1 position, split evenly
  (256 positions in chunks of at most 65 → 4 of 64, not 3 of 65 and a short one of 61)."""
  vocab = max(1, vocab)
  rows = max(CHUNK_LOGITS // vocab, min(MIN_CHUNK_ROWS, MAX_CHUNK_LOGITS // vocab))
  most = max(1, min(length, rows // max(1, batch)))
  return -(-length // -(-length // most))


def hits(shifted_NxV: jax.Array, t_N: jax.Array) -> jax.Array:
  """1.0 where the target is ``argmax`` of the logits (the first maximal id, as ``jnp.argmax``), else 0.0.

  ``shifted`` = logits − their max is exactly 0 at the maximal ids; the first of them is a min-reduce over ids. A
  row holding a NaN has no hit (``jnp.argmax`` would point at the NaN; such a step stops training anyway).
  ``jnp.argmax`` is a variadic (value, index) reduce that XLA:CPU runs unvectorized: 36 of the tiny step's 153 ms of
  thread time (benchmarks/step_profile.py). XLA:CPU writes the [N, V] ids of the select out before reducing them,
  so they are int16 where the vocabulary allows (half the bytes of int32; benchmarks/argmax_ab.py)."""
  v = shifted_NxV.shape[-1]
  dtype = jnp.int16 if v < 2**15 else jnp.int32
  ids_V = jnp.arange(v, dtype=dtype)
  first_N = jnp.min(jnp.where(shifted_NxV == 0, ids_V[None, :], jnp.asarray(v, dtype)), axis=-1)
  return (first_N.astype(jnp.int32) == t_N).astype(jnp.float32)


def _head_pass(
  h_BxLxD, kernel_DxV, targets_BxL, gw_BxL, chunk: int, *, grad_h: bool = False, grad_kernel: bool = False
):
  """The output head and softmax cross-entropy, ``chunk`` positions at a time.

  Returns (nll [B, L] f32, hit [B, L] f32 (argmax == target), d h, d kernel): the gradients of Σ gw·nll, d h
  [B, L, D] in h's dtype if ``grad_h``, d kernel [D, V] in the kernel's dtype if ``grad_kernel``, else None. A
  length that ``chunk`` does not divide ends with one shorter chunk.
  """
  b, length, d = h_BxLxD.shape
  v = kernel_DxV.shape[1]
  chunk = max(1, min(chunk, length))
  n, r = divmod(length, chunk)

  def one(dk_DxV, h_BxCxD, t_BxC, gw_BxC):
    c = h_BxCxD.shape[1]
    h_NxD = h_BxCxD.reshape(b * c, d)  # one 2-D matmul (see layers.dense)
    logits_NxV = jnp.matmul(h_NxD, kernel_DxV, preferred_element_type=jnp.float32)
    t_N = t_BxC.reshape(-1).astype(jnp.int32)  # ids may arrive narrower (uint16) than the vocabulary's range
    shifted_NxV = logits_NxV - jnp.max(logits_NxV, axis=-1, keepdims=True)
    lse_N = jnp.log(jnp.sum(jnp.exp(shifted_NxV), axis=-1))
    nll_N = lse_N - jnp.take_along_axis(shifted_NxV, t_N[:, None], axis=-1)[:, 0]
    hit_N = hits(shifted_NxV, t_N)
    if not (grad_h or grad_kernel):
      return dk_DxV, (nll_N.reshape(b, c), hit_N.reshape(b, c), None)
    # d nll / d logits = softmax − one-hot, per position scaled by its weight; never leaves this chunk.
    onehot_NxV = jnp.arange(v, dtype=t_N.dtype)[None, :] == t_N[:, None]
    g_NxV = (jnp.exp(shifted_NxV - lse_N[:, None]) - onehot_NxV) * gw_BxC.reshape(-1, 1)
    g_NxV = g_NxV.astype(h_NxD.dtype)
    dh_BxCxD = None
    if grad_h:
      dh_NxD = jax.lax.dot_general(g_NxV, kernel_DxV, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
      dh_BxCxD = dh_NxD.astype(h_BxLxD.dtype).reshape(b, c, d)
    if grad_kernel:
      dk = jax.lax.dot_general(h_NxD, g_NxV, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
      dk_DxV = dk if dk_DxV is None else dk_DxV + dk
    return dk_DxV, (nll_N.reshape(b, c), hit_N.reshape(b, c), dh_BxCxD)

  def to_chunks(x):  # [B, n·chunk, ...] → [n, B, chunk, ...]
    x = x[:, : n * chunk]
    return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)

  def from_chunks(x):  # [n, B, chunk, ...] → [B, n·chunk, ...]
    return jnp.moveaxis(x, 0, 1).reshape(b, n * chunk, *x.shape[3:])

  if n == 1:  # no loop, and no zero-initialised d kernel (at small batches it outweighs the logits)
    dk, outs = one(None, h_BxLxD[:, :chunk], targets_BxL[:, :chunk], gw_BxL[:, :chunk])
  else:
    dk = jnp.zeros((d, v), jnp.float32) if grad_kernel else None
    xs = (to_chunks(h_BxLxD), to_chunks(targets_BxL), to_chunks(gw_BxL))
    dk, outs = jax.lax.scan(lambda carry, x: one(carry, *x), dk, xs)
    outs = [None if o is None else from_chunks(o) for o in outs]
  if r:
    dk, tail = one(dk, h_BxLxD[:, n * chunk :], targets_BxL[:, n * chunk :], gw_BxL[:, n * chunk :])
    outs = [None if o is None else jnp.concatenate([o, t], axis=1) for o, t in zip(outs, tail, strict=True)]
  nll, hit, dh = outs
  return nll, hit, dh, (dk.astype(kernel_DxV.dtype) if grad_kernel else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused_ce(h_BxLxD, kernel_DxV, targets_BxL, weights_BxL, chunk: int):
  """(Σ weights·nll, nll [B, L], hit [B, L]) of the head ``h @ kernel`` without the [B, L, V] logits."""
  nll, hit, _, _ = _head_pass(h_BxLxD, kernel_DxV, targets_BxL, weights_BxL, chunk)
  return jnp.sum(nll * weights_BxL), nll, hit


def _fused_ce_fwd(h_BxLxD, kernel_DxV, targets_BxL, weights_BxL, chunk: int):
  # The gradient of the weighted sum (the training loss) is computed here, in the same pass as the loss, so no
  # chunk's logits are kept or recomputed for the backward pass: the head costs its 3 matmuls, as unfused.
  h, kernel, targets, weights = (x.value for x in (h_BxLxD, kernel_DxV, targets_BxL, weights_BxL))
  grads = dict(grad_h=h_BxLxD.perturbed, grad_kernel=kernel_DxV.perturbed)
  nll, hit, dh, dk = _head_pass(h, kernel, targets, weights, chunk, **grads)
  return (jnp.sum(nll * weights), nll, hit), (h, kernel, targets, nll, dh, dk)


def _fused_ce_bwd(chunk: int, res, cts):
  h, kernel, targets, nll, dh_sum, dk_sum = res
  grads = dict(grad_h=dh_sum is not None, grad_kernel=dk_sum is not None)  # what the forward found perturbed
  ct_sum, ct_nll, _ = cts
  dh = dk = dw = None

  def add(a, b):
    return a if b is None else b if a is None else a + b

  if type(ct_sum) is not SymbolicZero:
    if dh_sum is not None:
      dh = (ct_sum * dh_sum).astype(h.dtype)
    if dk_sum is not None:
      dk = (ct_sum * dk_sum).astype(kernel.dtype)
    dw = ct_sum * nll
  if type(ct_nll) is not SymbolicZero and (grads["grad_h"] or grads["grad_kernel"]):
    # A cotangent on the per-position NLL (e.g. differentiating bits per byte): one more pass with those weights.
    _, _, dh_tok, dk_tok = _head_pass(h, kernel, targets, ct_nll.astype(jnp.float32), chunk, **grads)
    dh, dk = add(dh, dh_tok), add(dk, dk_tok)
  return dh, dk, None, dw


_fused_ce.defvjp(_fused_ce_fwd, _fused_ce_bwd, symbolic_zeros=True)


def chunked_sums(
  h_BxLxD: jax.Array,
  kernel_DxV: jax.Array,
  targets: jax.Array,
  weights: jax.Array,
  target_bytes: jax.Array,
  *,
  content: jax.Array | None = None,
  chunk: int | None = None,
) -> dict:
  """``metric_sums(h @ kernel (float32), ...)`` computed ``chunk`` positions at a time (default ``default_chunk``).

  Differentiable in ``h``, ``kernel`` and ``weights`` (reverse mode only: ``custom_vjp``)."""
  b, length, _ = h_BxLxD.shape
  chunk = chunk or default_chunk(b, length, kernel_DxV.shape[1])
  weights = weights.astype(jnp.float32)
  nll_sum, nll, hit = _fused_ce(h_BxLxD, kernel_DxV, targets, weights, chunk)
  content = content_mask(targets, weights, content)
  return {
    "nll": nll_sum,
    "weight": jnp.sum(weights),
    "bpb_nll": jnp.sum(nll * content),
    "bytes": jnp.sum(target_bytes.astype(jnp.float32)),
    "correct": jnp.sum(hit * weights),
  }


def batch_sums(model, batch: dict, *, chunk: int | None = None) -> dict:
  """``metric_sums`` of a model on any objective's batch (what training and evaluation differentiate and add),
  computed by ``chunked_sums`` from the final hidden states, without the full logits."""
  h, targets, weights = forward_hidden(model, batch)
  content = batch.get("content")
  return chunked_sums(h, model.head_kernel(), targets, weights, batch["target_bytes"], content=content, chunk=chunk)


def finalize(sums: dict) -> dict:
  """Sums → loss (mean nats per weighted token), bits per byte, accuracy."""
  weight = max(float(sums["weight"]), 1.0)
  out = {"loss": float(sums["nll"]) / weight, "accuracy": float(sums["correct"]) / weight}
  if float(sums["bytes"]) > 0:
    out["bits_per_byte"] = float(sums["bpb_nll"]) / (math.log(2) * float(sums["bytes"]))
  return out
