"""Training objectives: how rows of a batch are built from compiled documents.

Each objective maps an epoch's document order and row indices to the arrays of those rows, with no state
between calls, so any row of any epoch can be built directly (the pipeline's random access by step).
Randomness inside a row (noise spans, MLM's random ids) comes from a generator seeded by (seed, global row), so a row
is the same bits whichever process builds it and whenever. What MLM masks is chosen per document over words
(``llmcpu.data.units``) from (seed, epoch, document), and prefix LM cuts at words: so every ISA scores the same bytes.

Packed objectives (``lm``, ``lm_targets``, ``mlm``) concatenate documents ``[BOS] + ids + [EOS]`` and cut the
stream into windows; segment ids mark the documents inside a row (1-based, 0 = pad) so attention never crosses
a boundary. Encoder-decoder objectives (``seq2seq``, ``span_corruption``, ``prefix_lm``) hold one example per row;
seq2seq (``pack_tokens``) and prefix LM (``pack_windows``, ``pairs_per_row``) can pack several, each pair its own
segment on both sides.

Every objective marks its *content* targets: scored (weighted) positions whose target is one of a document's own
ids (regular ids and UNK), never EOS, PAD, BOS, MASK or a sentinel. ``target_bytes`` is the target's piece bytes
(``CompiledSplit.piece_bytes``: the UTF-8 bytes that id decodes to) on content targets and 0 elsewhere, so the bits
per byte of any window, row or batch are exact: Σ NLL over content targets / (ln 2 · Σ target_bytes).
``target_docs`` is the index in the split of the document a content target belongs to, −1 elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmcpu.data import units
from llmcpu.data.compiled import CompiledField, CompiledSplit
from llmcpu.errors import UserError
from llmcpu.specials import (
  BOS_ID,
  EOS_ID,
  FIRST_REGULAR_ID,
  FIRST_SENTINEL_ID,
  NUM_SENTINELS,
  PAD_ID,
)

_ROW_TAG = 1  # seeds of in-row randomness: (seed, _ROW_TAG, global row); epoch orders use tag 0.
_UNIT_TAG = 2  # seeds of a document's chosen words: (seed, _UNIT_TAG, epoch, document), never the ISA
_PACK_TAG = 3  # seeds of which seq2seq pairs share a row: (seed, _PACK_TAG)

Batch = dict[str, np.ndarray]

# ---------------------------------------------------------------------------------------------------------------
# Which objective: every name, what each needs, the default per architecture, the shape of a row. The one place
# the trainer, the pipeline and cross-evaluation learn it from.
# ---------------------------------------------------------------------------------------------------------------

NAMES = ("lm", "lm_targets", "mlm", "seq2seq", "span_corruption", "prefix_lm", "reconstruct")
# encoder input + decoder target: encoder-decoders only. reconstruct: seq2seq whose target is the input itself (an
# embedding readout learns to write back the program it was shown; see data.compiled.reconstruction)
SEQ2SEQ = ("seq2seq", "span_corruption", "prefix_lm", "reconstruct")
TEXT_ONLY = ("span_corruption", "prefix_lm")  # need prose (field ``text``)
PAIRS_ONLY = ("lm_targets", "seq2seq", "reconstruct")  # need input/target programs
# Encoder-decoders continue prose (prefix_lm), so that their generations can be judged like a decoder's;
# span_corruption (T5's default) is one --config.data.objective away.
DEFAULT = {"decoder": "lm", "encoder": "mlm", "encoder_decoder": "prefix_lm"}


def objective_for(config: Any, split_kind: str) -> str:
  """The objective of a training config (``data.objective``), or its architecture's default for this kind of data
  (``text`` or ``seq2seq``)."""
  arch = config.model.arch
  if config.data.objective:
    return config.data.objective
  if split_kind == "seq2seq":
    return "seq2seq" if arch == "encoder_decoder" else ("lm_targets" if arch == "decoder" else "mlm")
  return DEFAULT[arch]


def pairs_per_row(data: Any, objective: str) -> int:
  """(prefix, continuation) pairs packed per training row: ``data.pairs_per_row`` for prefix LM (1 in configs
  written before it existed), else 1."""
  return int(data.get("pairs_per_row", 1)) if objective == "prefix_lm" else 1


def seq2seq_training(data: Any, length: int) -> dict:
  """Seq2seq's training options from a data config: ``pack_pairs`` packs whole pairs up to ``length`` ids a row (a
  decoder row's budget); configs written before it existed trained one pair per row."""
  return {"pack_tokens": length if data.get("pack_pairs", False) else 0}


def prefix_lm_training(data: Any) -> dict:
  """PrefixLM's training options from a data config (their old-design defaults where a config predates them)."""
  return {
    "pairs_per_row": int(data.get("pairs_per_row", 1)),
    "head_weight": float(data.get("head_weight", 1.0)),
    "head_bytes": int(data.get("head_bytes", 8)),
    "curriculum_steps": int(data.get("curriculum_steps", 0)),
    "curriculum_bytes": int(data.get("curriculum_bytes", 8)),
    "tail_weight": float(data.get("tail_weight", 0.0)),
    "tail_dropout": float(data.get("tail_dropout", 0.0)),
    "pack_windows": bool(data.get("pack_windows", False)),
  }


def training_options(data: Any, objective: str, pooled: bool = False) -> dict:
  """The options a *training* pipeline of ``objective`` takes from a data config, as a config written before them
  meant them (evaluation takes none). ``pooled``: a pooled readout (``model.pool``) embeds a row's whole source as
  one vector, so its seq2seq rows stay one pair each."""
  if objective == "prefix_lm":
    return prefix_lm_training(data)
  if objective in ("seq2seq", "reconstruct") and not pooled:
    return seq2seq_training(data, data["length"])
  return {}


def decoder_width(data: Any, objective: str, decoder_context: int = 0) -> int:
  """Width of one pair's decoder side: the target, and for prefix LM the decoder context in front of it (its tail
  ids are at most one per byte)."""
  return data.target_length + (decoder_context if objective == "prefix_lm" else 0)


def tokens_per_row(config: Any, objective: str) -> int:
  """Ids in one training row: encoder input + decoder side (× packed pairs) for seq2seq objectives, else one
  window."""
  if objective in SEQ2SEQ:
    dec = decoder_width(config.data, objective, int(config.model.get("decoder_context", 0)))
    return (config.data.input_length + dec) * pairs_per_row(config.data, objective)
  return config.data.length


def context_options(objective: str, decoder_context: int) -> dict:
  """The objective options a model's design fixes (training and evaluation alike): prefix LM's decoder context."""
  return {"context_bytes": int(decoder_context)} if objective == "prefix_lm" and decoder_context else {}


def tail_length(nbytes_L: np.ndarray, max_bytes: int) -> int:
  """How many of a prompt's last ids (of ``nbytes_L`` bytes each) fit in ``max_bytes``: the decoder context of an
  encoder-decoder (``ModelConfig.decoder_context``). A 0-byte id (UNK) counts 1, so the ids always fit as many slots."""
  per_id = np.maximum(np.asarray(nbytes_L, np.int64), 1)[::-1]
  return int(np.searchsorted(np.cumsum(per_id), max_bytes, side="right"))


def tail_ids(ids_L: np.ndarray, piece_bytes: np.ndarray, max_bytes: int) -> np.ndarray:
  """A prompt's last ids that fit in ``max_bytes`` of ``piece_bytes`` (``tail_length``): what the decoder reads."""
  ids_L = np.asarray(ids_L, np.int64)
  return ids_L[len(ids_L) - tail_length(piece_bytes[ids_L], max_bytes) :]


def piece_bytes_of(split: CompiledSplit) -> np.ndarray:
  """The split's bytes per id (float64 [vocab_size]); a split without them is one UserError saying how to fix it."""
  pb = split.piece_bytes
  if pb is None:
    raise UserError(
      "the compiled split has no piece_bytes (UTF-8 bytes per id, needed for bits per byte); load it with "
      "llmcpu.toolchain.load_split(…, compiler, …) or set CompiledSplit.piece_bytes=compiler.piece_bytes"
    )
  pb = np.asarray(pb)
  if pb.shape != (split.vocab_size,) or (len(pb) and pb.min() < 0):
    raise UserError(
      f"the split's piece_bytes (shape {pb.shape}) are not non-negative counts for its {split.vocab_size} ids; "
      "take them from the compiler that built the split (Compiler.piece_bytes)"
    )
  return pb.astype(np.float64)


def content_bytes(piece_bytes: np.ndarray, targets: np.ndarray, content: np.ndarray) -> np.ndarray:
  """``target_bytes``: each content target's piece bytes, 0 elsewhere (float32)."""
  return np.where(content, piece_bytes[targets], 0.0).astype(np.float32)


def content_docs(doc: np.ndarray, content: np.ndarray) -> np.ndarray:
  """``target_docs``: the split index of each content target's document, −1 elsewhere (int32)."""
  return np.where(content, doc, -1).astype(np.int32)


def _extra_bytes(split: CompiledSplit, fields: Sequence[str], piece_bytes: np.ndarray) -> np.ndarray:
  """float64 [F, N]: the piece bytes of each field's ids less its raw bytes. 0 for a lossless file; 1 where a file
  adds a dummy prefix space that its decoder strips again (SentencePiece's ``add_dummy_prefix``); negative where a
  normaliser drops bytes. Taking it off the field's first piece makes ``target_bytes`` count the raw bytes."""
  out = np.zeros((len(fields), split.num_docs))
  for i, name in enumerate(fields):
    f = split.fields[name]
    sums = np.zeros(len(f.tokens) + 1)
    np.cumsum(piece_bytes[f.tokens], out=sums[1:])
    out[i] = sums[f.offsets[1:]] - sums[f.offsets[:-1]] - f.nbytes
  return out


def row_rng(seed: int, global_row: int) -> np.random.Generator:
  return np.random.default_rng([seed, _ROW_TAG, int(global_row)])


def _gather(field: CompiledField, start_R: np.ndarray, length_R: np.ndarray, width: int) -> np.ndarray:
  """Rows ``tokens[start : start + length]`` left-aligned in ``[R, width]``, PAD after."""
  col = np.arange(width)
  real_RxW = col[None, :] < length_R[:, None]
  if len(field.tokens) == 0:
    return np.zeros(real_RxW.shape, np.int32)
  idx_RxW = np.where(real_RxW, start_R[:, None] + col[None, :], 0)
  return np.where(real_RxW, field.tokens[idx_RxW], PAD_ID).astype(np.int32)


class Objective:
  """Base: ``rows(state, r, g)`` builds rows ``r`` of the epoch whose ``epoch_state(order)`` is ``state``."""

  rows_per_epoch: int
  num_docs: int

  def epoch_state(self, order_N: np.ndarray) -> Any:
    return order_N

  def rows(self, state: Any, r_R: np.ndarray, g_R: np.ndarray) -> Batch:
    raise NotImplementedError

  def stats(self) -> dict:
    return {}


class Packed(Objective):
  """Documents ``[BOS] + fields… + [EOS]`` concatenated in epoch order; row r covers ``[r*L, r*L + L + shift)``."""

  def __init__(self, split: CompiledSplit, fields: Sequence[str], length: int, shift: int):
    if length < 1:
      raise UserError(f"lm, lm_targets and mlm need length >= 1 (got {length})")
    self.roles = split.roles  # where this ISA keeps PAD, BOS and EOS
    self.fields = [split.fields[f] for f in fields]
    self.length, self.shift = length, shift
    self.num_docs = split.num_docs
    self.piece_bytes = piece_bytes_of(split)
    self.extra_FxN = None if self.roles.own else _extra_bytes(split, fields, self.piece_bytes)
    self.field_ends_FxN = np.cumsum([f.lengths for f in self.fields], axis=0)  # ends within a doc, after BOS
    self.doc_lengths = self.field_ends_FxN[-1] + 2
    self.stream_length = int(self.doc_lengths.sum())
    self.rows_per_epoch = max(0, -(-(self.stream_length - shift) // length))

  def epoch_state(self, order_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = np.zeros(self.num_docs + 1, np.int64)
    np.cumsum(self.doc_lengths[order_N], out=starts[1:])
    return order_N, starts

  def window(self, state: tuple[np.ndarray, np.ndarray], r_R: np.ndarray) -> dict[str, np.ndarray]:
    """The stream under rows ``r``: token, slot in the epoch order, doc, offset in the doc, field (-1 BOS, F EOS)."""
    order, starts = state
    p_RxW = r_R[:, None] * self.length + np.arange(self.length + self.shift)[None, :]
    valid = p_RxW < self.stream_length
    slot = np.minimum(np.searchsorted(starts, p_RxW, side="right") - 1, self.num_docs - 1)
    doc = order[slot]
    offset = p_RxW - starts[slot]
    tok = np.full(p_RxW.shape, self.roles.pad, np.int32)
    field_of = np.full(p_RxW.shape, -1, np.int32)
    first = np.zeros(p_RxW.shape, bool)  # the first id of a field's encoding
    pos, prev_end = offset - 1, 0
    for i, field in enumerate(self.fields):
      end = self.field_ends_FxN[i][doc]
      inside = (pos >= prev_end) & (pos < end)
      if len(field.tokens):
        src = np.where(inside, field.offsets[doc] + pos - prev_end, 0)
        tok = np.where(inside, field.tokens[src], tok)
      field_of[inside] = i
      first |= inside & (pos == prev_end)
      prev_end = end
    is_eos = offset == self.doc_lengths[doc] - 1
    tok[offset == 0] = self.roles.bos
    tok[is_eos] = self.roles.eos
    field_of[is_eos] = len(self.fields)
    tok[~valid] = self.roles.pad
    row_start = np.maximum(starts[slot], r_R[:, None] * self.length)
    names = ("p", "valid", "slot", "doc", "offset", "tok", "field_of", "row_start", "first")
    return dict(zip(names, (p_RxW, valid, slot, doc, offset, tok, field_of, row_start, first), strict=True))

  def target_bytes(self, w: dict[str, np.ndarray], targets: np.ndarray, content: np.ndarray) -> np.ndarray:
    """``content_bytes``; for an ISA from a tokenizer file, less what a field's pieces count beyond its raw bytes
    (``_extra_bytes``: a dummy prefix space its decoder strips), taken off the field's first piece."""
    out = content_bytes(self.piece_bytes, targets, content)
    if self.extra_FxN is None:
      return out
    tgt = slice(1, None)
    first, field, doc = w["first"][:, tgt] & content, w["field_of"][:, tgt], w["doc"][:, tgt]
    extra = np.where(first, self.extra_FxN[np.clip(field, 0, len(self.fields) - 1), doc], 0.0)
    return np.clip(out - extra, 0.0, None).astype(np.float32)

  @staticmethod
  def segments(w: dict[str, np.ndarray], cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """1-based segment ids within each row and positions restarting at every segment (0 on pad)."""
    slot, valid = w["slot"][:, cols], w["valid"][:, cols]
    seg = np.where(valid, slot - slot[:, :1] + 1, 0).astype(np.int32)
    pos = np.where(valid, w["p"][:, cols] - w["row_start"][:, cols], 0).astype(np.int32)
    return seg, pos

  def stats(self) -> dict:
    real = self.stream_length - self.shift
    return {"fill": real / max(1, self.rows_per_epoch * self.length)}


class CausalLM(Packed):
  """``lm``: next-token prediction; a target counts only inside its input's document (BOS is never a target).

  Every id of a document and its EOS are weighted; with ``weight_fields`` set (``lm_targets``) only those fields'
  ids and EOS. Content targets are the weighted ids (not EOS), so over an epoch ``target_bytes`` sums to the raw
  bytes of the weighted fields.
  """

  def __init__(self, split: CompiledSplit, fields: Sequence[str], length: int, weight_fields: Sequence[str] = ()):
    super().__init__(split, fields, length, shift=1)
    self.content_fields = [fields.index(f) for f in weight_fields] if weight_fields else list(range(len(fields)))

  def rows(self, state: Any, r_R: np.ndarray, g_R: np.ndarray) -> Batch:
    w = self.window(state, r_R)
    inp, tgt = slice(None, -1), slice(1, None)
    same_doc = (w["slot"][:, inp] == w["slot"][:, tgt]) & w["valid"][:, tgt]
    field_of = w["field_of"][:, tgt]
    content = same_doc & np.isin(field_of, self.content_fields)
    weights = content | (same_doc & (field_of == len(self.fields)))  # + EOS
    targets = w["tok"][:, tgt]
    seg, pos = self.segments(w, inp)
    return {
      "inputs": w["tok"][:, inp],
      "targets": targets,
      "weights": weights.astype(np.float32),
      "segment_ids": seg,
      "positions": pos,
      "target_bytes": self.target_bytes(w, targets, content),
      "target_docs": content_docs(w["doc"][:, tgt], content),
      # What the loss counts for bits per byte: content ids that are text in this ISA (not span sentinels).
      "content": (content & self.roles.is_content(targets)).astype(np.float32),
    }


class MaskedLM(Packed):
  """``mlm``: BERT masking over words: ``mask_rate`` of each document's units (``llmcpu.data.units``: a word with
  the spaces before it) are chosen, and every token of a chosen unit is a target; each chosen unit is replaced
  whole — 80% MASK, 10% random ids, 10% kept.

  The choice is a function of (seed, epoch, document index) and the document's units only, never of the ISA or the
  row: every ISA of a corpus masks exactly the same bytes of each document and hides the same words, so the columns
  of an encoder's row score the same bytes (a fresh choice each epoch when training, as RoBERTa's dynamic masking).
  Exactly ``max(1, round(mask_rate · units))`` units per document are chosen. The context a masked word is read in
  is its row: ``length`` tokens, which covers more bytes in a coarser ISA (cross-evaluation reports it as
  ``byte_context``). ``target_bytes`` holds each target's own piece bytes, so Σ NLL / (ln 2 · Σ target_bytes) is the
  exact bits per byte of the chosen words.
  """

  def __init__(
    self,
    split: CompiledSplit,
    fields: Sequence[str],
    length: int,
    seed: int,
    mask_rate: float = 0.15,
    mask_token_rate: float = 0.8,
    random_token_rate: float = 0.1,
  ):
    super().__init__(split, fields, length, shift=0)
    if not (0 < mask_rate <= 1 and mask_token_rate >= 0 and random_token_rate >= 0):
      raise UserError(f"mlm needs 0 < mask_rate <= 1 and non-negative token rates (got {mask_rate})")
    if mask_token_rate + random_token_rate > 1:
      raise UserError("mlm: mask_token_rate + random_token_rate must be at most 1")
    self.seed, self.vocab_size = seed, split.vocab_size
    # Random replacements are drawn from the ISA's text ids: the own layout's regular ids (FIRST_REGULAR_ID on), a
    # file's ids that are neither a control token nor UNK.
    if self.roles.own:
      self.random_pool = np.arange(FIRST_REGULAR_ID, max(self.vocab_size, FIRST_REGULAR_ID + 1), dtype=np.int32)
    else:
      text_ids = np.flatnonzero(self.roles.is_content(np.arange(self.vocab_size)))
      self.random_pool = text_ids[text_ids != self.roles.unk].astype(np.int32)
    if random_token_rate > 0 and (self.vocab_size <= FIRST_REGULAR_ID if self.roles.own else not len(self.random_pool)):
      raise UserError(f"mlm: vocab_size={self.vocab_size} has no regular ids to draw random tokens from")
    self.rates = (mask_rate, mask_token_rate, random_token_rate)
    # Each field's tokens' unit within their document; a later field's units follow the earlier fields' ones.
    self.unit_F, self.units_N = [], np.zeros(self.num_docs, np.int64)
    for f in self.fields:
      index, per_doc = units.unit_index(units.unit_starts(f.tokens, f.offsets, split.piece_spaces), f.offsets)
      self.unit_F.append(index + np.repeat(self.units_N, f.lengths))
      self.units_N = self.units_N + per_doc

  def chosen_units(self, epoch: int, doc: int) -> tuple[np.ndarray, np.ndarray]:
    """(bool [units] chosen, float [units] the draw deciding MASK / random / kept) of one document."""
    rng = np.random.default_rng([self.seed, _UNIT_TAG, epoch, doc])
    n = int(self.units_N[doc])
    keys, action = rng.random(n), rng.random(n)
    chosen = np.zeros(n, bool)
    chosen[np.argsort(keys, kind="stable")[: max(1, int(np.rint(self.rates[0] * n))) if n else 0]] = True
    return chosen, action

  def units_under(self, w: dict[str, np.ndarray]) -> np.ndarray:
    """int64 [R, L]: the unit within its document of each document token of the window, −1 elsewhere."""
    doc, pos = w["doc"], w["offset"] - 1
    unit = np.full(doc.shape, -1, np.int64)
    prev_end = 0
    for i, field in enumerate(self.fields):
      end = self.field_ends_FxN[i][doc]
      inside = w["valid"] & (pos >= prev_end) & (pos < end)
      if len(field.tokens):
        unit = np.where(inside, self.unit_F[i][np.where(inside, field.offsets[doc] + pos - prev_end, 0)], unit)
      prev_end = end
    return unit

  def rows(self, state: Any, r_R: np.ndarray, g_R: np.ndarray) -> Batch:
    w = self.window(state, r_R)
    tok, doc = w["tok"], w["doc"]
    _, mask_token_rate, random_token_rate = self.rates
    unit = self.units_under(w)
    epoch = int(g_R[0] // self.rows_per_epoch) if len(g_R) else 0  # one call holds rows of one epoch
    chosen, action = np.zeros(tok.shape, bool), np.zeros(tok.shape)
    for d in np.unique(doc[unit >= 0]):
      picked, draw = self.chosen_units(epoch, int(d))
      at = (doc == d) & (unit >= 0)
      chosen[at], action[at] = picked[unit[at]], draw[unit[at]]
    chosen &= self.roles.is_content(tok)
    masked = chosen & (action < mask_token_rate)
    randomized = chosen & ~masked & (action < mask_token_rate + random_token_rate)
    u_RxL = np.stack([row_rng(self.seed, g).random(self.length) for g in g_R]) if len(g_R) else np.zeros(tok.shape)
    random_ids = self.random_pool[
      np.minimum(np.floor(u_RxL * len(self.random_pool)), len(self.random_pool) - 1).astype(np.int64)
    ]
    inputs = np.where(masked, self.roles.mask_id, np.where(randomized, random_ids, tok)).astype(np.int32)
    seg, pos = self.segments(w, slice(None))
    return {
      "inputs": inputs,
      "targets": tok,
      "weights": chosen.astype(np.float32),
      "segment_ids": seg,
      "positions": pos,
      "target_bytes": content_bytes(self.piece_bytes, tok, chosen),
      "target_docs": content_docs(doc, chosen),
    }


class Seq2Seq(Objective):
  """``seq2seq``: ``input+EOS`` → ``target+EOS``, truncation counted up front; one pair per row, or packed.

  Content targets are the target's own ids (not its EOS, nor the sentinels of a ``spans:`` target); a truncated
  target counts only the bytes of the ids it keeps.

  ``pack_tokens`` = n > 0 packs whole pairs into each row, each its own segment on both sides (cross-attention keeps
  pair i to source i, positions restart in every pair), while the pair's source and target still fit the row's
  ``input_length``/``target_length`` and its ids in all (source + EOS + target + EOS) stay within n: with n =
  ``data.length`` a row holds the programs a decoder's packed row of the same budget holds (issue 23: one program
  per row gave encoder-decoders a fifth of the decoders' programs per step). Which pairs share a row is drawn once
  from ``seed`` (consecutive pairs of a seeded order); each epoch then visits the rows in an order that follows the
  epoch's document order, so rows per epoch are fixed. A pair that fits nothing else gets a row of its own.
  """

  def __init__(
    self,
    split: CompiledSplit,
    input_length: int,
    target_length: int,
    truncate: bool = False,
    pack_tokens: int = 0,
    seed: int = 0,
  ):
    if input_length < 2 or target_length < 2:
      raise UserError(f"seq2seq needs input_length and target_length >= 2 (got {input_length}, {target_length})")
    if pack_tokens < 0:
      raise UserError(f"seq2seq needs pack_tokens >= 0 (got {pack_tokens}); 0 = one pair per row")
    self.input, self.target = split.fields["input"], split.fields["target"]
    self.roles = split.roles  # the ISA's EOS ends both sides, its BOS starts the decoder
    self.input_length, self.target_length = input_length, target_length
    self.num_docs = split.num_docs
    self.piece_bytes = piece_bytes_of(split)
    in_len, tg_len = self.input.lengths, self.target.lengths
    self.truncated = {
      "truncated_inputs": int((in_len + 1 > input_length).sum()),
      "truncated_targets": int((tg_len + 1 > target_length).sum()),
    }
    long = int(((in_len + 1 > input_length) | (tg_len + 1 > target_length)).sum())
    if long and not truncate:
      raise UserError(
        f"{long} of {self.num_docs} examples do not fit input_length={input_length}/target_length={target_length} "
        f"(longest input {in_len.max() + 1}, target {tg_len.max() + 1} tokens with EOS); "
        "raise the lengths (data.input_length/target_length) or allow truncation (data.truncate=True)"
      )
    self.n_in = np.minimum(in_len + 1, input_length)  # ids each pair takes on either side, EOS included
    self.n_tg = np.minimum(tg_len + 1, target_length)
    self.rows_doc = self._pack(pack_tokens, seed) if pack_tokens else None  # [rows, max pairs], -1 = empty slot
    self.rows_per_epoch = self.num_docs if self.rows_doc is None else len(self.rows_doc)
    self._stats = dict(self.truncated, truncated_examples=long)
    self._stats["fill"] = float(self.n_in.sum() / max(1, self.rows_per_epoch * input_length))
    self._stats["pairs_per_row"] = self.num_docs / max(1, self.rows_per_epoch)

  def _pack(self, budget: int, seed: int) -> np.ndarray:
    """Rows of consecutive pairs of a seeded order, each row as long as its pairs fit (see the class docstring)."""
    order = np.random.default_rng([seed, _PACK_TAG]).permutation(self.num_docs)
    need = np.stack([self.n_in, self.n_tg, self.n_in + self.n_tg], axis=1)  # source ids, target ids, ids in all
    return greedy_rows(order, need, (self.input_length, self.target_length, budget))

  def epoch_state(self, order_N: np.ndarray) -> np.ndarray:
    """Unpacked: the document order. Packed: the rows ordered by where their first pair falls in it (a uniform
    document order gives a uniform row order)."""
    return order_N if self.rows_doc is None else rows_in_epoch_order(self.rows_doc, self.rows_doc[:, 0], order_N)

  def pairs(self, doc: np.ndarray) -> Batch:
    """One pair per row: documents ``doc``."""
    rows = np.arange(len(doc))
    n_in, n_tg = self.n_in[doc] - 1, self.n_tg[doc] - 1
    enc = _gather(self.input, self.input.offsets[doc], n_in, self.input_length)
    enc[rows, n_in] = self.roles.eos
    dec_tgt = _gather(self.target, self.target.offsets[doc], n_tg, self.target_length)
    dec_tgt[rows, n_tg] = self.roles.eos
    text = self.roles.is_content(dec_tgt)  # not a spans: target's sentinels
    content = (np.arange(self.target_length)[None, :] < n_tg[:, None]) & text
    batch = encoder_decoder_batch(enc, n_in + 1, dec_tgt, n_tg + 1, bos=self.roles.bos)
    batch["target_bytes"] = content_bytes(self.piece_bytes, dec_tgt, content)
    batch["target_docs"] = content_docs(np.broadcast_to(doc[:, None], content.shape), content)
    return batch

  def rows(self, state: Any, r_R: np.ndarray, g_R: np.ndarray) -> Batch:
    if self.rows_doc is None:
      return self.pairs(state[r_R])
    docs_RxK = state[r_R]
    real = docs_RxK >= 0
    return pack_segments(self.pairs(np.where(real, docs_RxK, 0).reshape(-1)), real)

  def stats(self) -> dict:
    return self._stats


def greedy_rows(order: Sequence[int], need_NxC: np.ndarray, limits: Sequence[int]) -> np.ndarray:
  """Items of ``order`` packed into rows in turn, a row closed when the next item would take any of its summed needs
  (``need_NxC``: one column per constraint, e.g. source and target ids) past ``limits``; an item that fits nothing
  else gets a row of its own. [rows, most items a row], −1 = an empty slot."""
  rows, row, used = [], [], np.zeros(len(limits), np.int64)
  for item in np.asarray(order).tolist():
    if row and np.any(used + need_NxC[item] > np.asarray(limits)):
      rows.append(row)
      row, used = [], np.zeros(len(limits), np.int64)
    row.append(item)
    used += need_NxC[item]
  rows += [row] if row else []  # no items, no rows
  out = np.full((len(rows), max((len(r) for r in rows), default=1)), -1, np.int64)
  for i, r in enumerate(rows):
    out[i, : len(r)] = r
  return out


def rows_in_epoch_order(rows_RxK: np.ndarray, first_doc_R: np.ndarray, order_N: np.ndarray) -> np.ndarray:
  """Packed rows (``greedy_rows``, drawn once) in the order an epoch visits them: by where the document of each row's
  first item (``first_doc_R``) falls in the epoch's document order (a uniform document order gives a uniform row
  order); rows of one document keep their packing order."""
  where = np.empty(len(order_N), np.int64)
  where[order_N] = np.arange(len(order_N))
  return rows_RxK[np.argsort(where[first_doc_R], kind="stable")]


def pack_segments(one: Batch, real_RxK: np.ndarray) -> Batch:
  """Encoder-decoder pairs laid one per row in ``one`` (row r·K + k = slot k of packed row r; ``real_RxK`` says
  which slots hold a pair) packed side by side into R rows of the same widths: each pair's source and decoder ids
  (its nonzero segment ids) follow the previous pair's, in segment k + 1 on both sides, so self- and cross-attention
  keep each pair to itself and positions restart in every pair. The caller made sure the pairs fit."""
  num_rows, k_max = real_RxK.shape
  out = {k: np.zeros((num_rows, v.shape[1]), v.dtype) for k, v in one.items()}
  if "target_docs" in out:
    out["target_docs"][:] = -1
  n_in = (one["encoder_segment_ids"] > 0).sum(axis=1)
  n_tg = (one["decoder_segment_ids"] > 0).sum(axis=1)
  source = [k for k in one if k.startswith("encoder_")]
  target = [k for k in one if k not in source]  # decoder_*, target_bytes, target_docs, content
  at_in, at_tg = np.zeros(num_rows, np.int64), np.zeros(num_rows, np.int64)
  for r, k in zip(*np.nonzero(real_RxK), strict=True):
    src = r * k_max + k  # this pair's row in ``one``
    for keys, n, at in ((source, n_in[src], at_in), (target, n_tg[src], at_tg)):
      for key in keys:
        out[key][r, at[r] : at[r] + n] = one[key][src, :n]
      at[r] += n
    out["encoder_segment_ids"][r, at_in[r] - n_in[src] : at_in[r]] = k + 1
    out["decoder_segment_ids"][r, at_tg[r] - n_tg[src] : at_tg[r]] = k + 1
  return out


def encoder_decoder_batch(
  enc_RxI: np.ndarray, enc_len_R: np.ndarray, tgt_RxT: np.ndarray, tgt_len_R: np.ndarray, bos: int = BOS_ID
) -> Batch:
  """Seq2seq model keys from padded encoder inputs and decoder targets (each ending in EOS); the decoder reads
  ``bos`` (the ISA's BOS) then the targets shifted. The caller adds ``target_bytes`` and ``target_docs``."""
  col_i, col_t = np.arange(enc_RxI.shape[1]), np.arange(tgt_RxT.shape[1])
  enc_seg = (col_i[None, :] < enc_len_R[:, None]).astype(np.int32)
  dec_seg = (col_t[None, :] < tgt_len_R[:, None]).astype(np.int32)
  dec_in = np.concatenate([np.full((len(tgt_RxT), 1), bos, np.int32), tgt_RxT[:, :-1]], axis=1) * dec_seg
  return {
    "encoder_inputs": enc_RxI.astype(np.int32),
    "encoder_segment_ids": enc_seg,
    "encoder_positions": (col_i[None, :] * enc_seg).astype(np.int32),
    "decoder_inputs": dec_in.astype(np.int32),
    "decoder_targets": tgt_RxT.astype(np.int32),
    "decoder_weights": dec_seg.astype(np.float32),
    "decoder_segment_ids": dec_seg,
    "decoder_positions": (col_t[None, :] * dec_seg).astype(np.int32),
  }


def pack_pairs(pairs: Sequence[Batch]) -> Batch:
  """k one-pair batches side by side in one row: pair i's columns get segment id i + 1 (0 stays pad), so
  attention, and cross-attention through ``TransformerStack``'s segment mask, keep each pair to itself; positions
  restart in every pair, as if it ran alone."""
  out = {key: np.concatenate([p[key] for p in pairs], axis=1) for key in pairs[0]}
  for key in ("encoder_segment_ids", "decoder_segment_ids"):
    out[key] = np.concatenate([p[key] * (i + 1) for i, p in enumerate(pairs)], axis=1).astype(np.int32)
  return out


def span_counts(n: int, noise_density: float, mean_span: float) -> tuple[int, int]:
  """T5's noise tokens and noise spans for a window of n tokens (no noise below 2 tokens)."""
  if n < 2:
    return 0, 0
  noise = min(max(round(n * noise_density), 1), n - 1)
  spans = min(max(round(noise / mean_span), 1), noise, n - noise, NUM_SENTINELS)
  return noise, spans


def raw_window(input_length: int, target_length: int, noise_density: float, mean_span: float) -> int:
  """Largest raw window whose corruptions (and those of every shorter window) fit both lengths (T5's
  ``random_spans_helper``: encoder = kept + sentinels + EOS, decoder = noise + sentinels + EOS), with at most
  NUM_SENTINELS spans before clipping so the mean span length holds."""
  # enc(n) ≈ n (1 - density + density / mean_span): scan to twice that bound.
  n = np.arange(1, 2 * int(input_length / (1 - noise_density + noise_density / mean_span)) + 8)
  counts = np.array([span_counts(int(k), noise_density, mean_span) for k in n]).reshape(-1, 2)
  noise, spans = counts[:, 0], counts[:, 1]
  enc, dec = n - noise + spans + 1, noise + spans + 1
  unclipped = np.rint(noise / mean_span)
  ok = (np.maximum.accumulate(enc) <= input_length) & (np.maximum.accumulate(dec) <= target_length)
  ok &= unclipped <= NUM_SENTINELS
  ok = np.logical_and.accumulate(ok)
  return int(n[ok][-1]) if ok.any() else 0


def noise_mask(n: int, rng: np.random.Generator, noise_density: float, mean_span: float) -> np.ndarray:
  """T5's ``random_spans_noise_mask``: alternating kept/noise runs, starting with kept, exact counts."""
  noise, spans = span_counts(n, noise_density, mean_span)
  if spans == 0:
    return np.zeros(n, bool)

  def segmentation(items: int, segments: int) -> np.ndarray:
    cuts = np.sort(rng.choice(items - 1, segments - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [items]]))

  runs = np.stack([segmentation(n - noise, spans), segmentation(noise, spans)], axis=1).reshape(-1)
  return np.repeat(np.tile([False, True], spans), runs)


def corrupt(tokens: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Encoder input (kept tokens, sentinel i for span i, EOS), decoder target (sentinel i + span i …, EOS) and
  which target positions hold noise tokens."""
  starts = mask & ~np.concatenate([[False], mask[:-1]])
  sentinels = FIRST_SENTINEL_ID + np.arange(int(starts.sum()), dtype=np.int32)
  enc = tokens.copy()
  enc[starts] = sentinels
  enc = np.append(enc[~mask | starts], EOS_ID)
  noise_index = np.cumsum(mask) - 1  # index of each noise token among noise tokens
  where = noise_index[starts]
  tgt = np.append(np.insert(tokens[mask], where, sentinels), EOS_ID)
  is_noise = np.ones(len(tgt), bool)
  is_noise[where + np.arange(len(where))] = False
  is_noise[-1] = False
  return enc.astype(np.int32), tgt.astype(np.int32), is_noise


class Windowed(Objective):
  """Prose cut into windows of ``window`` tokens per document (its last one shorter), one window per row, so no
  example crosses a document (span corruption on prose; prefix LM cuts its windows in bytes, see ``PrefixLM``)."""

  def __init__(self, split: CompiledSplit, window: int):
    self.text = split.fields["text"]
    self.window = window
    self.num_docs = split.num_docs
    self.piece_bytes = piece_bytes_of(split)
    self.chunks = -(-self.text.lengths // self.window)
    self.rows_per_epoch = int(self.chunks.sum())

  def epoch_state(self, order_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = np.zeros(self.num_docs + 1, np.int64)
    np.cumsum(self.chunks[order_N], out=starts[1:])
    return order_N, starts

  def window_of(self, state: tuple[np.ndarray, np.ndarray], r: int) -> tuple[int, np.ndarray]:
    """(document, its tokens under epoch row r)."""
    order, starts = state
    slot = int(np.searchsorted(starts, r, side="right")) - 1
    doc = int(order[slot])
    begin = int(self.text.offsets[doc]) + (r - int(starts[slot])) * self.window
    return doc, np.asarray(self.text.tokens[begin : min(begin + self.window, int(self.text.offsets[doc + 1]))])

  def example(self, tokens: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(encoder input, decoder target, which target positions are content) of one window."""
    raise NotImplementedError

  def rows(self, state: Any, r_R: np.ndarray, g_R: np.ndarray) -> Batch:
    enc = np.zeros((len(r_R), self.input_length), np.int32)
    tgt = np.zeros((len(r_R), self.target_length), np.int32)
    enc_len, tgt_len = np.zeros(len(r_R), np.int64), np.zeros(len(r_R), np.int64)
    content = np.zeros((len(r_R), self.target_length), bool)
    docs = np.zeros(len(r_R), np.int64)
    for i, (r, g) in enumerate(zip(r_R, g_R, strict=True)):
      docs[i], tokens = self.window_of(state, int(r))
      e, t, is_content = self.example(tokens, row_rng(self.seed, g))
      enc[i, : len(e)], tgt[i, : len(t)] = e, t
      enc_len[i], tgt_len[i] = len(e), len(t)
      content[i, : len(t)] = is_content
    batch = encoder_decoder_batch(enc, enc_len, tgt, tgt_len)
    batch["target_bytes"] = content_bytes(self.piece_bytes, tgt, content)
    batch["target_docs"] = content_docs(np.broadcast_to(docs[:, None], content.shape), content)
    return batch

  def stats(self) -> dict:
    used = self.text.lengths.sum() / max(1, self.rows_per_epoch * self.window)
    return {"raw_window": self.window, "window_fill": float(used)}


class SpanCorruption(Windowed):
  """``span_corruption`` (T5) on prose: each window of ``raw_window`` tokens has noise spans replaced by sentinels.

  Rows are not packed with several documents on purpose: every packed example adds its own EOS and sentinels
  to both sides, so with short documents no fixed raw window could be guaranteed to fit the lengths, whereas one
  window per row always fits (T5's helper) and needs no cross-attention segment masks. The cost is padding after
  each document's last window (``stats()['window_fill']``).

  Content targets are the noise tokens of a target (not its sentinels or EOS).
  """

  def __init__(
    self,
    split: CompiledSplit,
    input_length: int,
    target_length: int,
    seed: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
  ):
    if not (0 < noise_density < 1 and mean_noise_span_length >= 1):
      raise UserError("span_corruption needs 0 < noise_density < 1 and mean_noise_span_length >= 1")
    self.input_length, self.target_length, self.seed = input_length, target_length, seed
    self.noise = (noise_density, mean_noise_span_length)
    window = raw_window(input_length, target_length, noise_density, mean_noise_span_length)
    if window < 2:
      raise UserError(
        f"span_corruption: input_length={input_length}/target_length={target_length} fit no noised window; raise them"
      )
    super().__init__(split, window)

  def example(self, tokens, rng):
    return corrupt(tokens, noise_mask(len(tokens), rng, *self.noise))


class PrefixLM(Objective):
  """``prefix_lm`` (T5's prefix language modelling) on prose: each window of a document is cut between words; the
  encoder reads the prefix (+ EOS), the decoder writes the rest (+ EOS). The encoder-decoder then learns to
  *continue* a text from its prompt, which is what cross-evaluation asks of it (span corruption only ever fills
  ~3-token holes, so its "continuation" of a prompt is a fragment). Content targets: the continuation's ids.

  Windows and cuts are chosen over the document's units (``llmcpu.data.units``: words with the spaces before them) and
  their *bytes*, never its tokens: a prefix is the longest run of whole units of at most ``input_length − 1`` bytes,
  its continuation the longest run after it of at most ``target_length − 1`` bytes (the next window starts after
  it; in a document's last window the last unit is the continuation). A token is at least one byte, so both fit
  their lengths in any ISA, and every ISA reads the same prefix bytes and scores the same continuation bytes, window
  by window. A unit too long for either side is skipped, neither read nor scored (counted in ``stats()``: e.g. a
  table border with no space), and so is a prefix no continuation fits after. No randomness: a window's cut is
  its words'. The cost: a coarse ISA (~4 bytes per token) fills a quarter of its rows, the price of reading the
  same text as a char ISA does.

  ``pairs_per_row`` = k > 1 packs k consecutive windows of the epoch into one row (``pack_pairs``: source width
  k·input_length, target width k·target_length, pair i in segment i + 1), so that a step practises "continue from
  the prefix's end" k times per row (issue 23). The windows, and so the bytes read and scored, are those of k = 1.
  ``pack_windows`` (training only; not with k > 1) packs consecutive windows into rows of the k = 1 widths while
  their ids fit (``greedy_rows``: each document's windows in turn, documents in a seeded order; each epoch visits
  the rows in an order that follows its document order), each window its own segment as with k > 1: a char ISA's
  127-byte prefix fills a row alone, a 4000-piece ISA's (~32 ids) shares it with two or three more, so every ISA
  fills its rows as a decoder of that ISA does (issue 23).
  ``head_weight`` = w ≠ 1 gives the loss weight w to each continuation token that starts within its first
  ``head_bytes`` bytes (EOS and the rest keep 1): the first letters after the cut, which only the prefix's end
  predicts. ``curriculum_rows`` = n > 0 scores, in global row g < n (step × global batch + row), only the
  continuation tokens that start within its first ``curriculum_bytes + (target_length − 1 − curriculum_bytes) · g /
  n`` bytes (EOS only if the whole continuation is inside), from row n on every token: short targets first, growing
  linearly (issue 23; ``data.curriculum_steps`` × the global batch). All three are training options; evaluation
  scores one pair per row, unweighted, whole.

  ``context_bytes`` = c > 0 (the model's ``decoder_context``, so training and evaluation alike): the decoder reads
  ``[BOS] + tail + continuation``, where the tail is the prefix's last ids of at most c bytes (``tail_length``), the
  encoder still the whole prefix; the tail's positions are not scored (weight 0, no bytes), so the scored bytes are
  those of c = 0. The decoder side is ``target_length + c`` wide. ``tail_weight`` = w > 0 (training only) gives the
  tail's ids the loss weight w: the decoder learns to copy the prompt's end from the encoder, never counted in bits
  per byte (no bytes, not content). ``tail_dropout`` = p (training only): global rows drawn with probability p
  (``row_rng``: the same rows for the same seed, however the batch is split) read no tail, the decoder starting
  from BOS as with c = 0, so what the tail would have given must come from the encoder (issue 23).
  """

  def __init__(
    self,
    split: CompiledSplit,
    input_length: int,
    target_length: int,
    seed: int,
    pairs_per_row: int = 1,
    head_weight: float = 1.0,
    head_bytes: int = 8,
    curriculum_rows: int = 0,
    curriculum_bytes: int = 8,
    context_bytes: int = 0,
    tail_weight: float = 0.0,
    tail_dropout: float = 0.0,
    pack_windows: bool = False,
  ):
    if pack_windows and pairs_per_row > 1:
      raise UserError(
        f"prefix_lm packs windows either by their ids (pack_windows) or k a row (pairs_per_row={pairs_per_row}), "
        "not both: set data.pairs_per_row=1 or data.pack_windows=False"
      )
    if context_bytes < 0 or not (tail_weight >= 0 and np.isfinite(tail_weight)):
      raise UserError(
        f"prefix_lm needs context_bytes >= 0 and tail_weight >= 0 (got {context_bytes}, {tail_weight}); 0 bytes = "
        "the decoder starts from BOS"
      )
    if not 0 <= tail_dropout <= 1:
      raise UserError(f"prefix_lm needs 0 <= tail_dropout <= 1 (got {tail_dropout}): the share of rows without a tail")
    self.context_bytes, self.tail_weight, self.tail_dropout = (
      int(context_bytes),
      float(tail_weight),
      float(tail_dropout),
    )
    if input_length < 2 or target_length < 2:
      raise UserError(f"prefix_lm needs input_length and target_length >= 2 (got {input_length}, {target_length})")
    if pairs_per_row < 1:
      raise UserError(f"prefix_lm needs pairs_per_row >= 1 (got {pairs_per_row}); 1 = one window per row")
    if not (head_weight > 0 and np.isfinite(head_weight)) or head_bytes < 1:
      raise UserError(f"prefix_lm needs head_weight > 0 and head_bytes >= 1 (got {head_weight}, {head_bytes})")
    if curriculum_rows < 0 or curriculum_bytes < 1:
      raise UserError(
        f"prefix_lm needs curriculum_steps >= 0 and curriculum_bytes >= 1 (got rows {curriculum_rows}, "
        f"{curriculum_bytes} bytes); 0 steps = no curriculum"
      )
    self.input_length, self.target_length, self.seed = input_length, target_length, seed
    self.pairs_per_row, self.head = pairs_per_row, (float(head_weight), int(head_bytes))
    self.curriculum = (int(curriculum_rows), min(int(curriculum_bytes), target_length - 1))
    self.text = split.fields["text"]
    self.roles = split.roles  # the ISA's EOS ends both sides, its BOS starts the decoder
    self.num_docs = split.num_docs
    self.piece_bytes = piece_bytes_of(split)
    tokens, offsets = np.asarray(self.text.tokens), np.asarray(self.text.offsets)
    first = np.flatnonzero(units.unit_starts(tokens, offsets, split.piece_spaces))  # each unit's first token
    # A unit's size in bytes (+ one per 0-byte id, UNK: so that its tokens always fit as many slots).
    per_token = self.piece_bytes[tokens] + (self.piece_bytes[tokens] == 0)
    sizes = np.add.reduceat(per_token, first).astype(np.int64) if len(first) else np.zeros(0, np.int64)
    doc_units = np.searchsorted(first, offsets)  # documents start units: doc d holds units [doc_units[d], [d+1])
    windows, self.skipped_bytes = [], 0
    for d in range(self.num_docs):
      u0, u1 = int(doc_units[d]), int(doc_units[d + 1])
      cuts, skipped = byte_windows(sizes[u0:u1].tolist(), input_length - 1, target_length - 1)
      self.skipped_bytes += skipped
      bounds = np.append(first[u0:u1], offsets[d + 1])
      windows += [(d, bounds[i], bounds[j], bounds[k]) for i, j, k in cuts]
    self.windows = np.array(windows, np.int64).reshape(-1, 4)  # doc, prefix start, cut, end (token indices)
    self.per_doc = np.bincount(self.windows[:, 0], minlength=self.num_docs)
    self.first_window = np.concatenate([[0], np.cumsum(self.per_doc)])
    self.tail_W = self.tails(self.windows[:, 1], self.windows[:, 2])  # decoder context ids of each window
    self.rows_win = self._pack(seed) if pack_windows else None  # [rows, most windows a row], -1 = empty slot
    if self.rows_win is None:
      self.rows_per_epoch = -(-len(self.windows) // pairs_per_row)
    else:
      self.rows_per_epoch = len(self.rows_win)

  def _pack(self, seed: int) -> np.ndarray:
    """Rows of consecutive windows (each document's in turn, documents in a seeded order), each row holding windows
    while their source ids (prefix + EOS) and decoder ids (tail + continuation + EOS) fit its widths: a coarse ISA,
    whose 127-byte prefix is ~32 ids, fills its rows as a char ISA's one window does (issue 23: like for like with
    a decoder, whose rows are full of ids in every ISA)."""
    order = np.random.default_rng([seed, _PACK_TAG]).permutation(self.num_docs)
    in_order = rows_in_epoch_order(np.arange(len(self.windows)), self.windows[:, 0], order)  # each doc's in turn
    _, begin, cut, end = self.windows.T
    need = np.stack([cut - begin + 1, self.tail_W + end - cut + 1], axis=1)
    return greedy_rows(in_order, need, (self.input_length, self.target_length + self.context_bytes))

  def epoch_state(self, order_N: np.ndarray) -> Any:
    """Unpacked: the document order and where each document's windows start in it. Packed: the rows ordered by
    where their first window's document falls in it (a uniform document order gives a uniform row order)."""
    if self.rows_win is not None:
      return rows_in_epoch_order(self.rows_win, self.windows[self.rows_win[:, 0], 0], order_N)
    starts = np.zeros(self.num_docs + 1, np.int64)
    np.cumsum(self.per_doc[order_N], out=starts[1:])
    return order_N, starts

  def rows(self, state: Any, r_R: np.ndarray, g_R: np.ndarray) -> Batch:
    """Packed (``pack_windows``): row r holds the windows of packed row r, each in its own segment, ids after ids.
    Else row r holds the epoch's windows r·k … r·k + k − 1 (k = ``pairs_per_row``), window i of the row in segment
    i + 1 at columns [i·input_length, (i+1)·input_length) of the source and [i·target_length, …) of the target."""
    if self.rows_win is not None:
      win_RxK = state[r_R]
      real = win_RxK >= 0
      flat = self.window_pairs(np.where(real, win_RxK, 0).reshape(-1), real.reshape(-1), np.repeat(g_R, real.shape[1]))
      return pack_segments(flat, real)
    k = self.pairs_per_row
    pairs = [self.pairs(state, r_R * k + i, g_R) for i in range(k)]
    return pairs[0] if k == 1 else pack_pairs(pairs)

  def scored_bytes(self, g_R: np.ndarray) -> np.ndarray | None:
    """Continuation bytes the curriculum scores in global rows ``g`` (float64; None once it is over or off)."""
    rows, start = self.curriculum
    if not rows or np.all(g_R >= rows):
      return None
    full = self.target_length - 1
    return np.where(g_R >= rows, np.inf, start + (full - start) * np.minimum(g_R, rows) / rows)

  def pairs(self, state: Any, e_R: np.ndarray, g_R: np.ndarray | None = None) -> Batch:
    """One (prefix, continuation) pair per row: the epoch's windows ``e`` (all-pad where e is past the last)."""
    order, starts = state
    real = e_R < len(self.windows)
    e_R = np.where(real, e_R, 0)
    slot = np.searchsorted(starts, e_R, side="right") - 1
    return self.window_pairs(self.first_window[order[slot]] + e_R - starts[slot], real, g_R)

  def window_pairs(self, w_R: np.ndarray, real: np.ndarray, g_R: np.ndarray | None = None) -> Batch:
    """One (prefix, continuation) pair per row: windows ``w`` of ``self.windows`` (all-pad where not ``real``)."""
    doc, begin, cut, end = self.windows[w_R].T
    rows = np.arange(len(w_R))
    enc = _gather(self.text, begin, cut - begin, self.input_length)
    enc[rows, cut - begin] = self.roles.eos
    tail = self.tail_W[w_R]  # ids of the prefix's end the decoder reads first (0 without a decoder context)
    if self.tail_dropout and g_R is not None:  # training rows the decoder starts from BOS: all from the encoder
      drawn = np.array([row_rng(self.seed, g).random() for g in g_R])
      tail = np.where(drawn < self.tail_dropout, 0, tail)
    width = self.target_length + self.context_bytes
    tgt = _gather(self.text, cut - tail, end - cut + tail, width)
    tgt[rows, end - cut + tail] = self.roles.eos
    col = np.arange(width)[None, :]
    content = (col >= tail[:, None]) & (col < (end - cut + tail)[:, None]) & real[:, None]
    enc, tgt = enc * real[:, None], tgt * real[:, None]
    batch = encoder_decoder_batch(enc, (cut - begin + 1) * real, tgt, (end - cut + tail + 1) * real, bos=self.roles.bos)
    batch["decoder_weights"] = np.where(col < tail[:, None], self.tail_weight, batch["decoder_weights"]).astype(
      np.float32
    )
    if self.tail_weight and self.context_bytes:  # a weighted tail is not what bits per byte counts: the mask says so
      batch["content"] = content.astype(np.float32)
    batch["target_bytes"] = content_bytes(self.piece_bytes, tgt, content)
    weight, head_bytes = self.head
    if weight != 1.0:  # the loss weighs the continuation's first bytes more (counted in bytes: the same in any ISA)
      before = np.cumsum(batch["target_bytes"], axis=1) - batch["target_bytes"]
      head = content & (before < head_bytes)
      batch["decoder_weights"] = np.where(head, weight, batch["decoder_weights"]).astype(np.float32)
    limit_R = None if g_R is None else self.scored_bytes(g_R)
    if limit_R is not None:  # the curriculum: tokens starting past the row's limit (and EOS after them) weigh 0
      before = np.cumsum(batch["target_bytes"], axis=1) - batch["target_bytes"]
      batch["decoder_weights"] = np.where(before < limit_R[:, None], batch["decoder_weights"], 0.0).astype(np.float32)
    batch["target_docs"] = content_docs(np.broadcast_to(doc[:, None], content.shape), content)
    return batch

  def tails(self, begin: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Per row, how many of the prefix's last ids [begin, cut) the decoder reads (``tail_length``)."""
    if not self.context_bytes:
      return np.zeros(len(cut), np.int64)
    tokens = np.asarray(self.text.tokens)
    return np.array(
      [tail_length(self.piece_bytes[tokens[b:c]], self.context_bytes) for b, c in zip(begin, cut, strict=True)],
      np.int64,
    )

  def stats(self) -> dict:
    total = float(self.text.nbytes.sum())
    out = {"windows": len(self.windows), "skipped_bytes_share": self.skipped_bytes / total if total else 0.0}
    if self.rows_win is not None:  # what a packed row holds, beside a decoder's (the training log says it)
      out["pairs_per_row"] = len(self.windows) / max(1, self.rows_per_epoch)
      source_ids = (self.windows[:, 2] - self.windows[:, 1] + 1).sum()
      out["fill"] = float(source_ids / max(1, self.rows_per_epoch * self.input_length))
    return out


def byte_windows(sizes: Sequence[int], prefix_bytes: int, target_bytes: int) -> tuple[list[tuple[int, int, int]], int]:
  """``PrefixLM``'s windows over one document's units of ``sizes`` bytes: ``(i, j, k)`` = prefix units [i, j),
  continuation [j, k); and the bytes of the units left out (too long for either side, or a prefix with no
  continuation)."""
  out, skipped, i, n = [], 0, 0, len(sizes)
  while i < n:
    if sizes[i] > prefix_bytes:
      skipped, i = skipped + sizes[i], i + 1
      continue
    j, size = i, 0
    while j < n and size + sizes[j] <= prefix_bytes:
      size, j = size + sizes[j], j + 1
    if j < n and sizes[j] <= target_bytes:
      k, size = j, 0
      while k < n and size + sizes[k] <= target_bytes:
        size, k = size + sizes[k], k + 1
      out.append((i, j, k))
      i = k
    elif j - i >= 2 and sizes[j - 1] <= target_bytes:  # the last unit of the prefix continues it
      out.append((i, j - 1, j))
      i = j
    else:
      skipped, i = skipped + sum(sizes[i:j]), j
  return out, skipped
