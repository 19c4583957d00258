"""Cross-ISA evaluation: every checkpoint × every evaluation ISA, machine code fed as is; writes the report.

python scripts/cross_eval.py --config.checkpoints=runs/quickstart/runs --config.isas=char,bpe:1000,byte \
    --config.compile_dir=runs/quickstart/compiled --config.out=runs/quickstart/crosseval [--config.max_docs=100 ...]

--config.checkpoints: runs, or directories (an experiment's runs/) whose runs at any depth are all evaluated.

--config defaults to configs/cross_eval.py, which lists every key and its default.
Each failed cell (unreadable checkpoint, ISA missing from the compile dir, …) prints one ``error:`` line and is
recorded as failed in the report; the exit status is non-zero only when every cell failed.
SIGTERM (a preemption) stops the matrix, dropping only the cell in progress: finished cells are kept under
``OUT/cells/`` until the report is written, the process prints "stopped by SIGTERM after N of M cells; rerun the same
command to continue" and exits 0; the rerun computes only the missing cells and writes the report an uninterrupted
run writes. Ctrl-C keeps the finished cells too (exit status 130).
"""

import os
import sys

from absl import app

from llmcpu import crosseval, fs, toolchain
from llmcpu.crosseval.library import Library
from llmcpu.errors import UserError
from llmcpu.experiments import damage
from llmcpu.ops import cli
from llmcpu.training import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = cli.define_config(os.path.join(ROOT, "configs", "cross_eval.py"), "Cross-evaluation config file.")


def expand(spec: str) -> list[str]:
  """Runs from a comma-separated list of paths and globs: each path or match is a run, or a directory (an
  experiment's ``runs/``, a whole workdir) whose runs at any depth are all taken. A glob that matches nothing is an
  error; a path with no run below it is kept, and its row fails saying so."""
  out: list[str] = []
  for item in (s.strip() for s in spec.split(",")):
    if not item:
      continue
    if any(ch in item for ch in "*?["):
      matches = [p for p in fs.glob(fs.abspath(item)) if fs.isdir(p)]
      if not matches:
        raise UserError(f"--config.checkpoints pattern {item!r} matches no directory")
    else:
      matches = [fs.abspath(item)]
    for match in matches:
      out.extend(checkpoints.find_runs(match) or [match])
  if not out:
    raise UserError("no checkpoints given; pass e.g. --config.checkpoints=runs/quickstart/runs")
  return list(dict.fromkeys(out))


def footprint(config) -> list[cli.Access]:
  """What the command reads and writes (``--check``)."""
  isas = [s for s in config.isas.split(",") if s.strip()]
  compile_dir = fs.abspath(config.compile_dir)
  out = []
  for item in (fs.abspath(s.strip()) for s in config.checkpoints.split(",") if s.strip()):
    matches = fs.glob(item) if any(ch in item for ch in "*?[") else [item]
    out.append(cli.read("runs", item, f"{sum(len(checkpoints.find_runs(m)) for m in matches)} runs there now"))
  out += [cli.read("isa", toolchain.compiler_dir(compile_dir, Library.label(isa))) for isa in isas]
  out += [] if isas else [cli.read("dir", compile_dir)]  # every ISA in it
  return [*out, cli.write("dir", cli.resolve_workdir(config.out))]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if not config.checkpoints or not config.compile_dir or not config.out:
    raise UserError("--config.checkpoints, --config.compile_dir and --config.out are required")
  if cli.CHECK.value:
    return cli.check(footprint(config))
  if not fs.isdir(config.compile_dir):
    raise UserError(f"--config.compile_dir {config.compile_dir} does not exist; build it with scripts/compile.py")
  options = crosseval.CrossEvalOptions.from_config(config)
  isas = [s for s in config.isas.split(",") if s.strip()]
  out = cli.workdir_path(config.out)
  cells = fs.join(out, "cells")  # each finished cell, until the report is written: a rerun continues from them
  rows = crosseval.evaluate(
    expand(config.checkpoints),
    isas,
    config.compile_dir,
    corpus=config.corpus or None,
    options=options,
    log=cli.log,
    cells=cells,
  )
  calibration = []
  if options.coherence and isas:
    for corpus in dict.fromkeys(r["corpus"] for r in rows if r.get("corpus")):
      try:
        calibration += crosseval.calibrate(config.compile_dir, corpus, isas, options)
      except UserError as e:
        print(f"error: calibration of {corpus}: {e}", file=sys.stderr, flush=True)
  paths = crosseval.write_report(rows, out, calibration, views=(damage.view,))
  fs.rmtree(cells)
  failed = [r for r in rows if r["status"] != "ok"]
  for r in failed:
    print(f"error: {r['checkpoint']} on {r['eval_isa']}: {r['error']}", file=sys.stderr, flush=True)
  print("\n## bits per byte\n\n" + crosseval.markdown_table(rows, "bits_per_byte"))
  print("\n## normalized score\n\n" + crosseval.markdown_table(rows, "normalized_score"))
  print(f"\n{len(rows) - len(failed)}/{len(rows)} cells scored; report: {paths['summary']}", flush=True)
  if rows and len(failed) == len(rows):
    sys.exit(1)


if __name__ == "__main__":
  cli.run_script(main)
