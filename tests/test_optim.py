"""llmcpu/training/optim.py: the learning-rate schedule's shape, which parameters decay, and AdamW with global-norm
clipping.

Every expected value is derived here by hand from the config (or recomputed in float64 numpy), never taken from
optax or from the module under test.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmcpu import models
from llmcpu.errors import UserError
from llmcpu.models.trainable import path_name
from llmcpu.training.optim import decay_mask, make_optimizer
from llmcpu.training.run_config import base_config


def train_config(**overrides):
  t = base_config("decoder", "tiny").train
  for name, value in overrides.items():
    t[name] = value
  return t


def cosine(peak: float, end: float, done: int, total: int) -> float:
  """Cosine decay from ``peak`` to ``end`` over ``total`` steps, ``done`` of them taken."""
  return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * done / total))


# --- schedule -------------------------------------------------------------------------------------------------------


def test_schedule_warms_up_linearly_from_zero_then_decays_by_cosine_to_min_lr_ratio():
  # 10 steps, 4 of warmup to 0.2, then 6 of cosine down to 0.2 × 0.25 = 0.05.
  _, schedule = make_optimizer(train_config(steps=10, warmup_steps=4, learning_rate=0.2, min_lr_ratio=0.25))
  expected = {
    0: 0.0,  # warmup starts at zero
    1: 0.05,
    2: 0.1,  # linear: half way, half the peak
    4: 0.2,  # warmup end = peak
    5: cosine(0.2, 0.05, 1, 6),
    7: 0.125,  # cosine half way: the mean of peak and end
    9: cosine(0.2, 0.05, 5, 6),  # the last step a 10-step run takes (steps 0…9): 0.0600481…
    10: 0.05,  # train.steps: exactly the configured floor
    25: 0.05,  # and it stays there
  }
  got = {step: float(schedule(step)) for step in expected}
  np.testing.assert_allclose(list(got.values()), list(expected.values()), rtol=1e-6, atol=1e-9)
  assert expected[9] == pytest.approx(0.0600481, abs=1e-7)


def test_schedule_is_monotone_up_then_down():
  _, schedule = make_optimizer(train_config(steps=30, warmup_steps=6, learning_rate=1e-3, min_lr_ratio=0.1))
  lrs = np.array([float(schedule(s)) for s in range(31)])
  assert np.all(np.diff(lrs[:7]) > 0) and np.all(np.diff(lrs[6:]) < 0)
  assert lrs.max() == pytest.approx(1e-3, rel=1e-6) and lrs.argmax() == 6
  assert lrs[-1] == pytest.approx(1e-4, rel=1e-5)


def test_schedule_warmup_longer_than_the_run_is_clamped_so_the_peak_is_reached():
  # warmup_steps=10 on a 3-step run: warmup becomes steps − 1 = 2, so the run's last step (2) trains at the peak.
  _, schedule = make_optimizer(train_config(steps=3, warmup_steps=10, learning_rate=0.4, min_lr_ratio=0.5))
  got = [float(schedule(s)) for s in range(4)]
  np.testing.assert_allclose(got, [0.0, 0.2, 0.4, 0.2], rtol=1e-6, atol=1e-9)


def test_schedule_without_warmup_starts_at_the_peak():
  _, schedule = make_optimizer(train_config(steps=4, warmup_steps=0, learning_rate=0.3, min_lr_ratio=0.0))
  got = [float(schedule(s)) for s in range(5)]
  expected = [0.3, cosine(0.3, 0.0, 1, 4), 0.15, cosine(0.3, 0.0, 3, 4), 0.0]
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_wsd_schedule_warms_up_stays_flat_then_decays_linearly_to_the_end_value():
  # 20 steps, 4 of warmup to 0.2, flat until the last 0.25 × 20 = 5 steps (from step 15), then linear to 0.02.
  t = train_config(steps=20, warmup_steps=4, learning_rate=0.2, min_lr_ratio=0.1, schedule="wsd", decay_fraction=0.25)
  _, schedule = make_optimizer(t)
  expected = {0: 0.0, 1: 0.05, 2: 0.1, 4: 0.2, 5: 0.2, 10: 0.2, 15: 0.2}  # warmup, then the stable phase
  expected |= {16: 0.2 - 0.18 / 5, 17: 0.2 - 2 * 0.18 / 5, 19: 0.2 - 4 * 0.18 / 5, 20: 0.02, 30: 0.02}  # decay
  got = {step: float(schedule(step)) for step in expected}
  np.testing.assert_allclose(list(got.values()), list(expected.values()), rtol=1e-6, atol=1e-9)


def test_wsd_stable_phase_does_not_depend_on_the_budget():
  # What a cooldown branch relies on: runs of 20 and 40 steps share their schedule until the shorter one decays.
  c = dict(warmup_steps=2, learning_rate=0.5, min_lr_ratio=0.1, schedule="wsd", decay_fraction=0.2)
  shorter, longer = (make_optimizer(train_config(steps=n, **c))[1] for n in (20, 40))
  np.testing.assert_array_equal([float(shorter(s)) for s in range(17)], [float(longer(s)) for s in range(17)])
  assert float(shorter(20)) == pytest.approx(0.05) and float(longer(20)) == float(longer(32)) == 0.5  # still flat


@pytest.mark.parametrize(("key", "value"), [("schedule", "linear"), ("decay_fraction", 0.0)])
def test_bad_schedule_is_one_line(key, value):

  with pytest.raises(UserError, match=key):
    make_optimizer(train_config(**{"steps": 10, "schedule": "wsd", key: value}))


# --- weight-decay mask ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_params():
  """Every kind of parameter the models have: layernorm scale and bias, learned positions, an untied head."""
  model = models.create(
    "decoder",
    "tiny",
    vocab_size=16,
    d_model=8,
    num_heads=2,
    d_ff=16,
    num_layers=1,
    max_len=8,
    norm="layernorm",
    positions="learned",
    tie_embeddings=False,
  )
  _, params, _ = nnx.split(model, nnx.Param, ...)
  return params


def flat(tree) -> dict[str, object]:
  return {path_name(path): (v.get_value() if isinstance(v, nnx.Variable) else v) for path, v in nnx.to_flat_state(tree)}


def should_decay(name: str) -> bool:
  """By name: norm scales and biases (vectors) stay; attention, MLP, embedding, position and head weights decay."""
  return name.rsplit("/", 1)[-1] not in ("scale", "bias")


def test_decay_mask_decays_weight_matrices_and_embeddings_only(tiny_params):
  mask = flat(decay_mask(tiny_params))
  names = sorted(flat(tiny_params))
  assert sorted(mask) == names
  expected = {name: should_decay(name) for name in names}
  assert {name: bool(m) for name, m in mask.items()} == expected
  # The fixture holds both kinds (else this test proves nothing): and the ones we know by name.
  decayed = {name for name, d in expected.items() if d}
  for name in ("embed/table", "head/kernel", "decoder/pos_embed/table", "decoder/layers/0/attn/qkv"):
    assert name in decayed
  for name in ("decoder/final_norm/scale", "decoder/final_norm/bias", "decoder/layers/0/mlp_norm/scale"):
    assert name in expected and name not in decayed


def test_adamw_applies_the_mask_weight_decay_only_on_decayed_leaves(tiny_params):
  # Zero gradients: Adam's own step is 0/(0 + eps) = 0, so one update is −lr × wd × p on decayed leaves, 0 elsewhere.
  lr, wd = 0.5, 0.2
  tx, _ = make_optimizer(train_config(steps=10, warmup_steps=0, learning_rate=lr, weight_decay=wd))
  grads = jax.tree.map(jnp.zeros_like, tiny_params)
  updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(tiny_params), tiny_params)
  params, got = flat(tiny_params), flat(updates)
  for name, p in params.items():
    p = np.asarray(p, np.float64)
    expected = -lr * wd * p if should_decay(name) else np.zeros_like(p)
    np.testing.assert_allclose(np.asarray(got[name]), expected, rtol=1e-6, atol=1e-9, err_msg=name)


# --- AdamW + clipping, step by step against numpy ---------------------------------------------------------------------


def numpy_adamw(params, grads_per_step, lrs, *, clip, b1, b2, wd, decay, eps=1e-8, scale=None):
  """Float64 AdamW (decoupled decay, bias-corrected moments) after clipping all gradients by their global norm;
  ``scale``: a learning-rate multiplier per parameter (PyTorch parameter groups: decay scaled with it)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in p.items()}
  nu = {k: np.zeros_like(v) for k, v in p.items()}
  for t, (grads, lr) in enumerate(zip(grads_per_step, lrs, strict=True), start=1):
    g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in g.values()))
    if norm > clip:
      g = {k: v * (clip / norm) for k, v in g.items()}
    for k in p:
      mu[k] = b1 * mu[k] + (1 - b1) * g[k]
      nu[k] = b2 * nu[k] + (1 - b2) * g[k] ** 2
      step = (mu[k] / (1 - b1**t)) / (np.sqrt(nu[k] / (1 - b2**t)) + eps)
      if decay[k]:
        step = step + wd * p[k]
      p[k] = p[k] - lr * (scale or {}).get(k, 1.0) * step
  return p


def test_one_run_of_updates_matches_numpy_adamw_with_global_norm_clipping():
  c = dict(steps=5, warmup_steps=1, learning_rate=0.1, min_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95)
  c["grad_clip"] = 1.0
  tx, _ = make_optimizer(train_config(**c))
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(2, 3)).astype(np.float32), "b": rng.normal(size=(3,)).astype(np.float32)}
  # Global norms ≈ 10 (clipped to 1), ≈ 0.3 (left alone), ≈ 3 (clipped): unequal, so clipping changes the moments'
  # ratios and with them the updates (Adam's first step alone is scale-free).
  grads = []
  for norm in (10.0, 0.3, 3.0):
    g = {k: rng.normal(size=v.shape) for k, v in params.items()}
    total = math.sqrt(sum(float(np.sum(v**2)) for v in g.values()))
    grads.append({k: (v * norm / total).astype(np.float32) for k, v in g.items()})
  # lr by hand: warmup 1 step from 0, then cosine over the 4 remaining steps from 0.1 to 0.01.
  lrs = [0.0, 0.1, cosine(0.1, 0.01, 1, 4)]

  update = jax.jit(tx.update)  # one compilation for the three steps
  state, p = jax.jit(tx.init)(params), {k: jnp.asarray(v) for k, v in params.items()}
  for step, g in enumerate(grads):
    updates, state = update({k: jnp.asarray(v) for k, v in g.items()}, state, p)
    if step == 0:  # warmup from 0: the first update is zero (weight decay included); the moments start to fill
      assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
    p = jax.tree.map(lambda a, u: a + u, p, updates)

  hyper = dict(clip=1.0, b1=0.9, b2=0.95, wd=0.1)
  expected = numpy_adamw(params, grads, lrs, decay={"w": True, "b": False}, **hyper)
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), expected[k], rtol=2e-6, atol=1e-7, err_msg=k)

  # The comparison can tell: without clipping, with decay on the vector, or with optax's default b2 the reference moves.
  for other in (
    numpy_adamw(params, grads, lrs, decay={"w": True, "b": False}, **{**hyper, "clip": math.inf}),
    numpy_adamw(params, grads, lrs, decay={"w": True, "b": True}, **hyper),
    numpy_adamw(params, grads, lrs, decay={"w": True, "b": False}, **{**hyper, "b2": 0.999}),
  ):
    assert max(float(np.max(np.abs(other[k] - expected[k]))) for k in params) > 1e-4


# --- per-parameter learning rates (train.lr_scale) --------------------------------------------------------------------


def test_lr_scale_matches_numpy_adamw_with_a_learning_rate_per_parameter():
  c = dict(steps=5, warmup_steps=0, learning_rate=0.1, min_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95)
  tx, _ = make_optimizer(train_config(**c, lr_scale="^enc/=3,w$=0.5"))  # first rule wins: enc/w gets 3
  rng = np.random.default_rng(1)
  params = {
    "enc": {"w": rng.normal(size=(2, 3)).astype(np.float32)},
    "dec": {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=(2,)).astype(np.float32)},
  }
  grads = [jax.tree.map(lambda v: rng.normal(size=v.shape).astype(np.float32) * 2, params) for _ in range(2)]
  update = jax.jit(tx.update)
  state, p = jax.jit(tx.init)(params), jax.tree.map(jnp.asarray, params)
  for g in grads:
    updates, state = update(g, state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)

  def by_name(tree):
    return {f"{a}/{b}": v for a, sub in tree.items() for b, v in sub.items()}

  lrs = [cosine(0.1, 0.01, 0, 5), cosine(0.1, 0.01, 1, 5)]
  hyper = dict(clip=1.0, b1=0.9, b2=0.95, wd=0.1, decay={"enc/w": True, "dec/w": True, "dec/b": False})
  scale = {"enc/w": 3.0, "dec/w": 0.5, "dec/b": 1.0}
  expected = numpy_adamw(by_name(params), [by_name(g) for g in grads], lrs, scale=scale, **hyper)
  for k, v in by_name(p).items():
    np.testing.assert_allclose(np.asarray(v), expected[k], rtol=2e-6, atol=1e-7, err_msg=k)
  plain = numpy_adamw(by_name(params), [by_name(g) for g in grads], lrs, **hyper)
  assert max(float(np.max(np.abs(plain[k] - expected[k]))) for k in expected) > 1e-3  # the multipliers move it


def test_lr_scale_reads_the_models_parameter_paths(tiny_params):
  """On a model's own state (nnx paths): the update of a matching leaf is the unscaled update times its multiplier."""
  c = dict(steps=10, warmup_steps=0, learning_rate=0.5, weight_decay=0.2)
  grads = jax.tree.map(lambda v: jnp.full_like(v, 0.3), tiny_params)
  got = {}
  for spec in ("", "attn=2,embed/table=0.25"):
    tx, _ = make_optimizer(train_config(**c, lr_scale=spec))
    got[spec] = flat(jax.jit(tx.update)(grads, jax.jit(tx.init)(tiny_params), tiny_params)[0])
  for name, u in got[""].items():
    m = 2.0 if "attn" in name else 0.25 if "embed/table" in name else 1.0
    np.testing.assert_allclose(np.asarray(got["attn=2,embed/table=0.25"][name]), m * np.asarray(u), rtol=1e-6)
  assert "decoder/layers/0/attn/qkv" in got[""] and "embed/table" in got[""]


@pytest.mark.parametrize(
  "spec,match",
  [("attn", "REGEX=MULTIPLIER"), ("attn=-1", "positive finite"), ("(=2", "REGEX=MULTIPLIER"), ("nope=2", "matches no")],
)
def test_bad_lr_scale_is_one_line(tiny_params, spec, match):
  with pytest.raises(UserError, match=match):
    tx, _ = make_optimizer(train_config(steps=10, lr_scale=spec))
    tx.init(tiny_params)
