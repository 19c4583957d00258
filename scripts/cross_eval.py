"""Cross-ISA evaluation: every checkpoint × every evaluation ISA, machine code fed as is; writes the report.

python scripts/cross_eval.py --checkpoints='runs/q/*' --isas=bpe:1000,bpe:4000,bpe:4000+perm:1 \
    --compile_dir=runs/q/compiled --out=runs/q/crosseval

Each failed cell (unreadable checkpoint, ISA missing from the compile dir, …) prints one ``error:`` line and is
recorded as failed in the report; the exit status is non-zero only when every cell failed.
"""

import sys

from absl import app, flags

from llmcpu import cli, crosseval, fs
from llmcpu.errors import UserError

_CHECKPOINTS = flags.DEFINE_string(
  "checkpoints", None, "Training workdirs or checkpoint dirs: a glob, or a comma-separated list of paths/globs."
)
_ISAS = flags.DEFINE_string(
  "isas",
  "",
  "Evaluation ISAs, comma-separated: compiler specs (bpe:4000) or names (bpe4000). Empty: every ISA "
  "under --compile_dir.",
)
_COMPILE_DIR = flags.DEFINE_string("compile_dir", None, "The scripts/compile.py --workdir holding the compiled data.")
_OUT = flags.DEFINE_string("out", None, "Report directory.")
_CORPUS = flags.DEFINE_string("corpus", None, "Evaluate on this corpus instead of each checkpoint's training corpus.")
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate on.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Eval batch size (0: each checkpoint's training batch size).")
_MAX_DOCS = flags.DEFINE_integer("max_docs", 0, "Score only the first N documents of the split (0: all).")
_COHERENCE = flags.DEFINE_bool("coherence", True, "Generate from held-out prompts and judge the output.")
_DEFAULTS = crosseval.CrossEvalOptions()
_PROMPTS = flags.DEFINE_integer("prompts", _DEFAULTS.prompts, "Prose prompts per cell.")
_PROGRAM_PROMPTS = flags.DEFINE_integer("program_prompts", _DEFAULTS.program_prompts, "Programs prompts per cell.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", _DEFAULTS.new_tokens, "Tokens generated per prose prompt.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of sampling and of MLM/span-corruption masks.")


def expand(spec: str) -> list[str]:
  """Paths from a comma-separated list of paths and globs; a glob that matches nothing is an error."""
  out: list[str] = []
  for item in (s.strip() for s in spec.split(",")):
    if not item:
      continue
    if any(ch in item for ch in "*?["):
      matches = [p for p in fs.glob(fs.abspath(item)) if fs.isdir(p)]
      if not matches:
        raise UserError(f"--checkpoints pattern {item!r} matches no directory")
      out.extend(matches)
    else:
      out.append(fs.abspath(item))  # a missing path becomes a failed row, not a crash
  if not out:
    raise UserError("no checkpoints given; pass e.g. --checkpoints='runs/quickstart/*'")
  return list(dict.fromkeys(out))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CHECKPOINTS.value or not _COMPILE_DIR.value or not _OUT.value:
    raise UserError("--checkpoints, --compile_dir and --out are required")
  if not fs.isdir(_COMPILE_DIR.value):
    raise UserError(f"--compile_dir {_COMPILE_DIR.value} does not exist; build it with scripts/compile.py")
  options = crosseval.CrossEvalOptions(
    split=_SPLIT.value,
    batch_size=_BATCH.value,
    max_docs=_MAX_DOCS.value,
    coherence=_COHERENCE.value,
    prompts=_PROMPTS.value,
    program_prompts=_PROGRAM_PROMPTS.value,
    new_tokens=_NEW_TOKENS.value,
    seed=_SEED.value,
  )
  isas = [s for s in _ISAS.value.split(",") if s.strip()]
  rows = crosseval.evaluate(
    expand(_CHECKPOINTS.value), isas, _COMPILE_DIR.value, corpus=_CORPUS.value, options=options, log=cli.log
  )
  calibration = []
  if options.coherence and isas:
    for corpus in dict.fromkeys(r["corpus"] for r in rows if r.get("corpus")):
      try:
        calibration += crosseval.calibrate(_COMPILE_DIR.value, corpus, isas[0], options)
      except UserError as e:
        print(f"error: calibration of {corpus}: {e}", file=sys.stderr, flush=True)
  out = cli.workdir_path(_OUT.value)
  paths = crosseval.write_report(rows, out, calibration)
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
