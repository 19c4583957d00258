"""Trains one group of tiny decoders in a fresh process (tests: forced device counts, signals).

python tests/group_worker.py COMPILE_DIR ROOT '[{"seed": 0}, {"seed": 1, "data__isa": "..."}]' [SIGNAL_AT]

Member i trains in ROOT/m<i> with tiny_config's decoder and its overrides (every member: train__steps=20,
checkpoint__every=20). SIGNAL_AT=N raises SIGTERM in this process before step N. The last line is the result as JSON.
"""

import functools
import json
import signal
import sys

from conftest import tiny_config  # noqa: E402  (tests/ is this script's directory)


def main(argv):
  compile_dir, root, members = argv[1], argv[2], json.loads(argv[3])
  at = int(argv[4]) if len(argv) > 4 else -1
  import jax

  from llmcpu.training import group, writer

  writer.MetricWriter = functools.partial(writer.MetricWriter, tensorboard=False)  # TensorFlow: most of the time

  def should_stop(step: int) -> bool:
    if step == at:
      signal.raise_signal(signal.SIGTERM)  # handled (by the group's handler) before this returns
    return False

  base = {"train__steps": 20, "checkpoint__every": 20}
  configs = [tiny_config("decoder", compile_dir, **{**base, **m}) for m in members]
  result = group.train_group(configs, [f"{root}/m{i}" for i in range(len(members))], should_stop=should_stop, log=print)
  print(json.dumps({"stopped": result.stopped, "step": result.step, "devices": len(jax.devices())}), flush=True)


if __name__ == "__main__":
  main(sys.argv)
