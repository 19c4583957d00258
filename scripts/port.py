"""Port a trained CPU to another ISA: the result is an ordinary checkpoint that speaks ISA B.

  python scripts/port.py --config.checkpoint=runs/q/runs/python_docs-py3.11/decoder/bpe4000/seed0 \
      --config.to_isa=unigram:4000 --config.method=relearn --config.steps=300 --workdir=runs/port-relearn

Methods: align, fvt (rebuild the vocabulary rows, no training), relearn (then train only those), finetune (then
train everything), scratch (random init, the same budget). SIGTERM/SIGINT save and exit 0; the same command resumes.
--config defaults to configs/port.py, which lists every key.
"""

import os

from absl import app, flags

from llmcpu.ops import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = cli.define_config(os.path.join(ROOT, "configs", "port.py"), "Porting config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the ported CPU (checkpoints, metrics).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from llmcpu.porting import runner

  runner.port_checkpoint(_CONFIG.value, cli.workdir_path(_WORKDIR.value), log=cli.log)


if __name__ == "__main__":
  cli.run_script(main)
