"""Import a Hugging Face model directory as an llmcpu checkpoint that carries its tokenizer's ISA.

  python scripts/import_hf.py --src=path/to/gpt2 --workdir=runs/llms/gpt2 [--source_id=gpt2 --revision=SHA]

The directory needs config.json, safetensors weights (model.safetensors or a sharded index) and tokenizer.json
(+ tokenizer_config.json naming the special tokens, when it has one). The result is an ordinary step-0 checkpoint:
scripts/cross_eval.py scores it, with the ISA hf:<src> compiled by scripts/compile.py. Nothing is written unless every
file is present, the architecture and its options are supported and the tokenizer fits the weights.
"""

import os

from absl import app, flags

from llmcpu.ops import cli

_SRC = flags.DEFINE_string("src", None, "Hugging Face model directory (config.json, safetensors, tokenizer.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the imported CPU (a new one).")
_SOURCE_ID = flags.DEFINE_string("source_id", "", "The model's hub id, for the provenance ('' = the folder's name).")
_REVISION = flags.DEFINE_string("revision", "", "The hub revision (commit) the files came from, when known.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _SRC.value:
    raise app.UsageError("--src is required: a Hugging Face model directory")
  src = os.path.abspath(os.path.expanduser(_SRC.value))
  if cli.CHECK.value:
    return cli.check([cli.read("dir", src), cli.write("run", cli.resolve_workdir(_WORKDIR.value))])
  from llmcpu.training import hf_checkpoint

  workdir = cli.resolve_workdir(_WORKDIR.value)
  hf_checkpoint.import_dir(src, workdir, source_id=_SOURCE_ID.value, revision=_REVISION.value, log=cli.log)


if __name__ == "__main__":
  cli.run_script(main)
