"""Calibration: the coherence axes scored on references whose answer is known, before any CPU is read with them.

Per corpus, on the same held-out prompts (evenly spread, ``prompt_bytes`` of raw text) and the same judge as the
cells: the true continuation (fluency 1, relevance 1), another document's continuation (fluent, irrelevant:
relevance ≈ 0), random bytes and a repeated piece (fluency ≈ 0), and the prompt echoed back (relevance ≫ 1, so
coherence must not reward it). Programs: the true answer, another program's answer of the same task, random bytes, a
repeated piece. The native CPUs' shuffled-prompt runs (relevance far below their native figure) are read from the
cells' rows by the report. Every figure carries its 95% bootstrap interval over prompts, resampled by cluster
(``llmcpu.data.clusters``) as the cells' are.
"""

from __future__ import annotations

from llmcpu.compilers import Compiler
from llmcpu.crosseval import coherence, generation
from llmcpu.crosseval.library import Library

REFERENCE_CHARS = 128  # length of the prose references (about what a CPU generates in 32 tokens of a 4k ISA)


def calibrate(lib: Library, corpus_spec: str, compiler: Compiler, options) -> list[dict]:
  """One row per reference: ``corpus reference prompts fluency relevance coherence`` and ``*_ci``."""
  corpus_name = lib.corpus_name(corpus_spec, compiler)
  test = lib.split(corpus_name, compiler, options.split)
  raw = lib.raw_texts(corpus_name, compiler, options.split)
  base = {"corpus": corpus_spec, "corpus_name": corpus_name, "split": options.split}
  every = lib.clusters(corpus_spec, corpus_name, compiler, options.split)
  rows = []
  if test.kind == "seq2seq":
    docs = range(min(options.program_prompts, test.num_docs))
    targets = [raw["target"][d] for d in docs]
    tasks = [(test.labels.get("task") or [None] * test.num_docs)[d] for d in docs]
    for name, answers in coherence.program_references(targets, tasks, options.seed).items():
      table = coherence.program_table(answers, targets, tasks)
      figures = _figures(table, "programs", options, [every[d] for d in docs])
      rows.append(base | {"reference": name, "prompts": len(targets)} | figures)
    return rows
  lengths = [len(t.encode("utf-8")) for t in raw["text"]]
  docs = generation.select_docs(lengths, options.prompts, options.prompt_bytes + coherence.MIN_REFERENCE_CHARS * 4)
  prompts = [generation.text_prefix(raw["text"][d], options.prompt_bytes) for d in docs]
  continuations = [raw["text"][d][len(p) :] for d, p in zip(docs, prompts, strict=True)]
  judge, lexicon = lib.judge(corpus_name, compiler, options.train_split)
  refs = coherence.prose_references(continuations, prompts, REFERENCE_CHARS, options.seed)
  for name, texts in refs.items():
    table = coherence.prose_table(judge, lexicon, prompts, [texts], continuations)
    figures = _figures(table, "prose", options, [every[d] for d in docs])
    rows.append(base | {"reference": name, "prompts": len(prompts)} | figures)
  return rows


def _figures(table, kind: str, options, clusters: list[str]) -> dict:
  out = coherence.assess(table, kind, seed=options.seed, clusters=clusters, margin=options.equivalence_margin)
  keep = [*coherence.FIGURES, *(f"{k}_ci{x}" for k in coherence.FIGURES for x in ("", "_info"))]
  keep += ["relevance_ci90", "relevance_verdict"]
  return {k: out.get(k) for k in keep}
