"""Runs one tiny training run in a fresh process (tests: forced device counts, multiple processes, signals).

python tests/train_worker.py ARCH COMPILE_DIR WORKDIR '{"train__steps": 8, ...}' [COORDINATOR NUM_PROCS PROC_ID]
"""

import json
import sys

from conftest import tiny_config  # noqa: E402  (tests/ is this script's directory)

from llmcpu import parallel


def main(argv):
  arch, compile_dir, workdir, overrides = argv[1], argv[2], argv[3], json.loads(argv[4])
  if len(argv) > 5:
    parallel.initialize(argv[5], int(argv[6]), int(argv[7]), auto=False)
  from llmcpu import trainer

  result = trainer.train(tiny_config(arch, compile_dir, **overrides), workdir, log=lambda m: print(m, flush=True))
  print(json.dumps({"stopped": result["stopped"], "step": result["step"]}), flush=True)


if __name__ == "__main__":
  main(sys.argv)
