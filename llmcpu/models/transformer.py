"""Pre-norm transformer layers and stacks (the part of a CPU between token embedding and output head).

A stack owns its position encoding (learned table or sinusoidal; rotary lives in attention), its layers and its
final norm, so a whole stack can be moved between models that share ``d_model`` (e.g. an ``Encoder``'s
``encoder`` into an ``EncoderDecoder``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llmcpu.models import attention
from llmcpu.models.config import ModelConfig
from llmcpu.models.layers import LearnedPositions, Mlp, Norm, sinusoidal

Cache = dict[str, Any]


def segment_positions(segment_ids_BxL: jax.Array) -> jax.Array:
  """[B, L] int32: each token's position within its segment, the number of earlier tokens of the row with the same
  id (0 at a document's first token, 0 on padding). The position a document would have run alone, also when its
  tokens are not contiguous (attention treats equal ids as one document). O(L²) like the segment mask itself."""
  seg_BxL = jnp.asarray(segment_ids_BxL)
  length = seg_BxL.shape[1]
  earlier_LxL = jnp.arange(length)[None, :] < jnp.arange(length)[:, None]  # [i, j]: j before i
  same_BxLxL = seg_BxL[:, :, None] == seg_BxL[:, None, :]
  count_BxL = jnp.sum(same_BxLxL & earlier_LxL[None], axis=-1, dtype=jnp.int32)
  return jnp.where(seg_BxL != 0, count_BxL, 0)


class Block(nnx.Module):
  """x + SelfAttn(norm(x)) [+ CrossAttn(norm(x), encoded)] + Mlp(norm(x)), each branch reading the stream as the
  previous one left it; with ``parallel_residual`` (GPT-NeoX) x + SelfAttn(norm1(x)) + Mlp(norm2(x)), both reading x."""

  def __init__(self, config: ModelConfig, *, num_layers: int, cross: bool, rngs: nnx.Rngs, causal: bool = False):
    self.attn_norm = Norm(config, rngs=rngs)
    self.attn = attention.SelfAttention(config, num_layers=num_layers, rngs=rngs, causal=causal)
    if cross:
      self.cross_norm = Norm(config, rngs=rngs)
      self.cross = attention.CrossAttention(config, num_layers=num_layers, rngs=rngs)
    self.has_cross, self.parallel = cross, config.parallel_residual
    self.mlp_norm = Norm(config, rngs=rngs)
    self.mlp = Mlp(config, num_layers=num_layers, rngs=rngs)

  def __call__(
    self,
    x_BxLxD: jax.Array,
    *,
    positions_BxL: jax.Array,
    mask: jax.Array | None,
    is_causal: bool,
    cross_mask: jax.Array | None = None,
    encoded_BxSxD: jax.Array | None = None,
    cross_kv: dict[str, jax.Array] | None = None,
    cache: dict[str, jax.Array] | None = None,
    cache_index: jax.Array | None = None,
    cross_positions_BxL: jax.Array | None = None,
    source_positions_BxS: jax.Array | None = None,
  ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
    """``cross_positions_BxL``/``source_positions_BxS``: query and key positions of rotary cross-attention."""
    y, cache = self.attn(
      self.attn_norm(x_BxLxD),
      positions_BxL=positions_BxL,
      mask=mask,
      is_causal=is_causal,
      cache=cache,
      cache_index=cache_index,
    )
    if self.parallel:
      return x_BxLxD + y + self.mlp(self.mlp_norm(x_BxLxD)), cache
    x_BxLxD = x_BxLxD + y
    if self.has_cross:
      x_BxLxD = x_BxLxD + self.cross(
        self.cross_norm(x_BxLxD),
        mask=cross_mask,
        encoded_BxSxD=encoded_BxSxD,
        kv=cross_kv,
        positions_BxL=cross_positions_BxL,
        source_positions_BxS=source_positions_BxS,
      )
    return x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD)), cache


# What a rematerialised block keeps for the backward pass (model.remat); the rest is recomputed from its input.
REMAT_POLICIES = {"dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable, "full": None}


def _remat(policy: str, causal: bool):
  """One block's full-sequence pass, ``fn(layer, x, positions, mask, cross_mask, encoded, cross_pos, src_pos) → x``,
  wrapped in
  ``nnx.remat`` per ``model.remat``: 'none' keeps every intermediate, 'dots' the weight matmuls' outputs (not the
  [B, H, Q, S] attention scores, which are batched dots), 'full' only the block's inputs."""

  def run(layer, x_BxLxD, positions, mask, cross_mask, encoded, cross_positions=None, source_positions=None):
    out, _ = layer(
      x_BxLxD,
      positions_BxL=positions,
      mask=mask,
      is_causal=causal,
      cross_mask=cross_mask,
      encoded_BxSxD=encoded,
      cross_positions_BxL=cross_positions,
      source_positions_BxS=source_positions,
    )
    return out

  return run if policy == "none" else nnx.remat(run, policy=REMAT_POLICIES[policy])


class TransformerStack(nnx.Module):
  """Positions + ``num_layers`` blocks + final norm. ``causal`` for decoders, ``cross`` for enc-dec decoders."""

  def __init__(self, config: ModelConfig, *, num_layers: int, causal: bool, cross: bool, rngs: nnx.Rngs):
    self.config, self.causal, self.cross = config, causal, cross
    if config.positions == "learned":
      self.pos_embed = LearnedPositions(config, rngs=rngs)
    self.layers = nnx.List(
      [Block(config, num_layers=num_layers, cross=cross, causal=causal, rngs=rngs) for _ in range(num_layers)]
    )
    self.final_norm = Norm(config, rngs=rngs)

  def _add_positions(self, x_BxLxD: jax.Array, positions_BxL: jax.Array) -> jax.Array:
    c = self.config
    if c.positions == "learned":
      return x_BxLxD + self.pos_embed(positions_BxL)
    if c.positions == "sinusoidal":
      return x_BxLxD + sinusoidal(positions_BxL, c.d_model, c.compute_dtype)
    return x_BxLxD  # rotary: applied to queries/keys inside attention

  def __call__(
    self,
    x_BxLxD: jax.Array,
    *,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
    encoded: jax.Array | None = None,
    encoder_segment_ids: jax.Array | None = None,
  ) -> jax.Array:
    """Full-sequence pass. segment_ids [B, L]: 0 = padding, attention stays within equal ids. Cross-attention
    sees encoder tokens with nonzero ``encoder_segment_ids``, and only the matching segment when ``segment_ids``
    is given too (packed source/target pairs). Without ``positions``: 0 … L-1, or, with ``segment_ids``, restarting
    at every segment (``segment_positions``), so a packed document is positioned as if it ran alone. Given
    rotary ``positions`` must lie in [0, L) (rotary's tables, ``layers.rotary_sin_cos``; outside: NaN)."""
    batch, length = x_BxLxD.shape[:2]
    if positions is None and segment_ids is not None:
      positions = segment_positions(segment_ids)
    elif positions is None:
      positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    mask = None if segment_ids is None else attention.segment_mask(segment_ids, segment_ids)
    if segment_ids is not None and self.config.attention_impl == "pallas":  # the kernel takes ids, not [L, L]
      mask = attention.SegmentIds(segment_ids, segment_ids)
    cross_mask = None
    if self.cross and encoder_segment_ids is not None:
      if segment_ids is not None:
        cross_mask = attention.segment_mask(segment_ids, encoder_segment_ids)
      else:
        cross_mask = attention.key_mask(encoder_segment_ids != 0)
    cross_positions = source_positions = None
    if self.cross and self.config.cross_positions:
      src_len = encoded.shape[1]
      source_positions = attention.source_positions(encoder_segment_ids, batch, src_len)
      lengths = attention.source_lengths(encoder_segment_ids, segment_ids, batch, length, src_len)
      cross_positions = positions + lengths
    x_BxLxD = self._add_positions(x_BxLxD, positions)
    run = _remat(self.config.remat, self.causal)
    for layer in self.layers:
      x_BxLxD = run(layer, x_BxLxD, positions, mask, cross_mask, encoded, cross_positions, source_positions)
    return self.final_norm(x_BxLxD)

  def tapped(self, x_BxLxD: jax.Array, tap: int) -> tuple[jax.Array, jax.Array]:
    """A causal stack without cross-attention on one unpadded sequence per row (``__call__`` with no segments):
    (the residual stream after the first ``tap`` blocks, the final normed states), e.g. for a loss on a middle
    layer (porting.distill)."""
    if self.cross or not 0 < tap <= len(self.layers):
      raise ValueError(f"tapped needs a stack without cross-attention and 1 ≤ tap ≤ {len(self.layers)}, got {tap}")
    batch, length = x_BxLxD.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    x_BxLxD, middle = self._add_positions(x_BxLxD, positions), None
    for i, layer in enumerate(self.layers):
      x_BxLxD, _ = layer(x_BxLxD, positions_BxL=positions, mask=None, is_causal=self.causal, cross_mask=None)
      middle = x_BxLxD if i + 1 == tap else middle
    return middle, self.final_norm(x_BxLxD)

  # -- decoding -----------------------------------------------------------------------------------------------

  def init_cache(
    self,
    batch_size: int,
    max_len: int,
    *,
    encoded: jax.Array | None = None,
    encoder_valid: jax.Array | None = None,
  ) -> Cache:
    """An empty cache of ``max_len`` slots. For a cross-attending stack, the encoded sequence's keys/values are
    projected here, once. ``encoder_valid`` [B, S] marks real (non-pad) encoder tokens."""
    cache: Cache = {
      "index": jnp.zeros((), jnp.int32),
      "valid": jnp.zeros((batch_size, max_len), bool),
      "layers": tuple(attention.init_layer_cache(self.config, batch_size, max_len) for _ in self.layers),
    }
    if self.cross:
      if encoder_valid is None:
        encoder_valid = jnp.ones(encoded.shape[:2], bool)
      valid = jnp.asarray(encoder_valid).astype(jnp.int32)
      source_positions = None
      if self.config.cross_positions:  # a source is its valid tokens, counted from 0
        source_positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0) * valid
        cache["cross_offset"] = jnp.sum(valid, axis=1, dtype=jnp.int32)
      cache["cross"] = tuple(layer.cross.project_kv(encoded, source_positions) for layer in self.layers)
      cache["cross_mask"] = attention.key_mask(encoder_valid)
    return cache

  def extend(
    self, x_BxLxD: jax.Array, cache: Cache, *, positions: jax.Array, valid: jax.Array | None = None
  ) -> tuple[jax.Array, Cache]:
    """Runs L new tokens (slots index … index+L-1) against the cache; ``valid`` [B, L] False marks padding
    (e.g. the left padding of a short prompt), which no later token attends to. Rotary ``positions`` lie in
    [0, max(L, cache slots)) (``layers.rotary_sin_cos``)."""
    batch, length = x_BxLxD.shape[:2]
    index = cache["index"]
    if valid is None:
      valid = jnp.ones((batch, length), bool)
    kv_valid_BxT = jax.lax.dynamic_update_slice(cache["valid"], valid.astype(bool), (0, index))
    mask = attention.key_mask(kv_valid_BxT) & attention.causal_mask(length, kv_valid_BxT.shape[1], index)
    cross_positions = positions + cache["cross_offset"][:, None] if "cross_offset" in cache else None
    x_BxLxD = self._add_positions(x_BxLxD, positions)
    new_layers = []
    for i, layer in enumerate(self.layers):
      x_BxLxD, layer_cache = layer(
        x_BxLxD,
        positions_BxL=positions,
        mask=mask,
        is_causal=False,
        cross_mask=cache.get("cross_mask"),
        cross_kv=cache["cross"][i] if self.cross else None,
        cache=cache["layers"][i],
        cache_index=index,
        cross_positions_BxL=cross_positions,
      )
      new_layers.append(layer_cache)
    new_cache = dict(cache, index=index + length, valid=kv_valid_BxT, layers=tuple(new_layers))
    return self.final_norm(x_BxLxD), new_cache
