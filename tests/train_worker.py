"""Runs one tiny training run in a fresh process (tests: forced device counts, multiple processes, signals).

python tests/train_worker.py ARCH COMPILE_DIR WORKDIR '{"train__steps": 8, ...}' [COORDINATOR NUM_PROCS PROC_ID]

Test hooks (environment): TRAIN_WORKER_STEP_SECONDS=S sleeps S seconds before every step and prints
``at step N`` (so a test can signal a run that is mid-way on every process); TRAIN_WORKER_SIGNAL_AT=P:N[:SIGNAME]
makes process P raise SIGTERM (or SIGNAME) in itself before step N (a signal at an exact moment).
"""

import functools
import json
import os
import signal
import sys
import time

from conftest import tiny_config  # noqa: E402  (tests/ is this script's directory)

from llmcpu.training import parallel


def should_stop_hook(process_index: int):
  """The test hooks as a ``should_stop`` that never asks to stop itself; None when no hook is set."""
  seconds = float(os.environ.get("TRAIN_WORKER_STEP_SECONDS", 0))
  spec = os.environ.get("TRAIN_WORKER_SIGNAL_AT", "").split(":")
  who, at, name = (spec + ["SIGTERM"])[:3] if len(spec) > 1 else ("", "", "")
  if not seconds and not at:
    return None

  def hook(step: int) -> bool:
    if seconds:
      print(f"at step {step}", flush=True)
      time.sleep(seconds)
    if at and int(who) == process_index and step == int(at):
      signal.raise_signal(signal.Signals[name])  # to this thread: handled before the call returns
    return False

  return hook


def main(argv):
  arch, compile_dir, workdir, overrides = argv[1], argv[2], argv[3], json.loads(argv[4])
  if len(argv) > 5:
    parallel.initialize(argv[5], int(argv[6]), int(argv[7]), auto=False)
  import jax

  from llmcpu.training import trainer, writer

  # Importing TensorFlow for TensorBoard would take most of a tiny run's time; the tests read metrics.jsonl.
  writer.MetricWriter = functools.partial(writer.MetricWriter, tensorboard=False)
  result = trainer.train(
    tiny_config(arch, compile_dir, **overrides),
    workdir,
    should_stop=should_stop_hook(jax.process_index()),
    log=lambda m: print(m, flush=True),
  )
  print(json.dumps({"stopped": result.stopped, "step": result.step}), flush=True)


if __name__ == "__main__":
  main(sys.argv)
