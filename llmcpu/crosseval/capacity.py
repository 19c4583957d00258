"""What a corpus' held-out split can measure, said before any CPU is trained.

Coherence (fluency, relevance) is judged on prompts drawn one per held-out document long enough to hold a prompt
(``prompt_bytes``) and the judged continuation (``new_bytes``): an upper bound on the prompts
``generation.shared_cuts`` finds, which also needs a word start shared as a token boundary by every ISA within
``CUT_SLACK`` bytes of the cut. With fewer than ``MIN_PROMPTS`` prompts the bootstrap intervals are too wide to
tell anything apart and the calibration is not run: the experiment refuses to start (unless coherence is off); with
fewer than asked for but enough, it warns. Programs (seq2seq) prompt with every held-out program up to
``program_prompts`` (a cap, not a request).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np

from llmcpu import compilers, fs, toolchain
from llmcpu.compilers import Compiler
from llmcpu.data import compiled
from llmcpu.errors import UserError

MIN_PROMPTS = 16  # fewer prompts: no interval separates anything, the calibration is "not measured"
STATS_FILE = "corpus_stats.json"


def min_doc_bytes(prompt_bytes: int, new_bytes: int) -> int:
  """Bytes a held-out document needs to give a prose prompt: the prompt and the judged continuation."""
  return prompt_bytes + new_bytes


def corpus_stats(compile_dir: str, corpus, compiler: Compiler | compilers.CompilerSpec, options) -> dict:
  """Files, documents and bytes per split, and the prompts its held-out split (``options.split``) supports; read from
  its splits compiled by ``compiler`` (or the compiler saved for that spec) — raw bytes, the same for every ISA."""
  if isinstance(compiler, compilers.CompilerSpec):
    compiler = compilers.load(toolchain.compiler_dir(compile_dir, compiler.name))
  splits = toolchain.split_stats(compile_dir, corpus, compiler)
  path = toolchain.split_dir(compile_dir, corpus.name, compiler.name, options.split)
  held_out = compiled.load(path)
  out = {"corpus": corpus.spec, "corpus_name": corpus.name, "splits": splits, "held_out": options.split}
  if held_out.kind == "seq2seq":
    available = held_out.num_docs
    out.update(kind="programs", prompts_available=available, prompts_requested=options.program_prompts)
  else:
    nbytes = np.asarray(held_out.fields["text"].nbytes)
    need = min_doc_bytes(options.prompt_bytes, options.new_bytes)
    available = int(np.count_nonzero(nbytes >= need))
    half = max(1, options.prompt_bytes // 2)  # what a shorter prompt would give, for the advice
    out.update(
      kind="prose",
      prompts_available=available,
      prompts_requested=options.prompts,
      prompt_doc_bytes=need,
      prompts_at_half_prompt_bytes={
        "prompt_bytes": half,
        "prompts": int(np.count_nonzero(nbytes >= min_doc_bytes(half, options.new_bytes))),
      },
    )
  out["prompts_used"] = min(out["prompts_available"], out["prompts_requested"])
  return out


def shortfall(stats: dict, coherence: bool = True) -> tuple[str, bool] | None:
  """(one line saying what is missing and what to change, whether it is fatal), or None when the prompts are met."""
  have, want = stats["prompts_available"], stats["prompts_requested"]
  fatal = coherence and have < MIN_PROMPTS
  if stats["kind"] == "programs":
    if not fatal:
      return None
    return (
      f"corpus {stats['corpus']}: its {stats['held_out']} split holds {have} programs, fewer than the {MIN_PROMPTS} "
      "that coherence needs; give more programs, or turn coherence off (--config.crosseval.coherence=False)"
    ), True
  if have >= want or not coherence:
    return None
  test = stats["splits"].get(stats["held_out"], {})
  half = stats["prompts_at_half_prompt_bytes"]
  fixes = [f"give more text (about {_more_kb(stats)} KB more)"]
  if not fatal:
    fixes.append(f"ask for fewer (--config.crosseval.prompts={have})")
  if half["prompts"] > have:
    fixes.append(
      f"shorten the prompts (--config.crosseval.prompt_bytes={half['prompt_bytes']} gives {half['prompts']})"
    )
  if fatal:
    fixes.append("turn coherence off (--config.crosseval.coherence=False)")
  line = (
    f"corpus {stats['corpus']}: its {stats['held_out']} split ({test.get('docs', '?')} docs, "
    f"{test.get('bytes', 0) / 1000:.1f} KB) supports {have} prompts of ≥ {stats['prompt_doc_bytes']} bytes, "
    f"{want} asked for"
  )
  if fatal:
    line += f", and coherence needs at least {MIN_PROMPTS}"
  return f"{line}; {', '.join(fixes[:-1])} or {fixes[-1]}" + ("" if fatal else f"; going on with {have}"), fatal


def _more_kb(stats: dict) -> int:
  """Text to add for the prompts asked for, at the held-out split's current yield of prompts per byte and its share
  of the corpus."""
  splits = stats["splits"]
  total = sum(s["bytes"] for s in splits.values())
  held = splits.get(stats["held_out"], {}).get("bytes", 0)
  have, want = max(stats["prompts_available"], 1), stats["prompts_requested"]
  per_prompt = held / have if held else stats["prompt_doc_bytes"]
  share = held / total if total and held else 0.2
  return int(np.ceil((want - stats["prompts_available"]) * per_prompt / share / 1000))


def check_corpora(
  corpora: Sequence, compiler: Compiler, compile_dir: str, options, *, generates: bool, log: Callable[[str], None]
) -> list[dict]:
  """Each corpus' statistics, logged; a one-line warning when fewer prompts than asked for, a ``UserError`` when
  fewer than ``MIN_PROMPTS`` (coherence on and a CPU that generates). Called before any CPU is trained."""
  out, errors = [], []
  for corpus in corpora:
    stats = corpus_stats(compile_dir, corpus, compiler, options)
    prompts = f"; {stats['prompts_available']} {stats['held_out']} prompts available, {stats['prompts_used']} used"
    log(toolchain.format_split_stats(corpus.spec, stats["splits"]) + prompts)
    found = shortfall(stats, coherence=options.coherence and generates)
    if found and found[1]:
      errors.append(found[0])
    elif found:
      log(f"warning: {found[0]}")
    out.append(stats)
  if errors:
    raise UserError(" | ".join(errors))
  return out


def write_stats(out_dir: str, stats: dict) -> str:
  path = fs.join(out_dir, STATS_FILE)
  fs.makedirs(out_dir)
  fs.write_text(path, json.dumps(stats, indent=1, sort_keys=True))
  return path


def summary_line(stats: dict) -> str:
  """The corpus line of summary.md."""
  line = toolchain.format_split_stats(stats["corpus"], stats["splits"])
  return f"{line}. Prompts: {stats['prompts_used']} used of {stats['prompts_available']} available."
