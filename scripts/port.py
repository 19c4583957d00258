"""Port a trained CPU to another ISA: the result is an ordinary checkpoint that speaks ISA B.

  python scripts/port.py --config.checkpoint=runs/porting/runs/python_docs-py3.11/decoder/bpe4000/seed0 \
      --config.to_isa=unigram:4000 --config.method=relearn --config.steps=300 --workdir=runs/port

Methods: align, fvt, omp, procrustes (rebuild the vocabulary rows, no training; omp/procrustes take
--config.donor=RUN, a CPU trained on the target ISA), distill (fit the new rows to the source's hidden states),
relearn (then train only the vocabulary rows), finetune (then train everything), scratch (random init, the same
budget); relearn/finetune/distill start from --config.init's rows. SIGTERM/SIGINT save and exit 0; the same
command resumes.
--config defaults to configs/port.py, which lists every key.
"""

import os

from absl import app, flags

from llmcpu import compilers, fs, toolchain
from llmcpu.errors import UserError
from llmcpu.ops import cli
from llmcpu.training import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = cli.define_config(os.path.join(ROOT, "configs", "port.py"), "Porting config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the ported CPU (checkpoints, metrics).")


def footprint(config, workdir: str) -> list[cli.Access]:
  """What the port reads (the source run, ISA B's compiler) and writes (its workdir), for ``--check``."""
  if not config.checkpoint or not config.to_isa:
    raise UserError("--config.checkpoint and --config.to_isa are required")
  source, name = fs.abspath(config.checkpoint), compilers.parse(config.to_isa).name
  compile_dir = config.compile_dir
  if not compile_dir:  # the source's: its checkpoint says which, once it exists
    try:
      compile_dir = checkpoints.load_meta(source)["config"]["data"]["compile_dir"]
    except UserError:
      pass
  compile_dir = fs.abspath(compile_dir) if compile_dir else ""
  if compile_dir:
    isa = cli.read("isa", toolchain.compiler_dir(compile_dir, name))
  else:
    isa = cli.read("isa_of_run", source, name)
  donor = [cli.read("run", fs.abspath(config.donor))] if config.donor else []
  return [cli.read("run", source), isa, *donor, cli.write("run", cli.resolve_workdir(workdir), compile_dir)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from llmcpu.porting import runner

  if cli.CHECK.value:
    runner.check_method(_CONFIG.value.method)
    return cli.check(footprint(_CONFIG.value, _WORKDIR.value))
  runner.port_checkpoint(_CONFIG.value, cli.workdir_path(_WORKDIR.value), log=cli.log)


if __name__ == "__main__":
  cli.run_script(main)
