"""Tests of llmcpu.models: every property is checked against an independent computation.

Shapes are tiny and few (B=2, L=16, vocab 50) and models are shared per module, since XLA compile time dominates.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import llmcpu.models as models
from llmcpu.errors import UserError
from llmcpu.models import attention
from llmcpu.specials import BOS_ID, PAD_ID, UNK_ID

V, B, L = 50, 2, 16


@functools.partial(jax.jit, static_argnames=("graphdef", "method"))
def _apply(graphdef, state, method, args, kwargs):
  return getattr(nnx.merge(graphdef, state, copy=True), method)(*args, **kwargs)


def apply(model, *args, method="__call__", **kwargs):
  """Jitted functional call (one compile per shape) that leaves the model's state untouched."""
  graphdef, state = nnx.split(model)
  return np.asarray(_apply(graphdef, state, method, args, kwargs))


def random_ids(seed: int, shape=(B, L)) -> jnp.ndarray:
  return jnp.asarray(np.random.default_rng(seed).integers(5, V, shape), jnp.int32)


@pytest.fixture(scope="module")
def dec():
  return models.create("decoder", "tiny", V, seed=0)


@pytest.fixture(scope="module")
def dec_learned():  # other positions, untied head, LayerNorm, SwiGLU, cuDNN-style attention path
  return models.create(
    "decoder",
    "tiny",
    V,
    seed=1,
    positions="learned",
    tie_embeddings=False,
    norm="layernorm",
    mlp="swiglu",
    attention_impl="dot_product_attention",
  )


@pytest.fixture(scope="module")
def dec_gqa():  # the options real LLMs need: grouped-query attention, biases, Llama-3 rope scaling
  return models.create(
    "decoder",
    "tiny",
    V,
    seed=6,
    mlp="swiglu",
    num_kv_heads=2,
    attention_bias="all",
    mlp_bias=True,
    rope_scaling="llama3",
    rope_factor=4.0,
    rope_original_max_len=8,
  )


@pytest.fixture(scope="module")
def dec_t5():  # T5's relative position buckets instead of rotary
  return models.create("decoder", "tiny", V, seed=7, positions="t5")


@pytest.fixture(scope="module")
def encdec_t5():
  return models.create("encoder_decoder", "tiny", V, seed=8, positions="t5", tie_embeddings=False)


@pytest.fixture(scope="module")
def enc():
  return models.create("encoder", "tiny", V, seed=2, positions="sinusoidal")


@pytest.fixture(scope="module")
def encdec():
  return models.create("encoder_decoder", "tiny", V, seed=3, tie_embeddings=False)


# ----------------------------------------------------------------------------------------------------------------
# Attention against a float64 numpy reference
# ----------------------------------------------------------------------------------------------------------------


def np_attention(q, k, v, allowed, bias=None):
  """Loop reference: q [B,Q,H,K], k/v [B,S,H,K], allowed [B,Q,S] bool, bias [B,H,Q,S] added to the scores; fully
  masked rows → uniform average."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  out = np.zeros(q.shape)
  for b in range(q.shape[0]):
    for h in range(q.shape[2]):
      for i in range(q.shape[1]):
        s = k[b, :, h] @ q[b, i, h] / np.sqrt(q.shape[-1]) + (0.0 if bias is None else bias[b, h, i])
        s = np.where(allowed[b, i], s, -np.inf) if allowed[b, i].any() else np.zeros_like(s)
        p = np.exp(s - s.max())
        out[b, i, h] = (p / p.sum()) @ v[b, :, h]
  return out


SEGMENTS = np.array([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 0, 0, 0]])


def np_mask(kind: str, q_len: int = 8, kv_len: int = 8) -> np.ndarray:
  causal = np.tril(np.ones((q_len, kv_len), bool))[None]
  seg_q, seg_k = SEGMENTS[:, :q_len], SEGMENTS[:, :kv_len]
  segment = (seg_q[:, :, None] == seg_k[:, None, :]) & (seg_k[:, None, :] != 0)
  return {
    "none": np.ones((2, q_len, kv_len), bool),
    "causal": np.broadcast_to(causal, (2, q_len, kv_len)),
    "padding": np.broadcast_to((seg_k != 0)[:, None, :], (2, q_len, kv_len)),
    "segment": segment,
    "causal_segment": segment & causal,
  }[kind]


def module_mask(kind: str, q_len: int = 8, kv_len: int = 8):
  """(mask, is_causal) built with the module's own helpers."""
  seg = jnp.asarray(SEGMENTS)
  return {
    "none": (None, False),
    "causal": (None, True),
    "padding": (attention.key_mask(seg[:, :kv_len] != 0), False),
    "segment": (attention.segment_mask(seg[:, :q_len], seg[:, :kv_len]), False),
    "causal_segment": (attention.segment_mask(seg[:, :q_len], seg[:, :kv_len]), True),
  }[kind]


@pytest.mark.parametrize("impl", ["xla", "dot_product_attention"])
@pytest.mark.parametrize("kind", ["none", "causal", "padding", "segment", "causal_segment"])
def test_attend_matches_reference(kind, impl):
  q, k, v = (np.random.default_rng(i).normal(size=(2, 8, 2, 4)).astype(np.float32) for i in range(3))
  mask, is_causal = module_mask(kind)
  got = attention.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask, impl=impl, is_causal=is_causal)
  want = np_attention(q, k, v, np_mask(kind))
  rows = np_mask(kind).any(-1)  # fully masked (padding) queries: value unspecified, only finiteness matters
  np.testing.assert_allclose(np.asarray(got)[rows], want[rows], atol=1e-5)
  assert np.isfinite(np.asarray(got)).all()


@pytest.mark.parametrize("kind", ["causal", "padding", "causal_segment"])
def test_host_attention_gradients_match_float64_differences(kind):
  """``host_attend`` (the 'xla' kernel on the host, its backward written out) against central differences of the
  float64 loop reference: d/dq, d/dk, d/dv of Σ sin(out) · w, fully masked (padding) rows included."""
  rng = np.random.default_rng(5)
  q, k, v = (rng.normal(size=(2, 8, 2, 4)) for _ in range(3))
  w = rng.normal(size=(2, 8, 2, 4))
  allowed = np_mask(kind)
  mask, is_causal = module_mask(kind)

  def f(*x):
    return jnp.sum(jnp.sin(attention.attend(*x, mask, impl="xla", is_causal=is_causal)) * w)

  got = jax.grad(f, argnums=(0, 1, 2))(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)))
  eps = 1e-6
  for i, g in enumerate(got):
    want = np.zeros(q.shape)
    for idx in np.ndindex(q.shape):
      args = [q, k, v]
      hi, lo = [a.copy() for a in args], [a.copy() for a in args]
      hi[i][idx] += eps
      lo[i][idx] -= eps
      diff = np.sin(np_attention(*hi, allowed)) - np.sin(np_attention(*lo, allowed))
      want[idx] = np.sum(diff * w) / (2 * eps)
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "dot_product_attention"])
def test_attention_modules_match_reference(impl):
  c = models.ModelConfig(vocab_size=V, d_model=8, num_heads=2, d_ff=16, positions="learned", attention_impl=impl)
  rngs = nnx.Rngs(0)
  self_attn = attention.SelfAttention(c, num_layers=1, rngs=rngs)
  cross = attention.CrossAttention(c, num_layers=1, rngs=rngs)
  x = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32)
  ctx = np.random.default_rng(1).normal(size=(2, 8, 8)).astype(np.float32)
  pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
  w_qkv = np.asarray(self_attn.qkv[...], np.float64)  # [D, H, 3, K]
  w_out = np.asarray(self_attn.out[...], np.float64)  # [H, K, D]
  q, k, v = (np.einsum("bld,dhk->blhk", x, w_qkv[:, :, i]) for i in range(3))

  mask, is_causal = module_mask("causal_segment")
  got, _ = self_attn(jnp.asarray(x), positions_BxL=pos, mask=mask, is_causal=is_causal)
  want = np.einsum("blhk,hkd->bld", np_attention(q, k, v, np_mask("causal_segment")), w_out)
  rows = np_mask("causal_segment").any(-1)
  np.testing.assert_allclose(np.asarray(got)[rows], want[rows], atol=1e-5)

  w_q, w_kv, w_out = (np.asarray(p[...], np.float64) for p in (cross.q, cross.kv, cross.out))
  qc = np.einsum("bld,dhk->blhk", x, w_q)
  kc, vc = (np.einsum("bld,dhk->blhk", ctx, w_kv[:, :, i]) for i in range(2))
  got = cross(jnp.asarray(x), mask=module_mask("padding")[0], encoded_BxSxD=jnp.asarray(ctx))
  want = np.einsum("blhk,hkd->bld", np_attention(qc, kc, vc, np_mask("padding")), w_out)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def py_t5_bucket(offset: int, bidirectional: bool, buckets: int = 32, max_distance: int = 128) -> int:
  """T5's relative_position_bucket for one key − query offset, in plain Python (the paper's reference code)."""
  n, ret = -offset, 0
  if bidirectional:
    buckets //= 2
    ret += buckets if n < 0 else 0
    n = abs(n)
  else:
    n = max(n, 0)
  exact = buckets // 2
  if n < exact:
    return ret + n
  return ret + min(exact + int(math.log(n / exact) / math.log(max_distance / exact) * (buckets - exact)), buckets - 1)


def test_t5_buckets_match_the_reference_formula():
  offsets = np.arange(-300, 301)
  for bidirectional in (True, False):
    got = np.asarray(attention.t5_bucket(jnp.asarray(offsets)[None, None], bidirectional, 32, 128))[0, 0]
    want = [py_t5_bucket(int(o), bidirectional) for o in offsets]
    np.testing.assert_array_equal(got, want)
  # by hand: exact offsets first, log-spaced later, one bucket past max_distance; direction in the upper half
  assert [py_t5_bucket(o, True) for o in (0, -1, -7, -8, -128, -1000, 1, 1000)] == [0, 1, 7, 8, 15, 15, 17, 31]


@pytest.mark.parametrize("causal", [False, True])
def test_t5_self_attention_matches_reference(causal):
  c = models.ModelConfig(vocab_size=V, d_model=8, num_heads=2, d_ff=16, positions="t5")
  attn = attention.SelfAttention(c, num_layers=1, rngs=nnx.Rngs(0), causal=causal)
  _randomize(attn, 3)
  p = {path[-1]: np.asarray(v.get_value(), np.float64) for path, v in nnx.to_flat_state(nnx.state(attn, nnx.Param))}
  x = np.random.default_rng(0).normal(size=(2, 8, 8))
  # positions restart per segment; spaced 9 apart so offsets reach the log-spaced buckets, where the two directions'
  # bucketings differ (below 8 they agree)
  pos = np.array([[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 0, 0, 0]]) * 9
  kind = "causal_segment" if causal else "segment"
  q, k, v = (np.einsum("bld,dhk->blhk", x, p["qkv"][:, :, i]) for i in range(3))
  bias = np.zeros((2, 2, 8, 8))
  for b, h, i, j in itertools.product(range(2), range(2), range(8), range(8)):
    bias[b, h, i, j] = p["rel_bias"][py_t5_bucket(int(pos[b, j] - pos[b, i]), not causal), h]
  want = np.einsum("blhk,hkd->bld", np_attention(q, k, v, np_mask(kind), bias), p["out"])
  mask, is_causal = module_mask(kind)
  got, _ = attn(jnp.asarray(x, jnp.float32), positions_BxL=jnp.asarray(pos), mask=mask, is_causal=is_causal)
  rows = np_mask(kind).any(-1)
  np.testing.assert_allclose(np.asarray(got)[rows], want[rows], atol=1e-4, rtol=1e-5)
  # the positions matter: shifting every position by the same amount changes nothing, another order does
  shifted, _ = attn(jnp.asarray(x, jnp.float32), positions_BxL=jnp.asarray(pos + 5), mask=mask, is_causal=is_causal)
  np.testing.assert_allclose(np.asarray(shifted)[rows], np.asarray(got)[rows], atol=1e-6)
  other, _ = attn(jnp.asarray(x, jnp.float32), positions_BxL=jnp.asarray(pos * 3), mask=mask, is_causal=is_causal)
  assert np.abs(np.asarray(other)[rows] - np.asarray(got)[rows]).max() > 1e-3


def _randomize(module, seed: int):
  """Every parameter of ``module`` drawn anew (biases start at 0, which would hide a bias bug)."""
  rng = np.random.default_rng(seed)
  for _, v in nnx.to_flat_state(nnx.state(module, nnx.Param)):
    v.set_value(jnp.asarray(rng.normal(size=v.get_value().shape).astype(np.float32) * 0.5))


@pytest.mark.parametrize("impl", ["xla", "dot_product_attention"])
@pytest.mark.parametrize("kv_heads,bias", [(2, "all"), (1, ""), (4, "qkv"), (4, "all")])
def test_grouped_and_biased_self_attention_match_reference(kv_heads, bias, impl):
  c = models.ModelConfig(
    vocab_size=V, d_model=16, num_heads=4, num_kv_heads=kv_heads, attention_bias=bias, positions="learned",
    attention_impl=impl,
  )  # fmt: skip
  attn = attention.SelfAttention(c, num_layers=1, rngs=nnx.Rngs(0))
  _randomize(attn, kv_heads)
  p = {path[-1]: np.asarray(v.get_value(), np.float64) for path, v in nnx.to_flat_state(nnx.state(attn, nnx.Param))}
  x = np.random.default_rng(0).normal(size=(2, 8, 16))
  if kv_heads == 4:  # fused [D, H, 3, K] (+ [H, 3, K])
    w_q, w_k, w_v = (p["qkv"][:, :, i] for i in range(3))
    b_q, b_k, b_v = (p["qkv_bias"][:, i] if bias else 0.0 for i in range(3))
  else:  # q [D, H, K], kv [D, G, 2, K] (+ [H, K], [G, 2, K])
    w_q, w_k, w_v = p["q"], p["kv"][:, :, 0], p["kv"][:, :, 1]
    b_q, b_k, b_v = (p["q_bias"], p["kv_bias"][:, 0], p["kv_bias"][:, 1]) if bias else (0.0, 0.0, 0.0)
  q = np.einsum("bld,dhk->blhk", x, w_q) + b_q
  k, v = (np.einsum("bld,dgk->blgk", x, w) + b for w, b in ((w_k, b_k), (w_v, b_v)))
  group = [h * kv_heads // 4 for h in range(4)]  # query head h reads key/value head h // (H/G)
  y = np_attention(q, k[:, :, group], v[:, :, group], np_mask("causal_segment"))
  want = np.einsum("blhk,hkd->bld", y, p["out"]) + (p["out_bias"] if bias == "all" else 0.0)
  mask, is_causal = module_mask("causal_segment")
  pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
  got, _ = attn(jnp.asarray(x, jnp.float32), positions_BxL=pos, mask=mask, is_causal=is_causal)
  rows = np_mask("causal_segment").any(-1)
  np.testing.assert_allclose(np.asarray(got)[rows], want[rows], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_mlp_biases_match_reference(mlp):
  c = models.ModelConfig(vocab_size=V, d_model=8, num_heads=2, d_ff=12, mlp=mlp, mlp_bias=True)
  from llmcpu.models.layers import Mlp

  m = Mlp(c, num_layers=1, rngs=nnx.Rngs(0))
  _randomize(m, 1)
  wi, bi, wo, bo = (np.asarray(p[...], np.float64) for p in (m.wi, m.bi, m.wo, m.bo))
  x = np.random.default_rng(2).normal(size=(2, 3, 8))
  h = np.einsum("bld,d...->bl...", x, wi) + bi
  if mlp == "swiglu":
    act = h[..., 0] / (1 + np.exp(-h[..., 0])) * h[..., 1]
  else:  # tanh GELU (GPT-2's gelu_new)
    act = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
  np.testing.assert_allclose(np.asarray(m(jnp.asarray(x, jnp.float32))), act @ wo + bo, atol=1e-5, rtol=1e-5)


def np_rope_inv_freq(head_dim, base, scaling):
  """Loop reference of the rotary frequencies: base^(-2i/d), then the linear or Llama-3.1 rule per frequency."""
  out = []
  for i in range(head_dim // 2):
    f = base ** (-2.0 * i / head_dim)
    if scaling and scaling[0] == "linear":
      f /= scaling[1]
    elif scaling:
      _, factor, low, high, original = scaling
      wavelength = 2 * np.pi / f
      if wavelength > original / low:
        f /= factor
      elif wavelength >= original / high:
        t = (original / wavelength - low) / (high - low)
        f = (1 - t) * f / factor + t * f
    out.append(f)
  return np.array(out)


@pytest.mark.parametrize("scaling", [(), ("linear", 4.0), ("llama3", 8.0, 1.0, 4.0, 64)])
def test_rotary_scaling_matches_reference(scaling):
  from llmcpu.models.layers import apply_rotary, rotary, rotary_sin_cos

  head_dim, base = 16, 100.0
  inv = np_rope_inv_freq(head_dim, base, scaling)
  if scaling and scaling[0] == "llama3":  # all three bands (kept, interpolated, divided) occur
    wavelength = 2 * np.pi / np_rope_inv_freq(head_dim, base, ())
    assert (wavelength < 16).any() and ((wavelength >= 16) & (wavelength <= 64)).any() and (wavelength > 64).any()
  x = np.random.default_rng(0).normal(size=(1, 20, 2, head_dim))
  pos = np.arange(20)
  want = np.empty_like(x)
  for t in pos:
    for i, f in enumerate(inv):  # dimension i turns with dimension i + d/2 by angle t·f
      a, b = x[0, t, :, i], x[0, t, :, i + head_dim // 2]
      want[0, t, :, i] = a * np.cos(t * f) - b * np.sin(t * f)
      want[0, t, :, i + head_dim // 2] = b * np.cos(t * f) + a * np.sin(t * f)
  order = np.random.default_rng(1).permutation(20)  # positions in any order (packed documents restart them)
  x_in, pos_in = jnp.asarray(x[:, order], jnp.float32), jnp.asarray(pos[order])[None]
  computed = rotary(x_in, pos_in, base, scaling)  # angles computed in the step
  looked_up = apply_rotary(x_in, rotary_sin_cos(pos_in, head_dim, base, scaling, bound=20))  # constant tables
  for got in (computed, looked_up):
    np.testing.assert_allclose(np.asarray(got), want[:, order], atol=2e-5)


def test_rotary_tables_leave_no_sine_in_the_step_and_refuse_positions_past_their_bound():
  """The rotary decoder's compiled forward + backward holds no sin/cos (its angles are constant tables, not
  recomputed per head, q/k and layer); a position outside the table reads NaN, not a clamped neighbour's angle."""
  from llmcpu.models.layers import apply_rotary, rotary_sin_cos

  model = models.create("decoder", "tiny", V, seed=0, max_len=L)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  ids = jnp.asarray(np.random.default_rng(0).integers(5, V, (B, L)), jnp.int32)
  grad = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p, rest, copy=True)(ids).astype(jnp.float32).mean()))
  hlo = grad.lower(params).compile().as_text()
  assert model.config.positions == "rotary" and "sine(" not in hlo and "cosine(" not in hlo
  x = jnp.ones((1, 3, 1, 4), jnp.float32)
  got = np.asarray(apply_rotary(x, rotary_sin_cos(jnp.asarray([[0, 2, 3]]), 4, 100.0, bound=3)))
  assert np.isfinite(got[0, :2]).all() and np.isnan(got[0, 2]).all()


# ----------------------------------------------------------------------------------------------------------------
# Configs, presets, parameter counts, determinism
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "arch,overrides",
  [
    ("decoder", {}),
    ("decoder", dict(tie_embeddings=False, mlp="swiglu", norm="layernorm", positions="learned")),
    ("decoder", dict(num_kv_heads=2, attention_bias="qkv", mlp="swiglu", mlp_bias=True)),
    ("decoder", dict(num_kv_heads=1, attention_bias="all", tie_embeddings=False)),
    ("encoder", dict(num_heads=4, attention_bias="all", mlp_bias=True, positions="learned", norm="layernorm")),
    ("encoder", dict(positions="sinusoidal")),
    ("encoder", dict(positions="learned", norm="layernorm")),
    ("encoder_decoder", {}),
    ("encoder_decoder", dict(tie_embeddings=False, mlp="swiglu", positions="learned", num_decoder_layers=3)),
    ("encoder_decoder", dict(positions="t5", num_decoder_layers=3)),
    ("encoder", dict(positions="t5", num_heads=2)),
  ],
)
def test_param_count_matches_formula(arch, overrides):
  model = nnx.eval_shape(lambda: models.create(arch, "tiny", V, **overrides))
  assert models.param_count(model) == models.expected_param_count(model.config)


def test_presets_and_config():
  base = nnx.eval_shape(lambda: models.create("decoder", "base", 32_000))
  assert 90e6 < models.param_count(base) < 130e6
  base_ed = models.ModelConfig(arch="encoder_decoder", vocab_size=32_000, **models.presets("base", "encoder_decoder"))
  assert 90e6 < models.expected_param_count(base_ed) < 160e6
  small = models.presets("small")
  assert small["d_model"] >= 256 and small["num_layers"] >= 4 and small["max_len"] >= 512
  cfg = ml_collections.ConfigDict(dict(preset="small", arch="encoder", vocab_size=100, mlp="swiglu"))
  c = models.ModelConfig.from_config(cfg)
  assert (c.arch, c.d_model, c.mlp, c.vocab_size) == ("encoder", 256, "swiglu", 100)
  with pytest.raises(UserError, match="unknown model config keys"):
    models.ModelConfig.from_config(dict(vocab_size=100, d_modle=3))
  with pytest.raises(UserError, match="not divisible"):
    models.ModelConfig(vocab_size=100, d_model=30, num_heads=4)
  with pytest.raises(UserError, match="preset"):
    models.create("decoder", "huge", V)


def test_config_without_the_llm_options_is_todays_model():
  """A config written before num_kv_heads/biases/rope scaling existed reads back as the same model: same fields,
  same parameter tree (the names checkpoints store), same values for the same seed."""
  new = ("num_kv_heads", "attention_bias", "mlp_bias", "rope_scaling", "rope_factor", "rope_low_freq_factor",
         "rope_high_freq_factor", "rope_original_max_len", "rotary_fraction", "parallel_residual")  # fmt: skip
  full = models.ModelConfig(vocab_size=V)
  old = {k: v for k, v in dataclasses.asdict(full).items() if k not in new}
  assert models.ModelConfig(**old) == full
  assert models.ModelConfig(vocab_size=V, num_kv_heads=full.num_heads) == full  # G = H is plain multi-head
  paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(models.create_from_config(full), nnx.Param))}
  layer = ["attn_norm/scale", "attn/qkv", "attn/out", "mlp_norm/scale", "mlp/wi", "mlp/wo"]
  assert paths == {"embed/table", "decoder/final_norm/scale"} | {
    f"decoder/layers/{i}/{n}" for i in (0, 1) for n in layer
  }


@pytest.mark.parametrize(
  "fields,match",
  [
    (dict(num_kv_heads=3), "must divide num_heads"),
    (dict(num_kv_heads=-1), "must divide num_heads"),
    (dict(arch="encoder_decoder", attention_bias="all"), "not encoder_decoder"),
    (dict(positions="learned", rope_scaling="linear", rope_factor=2.0), "needs rotary positions"),
    (dict(rope_scaling="llama3", rope_low_freq_factor=4.0, rope_high_freq_factor=1.0), "low_freq_factor <"),
    (dict(attention_bias="out"), "attention_bias"),
    (dict(positions="learned", rotary_fraction=0.5), "rotary_fraction=0.5 needs rotary positions"),
    (dict(rotary_fraction=0.01), "0 < int"),  # head_dim 16: no dim rotated
    (dict(rotary_fraction=0.0625), "is odd"),  # one dim of 16
    (dict(arch="encoder_decoder", parallel_residual=True), "not encoder_decoder"),
    (dict(mlp="gelu_tanh"), "model.mlp"),
  ],
)
def test_llm_options_validated(fields, match):
  with pytest.raises(UserError, match=match):
    models.ModelConfig(vocab_size=V, **fields)


def test_flops_per_token_formula():
  c = models.ModelConfig(arch="decoder", vocab_size=10, d_model=4, num_heads=1, num_layers=1, d_ff=8)
  # matmul params: head 10*4 + attention 4*16 + mlp 2*4*8 = 40 + 64 + 64 = 168
  assert models.flops_per_token(c, seq_len=5) == 6 * 168 + 12 * 1 * 4 * 5
  # grouped-query: 2 heads of width 2 sharing 1 key/value head: q, out 2·16 + k, v 2·4·2 = 48 instead of 64
  g = c.replace(num_heads=2, num_kv_heads=1)
  assert models.flops_per_token(g, seq_len=5) == 6 * (168 - 16) + 12 * 1 * 4 * 5


def test_same_seed_same_params():
  a, b, other = (nnx.state(models.create("decoder", "tiny", V, seed=s), nnx.Param) for s in (7, 7, 8))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, z) for x, z in zip(jax.tree.leaves(a), jax.tree.leaves(other), strict=True))


# ----------------------------------------------------------------------------------------------------------------
# Masks: causality, bidirectionality, padding and packed segments
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dec", "dec_learned", "dec_gqa", "dec_t5"])
def test_decoder_is_causal(name, request):
  model = request.getfixturevalue(name)
  ids = random_ids(0)
  changed = ids.at[:, 9:].set(random_ids(1)[:, 9:])
  a, b = apply(model, ids), apply(model, changed)
  assert a.shape == (B, L, V) and a.dtype == np.float32
  np.testing.assert_allclose(a[:, :9], b[:, :9], atol=1e-6)
  assert np.abs(a[:, 9:] - b[:, 9:]).max() > 1e-3


def test_encoder_is_bidirectional(enc):
  ids = random_ids(0)
  a, b = apply(enc, ids), apply(enc, ids.at[:, -1].set((ids[:, -1] - 4) % (V - 5) + 5))  # another regular id
  assert np.abs(a[:, 0] - b[:, 0]).max() > 1e-4  # the first token sees the last one


def _packed():
  """One row packing two documents (lengths 6 and 7) then 3 pads; row 2 is one document (lengths 16)."""
  ids = np.asarray(random_ids(3))
  seg = np.array([[1] * 6 + [2] * 7 + [0] * 3, [1] * L])
  pos = np.array([list(range(6)) + list(range(7)) + [0] * 3, list(range(L))])
  return jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(pos)


@pytest.mark.parametrize("name", ["dec", "dec_learned", "enc"])
def test_segments_isolate_packed_documents(name, request):
  model = request.getfixturevalue(name)
  ids, seg, pos = _packed()
  packed = apply(model, ids, segment_ids=seg, positions=pos)
  doc1, doc2 = apply(model, ids[:1, :6]), apply(model, ids[:1, 6:13])  # each document alone, unpadded
  np.testing.assert_allclose(packed[0, :6], doc1[0], atol=1e-5)
  np.testing.assert_allclose(packed[0, 6:13], doc2[0], atol=1e-5)
  np.testing.assert_allclose(packed[1], apply(model, ids[1:])[0], atol=1e-5)  # all-ones segments = no mask


def np_segment_positions(seg: np.ndarray) -> np.ndarray:
  """Loop reference: a token's position is how many tokens of its row's document (equal nonzero id) precede it."""
  pos = np.zeros(seg.shape, np.float64)
  for b in range(seg.shape[0]):
    seen: dict[int, float] = {}
    for i, s in enumerate(seg[b].tolist()):
      if s != 0:
        pos[b, i] = seen.get(s, 0.0)
        seen[s] = pos[b, i] + 1.0
  return pos


def test_segment_positions_match_a_loop_reference():
  from llmcpu.models.transformer import segment_positions

  rng = np.random.default_rng(0)
  runs = rng.integers(0, 4, (6, 40))  # runs of ids 0-3: repeated ids (gaps), padding anywhere, all-pad rows
  seg = np.repeat(runs, rng.integers(1, 4, runs.shape[1]), axis=1)[:, :64]
  seg[0] = 0
  got = np.asarray(segment_positions(jnp.asarray(seg)))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got.astype(np.float64), np_segment_positions(seg))
  ids, packed_seg, pos = _packed()
  np.testing.assert_array_equal(np.asarray(segment_positions(packed_seg)), np.asarray(pos))


@pytest.mark.parametrize("name", ["dec", "dec_learned", "enc"])
def test_packed_documents_without_positions_run_as_if_alone(name, request):
  """Learned and sinusoidal positions (and rotary) must restart per document when only segment_ids are given."""
  model = request.getfixturevalue(name)
  ids, seg, _ = _packed()
  packed = apply(model, ids, segment_ids=seg)
  doc1, doc2 = apply(model, ids[:1, :6]), apply(model, ids[:1, 6:13])
  np.testing.assert_allclose(packed[0, :6], doc1[0], atol=1e-5)
  np.testing.assert_allclose(packed[0, 6:13], doc2[0], atol=1e-5)


def test_encoder_decoder_packed_pairs_without_positions():
  model = models.create("encoder_decoder", "tiny", V, seed=3, tie_embeddings=False, positions="learned")
  ids, seg, _ = _packed()
  tgt = random_ids(4)
  tseg = jnp.asarray([[1] * 8 + [2] * 5 + [0] * 3, [1] * L])
  packed = apply(model, ids, tgt, encoder_segment_ids=seg, decoder_segment_ids=tseg)
  pair2 = apply(model, ids[:1, 6:13], tgt[:1, 8:13])
  np.testing.assert_allclose(packed[0, 8:13], pair2[0], atol=1e-5)


def test_encoder_decoder_padding_and_segments(encdec):
  ids, seg, pos = _packed()
  tgt = random_ids(4)
  tseg = jnp.asarray([[1] * 8 + [2] * 5 + [0] * 3, [1] * L])
  tpos = jnp.asarray([list(range(8)) + list(range(5)) + [0] * 3, list(range(L))])
  kw = dict(encoder_segment_ids=seg, decoder_segment_ids=tseg, encoder_positions=pos, decoder_positions=tpos)
  packed = apply(encdec, ids, tgt, **kw)
  pair1 = apply(encdec, ids[:1, :6], tgt[:1, :8])
  pair2 = apply(encdec, ids[:1, 6:13], tgt[:1, 8:13])
  np.testing.assert_allclose(packed[0, :8], pair1[0], atol=1e-5)
  np.testing.assert_allclose(packed[0, 8:13], pair2[0], atol=1e-5)
  # Source padding (segment 0) changes nothing.
  padded_src = jnp.concatenate([ids[:1, :6], jnp.full((1, 4), 7, jnp.int32)], axis=1)
  src_seg = jnp.asarray([[1] * 6 + [0] * 4])
  masked = apply(encdec, padded_src, tgt[:1, :8], encoder_segment_ids=src_seg)
  np.testing.assert_allclose(masked[0], pair1[0], atol=1e-5)


def test_embed_pooled(enc):
  ids = random_ids(5).at[0, 10:].set(PAD_ID)
  pooled = apply(enc, ids, method="embed_pooled")
  seg = (ids != PAD_ID).astype(jnp.int32)
  hidden = apply(enc, ids, method="hidden", segment_ids=seg)
  np.testing.assert_allclose(pooled[0], hidden[0, :10].mean(0), atol=1e-5)
  np.testing.assert_allclose(pooled[1], hidden[1].mean(0), atol=1e-5)
  alone = apply(enc, ids[:1, :10], method="embed_pooled")  # padding does not change the embedding
  np.testing.assert_allclose(pooled[0], alone[0], atol=1e-5)
  assert pooled.shape == (B, 64)


# ----------------------------------------------------------------------------------------------------------------
# Cached decoding
# ----------------------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _extend(graphdef, state, ids, cache, positions, valid):
  return nnx.merge(graphdef, state, copy=True).extend(ids, cache, positions=positions, valid=valid)


@pytest.mark.parametrize("name", ["dec", "dec_learned", "dec_gqa", "dec_t5"])
def test_cached_steps_match_full_forward(name, request):
  model = request.getfixturevalue(name)
  ids = random_ids(6)
  full = apply(model, ids)
  graphdef, state = nnx.split(model)
  pos = jnp.broadcast_to(jnp.arange(L), (B, L))
  cache = model.init_cache(B, L)
  assert cache["layers"][0]["k"].shape == (B, L, model.config.kv_heads, model.config.head_dim)  # G heads only
  logits, cache = _extend(graphdef, state, ids[:, :5], cache, pos[:, :5], None)  # prefill
  steps = [np.asarray(logits)]
  for t in range(5, L):
    logits, cache = _extend(graphdef, state, ids[:, t : t + 1], cache, pos[:, t : t + 1], None)
    steps.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)


def test_generate_batched_prompts_of_different_lengths(dec):
  prompts = np.array(random_ids(7, (B, 8)))
  prompts[0, 3:] = PAD_ID  # right-padded: row 0 has 3 tokens, row 1 has 8
  out = np.asarray(models.generate(dec, prompts, 8, eos_id=-1))
  uncached = np.asarray(models.generate(dec, prompts, 8, eos_id=-1, use_cache=False))
  np.testing.assert_array_equal(out, uncached)
  # Independent check: each greedy token is the argmax of one full forward pass over prompt + generated ids, with
  # row 0's padding masked out (segment 0) and its positions running on across the gap.
  seq = np.concatenate([prompts, out[:, :-1]], axis=1)
  seg = np.ones_like(seq)
  seg[0, 3:8] = 0
  pos = np.tile(np.arange(15), (B, 1))
  pos[0, 8:] = np.arange(3, 10)
  logits = apply(dec, jnp.asarray(seq), segment_ids=jnp.asarray(seg), positions=jnp.asarray(pos))
  np.testing.assert_array_equal(logits[0, [2, *range(8, 15)]].argmax(-1), out[0])
  np.testing.assert_array_equal(logits[1, 7:].argmax(-1), out[1])


def test_generate_stops_at_eos_and_pads(dec):
  prompts = np.asarray(random_ids(8, (B, 8)))
  free = np.asarray(models.generate(dec, prompts, 8, eos_id=-1))
  eos = int(free[0, 2])
  out = np.asarray(models.generate(dec, prompts, 8, eos_id=eos))
  for row in range(B):  # every row: identical up to its first EOS, PAD after
    hits = np.flatnonzero(free[row] == eos)
    stop = hits[0] + 1 if hits.size else 8
    np.testing.assert_array_equal(out[row, :stop], free[row, :stop])
    assert (out[row, stop:] == PAD_ID).all()
  assert (out[0, 3:] == PAD_ID).all() or (free[0, :2] == eos).any()


def test_sampling_reproducible(dec):
  prompts = random_ids(9, (B, 8))
  kw = dict(temperature=1.0, top_k=10, top_p=0.9, eos_id=-1)
  a = np.asarray(models.generate(dec, prompts, 8, seed=1, **kw))
  b = np.asarray(models.generate(dec, prompts, 8, seed=1, **kw))
  c = np.asarray(models.generate(dec, prompts, 8, seed=2, **kw))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_filter_logits_against_numpy():
  logits = np.random.default_rng(0).normal(size=(3, 20)).astype(np.float32)
  got = np.asarray(models.filter_logits(jnp.asarray(logits), top_k=5))
  for row, g in zip(logits, got, strict=True):
    assert set(np.flatnonzero(np.isfinite(g))) == set(np.argsort(-row)[:5])
  got = np.asarray(models.filter_logits(jnp.asarray(logits), top_p=0.6))
  for row, g in zip(logits, got, strict=True):
    order = np.argsort(-row)
    p = np.exp(row[order] - row.max()) / np.exp(row - row.max()).sum()
    n = int(np.searchsorted(np.cumsum(p), 0.6) + 1)  # smallest prefix with mass ≥ 0.6
    assert set(np.flatnonzero(np.isfinite(g))) == set(order[:n])


@pytest.mark.parametrize("name", ["encdec", "encdec_t5"])
def test_encoder_decoder_generation_matches_teacher_forcing(name, request):
  encdec = request.getfixturevalue(name)
  src = np.array(random_ids(10, (B, 10)))
  src[1, 6:] = PAD_ID
  out = np.asarray(models.generate(encdec, src, 8, eos_id=-1))
  dec_in = np.concatenate([np.full((B, 1), BOS_ID), out[:, :-1]], axis=1)
  seg = jnp.asarray((src != PAD_ID).astype(np.int32))
  teacher = apply(encdec, jnp.asarray(src), jnp.asarray(dec_in), encoder_segment_ids=seg)
  np.testing.assert_array_equal(teacher.argmax(-1), out)
  # Cached step logits equal the teacher-forced logits.
  graphdef, state = nnx.split(encdec)
  encoded = apply(encdec, jnp.asarray(src), method="encode", segment_ids=seg)
  cache = encdec.init_cache(jnp.asarray(encoded), 8, encoder_valid=seg != 0)
  steps = []
  for t in range(8):
    pos = jnp.full((B, 1), t, jnp.int32)
    logits, cache = _extend(graphdef, state, jnp.asarray(dec_in[:, t : t + 1]), cache, pos, None)
    steps.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(steps, axis=1), teacher, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Numerics, symmetry, gradients
# ----------------------------------------------------------------------------------------------------------------


def test_bfloat16_matches_float32():
  f32 = models.create("decoder", "tiny", V, seed=4)
  bf16 = models.create("decoder", "tiny", V, seed=4, dtype="bfloat16")
  ids = random_ids(11)
  a, b = apply(f32, ids), apply(bf16, ids)
  assert b.dtype == np.float32
  scale = np.abs(a).max()
  assert np.abs(a - b).max() < 0.05 * scale, (np.abs(a - b).max(), scale)
  assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.9


@pytest.mark.parametrize("name", ["dec", "dec_learned", "encdec"])
def test_isa_permutation_symmetry(name, request):
  """Permuting the embedding rows, the output rows and the ids together permutes the logits exactly."""
  model = request.getfixturevalue(name)
  perm = np.random.default_rng(12).permutation(V)  # old id i becomes perm[i]
  inverse = np.argsort(perm)
  graphdef, state = nnx.split(model)
  permuted = nnx.merge(graphdef, state, copy=True)
  permuted.embed.table[...] = permuted.embed.table[...][inverse]
  if hasattr(permuted, "head"):
    permuted.head.kernel[...] = permuted.head.kernel[...][:, inverse]
  ids = random_ids(13)
  args = (ids, ids[:, ::-1]) if name == "encdec" else (ids,)
  base = apply(model, *args)
  moved = apply(permuted, *(jnp.asarray(perm)[a] for a in args))
  np.testing.assert_array_equal(moved[..., perm], base)


@pytest.mark.parametrize("name", ["dec_learned", "enc", "encdec"])
def test_gradients_flow_under_jit(name, request):
  model = request.getfixturevalue(name)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  ids = random_ids(14)
  args = (ids, ids) if name == "encdec" else (ids,)

  @jax.jit
  def grad(params, rest):
    def loss(p):
      logits = nnx.merge(graphdef, p, rest, copy=True)(*args)
      return -jnp.mean(jax.nn.log_softmax(logits)[..., 7])

    return jax.grad(loss)(params)

  for path, g in jax.tree_util.tree_leaves_with_path(grad(params, rest)):
    assert np.isfinite(g).all(), path
    assert np.abs(g).max() > 0, path


# ----------------------------------------------------------------------------------------------------------------
# Illegal opcodes
# ----------------------------------------------------------------------------------------------------------------


def test_sanitize_ids():
  ids, n = models.sanitize_ids(jnp.asarray([[3, 49, 50, -1, 1000]]), V, "unk")
  np.testing.assert_array_equal(ids, [[3, 49, UNK_ID, UNK_ID, UNK_ID]])
  assert int(n) == 3
  host_ids, n = models.sanitize_ids(np.array([[2**32 + 5, 7]], np.int64), V, "error")  # no wrap to id 5
  np.testing.assert_array_equal(host_ids, [[UNK_ID, 7]])
  assert int(n) == 1


def test_illegal_ids_mapped_and_counted(dec):
  model = nnx.merge(*nnx.split(dec), copy=True)
  models.reset_illegal_count(model)
  ids = random_ids(15)
  bad = ids.at[0, 3].set(V).at[1, 5].set(V + 77).at[1, 6].set(-2)
  np.testing.assert_array_equal(model(bad), model(ids.at[0, 3].set(UNK_ID).at[1, 5].set(UNK_ID).at[1, 6].set(UNK_ID)))
  assert models.illegal_count(model) == 3
  # Inside a functional, jitted step the count travels in the returned state.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def step(params, rest, ids):
    m = nnx.merge(graphdef, params, rest, copy=True)
    return m(ids).sum(), nnx.state(m, models.IllegalOpcodes)

  _, counts = step(params, rest, bad)
  nnx.update(model, counts)
  assert models.illegal_count(model) == 6
  models.generate(model, np.asarray(bad[:, :8]), 8)  # the prompts hold three illegal ids
  assert models.illegal_count(model) == 9
  models.reset_illegal_count(model)
  assert models.illegal_count(model) == 0


def test_illegal_ids_read_as_the_isas_stand_in():
  """A model whose ISA's UNK is not id 1 (or an ISA without UNK: its EOS) reads an unknown id as that id, never as
  whatever id 1 is there: the same logits as feeding the stand-in itself."""
  model = models.create("decoder", "tiny", V, unk_id=7)
  ids = random_ids(19, (1, 6))
  np.testing.assert_array_equal(model(ids.at[0, 2].set(V + 5)), model(ids.at[0, 2].set(7)))
  assert not np.array_equal(model(ids.at[0, 2].set(V + 5)), model(ids.at[0, 2].set(UNK_ID)))
  with pytest.raises(UserError, match="must be > 50 \\(the unk id\\)"):
    models.ModelConfig(vocab_size=V, unk_id=V)


def test_illegal_policy_error():
  model = models.create("decoder", "tiny", V, illegal_id_policy="error")
  ids = random_ids(16, (1, 4))
  model(ids)  # legal ids: fine
  with pytest.raises(UserError, match="illegal opcodes"):
    model(ids.at[0, 0].set(V))
  assert models.illegal_count(model) == 1


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_judges_wide_ids_before_narrowing_on_every_path(dec, use_cache):
  model = nnx.merge(*nnx.split(dec), copy=True)
  models.reset_illegal_count(model)
  prompt = np.asarray(random_ids(18, (2, 6)), np.int64)
  wide = prompt.copy()
  wide[0, 2] = 2**32 + int(prompt[0, 2])  # int32 would wrap it to the legal id prompt[0, 2]
  wide[1, 4] = -(2**40)
  unk = prompt.copy()
  unk[0, 2] = unk[1, 4] = UNK_ID
  got = models.generate(model, wide, 6, use_cache=use_cache)
  assert models.illegal_count(model) == 2
  np.testing.assert_array_equal(got, models.generate(model, unk, 6, use_cache=use_cache))  # read as UNK
  strict = models.create("decoder", "tiny", V, illegal_id_policy="error")
  with pytest.raises(UserError, match="2 token ids are outside"):
    models.generate(strict, wide, 6, use_cache=use_cache)


# ----------------------------------------------------------------------------------------------------------------
# Swapping and sharding
# ----------------------------------------------------------------------------------------------------------------


def test_encoder_swaps_into_encoder_decoder(enc):
  target = models.create("encoder_decoder", "tiny", V, seed=5, positions="sinusoidal")
  target.encoder = nnx.merge(*nnx.split(enc.encoder), copy=True)
  target.embed = nnx.merge(*nnx.split(enc.embed), copy=True)
  ids = random_ids(17)
  np.testing.assert_allclose(apply(target, ids, method="encode"), apply(enc, ids, method="hidden"), atol=1e-6)


def test_logical_sharding_annotations(dec):
  params = nnx.state(dec, nnx.Param)
  names = {p[-1]: v.get_metadata()["out_sharding"] for p, v in nnx.to_flat_state(params)}
  assert names["table"] == ("vocab", "embed") and names["qkv"] == ("embed", "heads", None, "kv")
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "tensor"))
  shardings = models.param_shardings(params, mesh, models.logical_axis_rules(fsdp=False))
  assert all(isinstance(s, jax.sharding.NamedSharding) for s in jax.tree.leaves(shardings))


_SHARDED = textwrap.dedent(
  """
  import jax, jax.numpy as jnp, numpy as np
  from flax import nnx
  import llmcpu.models as models
  model = models.create("decoder", "tiny", 48, seed=0)
  ids = jnp.asarray(np.random.default_rng(0).integers(5, 48, (4, 16)), jnp.int32)
  want = np.asarray(model(ids))
  graphdef, state0 = nnx.split(model)
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s, copy=True)(x))
  for shape, names, fsdp, table_spec in [
    ((2, 2), ("data", "tensor"), False, jax.P("tensor", None)),
    ((1, 2, 2), ("data", "fsdp", "tensor"), True, jax.P("tensor", "fsdp")),
  ]:
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(shape), names)
    rules = models.logical_axis_rules(fsdp=fsdp)
    state = jax.device_put(state0, models.param_shardings(state0, mesh, rules))
    assert state["embed"]["table"][...].sharding.spec == table_spec, state["embed"]["table"][...].sharding
    got = forward(state, jax.device_put(ids, models.batch_sharding(mesh, rules)))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  print("OK")
  """
)


def test_param_shardings_on_four_cpu_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0 and "OK" in run.stdout, run.stderr[-3000:]
