"""scripts/cross_eval.py config, the default `--config`: every key is a `--config.KEY=value` override.

The paths (checkpoints, compile_dir, out) have no default and must be given; the evaluation knobs after them are
`CrossEvalOptions`' fields, with its defaults (llmcpu/crosseval/evaluate.py says what each one does).
"""

import dataclasses

import ml_collections

from llmcpu.crosseval import CrossEvalOptions


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.checkpoints = ""  # training workdirs or checkpoint dirs: a glob, or a comma-separated list of paths/globs
  c.isas = ""  # evaluation ISAs, comma-separated: specs (bpe:4000) or names (bpe4000); '' = every one in compile_dir
  c.compile_dir = ""  # the scripts/compile.py --workdir holding the compiled data
  c.out = ""  # report directory
  c.corpus = ""  # evaluate on this corpus ('' = each checkpoint's training corpus)
  c.update(dataclasses.asdict(CrossEvalOptions()))  # split, batch_size, max_docs, seed, coherence, prompts, ...
  return c
