"""The TPU's fused attention: jax's Pallas flash-attention kernel (``jax.experimental.pallas.ops.tpu``), called
here, not copied.

It takes the mask as segment ids (equal ids attend) plus a causal flag instead of a [B, 1, Q, S] boolean mask, so
the full-sequence self-attention hands it ``SegmentIds``; the [B, H, Q, S] scores exist only one VMEM tile at a
time, and the backward pass keeps q, k, v, the output and two float32 [B, H, Q] softmax statistics. It runs on a
TPU, or anywhere inside ``interpret()`` (Pallas's TPU interpret mode: slow, exact; how the tests check it on CPU).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp

from llmcpu.errors import UserError

# The kernel's default tile (jax 0.10.2's BlockSizes.get_default): lengths must be a multiple of it.
BLOCK = 128

# Set by ``interpret()`` and ``compiling_for_tpu()``: the kernel may be traced though this process's backend is no TPU.
_ALLOWED = contextvars.ContextVar("llmcpu_pallas_allowed", default=False)


class SegmentIds(NamedTuple):
  """Self-attention's mask as the ids it comes from: ``q`` [B, Q], ``kv`` [B, S]; 0 = padding."""

  q: jax.Array
  kv: jax.Array


@contextlib.contextmanager
def interpret() -> Iterator[None]:
  """Runs the TPU kernel in Pallas's interpret mode on any backend (tests on CPU): slow, same math."""
  from jax.experimental.pallas import tpu as pltpu

  with compiling_for_tpu(), pltpu.force_tpu_interpret_mode():
    yield


@contextlib.contextmanager
def compiling_for_tpu() -> Iterator[None]:
  """Lets the kernel be traced for a TPU this process does not have: an ahead-of-time compile for a TPU topology
  (``jax.experimental.topologies``, libtpu installed) on a CPU host."""
  token = _ALLOWED.set(True)
  try:
    yield
  finally:
    _ALLOWED.reset(token)


def check_backend() -> None:
  """A UserError unless this is a TPU (or ``interpret()``/``compiling_for_tpu()`` is on): a config error elsewhere."""
  if jax.default_backend() != "tpu" and not _ALLOWED.get():
    raise UserError(
      f"model.attention_impl=pallas is the TPU kernel and this backend is {jax.default_backend()}; "
      "use attention_impl=chunked (CPU) or cudnn (GPU)"
    )


def tiles(q_len: int, kv_len: int) -> bool:
  """Whether the kernel takes these lengths: whole 128-tiles (its segment-id masking needs 128-lane key tiles)."""
  return q_len % BLOCK == 0 and kv_len % BLOCK == 0


def _block_sizes():
  """One tile size for every axis of the forward and both backward kernels."""
  from jax.experimental.pallas.ops.tpu import flash_attention as fa

  b = BLOCK
  return fa.BlockSizes(
    block_q=b,
    block_k_major=b,
    block_k=b,
    block_b=1,
    block_q_major_dkv=b,
    block_k_major_dkv=b,
    block_k_dkv=b,
    block_q_dkv=b,
    block_k_major_dq=b,
    block_k_dq=b,
    block_q_dq=b,
  )


def flash_attend(
  q_BxQxHxK: jax.Array,
  k_BxSxHxK: jax.Array,
  v_BxSxHxK: jax.Array,
  segments: SegmentIds | None,
  *,
  is_causal: bool,
) -> jax.Array:
  """softmax(q·kᵀ/√K)·v within equal segment ids (and causal, aligned at slot 0), by the Pallas TPU kernel.

  Rows of real tokens equal ``attend``'s exactly (up to float rounding). Padding queries (id 0) differ: the kernel
  lets them attend to padding keys where ``attend`` averages every key; both are weighted out of the loss.
  """
  check_backend()
  if not tiles(q_BxQxHxK.shape[1], k_BxSxHxK.shape[1]):
    raise ValueError(f"flash_attend needs lengths in whole {BLOCK}-tiles (see tiles), got {q_BxQxHxK.shape[1]}")
  from jax.experimental.pallas.ops.tpu import flash_attention as fa

  sizes = _block_sizes()
  ids = None if segments is None else fa.SegmentIds(q=segments.q.astype(jnp.int32), kv=segments.kv.astype(jnp.int32))
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [B, L, H, K] ↔ [B, H, L, K], the kernel's layout
  out_BxHxQxK = fa.flash_attention(
    heads_first(q_BxQxHxK),
    heads_first(k_BxSxHxK),
    heads_first(v_BxSxHxK),
    segment_ids=ids,
    causal=is_causal,
    sm_scale=q_BxQxHxK.shape[-1] ** -0.5,
    block_sizes=sizes,
  )
  return heads_first(out_BxHxQxK)
