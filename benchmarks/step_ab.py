"""Before/after benchmark of the training step across commits: the trainer's step of this tree against the same step
built from another revision of the repository (``--before``, e.g. the commit an issue was filed at), side by side.

Each tree's step (``group_bench.build``: ``trainer.make_steps``, forward, backward, clipping, AdamW, donated state,
a resident synthetic batch) is compiled once in its own process, whose ``llmcpu`` is that tree's (``git archive``
of ``--before`` into a temporary directory). The parent then asks the two processes for timed runs in turn
(A, B, B, A, …), so both see the same load; each side reports its best mean step time over ``--rounds`` runs of
``--steps`` steps, and ``speedup`` = before's step time ÷ after's. ``rounds`` keeps every pair's ratio, so a
reader sees the spread a busy host adds.

  .venv/bin/python benchmarks/step_ab.py --before=b50f026 [--arch=decoder --preset=tiny --vocab=4000 --batch=16
  --seq=128]
  (an encoder-decoder reads --seq source ids and writes --seq/2: group_bench.seq2seq_batch)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def log(*args) -> None:
  print(*args, file=sys.stderr, flush=True)


def serve(args) -> None:
  """Child: build and warm the step with the ``llmcpu`` on ``sys.path``, then time ``args.steps`` steps per line
  read from stdin, printing the seconds per step."""
  import jax

  sys.path.insert(0, HERE)
  import group_bench

  try:  # what this tree's trainer does before its first step (trees before host_malloc have nothing to call)
    from llmcpu.ops import host_malloc

    host_malloc.keep_step_buffers()
  except ImportError:
    pass

  fn, state, batch, _ = group_bench.build(args.preset, args.vocab, args.batch, args.seq, 0, arch=args.arch)
  state, figures = fn(state, batch)
  jax.block_until_ready(figures)
  print("ready", flush=True)
  for _ in sys.stdin:
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, figures = fn(state, batch)
    jax.block_until_ready((state, figures))
    print((time.perf_counter() - t0) / args.steps, flush=True)


def export(rev: str, into: str) -> str:
  """``rev``'s tracked files under ``into`` (one clear line and exit 1 when git does not know it)."""
  got = subprocess.run(
    ["git", "-C", ROOT, "rev-parse", "--verify", f"{rev}^{{commit}}"], capture_output=True, text=True
  )
  if got.returncode:
    sys.exit(f"--before={rev!r}: not a commit of this repository (git rev-parse: {got.stderr.strip()})")
  archive = subprocess.run(["git", "-C", ROOT, "archive", got.stdout.strip()], capture_output=True, check=True)
  subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, check=True)
  return got.stdout.strip()


def start(tree: str, args) -> subprocess.Popen:
  """A serving child whose ``llmcpu`` is ``tree``'s; returns once its step is compiled and warm."""
  flags = [f"--{k}={getattr(args, k)}" for k in ("arch", "preset", "vocab", "batch", "seq", "steps")]
  env = dict(os.environ, PYTHONPATH=tree)
  child = subprocess.Popen(
    [sys.executable, os.path.abspath(__file__), "--serve", *flags],
    cwd=tree,
    env=env,
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  if child.stdout.readline().strip() != "ready":
    sys.exit(f"the step of {tree} did not build (its error is above)")
  return child


def timed(child: subprocess.Popen) -> float:
  child.stdin.write("go\n")
  child.stdin.flush()
  return float(child.stdout.readline())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--before", help="the revision to compare against (a commit, tag or branch)")
  parser.add_argument("--arch", default="decoder", choices=("decoder", "encoder_decoder"))
  parser.add_argument("--preset", default="tiny")
  parser.add_argument("--vocab", type=int, default=4000)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10, help="steps per timed run")
  parser.add_argument("--rounds", type=int, default=12, help="timed runs per side")
  parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.serve:
    return serve(args)
  if not args.before:
    parser.error("--before is required: the revision to compare this tree's step against, e.g. --before=HEAD~10")
  if args.rounds < 1 or args.steps < 1:
    parser.error("--rounds and --steps must be ≥ 1")
  t_start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    commit = export(args.before, tmp)
    sides = {"before": start(tmp, args), "after": start(ROOT, args)}
    result: dict[str, object] = {"before": commit, "loadavg_start": os.getloadavg()[0]}
    times: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(args.rounds):
      for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
        times[side].append(timed(sides[side]))
      before, after = times["before"][-1] * 1e3, times["after"][-1] * 1e3
      log(f"round {r + 1}/{args.rounds}: before {before:.1f} ms, after {after:.1f} ms")
    for child in sides.values():
      child.stdin.close()
      child.wait()
  tokens = args.batch * args.seq
  for side, ts in times.items():
    result[f"{side}_step_ms"] = min(ts) * 1e3
    result[f"{side}_tokens_per_s"] = tokens / min(ts)
  result["speedup"] = min(times["before"]) / min(times["after"])
  result["round_speedups"] = [round(b / a, 3) for b, a in zip(times["before"], times["after"], strict=True)]
  result["shape"] = dict(arch=args.arch, preset=args.preset, vocab=args.vocab, batch=args.batch, seq=args.seq)
  result["loadavg_end"] = os.getloadavg()[0]
  result["total_s"] = time.perf_counter() - t_start
  print(json.dumps(result))


if __name__ == "__main__":
  main()
