"""Grouped training's throughput: tokens/s of one CPU trained alone vs CPUs trained in groups (llmcpu.training.group).

Every figure is the trainer's own step (``trainer.make_steps``: forward, backward, clipping, AdamW) on a synthetic
language-modelling batch of ``--batch`` × ``--seq`` tokens per CPU, resident on the device (no data pipeline):
alone, jitted as ``trainer.train`` runs it; in a group of G, ``jax.vmap`` of it over G stacked CPUs, jitted as
``group.train_group`` runs it. Both donate the state. ``speedup`` = a group's total tokens/s over one CPU's alone:
what grouping buys per device (1 = nothing; G = the group costs what one CPU costs).

  .venv/bin/python benchmarks/group_bench.py [--preset=tiny] [--groups=3,9,18]   # JSON as the last stdout line
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from llmcpu import models
from llmcpu.training import placement, trainer
from llmcpu.training.optim import make_optimizer
from llmcpu.training.run_config import base_config


def log(*args) -> None:
  print(*args, file=sys.stderr, flush=True)


def lm_batch(rng: np.random.Generator, batch: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
  """A language-modelling batch as the pipeline builds it: one document per row."""
  ids = rng.integers(0, vocab, (batch, seq + 1)).astype(np.int32)
  ones = np.ones((batch, seq), np.float32)
  return {
    "inputs": ids[:, :-1],
    "targets": ids[:, 1:],
    "weights": ones,
    "target_bytes": ones * 3.0,
    "segment_ids": np.ones((batch, seq), np.int32),
    "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
  }


def seq2seq_batch(rng: np.random.Generator, batch: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
  """An encoder-decoder batch as the prefix-LM pipeline builds it: ``seq`` source ids, ``seq // 2`` target ids."""
  out = {}
  for side, length in (("encoder", seq), ("decoder", seq // 2)):
    out[f"{side}_inputs"] = rng.integers(0, vocab, (batch, length)).astype(np.int32)
    out[f"{side}_segment_ids"] = np.ones((batch, length), np.int32)
    out[f"{side}_positions"] = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy()
  ones = np.ones((batch, seq // 2), np.float32)
  targets = rng.integers(0, vocab, (batch, seq // 2)).astype(np.int32)
  return out | {"decoder_targets": targets, "decoder_weights": ones, "content": ones, "target_bytes": ones * 3.0}


def build(preset: str, vocab: int, batch: int, seq: int, members: int, arch: str = "decoder"):
  """(jitted step, state, batch, model config): one CPU alone when ``members`` is 0, else a vmapped group;
  ``arch`` decoder (``lm_batch``) or encoder_decoder (``seq2seq_batch``)."""
  config = base_config(arch, preset)
  config.train.batch_size, config.data.length = batch, seq
  config.model.max_len = max(config.model.max_len, seq)
  mc = trainer.model_config_for(config, vocab)
  tx, schedule = make_optimizer(config.train)
  states, graphdef = [], None
  for seed in range(max(members, 1)):
    model = models.create_from_config(mc, seed=seed)
    graphdef, params, frozen, rest = models.split_trainable(model, "")
    states.append(placement.host_state(params, frozen, rest, tx))
  step, _ = trainer.make_steps(graphdef, tx, schedule, 1)
  rng = np.random.default_rng(0)
  make_batch = seq2seq_batch if arch == "encoder_decoder" else lm_batch
  batches = [make_batch(rng, batch, seq, vocab) for _ in range(max(members, 1))]
  if not members:
    return jax.jit(step, donate_argnums=0), states[0], jax.device_put(batches[0]), mc
  from llmcpu.training import group  # here, not at the top: step_ab builds the alone step of older trees without it

  stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
  return jax.jit(jax.vmap(step), donate_argnums=0), group.stack(states), jax.device_put(stacked), mc


def step_seconds(fn, state, batch, steps: int, repeats: int) -> float:
  """Best mean wall time per step over ``repeats`` runs of ``steps`` steps (compiled and warmed first)."""
  state, figures = fn(state, batch)
  jax.block_until_ready(figures)
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      state, figures = fn(state, batch)
    jax.block_until_ready((state, figures))
    best = min(best, (time.perf_counter() - t0) / steps)
  return best


def shape_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """The step shape every benchmark built on ``build`` takes: --preset, --vocab, --batch, --seq."""
  parser.add_argument("--preset", default="tiny")
  parser.add_argument("--vocab", type=int, default=4000)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq", type=int, default=128)
  return parser


def main() -> None:
  parser = shape_flags(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  parser.add_argument("--groups", default="3,9,18", help="comma-separated group sizes")
  parser.add_argument("--steps", type=int, default=3, help="steps per timed run")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  from llmcpu.ops import host_malloc  # here: step_ab imports this module with trees from before it

  host_malloc.keep_step_buffers()  # as the trainer and every script: step buffers reused
  sizes = [int(g) for g in args.groups.split(",") if g.strip()]
  if not sizes or min(sizes) < 1:
    parser.error(f"--groups={args.groups!r} must be positive group sizes, e.g. 3,9,18")
  t_start, tokens = time.perf_counter(), args.batch * args.seq
  result: dict[str, object] = {
    "platform": jax.default_backend(),
    "device": jax.devices()[0].device_kind,
    "loadavg_start": os.getloadavg()[0],
    "shape": dict(preset=args.preset, vocab=args.vocab, batch=args.batch, seq=args.seq),
  }
  fn, state, batch, _ = build(args.preset, args.vocab, args.batch, args.seq, 0)
  alone = step_seconds(fn, state, batch, args.steps, args.repeats)
  log(f"alone: {alone * 1e3:.1f} ms/step, {tokens / alone:,.0f} tokens/s")
  result["alone"] = {"step_ms": alone * 1e3, "tokens_per_s": tokens / alone}
  for g in sizes:
    fn, state, batch, _ = build(args.preset, args.vocab, args.batch, args.seq, g)
    seconds = step_seconds(fn, state, batch, args.steps, args.repeats)
    total = g * tokens / seconds
    log(f"group of {g}: {seconds * 1e3:.1f} ms/step, {total:,.0f} tokens/s ({total / g:,.0f} per CPU)")
    result[f"group_{g}"] = {
      "step_ms": seconds * 1e3,
      "tokens_per_s": total,
      "tokens_per_s_per_cpu": total / g,
      "speedup": total / result["alone"]["tokens_per_s"],
    }
  result["loadavg_end"] = os.getloadavg()[0]
  result["total_s"] = time.perf_counter() - t_start
  print(json.dumps(result))


if __name__ == "__main__":
  main()
