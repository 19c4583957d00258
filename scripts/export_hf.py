"""Export an llmcpu decoder checkpoint as a Hugging Face directory (config.json + model.safetensors).

  python scripts/export_hf.py --checkpoint=runs/llms/gpt2 --out=runs/llms/gpt2-hf [--dtype=bfloat16]

GPT-2 and Llama-family decoders only (a decoder no Hugging Face class computes is refused before anything is
written). A CPU whose ISA came from a tokenizer.json gets that file back (and its tokenizer_config.json), so
scripts/import_hf.py reads the export again; config.json carries the ISA's bos/eos/pad ids.
"""

from absl import app, flags

from llmcpu import fs
from llmcpu.ops import cli

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A run workdir or checkpoint directory of a decoder.")
_OUT = flags.DEFINE_string("out", None, "The Hugging Face directory to write (a new one).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Weight dtype of model.safetensors.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _CHECKPOINT.value or not _OUT.value:
    raise app.UsageError("--checkpoint and --out are required")
  checkpoint, out = fs.abspath(_CHECKPOINT.value), fs.abspath(_OUT.value)
  if cli.CHECK.value:
    return cli.check([cli.read("run", checkpoint), cli.write("dir", out)])
  from llmcpu.training import hf_checkpoint

  hf_checkpoint.export_checkpoint(checkpoint, out, dtype=_DTYPE.value, log=cli.log)


if __name__ == "__main__":
  cli.run_script(main)
