"""The optimizer: AdamW with warmup + cosine decay, global-norm clipping and a weight-decay mask."""

from __future__ import annotations

import jax
import ml_collections
import optax


def make_optimizer(t: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warmup and cosine decay, global-norm clipping, and weight decay on matrices only."""
  warmup = min(t.warmup_steps, max(t.steps - 1, 1))
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, t.learning_rate, warmup, max(t.steps, warmup + 1), end_value=t.learning_rate * t.min_lr_ratio
  )
  tx = optax.chain(
    optax.clip_by_global_norm(t.grad_clip),
    optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask),
  )
  return tx, schedule


def decay_mask(params):
  """Decay weight matrices and embeddings; leave norm scales and other vectors alone."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)
