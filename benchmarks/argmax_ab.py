"""Paired benchmark of the training step's accuracy count: ``jnp.argmax(logits) == target`` (before), the first
maximal id by an int32 min-reduce (``hits_int32``) and ``loss.hits`` (the same with int16 ids), in one process.

Both variants are the trainer's step (``trainer.make_steps``, as ``benchmarks/group_bench.py`` builds it) on the
same batch and initial state; their timings are interleaved (A, B, A, B, …) so both see the same load, and each
reports its best mean step time. ``<variant>_speedup`` = argmax's step time ÷ the variant's. ``same_figures``:
every variant's first step returns the same loss, accuracy and parameters (the count changes no gradient).

  .venv/bin/python benchmarks/argmax_ab.py [--preset=tiny] [--vocab=4000]   # JSON as the last stdout line
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import group_bench  # noqa: E402  (benchmarks/ is this script's directory)

from llmcpu.ops import host_malloc  # noqa: E402
from llmcpu.training import loss  # noqa: E402


def argmax_hits(shifted_NxV: jax.Array, t_N: jax.Array) -> jax.Array:
  """The count as it was: a variadic (value, index) argmax reduce."""
  return (jnp.argmax(shifted_NxV, axis=-1) == t_N).astype(jnp.float32)


def int32_hits(shifted_NxV: jax.Array, t_N: jax.Array) -> jax.Array:
  """``loss.hits`` with int32 ids (its first version)."""
  ids_V = jnp.arange(shifted_NxV.shape[-1], dtype=jnp.int32)
  first_N = jnp.min(jnp.where(shifted_NxV == 0, ids_V[None, :], shifted_NxV.shape[-1]), axis=-1)
  return (first_N == t_N).astype(jnp.float32)


VARIANTS = {"argmax": argmax_hits, "hits_int32": int32_hits, "hits": loss.hits}


def variant(hits, preset: str, vocab: int, batch: int, seq: int):
  """(step, state, batch) with ``loss.hits`` set to ``hits`` while the step is traced and compiled."""
  kept = loss.hits
  loss.hits = hits
  try:
    fn, state, data, _ = group_bench.build(preset, vocab, batch, seq, 0)
    fn = fn.lower(state, data).compile()
  finally:
    loss.hits = kept
  return fn, state, data


def main() -> None:
  parser = group_bench.shape_flags(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  host_malloc.keep_step_buffers()  # as the trainer and every script: step buffers reused
  shape = (args.preset, args.vocab, args.batch, args.seq)
  variants = {name: variant(fn, *shape) for name, fn in VARIANTS.items()}
  outs = {name: v[0](v[1], v[2]) for name, v in variants.items()}  # the first states were donated: carry these
  reference = jax.tree.leaves(outs["argmax"])
  same = all(
    np.array_equal(np.asarray(a), np.asarray(b))
    for out in outs.values()
    for a, b in zip(reference, jax.tree.leaves(out), strict=True)
  )
  states = {name: out[0] for name, out in outs.items()}
  best = dict.fromkeys(variants, float("inf"))
  load = os.getloadavg()[0]
  for _ in range(args.repeats):
    for name, (fn, _, data) in variants.items():
      t0 = time.perf_counter()
      for _ in range(args.steps):
        states[name], figures = fn(states[name], data)
      jax.block_until_ready((states[name], figures))
      best[name] = min(best[name], (time.perf_counter() - t0) / args.steps)
  tokens = args.batch * args.seq
  result: dict[str, object] = {"shape": dict(preset=args.preset, vocab=args.vocab, batch=args.batch, seq=args.seq)}
  for name, seconds in best.items():
    result[f"{name}_step_ms"] = seconds * 1e3
    result[f"{name}_tokens_per_s"] = tokens / seconds
    result[f"{name}_speedup"] = best["argmax"] / seconds
  result["same_figures"] = same
  result["loadavg"] = [load, os.getloadavg()[0]]
  group_bench.log(", ".join(f"{name} {s * 1e3:.1f} ms" for name, s in best.items()))
  print(json.dumps(result))


if __name__ == "__main__":
  main()
