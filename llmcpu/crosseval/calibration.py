"""Calibration: the coherence axes scored on references whose answer is known, before any CPU is read with them.

Per corpus, on the same held-out prompts as the cells (the same documents cut at the same shared byte offset, see
``generation.shared_cuts``), at the same output length (``new_bytes``) and with the same judge: the true
continuation (fluency 1, relevance 1), another document's continuation (fluent, irrelevant: relevance ≈ 0), random
bytes and a repeated piece (fluency ≈ 0), and the prompt echoed back (relevance ≫ 1, so coherence must not reward
it); and two purely local baselines every CPU is read against: the byte n-gram judge continuing each prompt greedily,
and the prompt's last word finished from the train lexicon followed by another document's text. Each reference is
also written after the head-swapped prompts (``coherence.calibration_texts``): the local baselines write the same
there, so they score exactly 0 on relevance beyond the tail. Programs: the true answer, another program's answer of
the same task, random bytes, a repeated piece, and two local baselines: the task's most frequent answer and the
prompt's last operand copied. The native CPUs' shuffled-prompt runs (relevance far below their
native figure) are read from the cells' rows by the report. Every figure carries its 95% bootstrap interval over
prompts, resampled by cluster (``llmcpu.data.clusters``) as the cells' are.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmcpu.compilers import Compiler
from llmcpu.crosseval import coherence, generation
from llmcpu.crosseval.library import Library


def calibrate(lib: Library, corpus_spec: str, comps: Compiler | Sequence[Compiler], options) -> list[dict]:
  """One row per reference: ``corpus reference prompts`` and every figure of ``coherence.assess`` with ``*_ci``.

  ``comps``: the evaluation ISAs of the matrix (the prompts are cut where every one of them has a token boundary);
  the first reads the corpus."""
  comps = [comps] if isinstance(comps, Compiler) else list(comps)
  compiler = comps[0]
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
    prompts, clusters = [raw["input"][d] for d in docs], [every[d] for d in docs]
    for name, answers in coherence.program_references(targets, tasks, prompts, options.seed).items():
      table = coherence.program_table(answers, targets, tasks)
      figures = _figures(table, "programs", options, clusters)
      figures["prompt_table"] = coherence.table_record(table, docs, clusters, kind="programs")
      figures["exact_match_by_task"] = coherence.exact_match_by_task(answers, targets, tasks)
      rows.append(base | {"reference": name, "prompts": len(targets)} | figures)
    return rows
  cuts = lib.prompt_cuts(corpus_spec, comps, options.split, options.prompt_bytes, options.new_bytes)
  docs = generation.pick_cuts(cuts, options.prompts)
  if not docs:  # the cells say why (coherence_error); there is nothing to calibrate on
    return rows
  prompts, continuations = generation.prose_texts(raw["text"], cuts, docs)
  clusters = [every[d] for d in docs]
  judge, lexicon = lib.judge(corpus_name, compiler, options.train_split)
  counts = lib.word_counts(corpus_name, compiler, options.train_split)
  refs = coherence.calibration_texts(
    judge, counts, prompts, continuations, options.new_bytes, options.seed, options.tail_bytes
  )
  for name, (texts, swapped) in refs.items():
    table = coherence.prose_table(
      judge,
      lexicon,
      prompts,
      [texts],
      continuations,
      nbytes=options.new_bytes,
      tail_bytes=options.tail_bytes,
      swapped=[swapped],
    )
    figures = _figures(table, "prose", options, clusters)
    figures["prompt_table"] = coherence.table_record(table, docs, clusters)
    rows.append(base | {"reference": name, "prompts": len(prompts)} | figures)
  return rows


def _figures(table, kind: str, options, clusters: list[str]) -> dict:
  out = coherence.assess(table, kind, seed=options.seed, clusters=clusters, margin=options.equivalence_margin)
  keys = (*coherence.FIGURES, *coherence.PROSE_EXTRA) if kind == "prose" else coherence.FIGURES
  keep = [*keys, *(f"{k}_ci{x}" for k in keys for x in ("", "_info"))]
  keep += [k for k in out if k.endswith(("_ci90", "_verdict"))]
  return {k: out.get(k) for k in keep}
