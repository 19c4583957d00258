"""The encoder-decoder design options of issue 23 (absolute encoder positions, rotary cross-attention, zero-initialised
cross-attention output) against float64 numpy references, their causality after two training steps, cached decoding,
and old checkpoints reading back as the old design."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import llmcpu.models as models
from llmcpu.errors import UserError
from llmcpu.models import attention
from llmcpu.models import config as model_config
from llmcpu.specials import BOS_ID, PAD_ID
from llmcpu.training import run_config

V, B = 40, 2
NEW = dict(encoder_positions="learned", cross_positions="rotary", cross_zero_init=True)


@functools.partial(jax.jit, static_argnames=("graphdef", "method"))
def _apply(graphdef, state, method, args, kwargs):
  return getattr(nnx.merge(graphdef, state, copy=True), method)(*args, **kwargs)


def apply(model, *args, method="__call__", **kwargs):
  graphdef, state = nnx.split(model)
  return np.asarray(_apply(graphdef, state, method, args, kwargs))


def ids(seed, shape):
  return np.random.default_rng(seed).integers(5, V, shape).astype(np.int32)


def np_rotary(x, pos, base=10_000.0):
  """Rotate-half rotary embedding in float64: x [B, L, H, K], pos [B, L]."""
  half = x.shape[-1] // 2
  inv = base ** (-np.arange(half) / half)
  ang = pos[..., None, None].astype(np.float64) * inv  # [B, L, 1, half]
  x1, x2 = x[..., :half], x[..., half:]
  return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], axis=-1)


def np_sinusoidal(pos, d, base=10_000.0):
  half = d // 2
  ang = pos[..., None].astype(np.float64) * np.exp(-np.log(base) * np.arange(half) / half)
  return np.concatenate([np.sin(ang), np.cos(ang)], axis=-1)


@pytest.mark.parametrize("kind", ["rotary", "alibi"])
def test_position_aware_cross_attention_matches_numpy(kind):
  """Queries at target position + source length, keys at source position; padded sources and two segments.
  rotary: q and k rotated; alibi: each head's scores minus slope_h · (query position − key position)."""
  c = models.ModelConfig(arch="encoder_decoder", vocab_size=V, d_model=8, num_heads=2, cross_positions=kind)
  cross = attention.CrossAttention(c, num_layers=1, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 5, 8))
  enc = rng.normal(size=(2, 7, 8))
  src_seg = np.array([[1, 1, 1, 1, 0, 0, 0], [1, 1, 2, 2, 2, 2, 0]])
  tgt_seg = np.array([[1, 1, 1, 0, 0], [1, 1, 2, 2, 2]])
  tgt_pos = np.array([[0, 1, 2, 0, 0], [0, 1, 0, 1, 2]])
  # The reference's own bookkeeping: each source token's index within its segment, each target's source length.
  src_pos = np.zeros_like(src_seg)
  lengths = np.zeros_like(tgt_seg)
  for b in range(2):
    for s in range(7):
      src_pos[b, s] = sum(src_seg[b, j] == src_seg[b, s] for j in range(s)) if src_seg[b, s] else 0
    for t in range(5):
      lengths[b, t] = sum(1 for s in range(7) if src_seg[b, s] == tgt_seg[b, t] and src_seg[b, s])
  mask = attention.segment_mask(jnp.asarray(tgt_seg), jnp.asarray(src_seg))
  got = cross(
    jnp.asarray(x, jnp.float32),
    mask=mask,
    encoded_BxSxD=jnp.asarray(enc, jnp.float32),
    positions_BxL=jnp.asarray(tgt_pos + lengths),
    source_positions_BxS=attention.source_positions(jnp.asarray(src_seg), 2, 7),
  )
  np.testing.assert_array_equal(
    np.asarray(attention.source_lengths(jnp.asarray(src_seg), jnp.asarray(tgt_seg), 2, 5, 7)), lengths
  )
  w_q, w_kv, w_out = (np.asarray(p[...], np.float64) for p in (cross.q, cross.kv, cross.out))
  q = np.einsum("bld,dhk->blhk", x, w_q)
  k = np.einsum("bsd,dhk->bshk", enc, w_kv[:, :, 0])
  if kind == "rotary":
    q, k = np_rotary(q, tgt_pos + lengths), np_rotary(k, src_pos)
  v = np.einsum("bsd,dhk->bshk", enc, w_kv[:, :, 1])
  logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
  if kind == "alibi":
    slopes = np.array([2.0**-4, 2.0**-8])  # 2^(-8h/H), H = 2
    distance = (tgt_pos + lengths)[:, :, None] - src_pos[:, None, :]
    logits = logits - slopes[None, :, None, None] * distance[:, None]
  allowed = (tgt_seg[:, None, :, None] == src_seg[:, None, None, :]) & (src_seg[:, None, None, :] != 0)
  logits = np.where(allowed, logits, -np.inf)
  with np.errstate(invalid="ignore"):  # a padded target's row is all -inf: NaN there, never compared
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
  want = np.einsum("bhqs,bshk,hkd->bqd", p, v, w_out)
  real = tgt_seg != 0  # padded targets see no source (a uniform average): not compared
  np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=1e-5)


def test_rotary_cross_attention_is_relative_to_the_source_end():
  """A target token's score for the source's last token does not depend on the source's length (a query at
  target position 0 + n, the last key at n - 1): "the prompt's end" is one relative position."""
  c = models.ModelConfig(arch="encoder_decoder", vocab_size=V, d_model=8, num_heads=2, cross_positions="rotary")
  cross = attention.CrossAttention(c, num_layers=1, rngs=nnx.Rngs(1))
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(1, 1, 8)), jnp.float32)
  last = rng.normal(size=(1, 1, 8))
  short = np.concatenate([rng.normal(size=(1, 3, 8)), last], axis=1)
  long = np.concatenate([rng.normal(size=(1, 6, 8)), last], axis=1)
  scores = []
  for src in (short, long):
    n = src.shape[1]
    kv = cross.project_kv(jnp.asarray(src, jnp.float32), jnp.arange(n)[None])
    q = attention.rotary(attention.dense(x, cross.q[...]), jnp.full((1, 1), n), c.rope_base)
    scores.append(np.asarray(jnp.einsum("bqhk,bshk->bhqs", q, kv["k"]))[..., -1])
  np.testing.assert_allclose(scores[0], scores[1], atol=1e-5)


@pytest.mark.parametrize("kind", ["learned", "sinusoidal"])
def test_encoder_absolute_positions_match_numpy(kind):
  m = models.create("encoder_decoder", "tiny", V, seed=0, encoder_positions=kind)
  src = ids(0, (B, 9))
  seg = np.ones((B, 9), np.int32)
  seg[1, 6:] = 0
  got = apply(m, jnp.asarray(src), method="encode", segment_ids=jnp.asarray(seg))
  pos = (np.arange(9)[None, :] * seg).astype(np.int64)
  table = np.asarray(m.embed.table[...], np.float64)
  if kind == "learned":
    add = np.asarray(m.encoder_pos.table[...], np.float64)[pos]
  else:
    add = np_sinusoidal(pos, m.config.d_model)
  x = jnp.asarray(table[src] + add, jnp.float32)
  want = np.asarray(m.encoder(x, segment_ids=jnp.asarray(seg)))
  np.testing.assert_allclose(got[seg != 0], want[seg != 0], atol=1e-5)
  # ... and it is really added: the stack alone gives something else.
  plain = np.asarray(m.encoder(jnp.asarray(table[src], jnp.float32), segment_ids=jnp.asarray(seg)))
  assert np.abs(plain - want)[seg != 0].max() > 1e-3


def test_zero_init_cross_output_and_same_other_params():
  a = models.create("encoder_decoder", "tiny", V, seed=5)
  b = models.create("encoder_decoder", "tiny", V, seed=5, cross_zero_init=True)
  for la, lb in zip(a.decoder.layers, b.decoder.layers, strict=True):
    assert not np.any(np.asarray(lb.cross.out[...]))
    np.testing.assert_array_equal(np.asarray(la.cross.q[...]), np.asarray(lb.cross.q[...]))
    np.testing.assert_array_equal(np.asarray(la.mlp.wo[...]), np.asarray(lb.mlp.wo[...]))


@pytest.mark.parametrize("overrides", [NEW, dict(encoder_positions="sinusoidal", cross_positions="rotary")])
def test_param_count_matches_formula(overrides):
  model = nnx.eval_shape(lambda: models.create("encoder_decoder", "tiny", V, **overrides))
  assert models.param_count(model) == models.expected_param_count(model.config)


def _trained_two_steps(overrides):
  """A tiny encoder-decoder after two Adam steps on a random batch (so zero-initialised weights have moved)."""
  m = models.create("encoder_decoder", "tiny", V, seed=2, **overrides)
  graphdef, state, rest = nnx.split(m, nnx.Param, ...)
  src, tgt = jnp.asarray(ids(1, (4, 10))), jnp.asarray(ids(2, (4, 8)))
  dec_in = jnp.concatenate([jnp.full((4, 1), BOS_ID, jnp.int32), tgt[:, :-1]], axis=1)

  def loss(s):
    logits = nnx.merge(graphdef, s, rest, copy=True)(src, dec_in)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tgt).mean()

  tx = optax.adam(1e-2)
  opt = tx.init(state)
  for _ in range(2):
    g = jax.grad(loss)(state)
    upd, opt = tx.update(g, opt, state)
    state = optax.apply_updates(state, upd)
  return nnx.merge(graphdef, state, rest)


ALIBI = dict(NEW, cross_positions="alibi")


@pytest.mark.parametrize("overrides", [{}, NEW, ALIBI], ids=["old", "rotary", "alibi"])
def test_causal_and_reads_the_source_after_two_steps(overrides):
  m = _trained_two_steps(overrides)
  src = ids(3, (B, 10))
  src[1, 7:] = PAD_ID
  seg = jnp.asarray((src != PAD_ID).astype(np.int32))
  dec_in = np.concatenate([np.full((B, 1), BOS_ID, np.int32), ids(4, (B, 11))], axis=1)  # [BOS] + targets
  base = apply(m, jnp.asarray(src), jnp.asarray(dec_in), encoder_segment_ids=seg)
  t = 5  # output at t reads decoder inputs 0..t = targets < t; change the targets ≥ t (inputs t+1 …)
  changed = dec_in.copy()
  changed[:, t + 1 :] = ids(5, (B, dec_in.shape[1] - t - 1))
  out = apply(m, jnp.asarray(src), jnp.asarray(changed), encoder_segment_ids=seg)
  np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
  assert np.abs(out[:, t + 1 :] - base[:, t + 1 :]).max() > 1e-4
  other_src = src.copy()
  other_src[:, :3] = ids(6, (B, 3))  # another source (same lengths): every target position must notice
  moved = apply(m, jnp.asarray(other_src), jnp.asarray(dec_in), encoder_segment_ids=seg)
  assert (np.abs(moved - base).max(axis=-1) > 1e-5).all()
  padded = src.copy()
  padded[1, 7:] = ids(7, (3,))  # the masked padding of row 1 is never read
  hidden = apply(m, jnp.asarray(padded), jnp.asarray(dec_in), encoder_segment_ids=seg)
  np.testing.assert_array_equal(hidden[1], base[1])


def _packed_pairs(rng_seed):
  """Two one-pair rows (sources of 7 and 4 ids, targets of 5 and 3) and the same pairs packed into one row."""
  src_len, tgt_len, width_s, width_t = (7, 4), (5, 3), 8, 6
  pairs = []
  for i, (ns, nt) in enumerate(zip(src_len, tgt_len, strict=True)):
    src, dec_in = np.full(width_s, PAD_ID, np.int32), np.full(width_t, PAD_ID, np.int32)
    src[:ns], dec_in[0], dec_in[1:nt] = ids(rng_seed + i, (ns,)), BOS_ID, ids(rng_seed + 9 + i, (nt - 1,))
    seg_s, seg_t = (np.arange(width_s) < ns).astype(np.int32), (np.arange(width_t) < nt).astype(np.int32)
    pos_s, pos_t = np.arange(width_s) * seg_s, np.arange(width_t) * seg_t
    pairs.append(dict(src=src, dec=dec_in, seg_s=seg_s, seg_t=seg_t, pos_s=pos_s, pos_t=pos_t))
  packed = {key: np.concatenate([p[key] for p in pairs]) for key in pairs[0]}
  for key in ("seg_s", "seg_t"):
    packed[key] = np.concatenate([p[key] * (i + 1) for i, p in enumerate(pairs)])
  return pairs, packed


def _run(m, row):
  b = {key: jnp.asarray(v[None]) for key, v in row.items()}
  return apply(
    m, b["src"], b["dec"], encoder_segment_ids=b["seg_s"], decoder_segment_ids=b["seg_t"],
    encoder_positions=b["pos_s"], decoder_positions=b["pos_t"],
  )[0]  # fmt: skip


@pytest.mark.parametrize("overrides", [{}, NEW, ALIBI], ids=["old", "rotary", "alibi"])
def test_packed_pairs_read_only_their_own_source_after_two_steps(overrides):
  """prefix LM's ``pairs_per_row``: a pair packed beside another gives the logits it gives alone (a separate
  one-pair call, the exact symmetry); changing pair 2's source or targets moves none of pair 1's outputs, pair 1's
  targets ≥ t move none of its outputs ≤ t, and pair 2 does read its own source."""
  m = _trained_two_steps(overrides)
  pairs, packed = _packed_pairs(20)
  base = _run(m, packed)
  for i, pair in enumerate(pairs):
    n = int(pair["seg_t"].sum())
    alone = _run(m, pair)
    np.testing.assert_allclose(base[i * 6 : i * 6 + n], alone[:n], rtol=1e-4, atol=1e-4)
  other = dict(packed, src=packed["src"].copy(), dec=packed["dec"].copy())
  other["src"][8:12], other["dec"][7:9] = ids(30, (4,)), ids(31, (2,))  # pair 2's whole source and targets
  moved = _run(m, other)
  np.testing.assert_array_equal(moved[:5], base[:5])
  assert (np.abs(moved[6:9] - base[6:9]).max(axis=-1) > 1e-5).all()
  t = 2  # pair 1: output t reads decoder inputs 0..t; change inputs t+1 … (targets ≥ t)
  later = dict(packed, dec=packed["dec"].copy())
  later["dec"][t + 1 : 5] = ids(32, (5 - t - 1,))
  out = _run(m, later)
  np.testing.assert_array_equal(out[: t + 1], base[: t + 1])
  np.testing.assert_array_equal(out[6:9], base[6:9])  # pair 2's real targets (padding outputs are never scored)
  assert np.abs(out[t + 1 : 5] - base[t + 1 : 5]).max() > 1e-4


@pytest.mark.parametrize("overrides", [NEW, ALIBI], ids=["rotary", "alibi"])
def test_cached_decoding_matches_teacher_forcing_with_the_new_design(overrides):
  m = _trained_two_steps(overrides)
  src = ids(8, (B, 10))
  src[1, 6:] = PAD_ID
  seg = jnp.asarray((src != PAD_ID).astype(np.int32))
  dec_in = np.concatenate([np.full((B, 1), BOS_ID, np.int32), ids(9, (B, 7))], axis=1)
  teacher = apply(m, jnp.asarray(src), jnp.asarray(dec_in), encoder_segment_ids=seg)
  encoded = apply(m, jnp.asarray(src), method="encode", segment_ids=seg)
  cache = m.init_cache(jnp.asarray(encoded), 8, encoder_valid=seg != 0)
  steps = []
  for t in range(8):
    logits, cache = m.extend(jnp.asarray(dec_in[:, t : t + 1]), cache, positions=jnp.full((B, 1), t, jnp.int32))
    steps.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(steps, axis=1), teacher, atol=1e-4, rtol=0)


def test_design_keys_belong_to_encoder_decoders():
  with pytest.raises(UserError, match="belong to an encoder_decoder"):
    models.ModelConfig(arch="decoder", vocab_size=V, cross_positions="rotary")
  with pytest.raises(UserError, match="not one of"):
    models.ModelConfig(arch="encoder_decoder", vocab_size=V, encoder_positions="rotary")


def test_old_checkpoints_read_back_as_the_old_design(monkeypatch):
  """A saved config without the new keys is the old design even when today's encoder_decoder default is new."""
  monkeypatch.setattr(model_config, "ENCODER_DECODER_DESIGN", dict(NEW))
  today = run_config.base_config("encoder_decoder", "tiny")
  assert today.model.cross_positions == "rotary" and today.model.cross_zero_init  # new runs get the new design
  old = today.to_dict()
  for key in NEW:
    del old["model"][key]
  back = run_config.checkpoint_config(old)
  assert back.model.encoder_positions == "" and back.model.cross_positions == "" and not back.model.cross_zero_init
  assert back.model.num_layers == today.model.num_layers
  meta = dataclasses.asdict(models.ModelConfig(arch="encoder_decoder", vocab_size=V))  # a checkpoint's model_config
  for key in NEW:
    del meta[key]
  saved = models.ModelConfig(**model_config.saved_fields(meta))
  assert (saved.encoder_positions, saved.cross_positions, saved.cross_zero_init) == ("", "", False)
  # A checkpoint that has the keys keeps them.
  assert run_config.checkpoint_config(today.to_dict()).model.cross_positions == "rotary"


def test_an_encoder_decoder_learns_to_copy_its_source_and_needs_it():
  """The architecture can execute: trained 500 steps to copy 8 random symbols (the tiny shape, default design), its
  teacher-forced answers are right at ≥ 95% of positions, and after another row's source at chance (≤ 15%). The
  check behind README "Issue 23 on programs": what kept encoder-decoders at the task prior was the budget."""
  length, symbols, batch = 8, 16, 32
  m = models.create_from_config(models.ModelConfig(arch="encoder_decoder", vocab_size=5 + symbols), seed=0)
  opt = nnx.Optimizer(m, optax.adamw(3e-3), wrt=nnx.Param)
  rng = np.random.default_rng(0)

  def rows():
    src = rng.integers(5, 5 + symbols, (batch, length)).astype(np.int32)
    return jnp.asarray(src), jnp.asarray(np.concatenate([np.full((batch, 1), BOS_ID, np.int32), src[:, :-1]], 1))

  @nnx.jit
  def step(m, opt, src, dec):
    def loss(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(src, dec), src).mean()

    opt.update(m, nnx.grad(loss)(m))

  for _ in range(500):
    step(m, opt, *rows())
  src, dec = rows()
  own = (apply(m, src, dec).argmax(-1) == np.asarray(src)).mean()
  other = (apply(m, jnp.roll(src, 1, axis=0), dec).argmax(-1) == np.asarray(src)).mean()
  assert own >= 0.95 and other <= 0.15, (own, other)


def test_todays_design_reads_the_prompt_end_and_old_checkpoints_do_not():
  """Today's encoder_decoder (issue 23) has a 16-byte decoder context trained with the tail weighted 1; a saved
  config without the key is the old design (no decoder context); a stitched-in encoder carries none."""
  today = run_config.base_config("encoder_decoder", "tiny")
  assert today.model.decoder_context == 16 and today.data.tail_weight == 1.0
  assert run_config.base_config("decoder", "tiny").model.decoder_context == 0
  old = today.to_dict()
  del old["model"]["decoder_context"]
  assert run_config.checkpoint_config(old).model.decoder_context == 0
  meta = dataclasses.asdict(models.ModelConfig(arch="encoder_decoder", vocab_size=V, decoder_context=16))
  del meta["decoder_context"]
  assert models.ModelConfig(**model_config.saved_fields(meta)).decoder_context == 0
  with pytest.raises(UserError, match="belongs to an encoder_decoder"):
    models.ModelConfig(arch="decoder", vocab_size=V, decoder_context=16)
  with pytest.raises(UserError, match="must be >= 0"):
    models.ModelConfig(arch="encoder_decoder", vocab_size=V, decoder_context=-1)
