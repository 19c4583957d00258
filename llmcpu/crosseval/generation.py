"""Prompts from held-out documents, compiled by the evaluation ISA, and what a CPU generates from them.

A prose prompt is the same bytes for every evaluation ISA of a matrix: each document is cut at one byte offset
(``shared_cuts``), the first at or past ``prompt_bytes`` that is just before a space starting a word *and* a token
boundary of every evaluation compiler, checked on each compiler's own compile of the document (SentencePiece never
joins a space to the word before it, but that is verified, not assumed). The prompt text is then compiled by each
evaluation ISA, which, at a shared boundary, gives exactly the ids the compiled split holds. A program prompt is the
program's input. Documents are picked evenly across the split (corpus order, the same for every ISA), so prompts do
not all come from one part of the corpus. The CPU's output is read with its *own* compiler (what the CPU means) and,
for the record, with the evaluation compiler; prose outputs are judged on their first ``new_bytes`` bytes
(``coherence.cut_bytes``), the true continuation on the same number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from llmcpu import models, specials
from llmcpu.compilers import Compiler
from llmcpu.data import objectives
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


CUT_SLACK = 24  # a prompt ends at most this many bytes past prompt_bytes (documents without such a cut are skipped)


def word_starts(raw: bytes) -> np.ndarray:
  """Byte offsets ``p`` of a space that starts a word: ``raw[p]`` is ' ', the byte before is not whitespace and the
  byte after begins a word character (ASCII letter, digit, ``_``, or a multi-byte character)."""
  b = np.frombuffer(raw, np.uint8)
  if len(b) < 3:
    return np.zeros(0, np.int64)
  prev, here, nxt = b[:-2], b[1:-1], b[2:]
  alnum = (
    ((nxt >= ord("a")) & (nxt <= ord("z")))
    | ((nxt >= ord("A")) & (nxt <= ord("Z")))
    | ((nxt >= ord("0")) & (nxt <= ord("9")))
    | (nxt == ord("_"))
    | (nxt >= 0xC0)
  )
  white = np.isin(prev, np.frombuffer(b" \t\n\r\x0b\x0c", np.uint8))
  return np.flatnonzero((here == ord(" ")) & ~white & alnum) + 1


def token_ends(compiler: Compiler, ids: np.ndarray) -> np.ndarray:
  """Byte offsets (in the decoded text) at which each token of ``ids`` ends."""
  return np.cumsum(compiler.piece_bytes[np.asarray(ids, np.int64)])


def shared_word_starts(
  raw: bytes, compiled: Sequence[tuple[Compiler, CompiledSplit]], doc: int, lo: int, hi: int
) -> np.ndarray:
  """Offsets in [lo, hi] of document ``doc`` (its text ``raw``) just before a space starting a word that are a token
  boundary in every ``(compiler, its compiled split)``, ascending: where every ISA may cut or splice it."""
  cand = word_starts(raw)
  cand = cand[(cand >= lo) & (cand <= hi)]
  for comp, split in compiled:
    if not len(cand):
      break
    cand = np.intersect1d(cand, token_ends(comp, split.fields["text"].doc(doc)))
  return cand


def shared_cuts(
  raw: Sequence[str], compiled: Sequence[tuple[Compiler, CompiledSplit]], prompt_bytes: int, after_bytes: int
) -> dict[int, int]:
  """Per document (index → byte offset): the first offset in [prompt_bytes, prompt_bytes + CUT_SLACK] just before a
  space starting a word that is a token boundary in every ``(compiler, its compiled split)`` and leaves at least
  ``after_bytes`` bytes after it. Documents without one are left out."""
  cuts = {}
  for d, text in enumerate(raw):
    b = text.encode("utf-8")
    cand = shared_word_starts(b, compiled, d, prompt_bytes, min(prompt_bytes + CUT_SLACK, len(b) - after_bytes))
    if len(cand):
      cuts[d] = int(cand[0])
  return cuts


def pick_cuts(cuts: dict[int, int], n: int) -> list[int]:
  """``n`` of the documents that have a cut, evenly spaced over the split in corpus order."""
  eligible = sorted(cuts)
  if len(eligible) <= n:
    return eligible
  return [eligible[k] for k in np.unique(np.round(np.linspace(0, len(eligible) - 1, n)).astype(int))]


def prose_texts(raw: Sequence[str], cuts: dict[int, int], docs: Sequence[int]) -> tuple[list[str], list[str]]:
  """(prompt texts, true continuations) of ``docs``, each document split at its byte offset."""
  heads = [raw[d].encode("utf-8")[: cuts[d]].decode("utf-8") for d in docs]
  return heads, [raw[d][len(h) :] for d, h in zip(docs, heads, strict=True)]


def prose_prompts(compiler: Compiler, raw: Sequence[str], cuts: dict[int, int], docs: Sequence[int]) -> Prompts:
  """The prompts of ``docs`` (cut at their shared offsets) compiled by ``compiler``."""
  texts, refs = prose_texts(raw, cuts, docs)
  ids = [np.asarray(x, np.int32) for x in compiler.encode_batch(texts)]
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
  prompts: Prompts, arch: str, width: int, fill_span: bool = False, roles: specials.Roles = specials.OWN
) -> tuple[np.ndarray, np.ndarray, int]:
  """(ids [B, W] right-padded, lengths [B], prompts truncated) in the layout ``models.generate`` expects.

  Decoder: ``[BOS] + ids``. Encoder-decoder: ``ids + [EOS]`` (the source of seq2seq and prefix_lm), or with
  ``fill_span`` (a span-corruption CPU) ``ids + [<extra_id_0>, EOS]``: T5 fills in the span after the prompt. ``W``
  is fixed per model so that one XLA compile serves every ISA. ``roles``: where the model's ISA keeps BOS/EOS/PAD.
  """
  if arch == "decoder":
    head, tail = [roles.bos], []
  elif fill_span:
    head, tail = [], [specials.sentinel_id(0), roles.eos]
  else:
    head, tail = [], [roles.eos]
  room = width - len(head) - len(tail)
  out = np.full((len(prompts.ids), width), roles.pad, np.int32)
  lengths = np.zeros(len(prompts.ids), np.int32)
  truncated = 0
  for i, ids in enumerate(prompts.ids):
    truncated += int(len(ids) > room)
    row = [*head, *np.asarray(ids[:room]).tolist(), *tail]
    out[i, : len(row)] = row
    lengths[i] = len(row)
  return out, lengths, truncated


def decoder_tails(source_BxS: np.ndarray, lengths_B: np.ndarray, piece_bytes: np.ndarray, context: int) -> list:
  """The decoder context of each source row (its first ``lengths_B`` ids, EOS excluded): its last ids of at most
  ``context`` bytes of the ISA they are written in (``objectives.tail_ids``, prefix LM's rule)."""
  return [objectives.tail_ids(row[:n], piece_bytes, context) for row, n in zip(source_BxS, lengths_B, strict=True)]


def output_ids(row: np.ndarray, fill_span: bool = False, roles: specials.Roles = specials.OWN) -> list[int]:
  """The generated ids that carry text: up to EOS; with ``fill_span``, the first sentinel's span. ``roles``: the
  model's ISA's (an external ISA's PAD may be an ordinary piece elsewhere: only its EOS ends the text)."""
  ids = []
  seen_sentinel = False
  for t in np.asarray(row).tolist():
    if t == roles.eos or (roles.own and t == specials.PAD_ID):
      break
    is_sentinel = roles.own and specials.FIRST_SENTINEL_ID <= t < specials.FIRST_REGULAR_ID
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
  """(texts read by the CPU's compiler, texts read by the evaluation compiler, prompts truncated); prose outputs are
  cut by the caller. An encoder-decoder with a decoder context (``ModelConfig.decoder_context``) continuing prose
  reads the prompt's last ids in its decoder too, as prefix LM trained it (``decoder_tails``)."""
  batch, lengths, truncated = prompt_batch(prompts, arch, width, fill_span, own.roles)
  decoding = {"eos_id": own.roles.eos, "bos_id": own.roles.bos, **decoding}
  context = model.config.decoder_context if arch == "encoder_decoder" and not fill_span else 0
  if context and prompts.kind == "prose":
    decoding["decoder_prompt"] = decoder_tails(batch, lengths - 1, foreign.piece_bytes, context)
  out = np.asarray(models.generate(model, batch, new_tokens, prompt_lengths=lengths, **decoding))
  own_texts, foreign_texts = [], []
  for row in out:
    ids = output_ids(row, fill_span, own.roles)
    own_texts.append(own.decode(ids))
    foreign_texts.append(foreign.decode_foreign(ids)[0])
  return own_texts, foreign_texts, truncated
