"""Multi-head attention written from scratch: masks, the attention kernel (two implementations) and the self- and
cross-attention modules, with a key/value cache for decoding.

Layouts follow ``jax.nn.dot_product_attention``: queries [B, Q, H, K], keys/values [B, S, H, K]; masks are boolean
[B, 1, Q, S] (True = may attend). A query whose row is all False (a padding token) gets a uniform average, never NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from llmcpu.errors import UserError
from llmcpu.models import flash_tpu
from llmcpu.models.config import T5_BUCKETS, T5_MAX_DISTANCE, ModelConfig
from llmcpu.models.flash_tpu import SegmentIds
from llmcpu.models.layers import (
  add_bias,
  apply_rotary,
  dense,
  normal,
  param,
  rope_scaling_of,
  rotary,
  rotary_sin_cos,
  zeros,
)

# Finite, so a fully masked row softmaxes to uniform instead of NaN; also safe in bfloat16 logits (kept in f32).
_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)
# Keys per block of the chunked kernel: [B, H, Q, 256] float32 scores live at a time instead of [B, H, Q, S].
KV_CHUNK = 256


# ----------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------


def causal_mask(q_len: int, kv_len: int, q_offset: jax.Array | int = 0) -> jax.Array:
  """[1, 1, Q, S]: query at slot ``q_offset + i`` sees key slots ≤ it."""
  q_slot = q_offset + jnp.arange(q_len)[:, None]
  return (jnp.arange(kv_len)[None, :] <= q_slot)[None, None]


def segment_mask(q_segment_ids_BxQ: jax.Array, kv_segment_ids_BxS: jax.Array) -> jax.Array:
  """[B, 1, Q, S]: equal, nonzero segment ids (0 = padding; packed documents stay apart)."""
  same = q_segment_ids_BxQ[:, :, None] == kv_segment_ids_BxS[:, None, :]
  return (same & (kv_segment_ids_BxS[:, None, :] != 0))[:, None]


def key_mask(kv_valid_BxS: jax.Array) -> jax.Array:
  """[B, 1, 1, S]: keys that exist (not padding)."""
  return kv_valid_BxS.astype(bool)[:, None, None, :]


def combine(*masks: jax.Array | None) -> jax.Array | None:
  out = None
  for m in masks:
    if m is not None:
      out = m if out is None else out & m
  return out


# ----------------------------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------------------------


def _cudnn_ok(q_BxQxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array) -> bool:
  """cuDNN flash attention: GPU, fp16/bf16, head_dim a multiple of 8 up to 128, even lengths (so one-token decode
  steps use XLA)."""
  q_len, head_dim = q_BxQxHxK.shape[1], q_BxQxHxK.shape[-1]
  return (
    jax.default_backend() == "gpu"
    and q_BxQxHxK.dtype in (jnp.bfloat16, jnp.float16)
    and head_dim % 8 == 0
    and head_dim <= 128
    and q_len % 2 == 0
    and k_BxSxHxK.shape[1] % 2 == 0
  )


def attend(
  q_BxQxHxK: jax.Array,
  k_BxSxHxK: jax.Array,
  v_BxSxHxK: jax.Array,
  mask: jax.Array | SegmentIds | None,
  *,
  impl: str = "xla",
  is_causal: bool = False,
  bias: jax.Array | None = None,
) -> jax.Array:
  """softmax(q·kᵀ/√K + mask)·v. ``is_causal`` adds a causal mask (aligned at slot 0) on top of ``mask``.

  'xla': plain einsums, logits and softmax in float32 (the [B, H, Q, S] scores are kept for the backward pass).
  'chunked': ``chunked_attend``, the same math a block of keys at a time. 'pallas': the TPU flash kernel
  (``flash_tpu``; a UserError off TPU) where the mask comes as ``SegmentIds`` or None (full-sequence
  self-attention) and the lengths are whole 128-tiles, 'xla' otherwise. 'cudnn': cuDNN's fused kernel, or a
  UserError off GPU. 'dot_product_attention': ``jax.nn.dot_product_attention``, asking for cuDNN's fused kernel
  where it applies (see ``_cudnn_ok``; jax 0.10's default ``implementation=None``
  is plain XLA, not cuDNN) and XLA otherwise; a pure causal mask goes in as ``is_causal`` so the fused kernel can
  skip the upper triangle.
  """
  if bias is not None and impl not in ("xla", "pallas"):
    raise UserError(
      f"an additive attention bias (cross_positions=alibi, positions=t5) needs attention_impl=xla, not {impl}"
    )
  if impl == "pallas":
    flash_tpu.check_backend()
    whole = flash_tpu.tiles(q_BxQxHxK.shape[1], k_BxSxHxK.shape[1])
    if bias is None and whole and not isinstance(mask, jax.Array):
      return flash_tpu.flash_attend(q_BxQxHxK, k_BxSxHxK, v_BxSxHxK, mask, is_causal=is_causal)
    impl = "xla"  # boolean masks (cross-attention, decoding) and lengths off the 128-tile: the same math by XLA
  if isinstance(mask, SegmentIds):
    mask = segment_mask(mask.q, mask.kv)
  if impl == "chunked":
    return chunked_attend(q_BxQxHxK, k_BxSxHxK, v_BxSxHxK, mask, is_causal=is_causal)
  if impl == "cudnn":
    if jax.default_backend() != "gpu":
      raise UserError(f"model.attention_impl=cudnn needs a GPU, not {jax.default_backend()}; use chunked or xla")
    args = (q_BxQxHxK, k_BxSxHxK, v_BxSxHxK)
    return jax.nn.dot_product_attention(*args, mask=mask, is_causal=is_causal, implementation="cudnn")
  if impl == "dot_product_attention":
    args = (q_BxQxHxK, k_BxSxHxK, v_BxSxHxK)
    if _cudnn_ok(*args):
      try:  # cuDNN's shape/version checks run while tracing: fall back to XLA if one refuses.
        return jax.nn.dot_product_attention(*args, mask=mask, is_causal=is_causal, implementation="cudnn")
      except (NotImplementedError, ValueError, RuntimeError):
        pass
    return jax.nn.dot_product_attention(*args, mask=mask, is_causal=is_causal, implementation="xla")
  if is_causal:
    mask = combine(mask, causal_mask(q_BxQxHxK.shape[1], k_BxSxHxK.shape[1]))
  b, q_len, h, _ = q_BxQxHxK.shape
  if bias is None and jax.default_backend() == "cpu" and 4 * b * h * q_len * k_BxSxHxK.shape[1] <= HOST_SCORES_MAX:
    return host_attend(q_BxQxHxK, k_BxSxHxK, v_BxSxHxK, mask)
  q_BxQxHxK = q_BxQxHxK * jnp.asarray(q_BxQxHxK.shape[-1] ** -0.5, q_BxQxHxK.dtype)  # scale [Q,K], not [Q,S]
  logits_BxHxQxS = jnp.einsum("bqhk,bshk->bhqs", q_BxQxHxK, k_BxSxHxK, preferred_element_type=jnp.float32)
  if bias is not None:  # [B|1, H, Q, S] float32
    logits_BxHxQxS = logits_BxHxQxS + bias
  if mask is not None:
    logits_BxHxQxS = jnp.where(mask, logits_BxHxQxS, _NEG)
  # Softmax with the normalisation applied after the value matmul (to [Q, K] instead of [Q, S]): ~15% faster
  # forward+backward on XLA:CPU. The max shift only guards exp's range, so it needs no gradient.
  shift_BxHxQx1 = jax.lax.stop_gradient(jnp.max(logits_BxHxQxS, axis=-1, keepdims=True))
  weights_BxHxQxS = jnp.exp(logits_BxHxQxS - shift_BxHxQx1)
  total_BxQxH = jnp.swapaxes(jnp.sum(weights_BxHxQxS, axis=-1), 1, 2)
  out_BxQxHxK = jnp.einsum(
    "bhqs,bshk->bqhk", weights_BxHxQxS.astype(v_BxSxHxK.dtype), v_BxSxHxK, preferred_element_type=jnp.float32
  )
  return (out_BxQxHxK / total_BxQxH[..., None]).astype(v_BxSxHxK.dtype)


# XLA:CPU's batched matmuls are fast with the heads in front and the contraction last ([B, H, Q, K] · [B, H, S, K]);
# the [B, Q, H, K] einsums above, and the ones autodiff derives from them, ran up to 3.9x slower at the tiny CPUs'
# head size. Forward + backward of one tiny layer's attention: 4.4 against 7.2 ms; small's (16 x 256): 77 against
# 96 ms; the whole tiny training step 5% faster (53.4 against 56.4 ms, paired).
_HEADS = ((0, 1), (0, 1))
# Its dK and dV matmuls contract the scores' query axis: YNNPACK packs that operand into a scratch buffer of the
# scores' size, outside XLA's buffer assignment (so outside ``memory.compiled_estimate``). Long rows keep the
# autodiff kernel: one more [B, H, Q, S] float32 buffer at 8 x 1024 tokens was +22% of the step's peak memory
# (tests/test_memory_rss.py); the tiny and small CPUs' scores are 4 and 16 MiB.
HOST_SCORES_MAX = 1 << 26  # bytes of one layer's float32 scores


def _bmm(a: jax.Array, b: jax.Array, contract_a: int, contract_b: int) -> jax.Array:
  """Batched over the leading [B, H] axes, float32 out."""
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), _HEADS), preferred_element_type=jnp.float32)


def _host_forward(q_BxQxHxK, k_BxSxHxK, v_BxSxHxK, mask):
  scale = q_BxQxHxK.shape[-1] ** -0.5
  q_BxHxQxK = jnp.swapaxes(q_BxQxHxK * jnp.asarray(scale, q_BxQxHxK.dtype), 1, 2)
  k_BxHxSxK, v_BxHxSxK = jnp.swapaxes(k_BxSxHxK, 1, 2), jnp.swapaxes(v_BxSxHxK, 1, 2)
  logits_BxHxQxS = _bmm(q_BxHxQxK, k_BxHxSxK, 3, 3)
  if mask is not None:
    logits_BxHxQxS = jnp.where(mask, logits_BxHxQxS, _NEG)
  weights_BxHxQxS = jnp.exp(logits_BxHxQxS - jnp.max(logits_BxHxQxS, axis=-1, keepdims=True))
  total_BxHxQx1 = jnp.sum(weights_BxHxQxS, axis=-1, keepdims=True)
  out_BxHxQxK = _bmm(weights_BxHxQxS.astype(v_BxSxHxK.dtype), v_BxHxSxK, 3, 2) / total_BxHxQx1
  saved = (q_BxHxQxK, k_BxHxSxK, v_BxHxSxK, weights_BxHxQxS, total_BxHxQx1, out_BxHxQxK, mask)
  return jnp.swapaxes(out_BxHxQxK, 1, 2).astype(v_BxSxHxK.dtype), saved


@jax.custom_vjp
def host_attend(q_BxQxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array, mask: jax.Array | None):
  """``attend``'s 'xla' math (boolean mask, no bias) with its backward written out: dS = P ⊙ (dP − rowsum(dO ⊙ O)),
  every matmul in the layout XLA:CPU runs fastest. ``attend``'s kernel on the host up to ``HOST_SCORES_MAX``."""
  return _host_forward(q_BxQxHxK, k_BxSxHxK, v_BxSxHxK, mask)[0]


def _host_backward(saved, d_out_BxQxHxK):
  q_BxHxQxK, k_BxHxSxK, v_BxHxSxK, weights_BxHxQxS, total_BxHxQx1, out_BxHxQxK, mask = saved
  scale = q_BxHxQxK.shape[-1] ** -0.5
  d_out_BxHxQxK = jnp.swapaxes(d_out_BxQxHxK, 1, 2).astype(jnp.float32) / total_BxHxQx1
  d_weights_BxHxQxS = _bmm(d_out_BxHxQxK.astype(v_BxHxSxK.dtype), v_BxHxSxK, 3, 3)
  row_BxHxQx1 = jnp.sum(d_out_BxHxQxK * out_BxHxQxK, axis=-1, keepdims=True)
  d_logits_BxHxQxS = weights_BxHxQxS * (d_weights_BxHxQxS - row_BxHxQx1)  # dO/total above: P̂ ⊙ (dP̂ − row)
  if mask is not None:  # masked scores are constants (a fully masked row's uniform average has no gradient)
    d_logits_BxHxQxS = jnp.where(mask, d_logits_BxHxQxS, 0.0)
  d_q_BxHxQxK = _bmm(d_logits_BxHxQxS.astype(k_BxHxSxK.dtype), k_BxHxSxK, 3, 2) * scale
  # dK and dV come out as [B, H, K, S] (XLA:CPU's fast form); the barrier keeps XLA from fusing the transpose back.
  d_k_BxHxKxS, d_v_BxHxKxS = jax.lax.optimization_barrier(
    (
      _bmm(q_BxHxQxK, d_logits_BxHxQxS.astype(q_BxHxQxK.dtype), 2, 2),
      _bmm(d_out_BxHxQxK.astype(weights_BxHxQxS.dtype), weights_BxHxQxS, 2, 2),
    )
  )
  return (
    jnp.swapaxes(d_q_BxHxQxK, 1, 2).astype(q_BxHxQxK.dtype),
    jnp.transpose(d_k_BxHxKxS, (0, 3, 1, 2)).astype(k_BxHxSxK.dtype),
    jnp.transpose(d_v_BxHxKxS, (0, 3, 1, 2)).astype(v_BxHxSxK.dtype),
    None,
  )


host_attend.defvjp(_host_forward, _host_backward)


def _key_blocks(x_BxSx___: jax.Array, chunk: int, fill) -> jax.Array:
  """[B, S, ...] → [n, B, chunk, ...], the tail padded with ``fill`` up to n·chunk."""
  b, s = x_BxSx___.shape[:2]
  n = -(-s // chunk)
  pad = [(0, 0), (0, n * chunk - s)] + [(0, 0)] * (x_BxSx___.ndim - 2)
  x = jnp.pad(x_BxSx___, pad, constant_values=fill)
  return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)


def chunked_attend(
  q_BxQxHxK: jax.Array,
  k_BxSxHxK: jax.Array,
  v_BxSxHxK: jax.Array,
  mask: jax.Array | None,
  *,
  is_causal: bool = False,
  chunk: int = KV_CHUNK,
) -> jax.Array:
  """``attend``'s 'xla' result computed ``chunk`` keys at a time with an online softmax (flash-attention style).

  A running max, denominator and value sum are rescaled block by block, so no [Q, S] score matrix exists per head.
  Each block is rematerialised in the backward pass (``jax.checkpoint``), so what is saved per layer is the
  per-block carry ([B, Q, H, K] + 2·[B, H, Q]) instead of the float32 [B, H, Q, S] scores and probabilities.
  Masked keys score ``_NEG`` as in ``attend`` (a fully masked row averages uniformly); the padding that rounds S up
  to whole blocks scores -inf, so it never counts.
  """
  b, q_len, h, _ = q_BxQxHxK.shape
  s_len = k_BxSxHxK.shape[1]
  chunk = max(1, min(chunk, s_len))
  q_BxQxHxK = q_BxQxHxK * jnp.asarray(q_BxQxHxK.shape[-1] ** -0.5, q_BxQxHxK.dtype)
  ks, vs = _key_blocks(k_BxSxHxK, chunk, 0), _key_blocks(v_BxSxHxK, chunk, 0)
  slots = _key_blocks(jnp.broadcast_to(jnp.arange(s_len), (1, s_len)), chunk, -1)  # [n, 1, C]; -1 = padding
  if mask is not None:  # [B|1, 1, Q|1, S] → [n, B|1, C, 1, Q|1]: blocks along the key axis
    masks = _key_blocks(jnp.moveaxis(mask, 3, 1), chunk, False)
  else:
    masks = jnp.zeros((slots.shape[0],), bool)  # placeholder scanned alongside, unused

  @jax.checkpoint
  def block(carry, xs):
    total_BxHxQ, max_BxHxQ, out_BxQxHxK = carry
    k_BxCxHxK, v_BxCxHxK, slot_1xC, mask_block = xs
    logits_BxHxQxC = jnp.einsum("bqhk,bchk->bhqc", q_BxQxHxK, k_BxCxHxK, preferred_element_type=jnp.float32)
    allowed = None
    if mask is not None:  # [B|1, C, 1, Q|1] → [B|1, 1, Q|1, C]
      allowed = jnp.moveaxis(mask_block, 1, 3)
    if is_causal:
      causal = (slot_1xC[:, None, :] <= jnp.arange(q_len)[None, :, None])[:, None]  # [1, 1, Q, C]
      allowed = causal if allowed is None else allowed & causal
    if allowed is not None:
      logits_BxHxQxC = jnp.where(allowed, logits_BxHxQxC, _NEG)
    logits_BxHxQxC = jnp.where(slot_1xC[:, None, None, :] >= 0, logits_BxHxQxC, -jnp.inf)
    # The shift only guards exp's range (the result does not depend on it), so it needs no gradient.
    new_max = jax.lax.stop_gradient(jnp.maximum(max_BxHxQ, jnp.max(logits_BxHxQxC, axis=-1)))
    scale_BxHxQ = jnp.exp(max_BxHxQ - new_max)
    weights_BxHxQxC = jnp.exp(logits_BxHxQxC - new_max[..., None])
    total_BxHxQ = total_BxHxQ * scale_BxHxQ + jnp.sum(weights_BxHxQxC, axis=-1)
    part_BxQxHxK = jnp.einsum(
      "bhqc,bchk->bqhk", weights_BxHxQxC.astype(v_BxCxHxK.dtype), v_BxCxHxK, preferred_element_type=jnp.float32
    )
    out_BxQxHxK = out_BxQxHxK * jnp.swapaxes(scale_BxHxQ, 1, 2)[..., None] + part_BxQxHxK
    return (total_BxHxQ, new_max, out_BxQxHxK), None

  init = (
    jnp.zeros((b, h, q_len), jnp.float32),
    jnp.full((b, h, q_len), _NEG, jnp.float32),  # not -inf: exp(-inf - -inf) would be NaN
    jnp.zeros((b, q_len, h, v_BxSxHxK.shape[-1]), jnp.float32),
  )
  (total_BxHxQ, _, out_BxQxHxK), _ = jax.lax.scan(block, init, (ks, vs, slots, masks))
  return (out_BxQxHxK / jnp.swapaxes(total_BxHxQ, 1, 2)[..., None]).astype(v_BxSxHxK.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------


def init_layer_cache(config: ModelConfig, batch_size: int, max_len: int) -> dict[str, jax.Array]:
  """Empty key/value cache of one self-attention layer: k, v [B, T, G, K] in the compute dtype (G = key/value heads,
  fewer than the query heads under grouped-query attention)."""
  shape = (batch_size, max_len, config.kv_heads, config.head_dim)
  cache = {"k": jnp.zeros(shape, config.compute_dtype), "v": jnp.zeros(shape, config.compute_dtype)}
  if config.positions == "t5":  # relative positions need each slot's own position
    cache["pos"] = jnp.zeros((batch_size, max_len), jnp.int32)
  return cache


def t5_bucket(relative_BxQxS: jax.Array, bidirectional: bool, buckets: int, max_distance: int) -> jax.Array:
  """T5's bucket of each key − query offset: in a bidirectional stack half the buckets for keys after the query;
  of the rest, half exact offsets (0 … n/2 − 1), half log-spaced up to ``max_distance`` (and beyond it the last);
  in a causal stack only offsets ≤ 0 count (a later key is masked anyway)."""
  n = -relative_BxQxS  # how far the key is behind the query
  out = jnp.zeros_like(n)
  if bidirectional:
    buckets //= 2
    out = out + (n < 0).astype(n.dtype) * buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  exact = buckets // 2
  far = exact + (
    jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact) * (buckets - exact)
  ).astype(n.dtype)
  return out + jnp.where(n < exact, n, jnp.minimum(far, buckets - 1))


class _Output(nnx.Module):
  """Shared output projection [H, K, D] → D."""

  def __init__(self, config: ModelConfig, num_layers: int, rngs: nnx.Rngs, zero: bool = False):
    h, k, d = config.num_heads, config.head_dim, config.d_model
    init = normal((d * 2 * num_layers) ** -0.5)
    if zero:  # drawn and discarded, so every later parameter is the same as without it
      init = lambda key, shape, dt: 0.0 * normal(1.0)(key, shape, dt)  # noqa: E731
    self.out = param(rngs, init, (h, k, d), ("heads", "kv", "embed"))

  def project(self, y_BxLxHxK: jax.Array) -> jax.Array:
    return dense(y_BxLxHxK, self.out[...].astype(y_BxLxHxK.dtype), n_in=2)


class SelfAttention(_Output):
  """Self-attention with a fused QKV projection [D, H, 3, K], rotary positions if configured, and an optional cache.

  Grouped-query attention (``num_kv_heads`` = G < H): q [D, H, K] and a fused kv [D, G, 2, K] instead; query head h
  reads key/value head h // (H/G) (as Hugging Face's ``repeat_kv``), and the cache holds the G heads only. Biases
  (``attention_bias``): ``qkv_bias`` [H, 3, K] (or ``q_bias`` [H, K] + ``kv_bias`` [G, 2, K]), and with "all" also
  ``out_bias`` [D]."""

  def __init__(self, config: ModelConfig, *, num_layers: int, rngs: nnx.Rngs, causal: bool = False):
    super().__init__(config, num_layers, rngs)
    self.impl, self.dtype = config.attention_impl, config.compute_dtype
    self.rotary = config.positions == "rotary"
    self.relative, self.causal = config.positions == "t5", causal
    self.rope_base, self.rope_scaling = config.rope_base, rope_scaling_of(config)
    self.rotary_dims = config.rotary_dims
    h, g, k, d = config.num_heads, config.kv_heads, config.head_dim, config.d_model
    self.grouped, self.bias = g != h, config.attention_bias
    if self.grouped:
      self.q = param(rngs, normal(d**-0.5), (d, h, k), ("embed", "heads", "kv"))
      self.kv = param(rngs, normal(d**-0.5), (d, g, 2, k), ("embed", "heads", None, "kv"))
    else:
      self.qkv = param(rngs, normal(d**-0.5), (d, h, 3, k), ("embed", "heads", None, "kv"))
    if self.bias and self.grouped:
      self.q_bias, self.kv_bias = zeros((h, k), ("heads", "kv")), zeros((g, 2, k), ("heads", None, "kv"))
    elif self.bias:
      self.qkv_bias = zeros((h, 3, k), ("heads", None, "kv"))
    if self.bias == "all":
      self.out_bias = zeros((d,), ("embed",))
    if self.relative:
      self.rel_bias = param(rngs, normal(d**-0.5), (T5_BUCKETS, h), (None, "heads"))

  def relative_bias(self, q_pos_BxQ: jax.Array, k_pos_BxS: jax.Array) -> jax.Array:
    """[B, H, Q, S] float32: the learned bias of each (query, key) offset's T5 bucket."""
    relative = k_pos_BxS[:, None, :].astype(jnp.int32) - q_pos_BxQ[:, :, None].astype(jnp.int32)
    bucket_BxQxS = t5_bucket(relative, not self.causal, T5_BUCKETS, T5_MAX_DISTANCE)
    return jnp.moveaxis(self.rel_bias[...].astype(jnp.float32)[bucket_BxQxS], -1, 1)

  def _project_qkv(self, x_BxLxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q [B, L, H, K], k and v [B, L, G, K]."""
    if not self.grouped:
      qkv_BxLxHx3xK = dense(x_BxLxD, self.qkv[...].astype(self.dtype))
      if self.bias:
        qkv_BxLxHx3xK = add_bias(qkv_BxLxHx3xK, self.qkv_bias)
      return qkv_BxLxHx3xK[..., 0, :], qkv_BxLxHx3xK[..., 1, :], qkv_BxLxHx3xK[..., 2, :]
    q_BxLxHxK = dense(x_BxLxD, self.q[...].astype(self.dtype))
    kv_BxLxGx2xK = dense(x_BxLxD, self.kv[...].astype(self.dtype))
    if self.bias:
      q_BxLxHxK, kv_BxLxGx2xK = add_bias(q_BxLxHxK, self.q_bias), add_bias(kv_BxLxGx2xK, self.kv_bias)
    return q_BxLxHxK, kv_BxLxGx2xK[..., 0, :], kv_BxLxGx2xK[..., 1, :]

  def __call__(
    self,
    x_BxLxD: jax.Array,
    *,
    positions_BxL: jax.Array,
    mask: jax.Array | None,
    is_causal: bool = False,
    cache: dict[str, jax.Array] | None = None,
    cache_index: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """Without a cache: attends within ``x``. With one: writes this chunk's keys/values at ``cache_index`` and
    attends over the whole cache (``mask`` [B, 1, L, T] then says which slots are visible)."""
    q, k, v = self._project_qkv(x_BxLxD)
    if self.rotary:  # one pair of angle tables for q and k; positions index the queries' or the cache's slots
      bound = max(q.shape[1], cache["k"].shape[1] if cache is not None else 0)
      sin_cos = rotary_sin_cos(positions_BxL, self.rotary_dims, self.rope_base, self.rope_scaling, bound)
      q, k = apply_rotary(q, sin_cos), apply_rotary(k, sin_cos)
    k_pos = positions_BxL
    if cache is not None:
      start = (0, cache_index, 0, 0)
      new = {
        "k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start),
        "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start),
      }
      if "pos" in cache:
        new["pos"] = jax.lax.dynamic_update_slice(cache["pos"], positions_BxL.astype(jnp.int32), (0, cache_index))
        k_pos = new["pos"]
      cache = new
      k, v = cache["k"], cache["v"]
    if self.grouped:  # each key/value head serves H/G consecutive query heads
      repeats = q.shape[2] // k.shape[2]
      k, v = jnp.repeat(k, repeats, axis=2), jnp.repeat(v, repeats, axis=2)
    if self.relative:
      bias = self.relative_bias(positions_BxL, k_pos)
      y = self.project(attend(q, k, v, mask, impl="xla", is_causal=is_causal, bias=bias))
    else:
      y = self.project(attend(q, k, v, mask, impl=self.impl, is_causal=is_causal))
    return (add_bias(y, self.out_bias) if self.bias == "all" else y), cache


class CrossAttention(_Output):
  """Attention from decoder states to an encoded sequence: q [D, H, K], fused kv [D, H, 2, K].

  With ``config.cross_positions == 'rotary'`` keys are rotated by their source position and queries by their target
  position plus the source length: the score of a (target, source) pair then depends on ``target + source length −
  source``, so "the last source token" (its EOS) is distance ``target + 1`` from every target row whatever the
  source's length, as a decoder's own prompt end is. ``'alibi'`` (Press et al. 2022) instead subtracts
  ``slope_h · (target + source length − source)`` from each head's scores (slopes 2^(−8h/H), h = 1…H): the same
  relative distance, with a prior towards the source's end from the first step, as causal locality gives a
  decoder (XLA attention only)."""

  def __init__(self, config: ModelConfig, *, num_layers: int, rngs: nnx.Rngs):
    # cross_zero_init: the cross branch adds nothing at first, the decoder starts as a plain LM.
    super().__init__(config, num_layers, rngs, zero=config.cross_zero_init)
    h, k, d = config.num_heads, config.head_dim, config.d_model
    self.impl, self.dtype = config.attention_impl, config.compute_dtype
    self.rotary = config.cross_positions == "rotary"
    self.alibi = config.cross_positions == "alibi"
    self.rope_base = config.rope_base
    self.slopes = tuple(2.0 ** (-8.0 * (i + 1) / h) for i in range(h))
    self.q = param(rngs, normal(d**-0.5), (d, h, k), ("embed", "heads", "kv"))
    self.kv = param(rngs, normal(d**-0.5), (d, h, 2, k), ("embed", "heads", None, "kv"))

  def project_kv(self, encoded_BxSxD: jax.Array, positions_BxS: jax.Array | None = None) -> dict[str, jax.Array]:
    """Keys/values of the encoded sequence (keys rotated by ``positions_BxS`` with rotary cross-attention);
    decoding computes them once and keeps them in the cache."""
    kv_BxSxHx2xK = dense(encoded_BxSxD.astype(self.dtype), self.kv[...].astype(self.dtype))
    k = kv_BxSxHx2xK[..., 0, :]
    if self.rotary:
      k = rotary(k, positions_BxS, self.rope_base)
    out = {"k": k, "v": kv_BxSxHx2xK[..., 1, :]}
    if self.alibi:  # the bias needs the keys' positions at every decoding step
      out["pos"] = jnp.asarray(positions_BxS, jnp.int32)
    return out

  def __call__(
    self,
    x_BxLxD: jax.Array,
    *,
    mask: jax.Array | None,
    encoded_BxSxD: jax.Array | None = None,
    kv: dict[str, jax.Array] | None = None,
    positions_BxL: jax.Array | None = None,
    source_positions_BxS: jax.Array | None = None,
  ) -> jax.Array:
    """``positions_BxL`` (queries) and ``source_positions_BxS`` (keys, when ``kv`` is not given) are used only by
    rotary cross-attention."""
    if kv is None:
      kv = self.project_kv(encoded_BxSxD, source_positions_BxS)
    q = dense(x_BxLxD, self.q[...].astype(self.dtype))
    if self.rotary:
      q = rotary(q, positions_BxL, self.rope_base)
    if self.alibi:
      distance_BxLxS = (positions_BxL[:, :, None] - kv["pos"][:, None, :]).astype(jnp.float32)
      bias = -jnp.asarray(self.slopes, jnp.float32)[None, :, None, None] * distance_BxLxS[:, None]
      return self.project(attend(q, kv["k"], kv["v"], mask, impl="xla", bias=bias))
    return self.project(attend(q, kv["k"], kv["v"], mask, impl=self.impl))


def source_positions(encoder_segment_ids_BxS: jax.Array | None, batch: int, length: int) -> jax.Array:
  """[B, S] each source token's position within its segment (0 … S-1 without segment ids)."""
  if encoder_segment_ids_BxS is None:
    return jnp.broadcast_to(jnp.arange(length), (batch, length))
  seg = jnp.asarray(encoder_segment_ids_BxS)
  earlier = jnp.arange(length)[None, :] < jnp.arange(length)[:, None]
  count = jnp.sum((seg[:, :, None] == seg[:, None, :]) & earlier[None], axis=-1, dtype=jnp.int32)
  return jnp.where(seg != 0, count, 0)


def source_lengths(
  encoder_segment_ids_BxS: jax.Array | None,
  segment_ids_BxL: jax.Array | None,
  batch: int,
  length: int,
  source_length: int,
) -> jax.Array:
  """[B, L] the length of the source each target token reads: the source tokens of its segment (all non-pad ones
  without target segment ids; all ``source_length`` without source segment ids)."""
  if encoder_segment_ids_BxS is None:
    return jnp.full((batch, length), source_length, jnp.int32)
  src = jnp.asarray(encoder_segment_ids_BxS)
  if segment_ids_BxL is None:
    n_B = jnp.sum(src != 0, axis=-1, dtype=jnp.int32)
    return jnp.broadcast_to(n_B[:, None], (batch, length))
  same = (jnp.asarray(segment_ids_BxL)[:, :, None] == src[:, None, :]) & (src[:, None, :] != 0)
  return jnp.sum(same, axis=-1, dtype=jnp.int32)
