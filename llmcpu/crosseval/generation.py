"""Prompts from held-out documents, compiled by the evaluation ISA, and what a CPU generates from them.

Prompts come from held-out documents *as compiled by the evaluation ISA* (no re-tokenization): a prose prompt is the
shortest token prefix of a document covering ``prompt_bytes`` bytes (so every ISA gets the same text), a program
prompt is the program's input. Documents are picked evenly across the split (corpus order, the same for every ISA),
so prompts do not all come from one part of the corpus. The CPU's output is read with its *own* compiler (what the
CPU means) and, for the record, with the evaluation compiler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from llmcpu import models, specials
from llmcpu.compilers import Compiler
from llmcpu.data.compiled import CompiledSplit


@dataclasses.dataclass
class Prompts:
  """Held-out prompts compiled by one ISA: ids (ragged), their raw text, the true continuation/answer."""

  docs: list[int]
  ids: list[np.ndarray]
  texts: list[str]
  references: list[str]
  tasks: list[str | None]
  kind: str  # 'prose' | 'programs'

  def shuffled(self, seed: int) -> Prompts:
    """The same prompts with each one's ids in a random order (its own opcodes, the program scrambled)."""
    rng = np.random.default_rng([seed, 7])
    return dataclasses.replace(self, ids=[rng.permutation(np.asarray(ids)) for ids in self.ids])


def token_prefix(compiler: Compiler, ids: np.ndarray, raw: str, min_bytes: int, max_tokens: int) -> int:
  """The fewest leading ids whose decoding covers ≥ ``min_bytes`` bytes and is a prefix of ``raw`` (≤ max_tokens)."""

  def nbytes(k: int) -> int:
    return len(compiler.decode(ids[:k]).encode("utf-8"))

  lo, hi = 0, min(len(ids), max_tokens)
  while lo < hi:  # decoded length grows with k (a cut multi-byte character may wobble it by a byte)
    mid = (lo + hi) // 2
    if nbytes(mid) >= min_bytes:
      hi = mid
    else:
      lo = mid + 1
  k = lo
  # A prefix that cuts a multi-byte character decodes to U+FFFD: extend to finish it, else back off.
  for cand in [*range(k, min(k + 4, len(ids), max_tokens) + 1), *range(k - 1, 0, -1)]:
    if raw.startswith(compiler.decode(ids[:cand])):
      return cand
  return 0


def select_docs(raw_lengths: Sequence[int], n: int, min_bytes: int) -> list[int]:
  """``n`` documents with at least ``min_bytes`` bytes, evenly spaced over the split in corpus order."""
  eligible = [i for i, b in enumerate(raw_lengths) if b >= min_bytes]
  if len(eligible) <= n:
    return eligible
  picks = np.unique(np.round(np.linspace(0, len(eligible) - 1, n)).astype(int))
  return [eligible[k] for k in picks]


def text_prefix(text: str, min_bytes: int) -> str:
  """The shortest prefix of ``text`` (whole characters) with at least ``min_bytes`` UTF-8 bytes."""
  size = 0
  for k, ch in enumerate(text):
    if size >= min_bytes:
      return text[:k]
    size += len(ch.encode("utf-8"))
  return text


def prose_prompts(
  split: CompiledSplit, compiler: Compiler, raw: Sequence[str], docs: Sequence[int], prompt_bytes: int, width: int
) -> Prompts:
  field = split.fields["text"]
  ids, texts, refs = [], [], []
  for d in docs:
    doc_ids = np.asarray(field.doc(d))
    k = token_prefix(compiler, doc_ids, raw[d], prompt_bytes, width)
    prefix = compiler.decode(doc_ids[:k])
    ids.append(doc_ids[:k])
    texts.append(prefix)
    refs.append(raw[d][len(prefix) :])
  return Prompts(list(docs), ids, texts, refs, [None] * len(docs), "prose")


def program_prompts(split: CompiledSplit, raw_inputs: Sequence[str], raw_targets: Sequence[str], docs) -> Prompts:
  tasks = split.labels.get("task") or [None] * split.num_docs
  field = split.fields["input"]
  return Prompts(
    list(docs),
    [np.asarray(field.doc(d)) for d in docs],
    [raw_inputs[d] for d in docs],
    [raw_targets[d] for d in docs],
    [tasks[d] for d in docs],
    "programs",
  )


def prompt_batch(
  prompts: Prompts, arch: str, width: int, fill_span: bool = False
) -> tuple[np.ndarray, np.ndarray, int]:
  """(ids [B, W] right-padded, lengths [B], prompts truncated) in the layout ``models.generate`` expects.

  Decoder: ``[BOS] + ids``. Encoder-decoder: ``ids + [EOS]`` (the source of seq2seq and prefix_lm), or with
  ``fill_span`` (a span-corruption CPU) ``ids + [<extra_id_0>, EOS]``: T5 fills in the span after the prompt. ``W``
  is fixed per model so that one XLA compile serves every ISA.
  """
  if arch == "decoder":
    head, tail = [specials.BOS_ID], []
  elif fill_span:
    head, tail = [], [specials.sentinel_id(0), specials.EOS_ID]
  else:
    head, tail = [], [specials.EOS_ID]
  room = width - len(head) - len(tail)
  out = np.full((len(prompts.ids), width), specials.PAD_ID, np.int32)
  lengths = np.zeros(len(prompts.ids), np.int32)
  truncated = 0
  for i, ids in enumerate(prompts.ids):
    truncated += int(len(ids) > room)
    row = [*head, *np.asarray(ids[:room]).tolist(), *tail]
    out[i, : len(row)] = row
    lengths[i] = len(row)
  return out, lengths, truncated


def output_ids(row: np.ndarray, fill_span: bool = False) -> list[int]:
  """The generated ids that carry text: up to EOS; with ``fill_span``, the first sentinel's span."""
  ids = []
  seen_sentinel = False
  for t in np.asarray(row).tolist():
    if t in (specials.EOS_ID, specials.PAD_ID):
      break
    is_sentinel = specials.FIRST_SENTINEL_ID <= t < specials.FIRST_REGULAR_ID
    if fill_span and is_sentinel:
      if seen_sentinel or ids:  # the next span begins: the filled-in span is complete
        break
      seen_sentinel = True
      continue
    ids.append(t)
  return ids


def generate_texts(
  model,
  prompts: Prompts,
  arch: str,
  width: int,
  new_tokens: int,
  own: Compiler,
  foreign: Compiler,
  fill_span: bool = False,
  **decoding,
) -> tuple[list[str], list[str], int]:
  """(texts read by the CPU's compiler, texts read by the evaluation compiler, prompts truncated)."""
  batch, lengths, truncated = prompt_batch(prompts, arch, width, fill_span)
  out = np.asarray(models.generate(model, batch, new_tokens, prompt_lengths=lengths, **decoding))
  own_texts, foreign_texts = [], []
  for row in out:
    ids = output_ids(row, fill_span)
    own_texts.append(own.decode(ids))
    foreign_texts.append(foreign.decode_foreign(ids)[0])
  return own_texts, foreign_texts, truncated
