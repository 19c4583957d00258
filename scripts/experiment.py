"""Run an experiment end to end: compile → train every (architecture × ISA) → cross-evaluate → report.

  python scripts/experiment.py --config=configs/experiments/quickstart.py --workdir=runs/quickstart \
      [--config.compilers=bpe:500,bpe:2000,char,bpe:2000+perm:3] [--config.archs=decoder,encoder] [--config.steps=500]

Rerunning continues where a crash or preemption stopped; finished stages are skipped. The config's ``kind`` picks
the experiment (llmcpu/experiments/): ``matrix`` and ``damage`` cross-evaluate the CPUs; ``porting``
(configs/experiments/porting.py) ports them and writes recovery curves; ``swap`` (configs/experiments/swap.py) swaps
their encoders and writes the stitching matrices; ``languages`` (configs/experiments/languages.py) trains readouts of
their embeddings and feeds them foreign ones.
"""

from absl import app, flags
from ml_collections import config_flags

from llmcpu.ops import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/experiments/<name>.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Experiment directory (compiled/, runs/, report/).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (TPU VM pod slices).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from llmcpu import experiments
  from llmcpu.training import parallel

  parallel.initialize(None, None, None, _DISTRIBUTED.value)
  experiment = experiments.lookup(_CONFIG.value)(_CONFIG.value, cli.workdir_path(_WORKDIR.value), log=cli.log)
  reports = experiment.run()
  if reports:  # none on a process that left the report to process 0
    print(experiment.printout(reports), flush=True)


if __name__ == "__main__":
  cli.run(main)
