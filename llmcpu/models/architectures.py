"""The three CPUs: ``Encoder`` (bidirectional, MLM logits, pooled embedding), ``Decoder`` (causal LM) and
``EncoderDecoder`` (T5-style; ``encode``/``decode`` usable on their own).

Attribute names other code relies on (porting, swapping, sharding):
  ``embed.table``   token embedding [V, D] (shared by both stacks of an EncoderDecoder, unless it is stitched);
  ``encoder_embed.table``, ``stitch.kernel``/``stitch.bias``  a stitched EncoderDecoder's encoder-side table (its
                    own ISA) and the map into cross-attention (``ModelConfig.encoder_config`` / ``stitch``);
  ``head.kernel``   separate output projection [D, V], present only when ``tie_embeddings`` is False;
  ``encoder`` / ``decoder``  the ``TransformerStack``s (an Encoder has ``encoder``, a Decoder ``decoder``);
  ``illegal_opcodes``  the ``IllegalOpcodes`` counter.
Logits are float32 whatever the compute dtype. ``hidden(...)`` (same arguments as ``__call__``) gives the final
hidden states and ``head_kernel()`` the output projection, so a loss can apply the head a chunk at a time
(``llmcpu.training.loss.chunked_sums``) instead of materialising the [B, L, V] logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.errors import TraceContextError

from llmcpu.errors import UserError
from llmcpu.models.config import ModelConfig
from llmcpu.models.layers import Embed, Head, LearnedPositions, Prefix, Stitch, sinusoidal
from llmcpu.models.opcodes import IllegalOpcodes, check_eager, sanitize_ids
from llmcpu.models.transformer import Cache, TransformerStack, segment_positions
from llmcpu.specials import PAD_ID


class _LanguageModel(nnx.Module):
  """Shared input path (sanitize ids → count illegal → embed) and output head."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = Embed(config, rngs=rngs)
    if not config.tie_embeddings:
      self.head = Head(config, rngs=rngs)
    self.illegal_opcodes = IllegalOpcodes(jnp.asarray(np.zeros((), np.int32)))

  def embed_ids(self, ids_BxL: jax.Array, positions: jax.Array | None = None) -> jax.Array:
    return self._embed_with(self.embed, self.config, ids_BxL, positions)

  def _embed_with(self, embed: Embed, c: ModelConfig, ids_BxL: jax.Array, positions: jax.Array | None) -> jax.Array:
    """Sanitize ``ids_BxL`` for ISA ``c.vocab_size`` (counting illegal ones), then look them up in ``embed``."""
    if not isinstance(ids_BxL, jax.Array):
      ids_BxL = np.asarray(ids_BxL)
    if ids_BxL.ndim != 2:
      raise UserError(f"token ids must have shape [batch, length], got {ids_BxL.shape}")
    if c.positions == "learned" and positions is None and ids_BxL.shape[1] > c.max_len:
      raise UserError(f"sequence length {ids_BxL.shape[1]} exceeds the model's max_len={c.max_len}")
    ids_BxL, num_illegal = sanitize_ids(ids_BxL, c.vocab_size, c.illegal_id_policy, c.unk_id)
    try:
      self.illegal_opcodes[...] = self.illegal_opcodes[...] + num_illegal
    except TraceContextError as e:
      raise UserError(
        "cannot update the model's IllegalOpcodes counter from this trace: inside jax.grad/scan/while_loop, build "
        "the model with nnx.merge(graphdef, *states, copy=True) (or use nnx.grad/nnx.jit) and return its state"
      ) from e
    check_eager(num_illegal, c.illegal_id_policy, c.vocab_size)
    return embed.lookup(ids_BxL)

  def logits(self, h_BxLxD: jax.Array) -> jax.Array:
    if self.config.tie_embeddings:
      return self.embed.attend(h_BxLxD)
    return self.head(h_BxLxD)

  def head_kernel(self) -> jax.Array:
    """The output projection [D, V] in the compute dtype: ``logits(h)`` is ``h @ head_kernel()`` in float32."""
    if self.config.tie_embeddings:
      return self.embed.table[...].astype(self.config.compute_dtype).T
    return self.head.kernel[...].astype(self.config.compute_dtype)


class Decoder(_LanguageModel):
  """Causal language model: ``model(ids [B, L]) -> logits [B, L, V]``."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    self.decoder = TransformerStack(config, num_layers=config.num_layers, causal=True, cross=False, rngs=rngs)

  def __call__(
    self, ids_BxL: jax.Array, *, segment_ids: jax.Array | None = None, positions: jax.Array | None = None
  ) -> jax.Array:
    """segment_ids [B, L]: 0 = padding, tokens attend only within equal nonzero ids (packed documents);
    positions [B, L]: position within the segment (default: counted within each segment, or 0 … L-1 without
    ``segment_ids``). None → one unpadded document per row."""
    return self.logits(self.hidden(ids_BxL, segment_ids=segment_ids, positions=positions))

  def hidden(
    self, ids_BxL: jax.Array, *, segment_ids: jax.Array | None = None, positions: jax.Array | None = None
  ) -> jax.Array:
    """Final (normed) hidden states [B, L, D]."""
    x_BxLxD = self.embed_ids(ids_BxL, positions)
    return self.decoder(x_BxLxD, segment_ids=segment_ids, positions=positions)

  def init_cache(self, batch_size: int, max_len: int) -> Cache:
    return self.decoder.init_cache(batch_size, max_len)

  def extend(
    self, ids_BxL: jax.Array, cache: Cache, *, positions: jax.Array, valid: jax.Array | None = None
  ) -> tuple[jax.Array, Cache]:
    """Cached decoding: feeds L new tokens after the cached ones; returns their logits and the new cache."""
    h_BxLxD, cache = self.decoder.extend(self.embed_ids(ids_BxL, positions), cache, positions=positions, valid=valid)
    return self.logits(h_BxLxD), cache


class Encoder(_LanguageModel):
  """Bidirectional encoder: ``model(ids) -> MLM logits [B, L, V]``; ``embed_pooled(ids) -> [B, D]``."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    self.encoder = TransformerStack(config, num_layers=config.num_layers, causal=False, cross=False, rngs=rngs)

  def hidden(
    self, ids_BxL: jax.Array, *, segment_ids: jax.Array | None = None, positions: jax.Array | None = None
  ) -> jax.Array:
    """Final (normed) hidden states [B, L, D]."""
    return self.encoder(self.embed_ids(ids_BxL, positions), segment_ids=segment_ids, positions=positions)

  def __call__(
    self, ids_BxL: jax.Array, *, segment_ids: jax.Array | None = None, positions: jax.Array | None = None
  ) -> jax.Array:
    return self.logits(self.hidden(ids_BxL, segment_ids=segment_ids, positions=positions))

  def embed_pooled(
    self, ids_BxL: jax.Array, *, segment_ids: jax.Array | None = None, positions: jax.Array | None = None
  ) -> jax.Array:
    """Sentence embedding [B, D] (float32): mean of final hidden states over non-pad tokens. Without
    ``segment_ids``, padding is taken to be the PAD id (and is masked in attention too)."""
    if segment_ids is None:
      ids_BxL = ids_BxL if isinstance(ids_BxL, jax.Array) else np.asarray(ids_BxL)
      segment_ids = jnp.asarray((ids_BxL != PAD_ID).astype(np.int32))
    h_BxLxD = self.hidden(ids_BxL, segment_ids=segment_ids, positions=positions).astype(jnp.float32)
    weight_BxL = (segment_ids != 0).astype(jnp.float32)
    total_BxD = jnp.einsum("bld,bl->bd", h_BxLxD, weight_BxL)
    return total_BxD / jnp.maximum(weight_BxL.sum(axis=1, keepdims=True), 1.0)


class EncoderDecoder(_LanguageModel):
  """T5-style: shared token embedding, bidirectional ``encoder``, causal cross-attending ``decoder``.

  Stitched (``config.encoder_config``): the encoder has its own table and shape (another CPU's, another ISA), and
  with ``config.stitch`` its output goes through ``stitch`` into the decoder's width."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    enc = config.encoder
    if config.encoder_config is not None:
      self.encoder_embed = Embed(enc, rngs=rngs)
    self.encoder = TransformerStack(enc, num_layers=enc.num_layers, causal=False, cross=False, rngs=rngs)
    self.decoder = TransformerStack(config, num_layers=config.decoder_layers, causal=True, cross=True, rngs=rngs)
    if config.stitch:
      self.stitch = Stitch(enc.d_model, config.d_model, dtype=config.compute_dtype)
    if config.pool:
      dtype = config.compute_dtype
      self.prefix = Prefix(config.d_model, config.pool, config.d_model, config.relative, rngs=rngs, dtype=dtype)
    if config.encoder_positions == "learned":  # created last: every other parameter is drawn as without it
      self.encoder_pos = LearnedPositions(enc, rngs=rngs)

  def encode(
    self, encoder_ids: jax.Array, *, segment_ids: jax.Array | None = None, positions: jax.Array | None = None
  ) -> jax.Array:
    """Encoded source [B, Le, D] (stitched: read with the encoder's own ISA, mapped into the decoder's width); with
    ``pool=k``, the k vectors [B, k, D] made from the source's one embedding (``embedding`` → ``condition``)."""
    if self.config.pool:
      return self.condition(self.embedding(encoder_ids, segment_ids=segment_ids, positions=positions))
    h_BxLxD = self._encoder_states(encoder_ids, segment_ids, positions)
    return self.stitch(h_BxLxD) if self.config.stitch else h_BxLxD

  def _encoder_states(self, ids: jax.Array, segment_ids: jax.Array | None, positions: jax.Array | None) -> jax.Array:
    c = self.config
    if c.encoder_config is None:
      x_BxLxD = self.embed_ids(ids, positions)
    else:
      x_BxLxD = self._embed_with(self.encoder_embed, c.encoder_config, ids, positions)
    if c.encoder_positions:  # absolute positions at the encoder input, on top of the stack's own (issue 23)
      x_BxLxD = x_BxLxD + self._absolute(x_BxLxD, segment_ids, positions)
    return self.encoder(x_BxLxD, segment_ids=segment_ids, positions=positions)

  def _absolute(self, x_BxLxD: jax.Array, segment_ids: jax.Array | None, positions: jax.Array | None) -> jax.Array:
    """``encoder_positions``' encodings [B, L, D] of the source positions (the stack's defaults when not given)."""
    batch, length = x_BxLxD.shape[:2]
    if positions is None:
      if segment_ids is not None:
        positions = segment_positions(segment_ids)
      else:
        positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    if self.config.encoder_positions == "learned":
      return self.encoder_pos(positions).astype(x_BxLxD.dtype)
    return sinusoidal(positions, x_BxLxD.shape[-1], x_BxLxD.dtype)

  def embedding(
    self, encoder_ids: jax.Array, *, segment_ids: jax.Array | None = None, positions: jax.Array | None = None
  ) -> jax.Array:
    """The source's embedding [B, D_enc] (float32): the mean of the encoder's final states over its tokens
    (``Encoder.embed_pooled``'s definition; without ``segment_ids`` padding is the PAD id)."""
    if segment_ids is None:
      ids = encoder_ids if isinstance(encoder_ids, jax.Array) else np.asarray(encoder_ids)
      segment_ids = jnp.asarray((ids != PAD_ID).astype(np.int32))
    h_BxLxD = self._encoder_states(encoder_ids, segment_ids, positions).astype(jnp.float32)
    weight_BxL = (segment_ids != 0).astype(jnp.float32)
    total_BxD = jnp.einsum("bld,bl->bd", h_BxLxD, weight_BxL)
    return total_BxD / jnp.maximum(weight_BxL.sum(axis=1, keepdims=True), 1.0)

  def condition(self, embedding_BxD: jax.Array) -> jax.Array:
    """An embedding [B, D_enc] (this encoder's, another's, or any vector) → the k vectors [B, k, D] the decoder
    reads (``pool`` models only)."""
    v_BxD = self.stitch(embedding_BxD) if self.config.stitch else embedding_BxD
    return self.prefix(v_BxD)

  def decode(
    self,
    decoder_ids: jax.Array,
    encoded: jax.Array,
    *,
    encoder_segment_ids: jax.Array | None = None,
    decoder_segment_ids: jax.Array | None = None,
    decoder_positions: jax.Array | None = None,
  ) -> jax.Array:
    """Teacher-forced logits [B, Ld, V] given an encoded source. ``encoder_segment_ids`` (0 = pad) masks the source;
    with ``decoder_segment_ids`` too, target segment i sees only source segment i (packed pairs)."""
    return self.logits(
      self.decode_hidden(
        decoder_ids,
        encoded,
        encoder_segment_ids=encoder_segment_ids,
        decoder_segment_ids=decoder_segment_ids,
        decoder_positions=decoder_positions,
      )
    )

  def decode_hidden(
    self,
    decoder_ids: jax.Array,
    encoded: jax.Array,
    *,
    encoder_segment_ids: jax.Array | None = None,
    decoder_segment_ids: jax.Array | None = None,
    decoder_positions: jax.Array | None = None,
  ) -> jax.Array:
    """``decode`` before the output head: the decoder's final hidden states [B, Ld, D]."""
    return self.decoder(
      self.embed_ids(decoder_ids, decoder_positions),
      segment_ids=decoder_segment_ids,
      positions=decoder_positions,
      encoded=encoded,
      encoder_segment_ids=encoder_segment_ids,
    )

  def __call__(
    self,
    encoder_ids: jax.Array,
    decoder_ids: jax.Array,
    *,
    encoder_segment_ids: jax.Array | None = None,
    decoder_segment_ids: jax.Array | None = None,
    encoder_positions: jax.Array | None = None,
    decoder_positions: jax.Array | None = None,
  ) -> jax.Array:
    return self.logits(
      self.hidden(
        encoder_ids,
        decoder_ids,
        encoder_segment_ids=encoder_segment_ids,
        decoder_segment_ids=decoder_segment_ids,
        encoder_positions=encoder_positions,
        decoder_positions=decoder_positions,
      )
    )

  def hidden(
    self,
    encoder_ids: jax.Array,
    decoder_ids: jax.Array,
    *,
    encoder_segment_ids: jax.Array | None = None,
    decoder_segment_ids: jax.Array | None = None,
    encoder_positions: jax.Array | None = None,
    decoder_positions: jax.Array | None = None,
  ) -> jax.Array:
    """``__call__`` before the output head: the decoder's final hidden states [B, Ld, D]."""
    encoded = self.encode(encoder_ids, segment_ids=encoder_segment_ids, positions=encoder_positions)
    return self.decode_hidden(
      decoder_ids,
      encoded,
      encoder_segment_ids=None if self.config.pool else encoder_segment_ids,  # pooled: all k vectors are visible
      decoder_segment_ids=decoder_segment_ids,
      decoder_positions=decoder_positions,
    )

  def init_cache(self, encoded: jax.Array, max_len: int, *, encoder_valid: jax.Array | None = None) -> Cache:
    """Decoder cache of ``max_len`` slots; the source's cross-attention keys/values are computed here once."""
    encoder_valid = None if self.config.pool else encoder_valid  # pooled: the k vectors are all real
    return self.decoder.init_cache(encoded.shape[0], max_len, encoded=encoded, encoder_valid=encoder_valid)

  def extend(
    self, decoder_ids: jax.Array, cache: Cache, *, positions: jax.Array, valid: jax.Array | None = None
  ) -> tuple[jax.Array, Cache]:
    h, cache = self.decoder.extend(self.embed_ids(decoder_ids, positions), cache, positions=positions, valid=valid)
    return self.logits(h), cache


ARCH_CLASSES: dict[str, type[_LanguageModel]] = {
  "encoder": Encoder,
  "decoder": Decoder,
  "encoder_decoder": EncoderDecoder,
}
