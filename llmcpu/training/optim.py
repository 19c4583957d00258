"""The optimizer: AdamW with warmup and a cosine or warmup-stable-decay schedule, global-norm clipping and a
weight-decay mask."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import optax

from llmcpu.errors import UserError

SCHEDULES = ("cosine", "wsd")


def make_schedule(t: ml_collections.ConfigDict) -> optax.Schedule:
  """``train.schedule``: ``cosine`` (linear warmup, cosine decay to ``min_lr_ratio`` of the peak at ``steps``) or
  ``wsd`` (linear warmup, flat at the peak, then a linear decay to the same end value over the last
  ``decay_fraction`` of the steps)."""
  kind = t.get("schedule", "cosine")
  if kind not in SCHEDULES:
    raise UserError(f"--config.train.schedule={kind!r} is not a schedule; choose one of {', '.join(SCHEDULES)}")
  warmup = min(t.warmup_steps, max(t.steps - 1, 1))
  end = t.learning_rate * t.min_lr_ratio
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, warmup, max(t.steps, warmup + 1), end_value=end)
  return wsd_schedule(t.learning_rate, t.steps, warmup, t.get("decay_fraction", 0.2), end)


def wsd_schedule(peak: float, steps: int, warmup: int, decay_fraction: float, end: float) -> optax.Schedule:
  """Warmup-stable-decay: 0 → ``peak`` over ``warmup`` steps, ``peak`` until the last ``decay_fraction · steps``
  steps, then linearly down to ``end`` at ``steps``. The stable phase does not depend on ``steps``, so a run annealed
  for a budget s can branch from a longer run's stable phase (Hägele et al. 2024)."""
  if not 0 < decay_fraction <= 1:
    raise UserError(f"--config.train.decay_fraction={decay_fraction} must be in (0, 1]: the share of steps decayed")
  start = wsd_decay_start(steps, warmup, decay_fraction)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    up = peak * step / max(warmup, 1)
    down = peak + (end - peak) * jnp.clip((step - start) / max(steps - start, 1), 0.0, 1.0)
    return jnp.where(step < warmup, up, down)

  return schedule


def wsd_decay_start(steps: int, warmup: int, decay_fraction: float) -> int:
  """The step at which a ``steps``-step warmup-stable-decay run leaves its stable phase (never inside the warmup)."""
  return max(steps - max(1, round(decay_fraction * steps)), warmup)


def make_optimizer(t: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW on ``make_schedule``'s learning rate, global-norm clipping, weight decay on matrices only, and
  ``train.lr_scale``'s per-parameter multipliers."""
  schedule = make_schedule(t)
  parts = [
    optax.clip_by_global_norm(t.grad_clip),
    optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask),
  ]
  rules = parse_lr_scale(t.get("lr_scale", ""))
  if rules:
    parts.append(scale_by_path(rules))
  return optax.chain(*parts), schedule


def parse_lr_scale(spec: str) -> list[tuple[re.Pattern, float]]:
  """``'REGEX=M,REGEX=M'`` → [(pattern, multiplier)]; '' → []. One line for anything else."""
  rules = []
  for part in (p.strip() for p in spec.split(",")):
    if not part:
      continue
    pattern, _, mult = part.rpartition("=")
    try:
      value = float(mult)
      compiled = re.compile(pattern)
    except (ValueError, re.error) as e:
      raise UserError(
        f"--config.train.lr_scale={spec!r}: {part!r} is not REGEX=MULTIPLIER (e.g. 'encoder/=3,cross=3'; {e})"
      ) from e
    if not pattern or not (value > 0 and value < float("inf")):
      raise UserError(f"--config.train.lr_scale={spec!r}: {part!r} needs a pattern and a positive finite multiplier")
    rules.append((compiled, value))
  return rules


def param_path(path: tuple) -> str:
  """A pytree path of a parameter state → ``'decoder/layers/0/cross/kv'`` (``trainable.path_name``'s form: an nnx
  Variable's own ``value`` attribute is not part of the name)."""
  return jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value")


def scale_by_path(rules: list[tuple[re.Pattern, float]]) -> optax.GradientTransformation:
  """Multiplies each parameter's update by the multiplier of the first rule whose pattern it matches (1 if none):
  a learning rate per stack, weight decay scaled with it (as PyTorch parameter groups do). A rule matching no
  parameter is refused: a misspelt path would otherwise train at the plain rate without a word."""

  def multipliers(tree):
    def one(path, _):
      name = param_path(path)
      return next((m for pattern, m in rules if pattern.search(name)), 1.0)

    return jax.tree_util.tree_map_with_path(one, tree)

  def init(params):
    names = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    # optax.tree_map_params initialises on a leafless placeholder tree: nothing to check there.
    for pattern, _ in rules if names else ():
      if not any(pattern.search(n) for n in names):
        raise UserError(
          f"--config.train.lr_scale: {pattern.pattern!r} matches no parameter; paths look like: {', '.join(names[:4])}"
        )
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u if m == 1.0 else u * m, updates, multipliers(updates)), state

  return optax.GradientTransformation(init, update)


def decay_mask(params):
  """Decay weight matrices and embeddings; leave norm scales and other vectors alone."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)
