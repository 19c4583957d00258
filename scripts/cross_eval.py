"""Cross-ISA evaluation: every checkpoint × every evaluation ISA, machine code fed as is; writes the report.

python scripts/cross_eval.py --config.checkpoints='runs/q/*' --config.isas=bpe:1000,bpe:4000,bpe:4000+perm:1 \
    --config.compile_dir=runs/q/compiled --config.out=runs/q/crosseval [--config.max_docs=100 ...]

--config defaults to configs/cross_eval.py, which lists every key and its default.
Each failed cell (unreadable checkpoint, ISA missing from the compile dir, …) prints one ``error:`` line and is
recorded as failed in the report; the exit status is non-zero only when every cell failed.
"""

import os
import sys

from absl import app

from llmcpu import crosseval, fs
from llmcpu.errors import UserError
from llmcpu.experiments import damage
from llmcpu.ops import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = cli.define_config(os.path.join(ROOT, "configs", "cross_eval.py"), "Cross-evaluation config file.")


def expand(spec: str) -> list[str]:
  """Paths from a comma-separated list of paths and globs; a glob that matches nothing is an error."""
  out: list[str] = []
  for item in (s.strip() for s in spec.split(",")):
    if not item:
      continue
    if any(ch in item for ch in "*?["):
      matches = [p for p in fs.glob(fs.abspath(item)) if fs.isdir(p)]
      if not matches:
        raise UserError(f"--config.checkpoints pattern {item!r} matches no directory")
      out.extend(matches)
    else:
      out.append(fs.abspath(item))  # a missing path becomes a failed row, not a crash
  if not out:
    raise UserError("no checkpoints given; pass e.g. --config.checkpoints='runs/quickstart/*'")
  return list(dict.fromkeys(out))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if not config.checkpoints or not config.compile_dir or not config.out:
    raise UserError("--config.checkpoints, --config.compile_dir and --config.out are required")
  if not fs.isdir(config.compile_dir):
    raise UserError(f"--config.compile_dir {config.compile_dir} does not exist; build it with scripts/compile.py")
  options = crosseval.CrossEvalOptions.from_config(config)
  isas = [s for s in config.isas.split(",") if s.strip()]
  rows = crosseval.evaluate(
    expand(config.checkpoints), isas, config.compile_dir, corpus=config.corpus or None, options=options, log=cli.log
  )
  calibration = []
  if options.coherence and isas:
    for corpus in dict.fromkeys(r["corpus"] for r in rows if r.get("corpus")):
      try:
        calibration += crosseval.calibrate(config.compile_dir, corpus, isas[0], options)
      except UserError as e:
        print(f"error: calibration of {corpus}: {e}", file=sys.stderr, flush=True)
  out = cli.workdir_path(config.out)
  paths = crosseval.write_report(rows, out, calibration, views=(damage.view,))
  failed = [r for r in rows if r["status"] != "ok"]
  for r in failed:
    print(f"error: {r['checkpoint']} on {r['eval_isa']}: {r['error']}", file=sys.stderr, flush=True)
  print("\n## bits per byte\n\n" + crosseval.markdown_table(rows, "bits_per_byte"))
  print("\n## normalized score\n\n" + crosseval.markdown_table(rows, "normalized_score"))
  print(f"\n{len(rows) - len(failed)}/{len(rows)} cells scored; report: {paths['summary']}", flush=True)
  if rows and len(failed) == len(rows):
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
