"""Swap the encoder of an encoder-decoder for another CPU's (another ISA), with a stitch between them.

  python scripts/swap.py --config.decoder=runs/swap/runs/programs/encoder_decoder/bpe1000/seed0 \
      --config.encoder=runs/swap/runs/programs/encoder_decoder/char/seed1 --config.variant=stitch \
      --config.steps=300 --workdir=runs/swap-char-into-bpe1000

Variants: zero_shot (identity stitch), lstsq and procrustes (closed form on parallel anchors), stitch (train the
stitch only) and stitch_xattn (the stitch and the decoder's cross-attention). The result is an ordinary checkpoint
that reads ISA B and writes ISA A. SIGTERM/SIGINT save and exit 0; the same command resumes. --config defaults to
configs/swap.py, which lists every key.
"""

import os

from absl import app, flags

from llmcpu import fs
from llmcpu.errors import UserError
from llmcpu.ops import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = cli.define_config(os.path.join(ROOT, "configs", "swap.py"), "Swap config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the swapped CPU (checkpoints, metrics).")


def footprint(config, workdir: str, variants) -> list[cli.Access]:
  """What the swap reads (the two CPUs) and writes (its workdir), for ``--check``: the ISAs are the CPUs' own."""
  if config.variant not in variants:
    raise UserError(f"unknown swap variant {config.variant!r}; choose one of {', '.join(variants)}")
  if not config.decoder or not config.encoder:
    raise UserError("--config.decoder and --config.encoder are required")
  compile_dir = fs.abspath(config.compile_dir) if config.compile_dir else ""
  runs = [cli.read("run", fs.abspath(config.decoder)), cli.read("run", fs.abspath(config.encoder))]
  return [*runs, cli.write("run", cli.resolve_workdir(workdir), compile_dir)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from llmcpu.stitching import swap

  if cli.CHECK.value:
    return cli.check(footprint(_CONFIG.value, _WORKDIR.value, (*swap.VARIANTS, swap.CONTROL)))
  swap.swap_encoder(_CONFIG.value, cli.workdir_path(_WORKDIR.value), log=cli.log)


if __name__ == "__main__":
  cli.run_script(main)
