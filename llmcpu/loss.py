"""What a CPU is scored on: the forward pass for each objective's batch and its loss/metric sums.

Every objective reduces to next-token (or masked-token) cross-entropy over ``targets`` with ``weights``; only the
forward call differs by architecture. Sums (not means) are returned so that they add up across devices, hosts,
accumulation steps and eval batches; ``finalize`` turns them into the reported figures.

Bits per byte is Σ NLL over *content* targets (weighted targets that are a document's own ids: regular ids and UNK;
never EOS or a sentinel) / (ln 2 · Σ ``target_bytes``), where the pipeline puts each content target's piece bytes
in ``target_bytes`` (0 elsewhere). Numerator and denominator cover the same targets, so the figure is exact for
any batch, and at most the bits per content token divided by the fewest bytes of a content token.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from llmcpu.specials import FIRST_REGULAR_ID, UNK_ID

# The additive statistics of ``metric_sums``, in one place for everything that accumulates them.
SUM_KEYS = ("nll", "weight", "bpb_nll", "bytes", "correct")


def forward(model, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(logits [B, L, V] float32, targets [B, L], weights [B, L]) for any objective's batch."""
  if "decoder_inputs" in batch:
    logits = model(
      batch["encoder_inputs"],
      batch["decoder_inputs"],
      encoder_segment_ids=batch["encoder_segment_ids"],
      decoder_segment_ids=batch["decoder_segment_ids"],
      encoder_positions=batch["encoder_positions"],
      decoder_positions=batch["decoder_positions"],
    )
    return logits, batch["decoder_targets"], batch["decoder_weights"]
  logits = model(batch["inputs"], segment_ids=batch["segment_ids"], positions=batch["positions"])
  return logits, batch["targets"], batch["weights"]


def is_content(targets: jax.Array) -> jax.Array:
  """True for a document's own ids (regular ids and UNK), False for PAD/BOS/EOS/MASK/sentinels."""
  return (targets == UNK_ID) | (targets >= FIRST_REGULAR_ID)


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """−log p(target) per position, in float32 (nats)."""
  logits = logits.astype(jnp.float32)
  return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]


def metric_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array, target_bytes: jax.Array) -> dict:
  """Additive statistics: loss numerator/denominator, bits-per-byte numerator (content targets) and bytes, hits."""
  nll = token_nll(logits, targets)
  weights = weights.astype(jnp.float32)
  content = weights * is_content(targets)  # bits per byte counts text: not EOS, not span sentinels
  return {
    "nll": jnp.sum(nll * weights),
    "weight": jnp.sum(weights),
    "bpb_nll": jnp.sum(nll * content),
    "bytes": jnp.sum(target_bytes.astype(jnp.float32)),
    "correct": jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights),
  }


def batch_sums(model, batch: dict) -> dict:
  """``metric_sums`` of a model on any objective's batch (what training and evaluation differentiate and add)."""
  logits, targets, weights = forward(model, batch)
  return metric_sums(logits, targets, weights, batch["target_bytes"])


def finalize(sums: dict) -> dict:
  """Sums → loss (mean nats per weighted token), bits per byte, accuracy."""
  weight = max(float(sums["weight"]), 1.0)
  out = {"loss": float(sums["nll"]) / weight, "accuracy": float(sums["correct"]) / weight}
  if float(sums["bytes"]) > 0:
    out["bits_per_byte"] = float(sums["bpb_nll"]) / (math.log(2) * float(sums["bytes"]))
  return out
