"""Compile corpora with compilers: train every compiler once and cache every split encoded by every ISA.

python scripts/compile.py --corpus=python_docs --compilers=bpe:1000,bpe:4000,char,byte --workdir=runs/q
"""

from absl import app, flags

from llmcpu import cache, cli, compilers, data
from llmcpu.errors import UserError

_CORPUS = flags.DEFINE_string(
  "corpus", "python_docs", "Corpus (or comma-separated corpora): python_docs, programs, tfds:NAME[:KEY], text:GLOB."
)
_COMPILERS = flags.DEFINE_string(
  "compilers", "unigram:4000,bpe:1000,bpe:4000,char,byte,bpe:4000+perm:1", "Compiler specs, comma-separated."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Cache directory (compilers/ and data/ go under it).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS_DATA_DIR or ~/tensorflow_datasets).")
_REBUILD = flags.DEFINE_bool("rebuild", False, "Rebuild every compiler and split even if the cache is current.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = cli.workdir_path(_WORKDIR.value)
  specs = compilers.parse_list(_COMPILERS.value)
  corpora = [data.load_corpus(c.strip(), data_dir=_DATA_DIR.value) for c in _CORPUS.value.split(",") if c.strip()]
  if not corpora:
    raise UserError("no corpus given; pass e.g. --corpus=python_docs")
  built = cache.build_compilers(specs, corpora, workdir, rebuild=_REBUILD.value, log=cli.log)
  stats = cache.compile_corpora(corpora, built, workdir, rebuild=_REBUILD.value, log=cli.log)
  print("\n## ISAs\n\n" + cache.format_isa_table(stats))
  print("\n## ISA overlap\n\n" + cache.format_overlap_matrix(built), flush=True)


if __name__ == "__main__":
  cli.run(main)
