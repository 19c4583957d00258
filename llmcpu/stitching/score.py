"""An encoder-decoder's own task on programs it reads in one ISA and answers in another (its output ISA).

``score`` gives, on the held-out split, teacher-forced bits per byte of the answers (95% bootstrap interval over
programs, resampled by cluster: the windows of ``spans:`` prose by the document they were cut from, see
``llmcpu.data.clusters``) and the exact match of greedy answers (interval over programs; none with ``prompts=0``, as
for the spans of ``spans:`` prose, whose task is their bits per byte). A native CPU reads its own ISA; a swapped
one (``stitching.swap``) reads the ISA its encoder was trained on. Both are scored by these same lines, so a
swap's penalty is a difference of like figures.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from flax import nnx

from llmcpu.compilers import Compiler
from llmcpu.crosseval import generation, intervals, scoring
from llmcpu.crosseval.library import Library
from llmcpu.data import compiled
from llmcpu.data.pipeline import Pipeline
from llmcpu.errors import UserError
from llmcpu.metrics import text as text_metrics


def _round_up(n: int, k: int = 8) -> int:
  return -(-n // k) * k


def shuffled_inputs(split: compiled.CompiledSplit, seed: int) -> tuple[compiled.CompiledSplit, np.ndarray]:
  """(the split with every document's input replaced by another document's, the index of that document): a random
  derangement from ``seed``.

  The calibration of what reading the input is worth: a CPU scores its own answers after another document's input
  no better than a CPU that ignores its input, so (shuffled − native) is the input's worth, and a swap's penalty is
  read against it."""
  n = split.num_docs
  if n < 2:
    raise UserError("shuffled inputs need at least two documents")
  rng = np.random.default_rng(seed)
  order, shift = rng.permutation(n), int(rng.integers(1, n))
  source = np.empty(n, np.int64)
  source[order] = order[(np.arange(n) + shift) % n]  # a shift of 1…n−1 along a random cycle: no document keeps its own
  field = split.fields["input"]
  shuffled = compiled.CompiledField.from_docs([field.doc(int(j)) for j in source], field.nbytes[source])
  return dataclasses.replace(split, fields=dict(split.fields, input=shuffled)), source


def score(
  model,
  writes: Compiler,
  reads: Compiler,
  lib: Library,
  corpus: str,
  *,
  split: str = "test",
  prompts: int = 200,
  input_length: int = 32,
  target_length: int = 16,
  answer_tokens: int = 16,
  batch_size: int = 64,
  seed: int = 0,
  shuffle: bool = False,
) -> dict:
  """Bits per byte and exact match (each with its interval) of ``model`` reading ``reads``' compile of ``corpus``
  and answering in ``writes``' ISA (the model's own); with ``shuffle``, after another document's input
  (``shuffled_inputs``)."""
  if model.config.arch != "encoder_decoder":
    raise UserError(f"the stitching score is an encoder_decoder's task; this CPU is a {model.config.arch}")
  name = lib.corpus_name(corpus, writes)
  test = lib.split(name, writes, split)
  if reads.fingerprint != writes.fingerprint:
    test = compiled.pair(test, lib.split(name, reads, split))
  source = np.arange(test.num_docs)
  if shuffle:
    test, source = shuffled_inputs(test, seed)
  clusters = lib.clusters(corpus, name, writes, split)  # the source of each document (``llmcpu.data.clusters``)
  figures = _bits_per_byte(
    model,
    writes,
    lib,
    name,
    test,
    clusters=clusters,
    input_length=input_length,
    target_length=target_length,
    batch_size=batch_size,
    seed=seed,
  )
  if prompts <= 0:  # bits per byte only (span filling on prose: an exact answer is not the task)
    return figures
  raw = lib.raw_texts(name, writes, split)
  inputs = [raw["input"][j] for j in source]
  return figures | _exact_match(model, writes, test, inputs, raw["target"], prompts, answer_tokens, clusters, seed)


def _bits_per_byte(
  model,
  writes: Compiler,
  lib: Library,
  name: str,
  test: compiled.CompiledSplit,
  *,
  clusters: list,
  input_length: int,
  target_length: int,
  batch_size: int,
  seed: int,
) -> dict:
  """Teacher-forced figures of ``model``'s answers on ``test`` (bits per byte and its interval, token accuracy),
  and the per-document sums a paired penalty resamples."""
  pipe = Pipeline(
    test,
    objective="seq2seq",
    global_batch=batch_size,
    seed=seed,
    length=input_length,
    input_length=input_length,
    target_length=target_length,
    shuffle=False,
    document_ids=True,
    truncate=True,
  )
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  sums_fn = scoring.make_sums_fn(graphdef, writes.vocab_size)
  unigram = lib.unigram_bits(name, writes, ["target"], "train")
  scored = scoring.run_pass(sums_fn, params, rest, pipe.eval_batches(), 0.0, unigram, test.num_docs)
  total, docs = scored["total"], scored["docs"]
  table = np.stack([docs["nll"], docs["bytes"]], axis=1)
  figures = {
    "bits_per_byte": scoring.bits_per_byte(total["nll"], total["bytes"]),
    "token_accuracy": total["correct"] / total["tokens"] if total["tokens"] else None,
    "exact_match": None,
    "exact_match_ci": None,
    "programs": test.num_docs,
    "prompts": 0,
    "illegal_inputs": int(total["illegal_inputs"]),
    # per document, for intervals of differences paired by document (``paired_penalty``)
    "docs_nll": docs["nll"].tolist(),
    "docs_bytes": docs["bytes"].tolist(),
    "docs_clusters": clusters,
  }
  intervals.store(
    figures, "bits_per_byte", table, intervals.ratio(0, 1, 1.0 / math.log(2)), clusters=clusters, seed=seed
  )
  return figures


def _exact_match(
  model,
  writes: Compiler,
  test: compiled.CompiledSplit,
  inputs: list[str],
  targets: list[str],
  prompts: int,
  answer_tokens: int,
  clusters: list,
  seed: int,
) -> dict:
  """Exact match of ``model``'s greedy answers to the first ``prompts`` documents of ``test`` (``inputs``: the raw
  text each document is read after), with its interval over programs and three samples."""
  chosen = list(range(min(prompts, test.num_docs)))
  batch = generation.program_prompts(test, inputs, targets, chosen)
  width = _round_up(max(len(ids) for ids in batch.ids) + 2)
  answers, _, truncated = generation.generate_texts(
    model, batch, "encoder_decoder", width, answer_tokens, writes, writes, temperature=0.0
  )
  hits = text_metrics.exact_match_items(answers, batch.references)
  figures = {"exact_match_clusters": [clusters[d] for d in chosen]}
  table = np.stack([hits, np.ones_like(hits)], 1)
  intervals.store(
    figures, "exact_match", table, intervals.ratio(0, 1), clusters=figures["exact_match_clusters"], seed=seed
  )
  return figures | {
    "exact_match": float(hits.mean()) if len(hits) else None,
    "hits": hits.tolist(),
    "prompts": len(hits),
    "prompts_truncated": truncated,
    "samples": [
      {"input": t, "reference": r, "answer": a}
      for t, r, a in list(zip(batch.texts, batch.references, answers, strict=True))[:3]
    ],
  }


def paired_penalty(native: dict, cell: dict, metric: str, seed: int = 0) -> tuple[float, tuple[float, float] | None]:
  """How much worse ``cell`` is than ``native`` (exact match lost, or bits per byte added) and its 95% bootstrap
  interval resampling the documents both were scored on (by cluster, as ``score`` does), paired: a difference is far
  surer than either figure's own interval says, which is mostly how hard the documents are."""
  if metric == "exact_match":
    columns = [native["hits"], cell["hits"]]
    clusters = native.get("exact_match_clusters")

    def stat(x):
      return (x[..., 0] - x[..., 1]) / x[..., 2]
  else:
    columns = [cell["docs_nll"], cell["docs_bytes"], native["docs_nll"], native["docs_bytes"]]
    clusters = native.get("docs_clusters")

    def stat(x):
      with np.errstate(divide="ignore", invalid="ignore"):
        return (x[..., 0] / x[..., 1] - x[..., 2] / x[..., 3]) / math.log(2)

  if len({len(c) for c in columns}) != 1:
    raise UserError("a paired penalty needs both rows scored on the same documents")
  table = np.stack([np.asarray(c, np.float64) for c in columns] + [np.ones(len(columns[0]))], 1)
  return float(stat(table.sum(0))), intervals.bootstrap(table, stat, clusters=clusters, seed=seed)


def paired_share_lost(
  native: dict, cell: dict, shuffled: dict, metric: str, seed: int = 0
) -> tuple[float | None, tuple[float, float] | None]:
  """The share of the input's worth ``cell`` loses: its penalty against ``native`` over the penalty of ``shuffled``
  (the same reference CPU after another document's input), with a 95% bootstrap interval of that ratio resampling
  the documents all three were scored on (by cluster, as ``score`` does), paired. A share of the input's worth is
  defined only where the input is worth something (shuffled inputs score worse): (None, None) where it is not on
  the documents themselves, and resamples where it is not are undefined (counted; too many and there is no
  interval) — so the ratio is never read across a denominator that crosses 0, where it is unbounded."""
  if metric == "exact_match":
    columns = [native["hits"], cell["hits"], shuffled["hits"]]
    clusters = native.get("exact_match_clusters")

    def stat(x):
      return _share(x[..., 0] - x[..., 1], x[..., 0] - x[..., 2])
  else:
    columns = [native["docs_nll"], native["docs_bytes"], cell["docs_nll"], cell["docs_bytes"]]
    columns += [shuffled["docs_nll"], shuffled["docs_bytes"]]
    clusters = native.get("docs_clusters")

    def stat(x):
      with np.errstate(divide="ignore", invalid="ignore"):
        own = x[..., 0] / x[..., 1]
        return _share(x[..., 2] / x[..., 3] - own, x[..., 4] / x[..., 5] - own)

  if len({len(c) for c in columns}) != 1:
    raise UserError("a paired share lost needs the three rows scored on the same documents")
  table = np.stack([np.asarray(c, np.float64) for c in columns], 1)
  value = float(stat(table.sum(0)))
  if not math.isfinite(value):
    return None, None
  return value, intervals.bootstrap(table, stat, clusters=clusters, seed=seed)


def _share(lost, worth):
  """lost / worth where the input is worth something (worth > 0), NaN (undefined) elsewhere."""
  lost, worth = np.asarray(lost, np.float64), np.asarray(worth, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(worth > 0, lost / np.where(worth > 0, worth, 1.0), np.nan)
