"""Train one CPU on one ISA.

  python scripts/train.py --config=configs/decoder.py:tiny --workdir=runs/dec \
      --config.data.compile_dir=runs/compiled --config.data.isa=bpe:4000 [--config.train.steps=500]

SIGTERM/SIGINT save a checkpoint and exit 0; the same command resumes. Multi-host: on TPU VMs pass --distributed;
elsewhere --coordinator_address=HOST:PORT --num_processes=N --process_id=I on every process. A signal to any one
process stops them all: every process saves the same step and exits 0.
"""

from absl import app, flags
from ml_collections import config_flags

from llmcpu import compilers, fs, toolchain
from llmcpu.ops import cli
from llmcpu.training import parallel, run_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/<arch>.py[:preset]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard events.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detects TPU VMs).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: coordinator HOST:PORT.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process' index.")
flags.mark_flags_as_required(["config", "workdir"])


def footprint(config, workdir: str) -> list[cli.Access]:
  """What the run reads (its ISAs' compilers in data.compile_dir) and writes (its workdir), for ``--check``."""
  run_config.check_ranges(config)
  d = config.data
  compile_dir = fs.abspath(d.compile_dir)
  isas = [d.isa] + ([d.input_isa] if d.get("input_isa") else [])
  reads = [cli.read("isa", toolchain.compiler_dir(compile_dir, compilers.parse(isa).name)) for isa in isas]
  return [*reads, cli.write("run", cli.resolve_workdir(workdir), compile_dir)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if cli.CHECK.value:
    return cli.check(footprint(_CONFIG.value, _WORKDIR.value))
  parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value)
  from llmcpu.training import trainer  # after jax.distributed is up

  trainer.train(_CONFIG.value, cli.workdir_path(_WORKDIR.value), log=cli.log)  # preempted runs also exit 0


if __name__ == "__main__":
  cli.run_script(main)
