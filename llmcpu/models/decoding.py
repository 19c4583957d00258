"""Batched, jitted, KV-cached generation (greedy, temperature, top-k, top-p) for decoders and encoder-decoders.

Decoder prompts are RIGHT-padded with PAD ([B, P]; row lengths from ``prompt_lengths`` or the last non-PAD token).
Internally each row is shifted to end at slot P-1 (left padding, masked out of attention, positions starting at 0
on the first real token), so that all rows then advance one slot per step in lock-step. Generation runs in a
``lax.while_loop`` that stops once every row has produced ``eos_id``; outputs after a row's EOS are PAD. The random
stream is ``fold_in(key(seed), step)``: the same seed gives the same ids.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llmcpu.errors import UserError
from llmcpu.models.architectures import Decoder, EncoderDecoder
from llmcpu.models.opcodes import IllegalOpcodes, check_eager
from llmcpu.specials import BOS_ID, EOS_ID, PAD_ID

_STATIC = ("graphdef", "max_new_tokens", "top_k", "greedy", "use_top_p")


def filter_logits(logits_BxV: jax.Array, *, top_k: int = 0, top_p: float | jax.Array = 1.0) -> jax.Array:
  """Sets logits outside the top-k, and outside the smallest set whose probability reaches top_p, to -inf."""
  logits_BxV = logits_BxV.astype(jnp.float32)
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  if not (isinstance(top_p, float) and top_p >= 1.0):
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_BxV = mass_before_BxV < top_p  # the most likely token is always kept
    threshold_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)
  return logits_BxV


def _sample(logits_BxV, key, temperature, top_p, *, top_k: int, greedy: bool, use_top_p: bool) -> jax.Array:
  if greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = filter_logits(logits_BxV / temperature, top_k=top_k, top_p=top_p if use_top_p else 1.0)
  return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


def _right_align(prompt_BxP: jax.Array, lengths_B: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Right-padded prompts → (left-padded ids, valid mask, positions counted from each row's first token)."""
  width = prompt_BxP.shape[1]
  src_BxP = jnp.arange(width)[None, :] - (width - lengths_B)[:, None]
  valid_BxP = src_BxP >= 0
  ids_BxP = jnp.take_along_axis(prompt_BxP, jnp.maximum(src_BxP, 0), axis=1)
  return jnp.where(valid_BxP, ids_BxP, PAD_ID), valid_BxP, jnp.maximum(src_BxP, 0)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_decoder(
  graphdef, state, prompt_BxP, lengths_B, key, temperature, top_p, eos_id, *, max_new_tokens, top_k, greedy, use_top_p
):
  n, sample = max_new_tokens, functools.partial(_sample, top_k=top_k, greedy=greedy, use_top_p=use_top_p)
  model = nnx.merge(graphdef, state)
  batch, width = prompt_BxP.shape
  ids_BxP, valid_BxP, positions_BxP = _right_align(prompt_BxP, lengths_B)
  logits_BxPxV, cache = model.extend(
    ids_BxP, model.init_cache(batch, width + n), positions=positions_BxP, valid=valid_BxP
  )
  counts = nnx.state(model, IllegalOpcodes)
  sampling = (key, temperature, top_p, eos_id, n, sample)
  return _continue(graphdef, state, logits_BxPxV[:, -1], cache, lengths_B, *sampling), counts


def _continue(graphdef, state, last_BxV, cache, lengths_B, key, temperature, top_p, eos_id, n, sample) -> jax.Array:
  """The cached loop after a prefill whose rows hold ``lengths_B`` tokens and whose last logits are ``last_BxV``
  (traced inside a jitted caller): ``n`` ids per row, PAD after its EOS."""
  batch = last_BxV.shape[0]

  def body(carry):
    t, last_BxV, cache, out_BxN, done_B = carry
    token_B = jnp.where(done_B, PAD_ID, sample(last_BxV, jax.random.fold_in(key, t), temperature, top_p))
    out_BxN = jax.lax.dynamic_update_slice(out_BxN, token_B[:, None], (0, t))
    done_B = done_B | (token_B == eos_id)
    step_model = nnx.merge(graphdef, state, copy=True)  # fresh Variables in the loop body's trace
    logits_Bx1xV, cache = step_model.extend(token_B[:, None], cache, positions=(lengths_B + t)[:, None])
    return t + 1, logits_Bx1xV[:, 0], cache, out_BxN, done_B

  carry = (jnp.int32(0), last_BxV, cache, jnp.full((batch, n), PAD_ID, jnp.int32), jnp.zeros(batch, bool))
  carry = jax.lax.while_loop(lambda c: (c[0] < n) & ~jnp.all(c[4]), body, carry)
  return carry[3]


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_uncached(
  graphdef, state, prompt_BxP, lengths_B, key, temperature, top_p, eos_id, *, max_new_tokens, top_k, greedy, use_top_p
):
  """Reference without a cache: each step re-runs the decoder over the whole (fixed-size) buffer."""
  n, sample = max_new_tokens, functools.partial(_sample, top_k=top_k, greedy=greedy, use_top_p=use_top_p)
  batch, width = prompt_BxP.shape
  ids_BxP, valid_BxP, _ = _right_align(prompt_BxP, lengths_B)
  buffer_BxT = jnp.concatenate([ids_BxP, jnp.full((batch, n), PAD_ID, jnp.int32)], axis=1)
  segments_BxT = jnp.concatenate([valid_BxP, jnp.ones((batch, n), bool)], axis=1).astype(jnp.int32)
  positions_BxT = jnp.maximum(jnp.arange(width + n)[None, :] - (width - lengths_B)[:, None], 0)

  def body(carry):
    t, buffer_BxT, done_B = carry
    model = nnx.merge(graphdef, state, copy=True)
    h_BxTxD = model.decoder(model.embed_ids(buffer_BxT), segment_ids=segments_BxT, positions=positions_BxT)
    last_Bx1xD = jax.lax.dynamic_slice_in_dim(h_BxTxD, width - 1 + t, 1, axis=1)
    last_BxV = model.logits(last_Bx1xD)[:, 0]
    token_B = jnp.where(done_B, PAD_ID, sample(last_BxV, jax.random.fold_in(key, t), temperature, top_p))
    buffer_BxT = jax.lax.dynamic_update_slice(buffer_BxT, token_B[:, None], (0, width + t))
    return t + 1, buffer_BxT, done_B | (token_B == eos_id)

  carry = jax.lax.while_loop(
    lambda c: (c[0] < n) & ~jnp.all(c[2]), body, (jnp.int32(0), buffer_BxT, jnp.zeros(batch, bool))
  )
  return carry[1][:, width:]


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_encoder_decoder(
  graphdef, state, source_BxS, valid_BxS, key, temperature, top_p, eos_id, bos_id, *, max_new_tokens, top_k, greedy,
  use_top_p
):  # fmt: skip
  model = nnx.merge(graphdef, state)
  encoded_BxSxD = model.encode(source_BxS, segment_ids=valid_BxS.astype(jnp.int32))
  sampling = dict(max_new_tokens=max_new_tokens, top_k=top_k, greedy=greedy, use_top_p=use_top_p)
  args = (key, temperature, top_p, eos_id, bos_id)
  out = _decode_encoded(graphdef, state, model, encoded_BxSxD, valid_BxS, *args, **sampling)
  return out, nnx.state(model, IllegalOpcodes)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_encoder_decoder_prompted(
  graphdef, state, source_BxS, valid_BxS, prompt_BxP, lengths_B, key, temperature, top_p, eos_id, *, max_new_tokens,
  top_k, greedy, use_top_p
):  # fmt: skip
  """An encoder-decoder whose decoder first reads ``prompt_BxP`` (right-padded, ``lengths_B`` ids, BOS first): the
  decoder context of ``ModelConfig.decoder_context``. Its loop is the decoder's, after a prefill of those ids."""
  n, sample = max_new_tokens, functools.partial(_sample, top_k=top_k, greedy=greedy, use_top_p=use_top_p)
  model = nnx.merge(graphdef, state)
  encoded_BxSxD = model.encode(source_BxS, segment_ids=valid_BxS.astype(jnp.int32))
  ids_BxP, prompt_valid_BxP, positions_BxP = _right_align(prompt_BxP, lengths_B)
  cache = model.init_cache(encoded_BxSxD, prompt_BxP.shape[1] + n, encoder_valid=valid_BxS)
  logits_BxPxV, cache = model.extend(ids_BxP, cache, positions=positions_BxP, valid=prompt_valid_BxP)
  counts = nnx.state(model, IllegalOpcodes)
  sampling = (key, temperature, top_p, eos_id, n, sample)
  return _continue(graphdef, state, logits_BxPxV[:, -1], cache, lengths_B, *sampling), counts


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_conditioned(
  graphdef, state, embedding_BxD, key, temperature, top_p, eos_id, *, max_new_tokens, top_k, greedy, use_top_p
):
  model = nnx.merge(graphdef, state)
  encoded_BxKxD = model.condition(embedding_BxD)
  sampling = dict(max_new_tokens=max_new_tokens, top_k=top_k, greedy=greedy, use_top_p=use_top_p)
  args = (key, temperature, top_p, eos_id, jnp.int32(BOS_ID))
  return _decode_encoded(graphdef, state, model, encoded_BxKxD, None, *args, **sampling)


def _decode_encoded(
  graphdef, state, model, encoded_BxSxD, valid_BxS, key, temperature, top_p, eos_id, bos_id, *, max_new_tokens, top_k,
  greedy, use_top_p
):  # fmt: skip
  """The decoder's loop from ``bos_id`` given the encoded source (traced inside a jitted caller)."""
  n, sample = max_new_tokens, functools.partial(_sample, top_k=top_k, greedy=greedy, use_top_p=use_top_p)
  batch = encoded_BxSxD.shape[0]
  cache = model.init_cache(encoded_BxSxD, n, encoder_valid=valid_BxS)

  def body(carry):
    t, token_B, cache, out_BxN, done_B = carry
    step_model = nnx.merge(graphdef, state, copy=True)
    positions_Bx1 = jnp.full((batch, 1), t, jnp.int32)
    logits_Bx1xV, cache = step_model.extend(token_B[:, None], cache, positions=positions_Bx1)
    token_B = sample(logits_Bx1xV[:, 0], jax.random.fold_in(key, t), temperature, top_p)
    token_B = jnp.where(done_B, PAD_ID, token_B)
    out_BxN = jax.lax.dynamic_update_slice(out_BxN, token_B[:, None], (0, t))
    return t + 1, token_B, cache, out_BxN, done_B | (token_B == eos_id)

  start_B = jnp.full((batch,), bos_id, jnp.int32)
  carry = (jnp.int32(0), start_B, cache, jnp.full((batch, n), PAD_ID, jnp.int32), jnp.zeros(batch, bool))
  carry = jax.lax.while_loop(lambda c: (c[0] < n) & ~jnp.all(c[4]), body, carry)
  return carry[3]


def generate_from_embedding(
  model: EncoderDecoder, embedding_BxD, max_new_tokens: int, temperature: float = 0.0, seed: int = 0
) -> jax.Array:
  """Generated ids [B, max_new_tokens] of an embedding readout (``ModelConfig.pool``) conditioned on the given
  embeddings [B, D_enc] — its own encoder's, another encoder's (mapped or not), or any vector (e.g. arithmetic)."""
  v = np.asarray(embedding_BxD, np.float32)
  if not isinstance(model, EncoderDecoder) or not model.config.pool:
    raise UserError("generate_from_embedding needs an embedding readout: an encoder_decoder with model.pool > 0")
  if v.ndim != 2 or v.shape[1] != model.config.encoder.d_model or not np.isfinite(v).all():
    raise UserError(
      f"embeddings must be finite [batch, {model.config.encoder.d_model}] (the encoder's width), got {list(v.shape)}"
    )
  static = dict(max_new_tokens=int(max_new_tokens), top_k=0, greedy=temperature == 0.0, use_top_p=False)
  dynamic = (jax.random.key(seed), jnp.float32(temperature or 1.0), jnp.float32(1.0), jnp.int32(EOS_ID))
  graphdef, state = nnx.split(model)
  return _generate_conditioned(graphdef, state, jnp.asarray(v), *dynamic, **static)


def _decoder_prompt(rows_in: list, batch: int, bos_id: int, c) -> tuple[jax.Array, jax.Array]:
  """``generate``'s ``decoder_prompt`` as right-padded ``[BOS] + ids`` rows and their lengths."""
  if len(rows_in) != batch:
    raise UserError(f"decoder_prompt has {len(rows_in)} rows for {batch} sources")
  rows = [[bos_id, *np.asarray(p, np.int64).tolist()] for p in rows_in]
  width = max(max(len(r) for r in rows), c.decoder_context + 1)  # a fixed width serves every batch: one compile
  prompt = np.full((len(rows), width), PAD_ID, np.int64)
  for i, r in enumerate(rows):
    prompt[i, : len(r)] = r
  # Its ids are the source's end, judged and counted there: read as the model's stand-in without a second count.
  prompt = np.where((prompt < 0) | (prompt >= c.vocab_size), c.unk_id, prompt)
  return jnp.asarray(prompt, jnp.int32), jnp.asarray([len(r) for r in rows], jnp.int32)


def _lengths(ids_BxP: np.ndarray, prompt_lengths) -> np.ndarray:
  if prompt_lengths is None:
    nonpad = ids_BxP != PAD_ID
    last = ids_BxP.shape[1] - np.argmax(nonpad[:, ::-1], axis=1)
    return np.where(nonpad.any(axis=1), last, 0).astype(np.int32)
  lengths = np.asarray(prompt_lengths, np.int32).reshape(-1)
  if lengths.shape != (ids_BxP.shape[0],) or (lengths > ids_BxP.shape[1]).any():
    raise UserError(f"prompt_lengths {lengths.tolist()} do not fit prompts of shape {ids_BxP.shape}")
  return lengths


def generate(
  model: Decoder | EncoderDecoder,
  prompt_ids,
  max_new_tokens: int,
  temperature: float = 0.0,
  seed: int = 0,
  top_k: int = 0,
  top_p: float = 1.0,
  eos_id: int = EOS_ID,
  prompt_lengths=None,
  *,
  use_cache: bool = True,
  bos_id: int = BOS_ID,
  decoder_prompt: list | None = None,
) -> jax.Array:
  """Generated ids [B, max_new_tokens] (PAD after a row's EOS).

  Decoder: ``prompt_ids`` [B, P] right-padded with PAD; every row needs at least one token (start it with BOS).
  EncoderDecoder: ``prompt_ids`` is the source [B, S] (PAD = padding); the decoder starts from ``bos_id`` (the
  model's ISA's BOS), then reads ``decoder_prompt`` (one id sequence per row, possibly empty; the decoder context
  of ``ModelConfig.decoder_context``) before it writes.
  temperature 0 → greedy; otherwise sample from softmax(logits / temperature) restricted to the top_k (0 = all)
  and the top_p nucleus. ``use_cache=False`` (decoders only) recomputes the whole prefix each step (a reference).
  Illegal ids in the prompt (judged at their own width) are mapped to UNK and counted on the model; under policy
  'error' they are refused before generating, on every path.
  """
  ids = np.asarray(prompt_ids)
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise UserError(f"prompt_ids must be integer ids of shape [batch, length], got {ids.dtype}{list(ids.shape)}")
  if max_new_tokens <= 0 or temperature < 0 or not 0 < top_p <= 1 or not 0 <= top_k <= model.config.vocab_size:
    raise UserError(
      f"bad decoding options: max_new_tokens={max_new_tokens} (>0), temperature={temperature} (>=0), "
      f"top_k={top_k} (0..vocab), top_p={top_p} (0<p<=1)"
    )
  c = model.config
  greedy = temperature == 0.0
  static = dict(max_new_tokens=int(max_new_tokens), top_k=int(top_k), greedy=greedy, use_top_p=top_p < 1.0)
  dynamic = (jax.random.key(seed), jnp.float32(temperature or 1.0), jnp.float32(top_p), jnp.int32(eos_id))
  lengths = _lengths(ids, prompt_lengths)
  # Judge the ids at their own width before any narrowing (an int64 id 2**32 + 5 would wrap to the legal id 5), the
  # same way for every path: counted on the model, refused under policy 'error' before any work.
  illegal = (ids < 0) | (ids >= c.vocab_size)
  if illegal.any():
    check_eager(jnp.int32(illegal.sum()), c.illegal_id_policy, c.vocab_size)
    model.illegal_opcodes[...] = model.illegal_opcodes[...] + int(illegal.sum())
    ids = np.where(illegal, c.unk_id, ids)
  ids = ids.astype(np.int32)
  graphdef, state = nnx.split(model)
  if isinstance(model, EncoderDecoder):
    if c.positions == "learned" and max_new_tokens > c.max_len:
      raise UserError(f"max_new_tokens={max_new_tokens} exceeds the model's max_len={c.max_len}")
    valid = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    source = (jnp.asarray(ids), jnp.asarray(valid))
    if decoder_prompt is None:
      out, counts = _generate_encoder_decoder(graphdef, state, *source, *dynamic, jnp.int32(bos_id), **static)
    else:
      args = (graphdef, state, *source, *_decoder_prompt(decoder_prompt, len(ids), bos_id, c), *dynamic)
      out, counts = _generate_encoder_decoder_prompted(*args, **static)
  elif isinstance(model, Decoder):
    if (lengths == 0).any():
      raise UserError(f"prompt rows {np.flatnonzero(lengths == 0).tolist()} are empty; start every prompt with BOS")
    if c.positions == "learned" and ids.shape[1] + max_new_tokens > c.max_len:
      raise UserError(f"prompt length + max_new_tokens = {ids.shape[1] + max_new_tokens} exceeds max_len={c.max_len}")
    args = (graphdef, state, jnp.asarray(ids), jnp.asarray(lengths), *dynamic)
    if not use_cache:
      return _generate_uncached(*args, **static)
    out, counts = _generate_decoder(*args, **static)
  else:
    raise UserError(f"generate needs a Decoder or an EncoderDecoder, got {type(model).__name__}")
  before = int(sum(int(x) for x in jax.tree.leaves(nnx.state(model, IllegalOpcodes))))
  nnx.update(model, counts)
  after = int(sum(int(x) for x in jax.tree.leaves(counts)))
  check_eager(jnp.int32(after - before), c.illegal_id_policy, c.vocab_size)
  return out
