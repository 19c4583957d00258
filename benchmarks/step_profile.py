"""Where the training step's time goes, by op class: the trainer's step (``trainer.make_steps``) for the ``tiny`` and
``small`` presets, compiled, traced with ``jax.profiler`` and read back with ``jax.profiler.ProfileData``.

XLA:CPU records one event per executed HLO instruction (a fusion, a dot, a copy, ...) named as in the compiled
module, so each event is classed from that module's text (``classify``):

  matmul        a dot/convolution, or a fusion holding one (XLA:CPU's YNNPACK/oneDNN fusions included)
  reduction     a reduce (or a fusion holding one, without a dot): softmax and norm statistics, loss sums
  elementwise   loop fusions and single elementwise ops: norms, rotary, activations, residuals, masks
  data          copies, transposes, slices, gathers/scatters, concatenations, pads (layout and indexing)
  optimizer     any of the above outside the forward and backward passes (op_name without jvp/transpose):
                clipping, AdamW, the finite check
  other         the rest

Event times are summed per class as thread time (instructions that run in parallel both count) and averaged per
step; ``cost`` is XLA's static cost analysis of the same compiled step (FLOPs, bytes accessed). ``top`` lists the
most expensive instructions. On a shared host wall times include waiting for the cores: say so with the figures.

  .venv/bin/python benchmarks/step_profile.py [--presets=tiny,small] [--steps=3]   # JSON as the last stdout line
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import group_bench  # noqa: E402  (benchmarks/ is this script's directory)

from llmcpu import models  # noqa: E402
from llmcpu.ops import host_malloc  # noqa: E402

PRESET_SHAPES = {"tiny": (16, 128), "small": (32, 256)}  # the training presets' batch × length (run_config)
MATMUL_OPS = {"dot", "convolution"}
DATA_OPS = {
  "copy",
  "transpose",
  "slice",
  "dynamic-slice",
  "dynamic-update-slice",
  "gather",
  "scatter",
  "concatenate",
  "pad",
  "bitcast",
  "broadcast",
  "reshape",
  "iota",
  "copy-start",
  "copy-done",
}
CONTAINERS = {"while", "call", "conditional"}  # their bodies' instructions are events of their own
_COMPUTATION = re.compile(r"^%?([\w.\-]+) \(.*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\((.*)$")


def parse_hlo(text: str) -> tuple[dict, dict]:
  """(computation name → its opcodes, instruction name → (opcode, called computation or '', op_name metadata))."""
  computations: dict[str, list[str]] = collections.defaultdict(list)
  instructions: dict[str, tuple[str, str, str]] = {}
  current = ""
  for line in text.splitlines():
    head = _COMPUTATION.match(line.replace("ENTRY ", ""))
    if head:
      current = head.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, opcode, rest = m.groups()
    computations[current].append(opcode)
    calls = re.search(r"calls=%?([\w.\-]+)", rest)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    instructions[name] = (opcode, calls.group(1) if calls else "", op_name.group(1) if op_name else "")
  return computations, instructions


def classify(name: str, computations: dict, instructions: dict) -> str:
  """The op class of one executed instruction (see the module docstring)."""
  opcode, calls, op_name = instructions.get(name, ("", "", ""))
  if not opcode:
    return "other"
  if opcode in CONTAINERS:
    return "container"
  ops = set(computations.get(calls, [])) if opcode == "fusion" else {opcode}
  if ops & MATMUL_OPS or opcode == "custom-call":
    kind = "matmul"
  elif ops & {"reduce", "reduce-window"}:
    kind = "reduction"
  elif opcode == "fusion" and not ops <= DATA_OPS | {"parameter", "constant"}:
    kind = "elementwise"
  elif ops <= DATA_OPS | {"parameter", "constant"}:
    kind = "data"
  else:
    kind = "elementwise" if ops else "other"
  if op_name and "jvp(" not in op_name and "transpose(" not in op_name:
    return "optimizer"
  return kind


def trace_events(fn, state, batch, steps: int) -> dict[str, float]:
  """Instruction name → total ns over ``steps`` traced steps (XLA:CPU's per-instruction events)."""
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir)
    for _ in range(steps):
      state, figures = fn(state, batch)
    jax.block_until_ready((state, figures))
    jax.profiler.stop_trace()
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    data = jax.profiler.ProfileData.from_file(path)
  totals: dict[str, float] = collections.defaultdict(float)
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue
      for event in line.events:
        if not event.name.startswith(("end: ", "ThreadpoolListener", "ThunkExecutor")):
          totals[event.name] += event.duration_ns
  return totals


def profile(preset: str, vocab: int, steps: int) -> dict:
  """One preset's step: wall time, XLA's cost analysis, thread time per op class and the top instructions."""
  batch, seq = PRESET_SHAPES[preset]
  fn, state, data, mc = group_bench.build(preset, vocab, batch, seq, 0)
  compiled = fn.lower(state, data).compile()
  computations, instructions = parse_hlo(compiled.as_text())
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  wall = group_bench.step_seconds(fn, state, data, steps, 2)
  state = group_bench.build(preset, vocab, batch, seq, 0)[1]  # the timing donated the first state
  totals = trace_events(fn, state, data, steps)
  classes: dict[str, float] = collections.defaultdict(float)
  for name, ns in totals.items():
    classes[classify(name, computations, instructions)] += ns / steps / 1e6
  classes.pop("container", None)
  busy = sum(classes.values())
  top = sorted(totals.items(), key=lambda kv: -kv[1])[:12]
  flops = models.flops_per_token(mc, seq) * batch * seq
  return {
    "shape": dict(batch=batch, seq=seq, vocab=vocab, d_model=mc.d_model, layers=mc.num_layers),
    "step_ms": wall * 1e3,
    "tokens_per_s": batch * seq / wall,
    "model_flops": flops,
    "xla_flops": cost.get("flops"),
    "xla_bytes_accessed": cost.get("bytes accessed"),
    "thread_ms_per_step": {k: round(v, 3) for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
    "share": {k: round(v / busy, 3) for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
    "top": [
      {"name": n, "class": classify(n, computations, instructions), "ms_per_step": round(ns / steps / 1e6, 3)}
      for n, ns in top
    ],
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default="tiny,small")
  parser.add_argument("--vocab", type=int, default=4000)
  parser.add_argument("--steps", type=int, default=3, help="steps timed and traced")
  args = parser.parse_args()
  host_malloc.keep_step_buffers()  # as the trainer and every script: step buffers reused
  presets = [p for p in args.presets.split(",") if p]
  unknown = [p for p in presets if p not in PRESET_SHAPES]
  if unknown:
    parser.error(f"--presets: {unknown[0]!r} is not one of {', '.join(PRESET_SHAPES)}")
  t0 = time.perf_counter()
  result: dict[str, object] = {"platform": jax.default_backend(), "loadavg_start": os.getloadavg()[0]}
  for preset in presets:
    result[preset] = profile(preset, args.vocab, args.steps)
    group_bench.log(f"{preset}: {json.dumps(result[preset]['share'])}")
  result["loadavg_end"] = os.getloadavg()[0]
  result["total_s"] = time.perf_counter() - t0
  print(json.dumps(result))


if __name__ == "__main__":
  main()
