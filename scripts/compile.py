"""Compile corpora with compilers: train every compiler once and cache every split encoded by every ISA.

python scripts/compile.py --config.corpus=python_docs --config.compilers=bpe:1000,bpe:4000,char,byte \
    --workdir=runs/compiled

--config defaults to configs/compile.py, which lists every key (corpus, compilers, data_dir, doc_bytes, rebuild)
and its default.
"""

import os

from absl import app, flags

from llmcpu import compilers, data, toolchain
from llmcpu.errors import UserError
from llmcpu.ops import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = cli.define_config(os.path.join(ROOT, "configs", "compile.py"), "Compile config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Cache directory (compilers/ and data/ go under it).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  specs = compilers.parse_list(config.compilers)
  if cli.CHECK.value:
    workdir = cli.resolve_workdir(_WORKDIR.value)
    return cli.check([cli.write("isa", toolchain.compiler_dir(workdir, s.name)) for s in specs])
  workdir = cli.workdir_path(_WORKDIR.value)
  load = dict(data_dir=config.data_dir or None, doc_bytes=config.get("doc_bytes", data.DOC_BYTES))
  corpora = [data.load_corpus(c.strip(), **load) for c in config.corpus.split(",") if c.strip()]
  if not corpora:
    raise UserError("no corpus given; pass e.g. --config.corpus=python_docs")
  built = toolchain.build_compilers(specs, corpora, workdir, rebuild=config.rebuild, log=cli.log)
  stats = toolchain.compile_corpora(corpora, built, workdir, rebuild=config.rebuild, log=cli.log)
  print(
    "\n## Corpora\n\n"
    + "\n".join(toolchain.format_split_stats(c.spec, toolchain.split_stats(workdir, c, built[0])) for c in corpora)
  )
  print("\n## ISAs\n\n" + toolchain.format_isa_table(stats))
  print("\n## ISA overlap\n\n" + toolchain.format_overlap_matrix(built), flush=True)


if __name__ == "__main__":
  cli.run_script(main)
