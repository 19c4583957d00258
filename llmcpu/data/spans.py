"""``spans:CORPUS``: T5's span corruption done on the text of a prose corpus, so that every ISA compiles the same
examples.

The ``span_corruption`` objective draws noise spans over one ISA's ids, so an example read by one ISA has no
counterpart in another and an encoder of ISA B cannot be swapped under a decoder of ISA A on it. Here the spans are
drawn over words of the text instead: every document is cut into windows of whole words of at most
``WINDOW_BYTES`` UTF-8 bytes, and T5's noise mask (``objectives.noise_mask``: density ``NOISE_DENSITY``, mean span
``MEAN_SPAN`` words, rolled by a random offset) is drawn over each window's words from a hash of the window's
text. An example is

  input   the window with span i replaced by sentinel mark i   ("The quick \\ue000over the lazy dog.")
  target  mark i followed by span i, for every span          ("\\ue000brown fox jumps ")

and every compiler turns mark i into sentinel id i (``Compiler.encode_marked``). The result is an ordinary seq2seq
corpus (fields ``input``/``target``): every ISA holds the same documents, so ``compiled.pair`` can feed one ISA's
input to a CPU of another, and the targets are the same bytes in every ISA, so their bits per byte are comparable
across ISAs. Words keep the whitespace after them, so input and target together hold every byte of the window.

Unlike T5 (a fresh draw each epoch), each window is corrupted once, at compile time, as everything else in the
compile cache. Windows with fewer than two words have no noise and are left out. Every example carries the label
``source``: the cluster of the document it was cut from (``llmcpu.data.clusters``), since windows of one document are
not independent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator

import numpy as np

from llmcpu import specials
from llmcpu.data.clusters import SOURCE_LABEL, source_key
from llmcpu.data.objectives import noise_mask
from llmcpu.data.sources import digest
from llmcpu.errors import UserError

WINDOW_BYTES = 128  # per example: a char CPU reads ~0.85 × this + sentinels (input_length 128 fits)
NOISE_DENSITY = 0.15  # T5's defaults, over words
MEAN_SPAN = 3.0
FORMAT = (
  2  # 2: examples carry their document's cluster (label source); bump when the examples built from the same text change
)

_WORD = re.compile(r"\s*\S+\s*")  # a word with the whitespace after it (and before it, at the start of a text)


def words(text: str, limit: int = WINDOW_BYTES) -> list[str]:
  """The text's words (each with its whitespace), a word over ``limit`` bytes cut into pieces of at most ``limit``
  bytes at character boundaries; they concatenate back to the text (whitespace alone is one word)."""
  units = _WORD.findall(text) or ([text] if text else [])  # no word at all: the whitespace is one
  out = []
  for unit in units:
    while len(unit.encode("utf-8")) > limit:
      cut = len(unit.encode("utf-8")[:limit].decode("utf-8", "ignore"))
      out.append(unit[:cut])
      unit = unit[cut:]
    out.append(unit)
  return out


def windows(text: str, limit: int = WINDOW_BYTES) -> list[list[str]]:
  """Consecutive runs of whole words of at most ``limit`` bytes each."""
  out, cur, size = [], [], 0
  for w in words(text, limit):
    n = len(w.encode("utf-8"))
    if cur and size + n > limit:
      out.append(cur)
      cur, size = [], 0
    cur.append(w)
    size += n
  if cur:
    out.append(cur)
  return out


def corrupt_words(units: list[str], rng: np.random.Generator) -> dict[str, str] | None:
  """``{"input", "target"}`` of one window (None when it is too short to hold noise)."""
  # T5's mask starts with kept words, so a short window's one span would always be its end (a continuation): rolled
  # by a random offset, as T5's ``random_roll``, a span falls anywhere (one may then wrap round the window's ends).
  mask = np.roll(noise_mask(len(units), rng, NOISE_DENSITY, MEAN_SPAN), int(rng.integers(max(1, len(units)))))
  if not mask.any():
    return None
  inp, tgt, span = [], [], -1
  for i, (w, noisy) in enumerate(zip(units, mask, strict=True)):
    if noisy and (i == 0 or not mask[i - 1]):
      span += 1
      inp.append(specials.sentinel_mark(span))
      tgt.append(specials.sentinel_mark(span))
    (tgt if noisy else inp).append(w)
  return {"input": "".join(inp), "target": "".join(tgt)}


def examples(text: str) -> Iterator[dict[str, str]]:
  """Every example of one document, in order."""
  for units in windows(text):
    seed = int.from_bytes(hashlib.sha256("".join(units).encode("utf-8")).digest()[:8], "little")
    ex = corrupt_words(units, np.random.default_rng(seed))
    if ex is not None:
      yield ex


@dataclasses.dataclass(frozen=True)
class _SpansReader:
  inner: object  # the prose corpus

  def __call__(self, split: str, limit: int | None) -> Iterator[dict[str, str]]:
    n = 0
    for i, doc in enumerate(self.inner.documents(split)):
      source = source_key(self.inner.spec, doc["text"], i)
      for ex in examples(doc["text"]):
        if limit is not None and n >= limit:
          return
        n += 1
        yield ex | {SOURCE_LABEL: source}


def span_corpus(spec: str, inner):
  """The seq2seq corpus of ``inner``'s (a prose corpus') span-corrupted windows."""
  if inner.fields != ("text",) or inner.marked:
    raise UserError(
      f"{spec!r}: spans: corrupts the text of a prose corpus (one field 'text'), and {inner.spec!r} has fields "
      f"{', '.join(inner.fields)}; use e.g. spans:python_docs"
    )
  params = {"window_bytes": WINDOW_BYTES, "noise_density": NOISE_DENSITY, "mean_span": MEAN_SPAN, "format": FORMAT}
  return dataclasses.replace(
    inner,
    spec=spec,
    name=f"spans-{inner.name}",
    fields=("input", "target"),
    label_fields=(SOURCE_LABEL,),
    fingerprint=digest({"spans": params, "inner": inner.fingerprint}),
    info={"spans_of": inner.spec, **params, "inner": inner.info},
    reader=_SpansReader(inner),
    marked=True,
  )
