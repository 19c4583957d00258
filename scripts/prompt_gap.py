"""Does a CPU read its prompt? Teacher-forced bits per byte of a target after its own prompt vs another's (issue 23).

  python scripts/prompt_gap.py RUN [RUN ...] [--prompt_bytes=64] [--target_bytes=40] [--docs=256] [--per_byte=N]
      [--out=gap.jsonl]

RUN: a decoder or encoder_decoder run workdir (or checkpoint directory). Every RUN is scored on the same documents,
prompt bytes and target bytes (cuts at token boundaries shared by all their ISAs). One line per RUN: bits per byte
own vs other, the gap (other − own; positive = the CPU reads its prompt) with a 95% cluster bootstrap interval over
documents, and the same on the target's first --head_bytes bytes. --per_byte=N adds a line per RUN with the mean gap
(bits) at each target byte 0..N, byte 0 being the space at the cut, each with its interval (``per_byte`` in --out).
The compile dir and corpus default to the first RUN's training config. On an input/target corpus (programs) the
prompt is the program and the target its answer (--prompt_bytes/--target_bytes do not apply; --docs programs, evenly
spread). See llmcpu/crosseval/prompt_gap.py.
"""

import json

from absl import app, flags

from llmcpu import fs
from llmcpu.ops import cli

_PROMPT = flags.DEFINE_integer("prompt_bytes", 64, "Cut each document at the first shared word start at/past this.")
_TARGET = flags.DEFINE_integer("target_bytes", 40, "Score the target up to the first shared boundary past this.")
_HEAD = flags.DEFINE_integer("head_bytes", 8, "Also report the gap on the target's first bytes.")
_DOCS = flags.DEFINE_integer("docs", 256, "Documents (evenly spread over the split).")
_SPLIT = flags.DEFINE_string("split", "test", "Held-out split.")
_COMPILE_DIR = flags.DEFINE_string("compile_dir", "", "Compile dir ('' = the first run's data.compile_dir).")
_CORPUS = flags.DEFINE_string("corpus", "", "Corpus spec ('' = the first run's data.corpus).")
_PER_BYTE = flags.DEFINE_integer("per_byte", 0, "Also the mean gap at target bytes 0..N (0 = off).")
_KEEP = flags.DEFINE_integer(
  "keep_tail_bytes", 0, "Swap only the prompt before its last ≥ N bytes (a shared word start): prompt use beyond them."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the other-prompt pairing and the bootstrap.")
_OUT = flags.DEFINE_string("out", "", "Write one JSON row per run here (jsonl).")


def main(argv):
  paths = [fs.abspath(p) for p in argv[1:]]
  if not paths:
    raise app.UsageError("pass one or more runs: python scripts/prompt_gap.py RUN [RUN ...]")
  if cli.CHECK.value:
    out = [cli.read("run", p) for p in paths]
    if _COMPILE_DIR.value:
      out.append(cli.read("dir", fs.abspath(_COMPILE_DIR.value)))
    return cli.check(out + ([cli.write("file", fs.abspath(_OUT.value))] if _OUT.value else []))
  from llmcpu.crosseval import prompt_gap

  rows = prompt_gap.measure(
    paths,
    compile_dir=_COMPILE_DIR.value,
    corpus=_CORPUS.value,
    split=_SPLIT.value,
    prompt_bytes=_PROMPT.value,
    target_bytes=_TARGET.value,
    num_docs=_DOCS.value,
    head_bytes=_HEAD.value,
    seed=_SEED.value,
    per_byte=_PER_BYTE.value,
    keep_tail_bytes=_KEEP.value,
    log=cli.log,
  )
  if _OUT.value:
    fs.write_text(fs.abspath(_OUT.value), "".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
  cli.run_script(main)
