"""The Pallas TPU flash-attention path (``model.attention_impl=pallas``), run on CPU in Pallas's TPU interpret
mode: exact against a float64 reference with causal masking and packed segments, gradients equal to the XLA
kernel's, wired through the model, and a clear error off TPU outside interpret mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_memory import _grads, reference_attention

from llmcpu import models
from llmcpu.errors import UserError
from llmcpu.models import attention, flash_tpu


@pytest.mark.slow  # interpret mode: ~15 s per case on the 2-core host
@pytest.mark.parametrize("causal", [False, True])
def test_pallas_attention_is_exact(causal):
  rng = np.random.default_rng(0)
  b, length, h, k = 1, 256, 2, 16  # two 128-tiles per axis: the kernel's block loop and causal tile skipping run
  q, key, v = (rng.normal(size=(b, length, h, k)).astype(np.float32) for _ in range(3))
  seg = np.concatenate([np.full(90, 1), np.full(120, 2), np.full(30, 3), np.zeros(16)])[None].astype(np.int32)
  allowed = np.asarray(attention.segment_mask(jnp.asarray(seg), jnp.asarray(seg)))[:, 0]
  if causal:
    allowed = allowed & np.tril(np.ones((length, length), bool))
  real = seg[0] != 0  # padding queries (id 0) may differ: the kernel lets them see padding keys
  ids = flash_tpu.SegmentIds(jnp.asarray(seg), jnp.asarray(seg))
  x = tuple(jnp.asarray(a) for a in (q, key, v))
  with flash_tpu.interpret():
    got = attention.attend(*x, ids, impl="pallas", is_causal=causal)
  want = reference_attention(q, key, v, allowed)
  np.testing.assert_allclose(np.asarray(got)[:, real], want[:, real], rtol=1e-5, atol=1e-5)

  weight = jnp.asarray(real, jnp.float32)[None, :, None, None]  # the loss ignores padding rows

  def grads(impl, mask):
    f = lambda *a: jnp.sum(weight * jnp.sin(attention.attend(*a, mask, impl=impl, is_causal=causal)))  # noqa: E731
    return jax.grad(f, argnums=(0, 1, 2))(*x)

  with flash_tpu.interpret():
    pallas = grads("pallas", ids)
  for a, d in zip(pallas, grads("xla", ids), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(d), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_pallas_model_loss_and_grads_equal_xla():
  rng = np.random.default_rng(1)
  mc = models.ModelConfig(arch="decoder", vocab_size=50, d_model=32, num_heads=2, num_layers=2, d_ff=64, max_len=128)
  ids = lambda: jnp.asarray(rng.integers(4, 50, size=(2, 128)), jnp.int32)  # noqa: E731
  seg = jnp.asarray(np.repeat([[1] * 80 + [2] * 40 + [0] * 8], 2, 0), jnp.int32)
  batch = dict(inputs=ids(), targets=ids(), weights=(seg != 0).astype(jnp.float32), segment_ids=seg, positions=None)
  batch["target_bytes"] = jnp.ones((2, 128), jnp.int32)
  base_loss, base_grads = _grads(mc, batch)
  # remat stays off: interpret mode runs the kernel through io_callbacks, which jax.checkpoint cannot partially
  # evaluate (NotImplementedError "Effects not supported"); the compiled TPU kernel has no such effect.
  with flash_tpu.interpret():
    value, grads = _grads(mc.replace(attention_impl="pallas"), batch)
  np.testing.assert_allclose(float(value), float(base_loss), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_pallas_attention_needs_a_tpu_and_falls_back_off_the_tile():
  rng = np.random.default_rng(2)
  x = jnp.zeros((1, 256, 2, 8), jnp.float32)
  if jax.default_backend() != "tpu":
    with pytest.raises(UserError, match="pallas is the TPU kernel"):
      attention.attend(x, x, x, None, impl="pallas", is_causal=True)
  # 100 tokens: not a whole 128-tile, so the XLA kernel answers (checked against float64, causal).
  q, k, v = (rng.normal(size=(1, 100, 2, 8)).astype(np.float32) for _ in range(3))
  with flash_tpu.interpret():
    got = attention.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), None, impl="pallas", is_causal=True)
  want = reference_attention(q, k, v, np.tril(np.ones((100, 100), bool))[None])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
