"""What a cross-evaluation reads from the compile cache, loaded once and shared by every model.

Evaluation ISAs and compiled splits (through the compile directory's ``llmcpu.toolchain.Toolchain``), the raw text
of a split (decoded from any ISA's compiled split: compiling is lossless, so no corpus or TFDS is needed), unigram
tables, and per corpus the byte judge and the lexicon of its train split.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from llmcpu import compilers, toolchain
from llmcpu.compilers import Compiler
from llmcpu.crosseval import generation, scoring
from llmcpu.crosseval.judge import ByteJudge
from llmcpu.data import clusters
from llmcpu.data.compiled import CompiledField, CompiledSplit
from llmcpu.errors import UserError
from llmcpu.training import loss

_WORD = re.compile(r"\w+")


def head(split: CompiledSplit, n: int) -> CompiledSplit:
  """The first ``n`` documents of a split (0 or more than it has: all of it); arrays stay memory-mapped."""
  if n <= 0 or n >= split.num_docs:
    return split
  fields = {}
  for name, f in split.fields.items():
    end = int(f.offsets[n])
    fields[name] = CompiledField(tokens=f.tokens[:end], offsets=f.offsets[: n + 1], nbytes=f.nbytes[:n])
  labels = {k: v[:n] for k, v in split.labels.items()}
  return dataclasses.replace(split, fields=fields, labels=labels, manifest=dict(split.manifest, num_docs=n))


class Library:
  """Caches over one compile directory; every lookup failure is a one-line ``UserError``."""

  def __init__(self, compile_dir: str, *, max_docs: int = 0, judge_order: int = 5, judge_max_bytes: int = 0):
    self.toolchain = toolchain.Toolchain(compile_dir)
    self.compile_dir = self.toolchain.compile_dir
    self.max_docs, self.judge_order, self.judge_max_bytes = max_docs, judge_order, judge_max_bytes
    self._splits: dict[tuple, CompiledSplit] = {}
    self._raw: dict[tuple, dict[str, list[str]]] = {}
    self._unigram: dict[tuple, np.ndarray] = {}
    self._judges: dict[str, tuple[ByteJudge, set[str]]] = {}
    self._word_counts: dict[str, collections.Counter] = {}
    self._cuts: dict[tuple, dict[int, int]] = {}

  # --- ISAs -------------------------------------------------------------------------------------------------------

  def available(self) -> list[str]:
    """The names of the compilers saved in the compile directory."""
    return self.toolchain.names()

  def compiler(self, isa: str) -> Compiler:
    """An evaluation ISA by spec (``bpe:4000``) or saved name (``bpe4000``): ``Toolchain.compiler``."""
    return self.toolchain.compiler(isa)

  @staticmethod
  def label(isa: str) -> str:
    """The table label of an ISA as given (its name when it parses as a spec)."""
    try:
      return compilers.parse(isa).name
    except UserError:
      return isa.strip()

  # --- compiled data ----------------------------------------------------------------------------------------------

  def corpus_name(self, corpus_spec: str, compiler: Compiler) -> str:
    return self.toolchain.corpus_name(corpus_spec, compiler)

  def split(self, corpus_name: str, compiler: Compiler, split: str, *, limit: bool = True) -> CompiledSplit:
    """A compiled split (its first ``max_docs`` documents when ``limit``)."""
    key = (corpus_name, compiler.name, compiler.fingerprint, split)
    if key not in self._splits:
      self._splits[key] = self.toolchain.split(corpus_name, compiler, split)
    s = self._splits[key]
    return head(s, self.max_docs) if limit else s

  def raw_texts(self, corpus_name: str, compiler: Compiler, split: str, *, limit: bool = True) -> dict[str, list[str]]:
    """Every field's raw text, decoded from ``compiler``'s compiled split and checked against the byte counts."""
    key = (corpus_name, split)
    if key not in self._raw:
      s = self.split(corpus_name, compiler, split, limit=False)
      out = {}
      for name, f in s.fields.items():
        texts = [compiler.decode(f.doc(i)) for i in range(len(f))]
        if [len(t.encode("utf-8")) for t in texts] != f.nbytes.tolist():
          raise UserError(f"ISA {compiler.name} does not decode {corpus_name}/{split} losslessly; recompile it")
        out[name] = texts
      self._raw[key] = out
    raw = self._raw[key]
    n = self.max_docs
    return {k: v[:n] for k, v in raw.items()} if limit and n > 0 else raw

  def clusters(self, corpus_spec: str, corpus_name: str, compiler: Compiler, split: str) -> list[str]:
    """Each document's cluster (``llmcpu.data.clusters``), for intervals that resample clusters of documents."""
    s = self.split(corpus_name, compiler, split)
    texts = self.raw_texts(corpus_name, compiler, split).get("text") if s.kind == "text" else None
    return clusters.document_clusters(corpus_spec, s.labels, texts, s.num_docs)

  def prompt_cuts(
    self, corpus_spec: str, comps: Sequence[Compiler], split: str, prompt_bytes: int, after_bytes: int
  ) -> dict[int, int]:
    """The shared prompt cut of every prose document of ``split`` for the evaluation ISAs ``comps``
    (``generation.shared_cuts``), computed once per set of ISAs."""
    key = (corpus_spec, tuple(sorted({c.fingerprint for c in comps})), split, prompt_bytes, after_bytes)
    if key not in self._cuts:
      compiled = [(c, self.split(self.corpus_name(corpus_spec, c), c, split)) for c in comps]
      raw = self.raw_texts(self.corpus_name(corpus_spec, comps[0]), comps[0], split)["text"]
      self._cuts[key] = generation.shared_cuts(raw, compiled, prompt_bytes, after_bytes)
    return self._cuts[key]

  def unigram_bits(self, corpus_name: str, compiler: Compiler, fields: list[str], train: str) -> np.ndarray:
    """−log2 p(id) of the evaluation ISA's unigram model (``scoring.unigram_log2_probs`` on the train split)."""
    key = (corpus_name, compiler.fingerprint, train, tuple(fields))
    if key not in self._unigram:
      train_split = self.split(corpus_name, compiler, train, limit=False)
      self._unigram[key] = -scoring.unigram_log2_probs(train_split, fields)
    return self._unigram[key]

  def unigram_bpb(self, corpus_name: str, compiler: Compiler, test: CompiledSplit, fields: list[str], train: str):
    """The unigram model's bits per byte on every content id of ``test``'s ``fields``."""
    ids = scoring.field_ids(test, fields)
    ids = ids[np.asarray(loss.is_content(ids))]
    nbytes = scoring.field_bytes(test, fields)
    return float(self.unigram_bits(corpus_name, compiler, fields, train)[ids].sum() / nbytes) if nbytes else None

  def judge(self, corpus_name: str, compiler: Compiler, train: str) -> tuple[ByteJudge, set[str]]:
    """The byte judge and the word lexicon of a corpus' train split (built once per corpus)."""
    if corpus_name not in self._judges:
      texts = [t for field in self.raw_texts(corpus_name, compiler, train, limit=False).values() for t in field]
      judge = ByteJudge(self.judge_order).fit(texts, max_bytes=self.judge_max_bytes or None)
      counts = collections.Counter(w.lower() for t in texts for w in _WORD.findall(t))
      self._word_counts[corpus_name] = counts
      self._judges[corpus_name] = (judge, set(counts))
    return self._judges[corpus_name]

  def word_counts(self, corpus_name: str, compiler: Compiler, train: str) -> collections.Counter:
    """How often each (lowercased) word of the lexicon occurs in the train split."""
    self.judge(corpus_name, compiler, train)
    return self._word_counts[corpus_name]


def one_line(error: BaseException) -> str:
  """A failure as one line: a UserError's message, else the exception type and its first line."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}"
