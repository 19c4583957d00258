"""Paired benchmark of the training step's accuracy count: ``jnp.argmax(logits) == target`` (before) vs
``loss.hits`` (the first maximal id by an int32 min-reduce: after), in one process.

Both variants are the trainer's step (``trainer.make_steps``, as ``benchmarks/group_bench.py`` builds it) on the
same batch and initial state; their timings are interleaved (A, B, A, B, …) so both see the same load, and each
reports its best mean step time. ``speedup`` = before ÷ after. ``same_figures``: both steps return the same
loss, accuracy and parameters (the count changes no gradient).

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

from llmcpu.training import loss  # noqa: E402


def argmax_hits(shifted_NxV: jax.Array, t_N: jax.Array) -> jax.Array:
  """The count as it was: a variadic (value, index) argmax reduce."""
  return (jnp.argmax(shifted_NxV, axis=-1) == t_N).astype(jnp.float32)


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
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="tiny")
  parser.add_argument("--vocab", type=int, default=4000)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  shape = (args.preset, args.vocab, args.batch, args.seq)
  before, after = variant(argmax_hits, *shape), variant(loss.hits, *shape)
  outs = [v[0](v[1], v[2]) for v in (before, after)]  # the first states were donated: carry the returned ones
  same = all(
    np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(*(jax.tree.leaves(o) for o in outs), strict=True)
  )
  states = [o[0] for o in outs]
  best = [float("inf"), float("inf")]
  load = os.getloadavg()[0]
  for _ in range(args.repeats):
    for i, (fn, _, data) in enumerate((before, after)):
      t0 = time.perf_counter()
      for _ in range(args.steps):
        states[i], figures = fn(states[i], data)
      jax.block_until_ready((states[i], figures))
      best[i] = min(best[i], (time.perf_counter() - t0) / args.steps)
  tokens = args.batch * args.seq
  result = {
    "shape": dict(preset=args.preset, vocab=args.vocab, batch=args.batch, seq=args.seq),
    "argmax_step_ms": best[0] * 1e3,
    "hits_step_ms": best[1] * 1e3,
    "argmax_tokens_per_s": tokens / best[0],
    "hits_tokens_per_s": tokens / best[1],
    "speedup": best[0] / best[1],
    "same_figures": same,
    "loadavg": [load, os.getloadavg()[0]],
  }
  group_bench.log(f"argmax {best[0] * 1e3:.1f} ms, hits {best[1] * 1e3:.1f} ms: {best[0] / best[1]:.2f}×")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
