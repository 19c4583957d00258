"""Tests of llmcpu.training.loss: the chunked cross-entropy against a float64 numpy recompute and against the
full-logits path (values and gradients), ``batch_sums`` on real models, ``finalize`` on hand-made sums.

Shapes are tiny (compile time dominates); chunk 3 does not divide the length 7, so every pass has a short last chunk.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import llmcpu.models as models
from llmcpu.specials import EOS_ID, FIRST_REGULAR_ID, PAD_ID, UNK_ID
from llmcpu.training import loss

B, L, D, V = 2, 7, 8, 50
CHUNK = 3  # does not divide L


def make_inputs(seed: int = 0, dtype=jnp.float32) -> dict:
  """Hidden states, kernel, targets with content and non-content ids, 0/1 weights (some zero), byte counts."""
  rng = np.random.default_rng(seed)
  targets = rng.integers(FIRST_REGULAR_ID, V, (B, L))
  targets[0, :3] = [UNK_ID, EOS_ID, PAD_ID]  # content, not content, not content
  weights = (rng.random((B, L)) < 0.8).astype(np.float32)
  weights[0, :2] = 1.0
  target_bytes = rng.integers(1, 5, (B, L)) * weights * (loss.is_content(jnp.asarray(targets)))
  return dict(
    h=jnp.asarray(rng.normal(size=(B, L, D)), dtype),
    kernel=jnp.asarray(rng.normal(size=(D, V)), dtype),
    targets=jnp.asarray(targets, jnp.int32),
    weights=jnp.asarray(weights),
    target_bytes=jnp.asarray(target_bytes, jnp.int32),
  )


def numpy_sums(x: dict) -> dict:
  """The same statistics from the full float64 softmax cross-entropy."""
  logits = np.asarray(x["h"], np.float64) @ np.asarray(x["kernel"], np.float64)
  targets, weights = np.asarray(x["targets"]), np.asarray(x["weights"], np.float64)
  m = logits.max(-1, keepdims=True)
  lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
  nll = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  content = weights * ((targets == UNK_ID) | (targets >= FIRST_REGULAR_ID))
  return {
    "nll": (nll * weights).sum(),
    "weight": weights.sum(),
    "bpb_nll": (nll * content).sum(),
    "bytes": float(np.asarray(x["target_bytes"]).sum()),
    "correct": ((logits.argmax(-1) == targets) * weights).sum(),
  }


def chunked(x: dict, chunk: int | None = CHUNK) -> dict:
  return loss.chunked_sums(x["h"], x["kernel"], x["targets"], x["weights"], x["target_bytes"], chunk=chunk)


def unchunked(x: dict) -> dict:
  logits = jnp.matmul(x["h"], x["kernel"], preferred_element_type=jnp.float32)
  return loss.metric_sums(logits, x["targets"], x["weights"], x["target_bytes"])


@pytest.mark.parametrize("chunk", [CHUNK, 1, L, 100, None])
def test_chunked_sums_match_float64_numpy(chunk):
  x = make_inputs()
  x["kernel"] = x["kernel"].at[:, 40].set(x["h"][1, 2] * 10.0)  # a confident position: one hit whatever the draw
  x["targets"] = x["targets"].at[1, 2].set(40)
  x["weights"] = x["weights"].at[1, 2].set(1.0)
  got = jax.device_get(jax.jit(lambda x: chunked(x, chunk))(x))
  want = numpy_sums(x)
  assert set(got) == set(loss.METRIC_SUM_KEYS)
  assert want["correct"] >= 1 and want["bpb_nll"] > 0
  for key in loss.METRIC_SUM_KEYS:
    assert float(got[key]) == pytest.approx(want[key], rel=1e-5), key


def test_default_chunk_splits_evenly_within_the_budget():
  target, rows, cap = loss.CHUNK_LOGITS, loss.MIN_CHUNK_ROWS, loss.MAX_CHUNK_LOGITS
  assert loss.default_chunk(16, 256, target // (16 * 65)) == 64  # at most 65 → 4 chunks of 64, no short one
  assert loss.default_chunk(1, 1000, target // 300) == 250  # at most 300 → 4 chunks of 250
  assert loss.default_chunk(2, L, 10) == L  # everything fits: one chunk
  assert loss.default_chunk(64, 3, cap) == 1  # even one position exceeds the cap: 1
  assert loss.default_chunk(16, 128, 4000) == 16  # 1M logits are 262 rows: 16 positions of 16 rows, 8 chunks
  assert loss.default_chunk(16, 256, 32000) == 16  # 1M logits are 32 rows: raised to 256 rows (8M logits)
  assert loss.default_chunk(16, 256, 256000) == 2  # 256 rows would be 64M logits: the cap's 32 rows
  for b, length, v in [(16, 256, 8000), (16, 256, 32000), (3, 1000, 777), (16, 128, 4000), (8, 512, 256000)]:
    c = loss.default_chunk(b, length, v)
    assert 1 <= c <= length and b * c * v <= max(target, min(rows * v, cap))


def _grads(sums_fn, x: dict, key_weights: dict):
  """Gradients of Σ_key c_key · sums[key] w.r.t. h, kernel and weights."""

  def f(h, kernel, weights):
    sums = sums_fn(dict(x, h=h, kernel=kernel, weights=weights))
    return sum(c * sums[k] for k, c in key_weights.items())

  return jax.jit(jax.grad(f, argnums=(0, 1, 2)))(x["h"], x["kernel"], x["weights"])


@pytest.mark.parametrize("key_weights", [{"nll": 0.25}, {"bpb_nll": 1.0}, {"nll": 1.0, "bpb_nll": -2.0}])
def test_gradients_match_the_unchunked_path(key_weights):
  """The loss (nll, gradient computed in the forward pass) and bits per byte (per-position cotangent, recomputed)."""
  x = make_inputs(1)
  got, want = _grads(chunked, x, key_weights), _grads(unchunked, x, key_weights)
  for g, w, name in zip(got, want, ("h", "kernel", "weights"), strict=True):
    assert g.dtype == w.dtype, name
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-6, err_msg=name)


def test_training_gradient_needs_no_recompute_and_no_full_logits():
  """As the trainer differentiates (the nll, other sums as aux): 3 head matmuls per chunk (logits, d h, d kernel),
  none recomputed in the backward pass, and the compiled step's scratch memory is far below one [B, L, V] logits."""
  b, length, d, v = 2, 64, 16, 4096
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(b, length, d)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, (b, length)), jnp.int32)
  ones = jnp.ones((b, length), jnp.float32)

  def loss_fn(h, kernel, chunk):
    sums = loss.chunked_sums(h, kernel, targets, ones, ones, chunk=chunk)
    return sums["nll"], sums

  jaxpr = str(jax.make_jaxpr(jax.grad(loss_fn, argnums=(0, 1), has_aux=True), static_argnums=2)(h, kernel, 10))
  assert jaxpr.count("dot_general") == 6  # the scanned chunk's 3 + the short last chunk's 3
  full_logits = b * length * v * 4
  step = jax.jit(jax.grad(loss_fn, argnums=(0, 1), has_aux=True), static_argnums=2)
  temp = step.lower(h, kernel, 8).compile().memory_analysis().temp_size_in_bytes
  assert temp < full_logits / 2, (temp, full_logits)


def test_bfloat16_compute_dtype():
  """bfloat16 hidden states and kernel: float32 sums, gradients in bfloat16 close to the unchunked ones."""
  x = make_inputs(2, jnp.bfloat16)
  np.testing.assert_allclose(np.asarray(jax.device_get(chunked(x)["nll"])), np.asarray(unchunked(x)["nll"]), rtol=1e-5)
  got, want = _grads(chunked, x, {"nll": 1.0}), _grads(unchunked, x, {"nll": 1.0})
  for g, w in zip(got[:2], want[:2], strict=True):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=0.05, atol=0.02)


def _batch(arch: str, vocab: int) -> dict:
  rng = np.random.default_rng(3)
  ids = jnp.asarray(rng.integers(FIRST_REGULAR_ID, vocab, (B, L)), jnp.int32)
  seg = jnp.asarray(np.array([[1] * L, [1] * 4 + [2] * 2 + [0]]), jnp.int32)
  pos = jnp.asarray(np.array([list(range(L)), [0, 1, 2, 3, 0, 1, 0]]), jnp.int32)
  weights = (seg > 0).astype(jnp.float32)
  common = dict(target_bytes=jnp.asarray(rng.integers(1, 4, (B, L)), jnp.int32) * weights.astype(jnp.int32))
  if arch == "encoder_decoder":
    return dict(
      common,
      encoder_inputs=ids,
      decoder_inputs=jnp.roll(ids, 1, axis=1),
      encoder_segment_ids=seg,
      decoder_segment_ids=seg,
      encoder_positions=pos,
      decoder_positions=pos,
      decoder_targets=ids,
      decoder_weights=weights,
    )
  return dict(common, inputs=ids, segment_ids=seg, positions=pos, targets=jnp.roll(ids, -1, axis=1), weights=weights)


@pytest.mark.parametrize(
  "arch,overrides", [("decoder", dict(tie_embeddings=False)), ("encoder_decoder", {}), ("encoder", {})]
)
def test_batch_sums_match_the_full_logits_path(arch, overrides):
  """``batch_sums`` (hidden states + ``head_kernel``, chunked) = ``metric_sums(forward(...))``, values and parameter
  gradients as the trainer takes them (merge with copy=True under jax.grad)."""
  model = models.create(arch, "tiny", V, **overrides)
  batch = _batch(arch, V)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params, path):
    m = nnx.merge(graphdef, params, rest, copy=True)
    if path == "chunked":
      sums = loss.batch_sums(m, batch, chunk=CHUNK)
    else:
      logits, targets, weights = loss.forward(m, batch)
      sums = loss.metric_sums(logits, targets, weights, batch["target_bytes"])
    return sums["nll"] / sums["weight"], sums

  step = jax.jit(jax.grad(loss_fn, has_aux=True), static_argnums=1)
  (g_chunked, s_chunked), (g_full, s_full) = step(params, "chunked"), step(params, "full")
  for key in loss.METRIC_SUM_KEYS:
    assert float(s_chunked[key]) == pytest.approx(float(s_full[key]), rel=1e-5), key
  flat_c, flat_f = nnx.to_flat_state(g_chunked), nnx.to_flat_state(g_full)
  for (path, gc), (_, gf) in zip(flat_c, flat_f, strict=True):
    np.testing.assert_allclose(np.asarray(gc[...]), np.asarray(gf[...]), rtol=1e-4, atol=1e-6, err_msg=str(path))


def test_finalize_on_hand_made_sums():
  sums = {"nll": 6.0, "weight": 4.0, "bpb_nll": 10 * math.log(2), "bytes": 5.0, "correct": 3.0}
  assert loss.finalize(sums) == pytest.approx({"loss": 1.5, "accuracy": 0.75, "bits_per_byte": 2.0})
  # No bytes (e.g. an objective without content targets): no bits per byte; no weight: no division by zero.
  assert loss.finalize(dict(sums, bytes=0.0)) == pytest.approx({"loss": 1.5, "accuracy": 0.75})
  assert loss.finalize({k: 0.0 for k in loss.METRIC_SUM_KEYS}) == {"loss": 0.0, "accuracy": 0.0}


@pytest.mark.parametrize("vocab", [37, 2**15 + 3])  # int16 ids, and int32 past int16's range
def test_hits_is_argmax_including_ties_and_nan(vocab):
  """``loss.hits`` counts exactly numpy's argmax == target (the first maximal id), on logits with many exact ties
  (small integers), rows of one repeated value, and a row holding a NaN (never a hit)."""
  rng = np.random.default_rng(0)
  logits = rng.integers(0, 4, (64, vocab)).astype(np.float32)
  logits[:4] = 2.0  # every id ties: only id 0 is the argmax
  logits[4, 7] = np.nan
  logits[5:8, -1] = 9.0  # the last id is the only maximum: a hit where it is the target
  targets = rng.integers(0, vocab, 64)
  targets[:8] = [0, 1, vocab - 1, 0, 7, vocab - 1, vocab - 1, 0]
  shifted = jnp.asarray(logits) - jnp.max(jnp.asarray(logits), axis=-1, keepdims=True)
  got = np.asarray(loss.hits(shifted, jnp.asarray(targets, jnp.int32)))
  want = (np.argmax(np.where(np.isnan(logits), -np.inf, logits), axis=-1) == targets).astype(np.float32)
  want[4] = 0.0
  np.testing.assert_array_equal(got, want)
  assert got[:8].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0] and 0 < got.sum() < 64
