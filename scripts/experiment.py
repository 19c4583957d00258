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

from llmcpu.errors import UserError
from llmcpu.ops import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (configs/experiments/<name>.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Experiment directory (compiled/, runs/, report/).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (TPU VM pod slices).")
flags.mark_flags_as_required(["config", "workdir"])


def footprint(exp, workdir: str) -> list[cli.Access]:
  """What the experiment writes, for ``--check``: the compile dir's ISAs, one run per (corpus, arch, ISA, seed) under
  ``runs/`` (the corpus directory is its name, known once it is loaded: ``*`` here) and its report. A porting
  experiment compiles and trains a native CPU for every ISA of its ports; ports and swaps are not listed."""
  from llmcpu import compilers, fs, toolchain
  from llmcpu.experiments import base, matrix
  from llmcpu.training import run_config

  if exp.get("kind") == "sweep":  # every point is a matrix workdir of its own, then the sweep's table
    from llmcpu.experiments import sweep

    out = [a for name, point in sweep.points(exp) for a in footprint(point, fs.join(workdir, name))]
    return [*out, cli.write("dir", fs.join(workdir, exp.report or "report"))]
  if exp.get("kind") == "porting":
    pairs = [item.split(">") for item in base.split_list(exp.ports, "ports")]
    if any(len(pair) != 2 for pair in pairs):
      raise UserError(f"--config.ports={exp.ports!r}: write SOURCE>TARGET pairs, e.g. bpe:4000>unigram:4000")
    specs = list(dict.fromkeys(compilers.parse(s.strip()) for pair in pairs for s in pair))
    trained = specs
  else:
    specs = compilers.parse_list(exp.compilers)
    trained = compilers.parse_list(exp.train_compilers) if exp.train_compilers else specs
  archs = base.split_list(exp.archs, "archs")
  unknown = [a for a in archs if a not in matrix.ARCHS]
  if unknown:
    raise UserError(f"unknown arch {unknown[0]!r} in --config.archs; choose from {', '.join(matrix.ARCHS)}")
  base.split_list(exp.corpus, "corpus")
  seeds = base.seed_list(exp.seeds)
  for arch in archs:  # the numbers every run gets, as the experiment checks them before it starts
    run_config.check_ranges(matrix.cpu_config(exp, exp.corpus, arch, str(trained[0]), "", seeds[0]))
  compile_dir = fs.join(workdir, "compiled")
  out = [cli.write("isa", toolchain.compiler_dir(compile_dir, s.name)) for s in specs]
  runs = [matrix.cpu_dir(workdir, "*", a, s.name, k) for k in seeds for a in archs for s in trained]
  out += [cli.write("run", path, compile_dir) for path in runs]
  return [*out, cli.write("dir", fs.join(workdir, exp.report or "report"))]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from llmcpu import experiments
  from llmcpu.training import parallel

  if cli.CHECK.value:
    return cli.check(footprint(_CONFIG.value, cli.resolve_workdir(_WORKDIR.value)))
  parallel.initialize(None, None, None, _DISTRIBUTED.value)
  experiment = experiments.lookup(_CONFIG.value)(_CONFIG.value, cli.workdir_path(_WORKDIR.value), log=cli.log)
  reports = experiment.run()
  if reports:  # none on a process that left the report to process 0
    print(experiment.printout(reports), flush=True)


if __name__ == "__main__":
  cli.run_script(main)
