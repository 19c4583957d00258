"""The two kinds of machine-code generators under an ISA: trained SentencePiece models and the fixed byte code.

Both are lossless for any Unicode string. SentencePiece needs two repairs for that, both applied here:
- a literal U+2581 (``▁``) in the input is indistinguishable from SentencePiece's own space marker, so text is
  split at it and the character is emitted as its three UTF-8 byte pieces (which decode to the literal character);
- the ``word`` model byte-falls-back whole unknown words *including* the space marker, whose bytes would then decode
  to a literal ``▁``; those three byte ids are replaced by the byte piece of an ASCII space.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_model

from llmcpu import specials
from llmcpu.compilers import spm_child
from llmcpu.errors import UserError

META = "\u2581"
NUM_BYTES = 256
FIRST_BYTE_ID = specials.FIRST_REGULAR_ID  # byte pieces <0x00>…<0xFF> follow the specials in every ISA
_META_BYTES = [FIRST_BYTE_ID + b for b in META.encode("utf-8")]
_SPACE_BYTE = FIRST_BYTE_ID + 0x20


def byte_piece(b: int) -> str:
  return f"<0x{b:02X}>"


def default_threads() -> int:
  return max(1, min(8, os.cpu_count() or 1))


def flatten(ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """Lists of ids → (concatenated int32 ids, int64 lengths)."""
  lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
  flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
  return flat, lengths


class ByteBackend:
  """The fixed ISA: specials, then one id per UTF-8 byte. Needs no training."""

  family = "byte"

  def __init__(self):
    self.pieces = list(specials.SPECIAL_PIECES) + [byte_piece(b) for b in range(NUM_BYTES)]

  def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    data = [t.encode("utf-8") for t in texts]
    lengths = np.fromiter((len(d) for d in data), dtype=np.int64, count=len(data))
    flat = np.frombuffer(b"".join(data), dtype=np.uint8).astype(np.int32) + FIRST_BYTE_ID
    return flat, lengths

  def decode(self, ids: Sequence[int]) -> str:
    return _bytes_of(ids).decode("utf-8", errors="replace")

  def piece_bytes(self) -> np.ndarray:
    """UTF-8 bytes each id adds to decoded text: 0 for the specials, 1 for each byte."""
    out = np.zeros(len(self.pieces), np.int64)
    out[FIRST_BYTE_ID:] = 1
    return out

  def model_proto(self) -> bytes | None:
    return None


def _bytes_of(ids: Iterable[int]) -> bytes:
  return bytes(i - FIRST_BYTE_ID for i in ids if FIRST_BYTE_ID <= i < FIRST_BYTE_ID + NUM_BYTES)


class SentencePieceBackend:
  """A trained SentencePiece model with the fixed special ids and the lossless repairs above."""

  def __init__(self, family: str, model_proto: bytes, num_threads: int | None = None):
    self.family = family
    self._proto = model_proto
    self.num_threads = num_threads or default_threads()
    try:
      self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    except Exception as e:  # sentencepiece raises RuntimeError or OSError depending on the damage
      raise UserError(f"unreadable or corrupt SentencePiece model ({e}); retrain it with scripts/compile.py") from e
    self.pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
    expected = list(specials.SPECIAL_PIECES)
    if self.pieces[: len(expected)] != expected or self.pieces[FIRST_BYTE_ID] != byte_piece(0):
      raise UserError("SentencePiece model was not built by llmcpu (special or byte ids differ); retrain it")

  def model_proto(self) -> bytes:
    return self._proto

  def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    flat, lengths = flatten(self.sp.encode(list(texts), num_threads=self.num_threads))
    if self.family == "word":
      flat, lengths = _space_for_meta_bytes(flat, lengths)
    literal = [i for i, text in enumerate(texts) if META in text]
    if literal:  # rare: re-encode those texts split at the literal marker (see module docstring)
      ids = [a.tolist() for a in np.split(flat, np.cumsum(lengths)[:-1])]
      for i in literal:
        ids[i] = self._encode_with_literal_meta(texts[i])
      flat, lengths = flatten(ids)
    return flat, lengths

  def _encode_with_literal_meta(self, text: str) -> list[int]:
    parts = text.split(META)
    flat, lengths = flatten(self.sp.encode(parts))
    if self.family == "word":
      flat, lengths = _space_for_meta_bytes(flat, lengths)
    out: list[int] = []
    for j, part_ids in enumerate(np.split(flat, np.cumsum(lengths)[:-1])):
      if j:
        out.extend(_META_BYTES)
      out.extend(part_ids.tolist())
    return out

  def decode(self, ids: Sequence[int]) -> str:
    return self.sp.decode([int(i) for i in ids])

  def piece_bytes(self) -> np.ndarray:
    """UTF-8 bytes each id adds to decoded text: control pieces and UNK 0, a byte piece 1, any other piece its
    text with the space marker read as a space (the decoder strips no leading space: no dummy prefix)."""
    out = np.zeros(len(self.pieces), np.int64)
    for i, piece in enumerate(self.pieces):
      if i < specials.FIRST_REGULAR_ID or self.sp.is_control(i) or self.sp.is_unknown(i):
        continue
      out[i] = 1 if self.sp.is_byte(i) else len(piece.replace(META, " ").encode("utf-8"))
    return out


def _space_for_meta_bytes(flat: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Replaces each byte-encoded space marker (3 ids) by the byte id of ' ' (1 id); fixes lengths."""
  if len(flat) < 3:
    return flat, lengths
  hit = (flat[:-2] == _META_BYTES[0]) & (flat[1:-1] == _META_BYTES[1]) & (flat[2:] == _META_BYTES[2])
  starts = np.flatnonzero(hit)
  if len(starts) == 0:
    return flat, lengths
  keep = np.ones(len(flat), bool)
  keep[starts + 1] = False
  keep[starts + 2] = False
  flat = flat.copy()
  flat[starts] = _SPACE_BYTE
  doc = np.repeat(np.arange(len(lengths)), lengths)
  dropped = np.bincount(doc[~keep], minlength=len(lengths))
  return flat[keep], lengths - dropped


def train_sentencepiece(
  family: str, vocab: int | None, texts: Iterable[str], options: dict, *, in_process: bool = False
) -> tuple[bytes, dict]:
  """Trains a SentencePiece model in memory; returns (model proto, the trainer options used).

  The trainer runs in a child process (``spm_child``) so that Ctrl-C stops at once instead of when SentencePiece
  returns; ``in_process=True`` runs it here. Both give the same bytes."""
  opts = dict(
    model_type=family,
    vocab_size=vocab if vocab is not None else 1 << 20,  # char without a size: every required character
    pad_id=specials.PAD_ID,
    unk_id=specials.UNK_ID,
    bos_id=specials.BOS_ID,
    eos_id=specials.EOS_ID,
    control_symbols=",".join(specials.SPECIAL_PIECES[specials.MASK_ID :]),
    # Lossless: no normalisation, keep every space, bytes for characters outside the vocabulary.
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    byte_fallback=True,
    character_coverage=0.9995,
    split_digits=True,
    max_sentence_length=1 << 16,
    input_sentence_size=200_000,
    shuffle_input_sentence=True,
    num_threads=1,  # one thread: the trained model is the same on every machine
  )
  opts.update(options)
  try:
    proto = spm_child.train_proto(texts, opts) if in_process else _train_in_child(texts, opts)
  except RuntimeError as e:
    raise UserError(_training_error(family, vocab, str(e))) from e
  used = {k: v for k, v in opts.items() if k != "control_symbols"}
  return canonical_layout(proto), dict(used, id_layout="specials,bytes,characters,learned")


def _train_in_child(texts: Iterable[str], options: dict) -> bytes:
  """``spm_child.train_proto`` in a child process; any exception here (KeyboardInterrupt included) kills it first.
  SentencePiece's own failures come back as RuntimeError, like in process."""
  flags = ["-P"] if sys.version_info >= (3, 11) else []  # not its own directory first on sys.path
  cmd = [sys.executable, *flags, spm_child.__file__, str(os.getpid())]
  proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  try:
    try:
      proc.stdin.write((json.dumps(options) + "\n").encode())
      spm_child.write_texts(texts, proc.stdin)
      proc.stdin.close()
    except BrokenPipeError:  # the child is gone: its status says why
      pass
    header = proc.stdout.readline()
    reply = json.loads(header) if header.strip() else {}
    proto = proc.stdout.read(reply.get("size", 0))
    status = proc.wait()
  except BaseException:
    proc.kill()
    proc.wait()
    raise
  finally:
    for pipe in (proc.stdin, proc.stdout):
      with contextlib.suppress(OSError):
        pipe.close()
  if "error" in reply:
    raise {"ValueError": ValueError}.get(reply["error"], RuntimeError)(reply["message"])  # as SentencePiece raised
  if status != 0 or "size" not in reply or len(proto) != reply["size"]:
    raise UserError(
      f"the SentencePiece trainer process ended with status {status} without a model (killed, or out of memory?); "
      "rerun the same command, or train on fewer texts (input_sentence_size)"
    )
  return proto


def canonical_layout(model_proto: bytes) -> bytes:
  """Reorders ids to: specials, bytes, single characters (by code point), then learned pieces in trainer order.

  SentencePiece segments by piece scores, not ids, so this only renames opcodes. It makes ISAs trained on the
  same corpus line up: ``char`` is a prefix of every BPE ISA, and ``bpe:1000`` is an exact prefix of ``bpe:4000``
  (BPE appends its characters after the merges, which would otherwise move them with the vocabulary size).
  """
  model = sp_model.ModelProto()
  model.ParseFromString(model_proto)
  pieces = list(model.pieces)
  fixed = FIRST_BYTE_ID + NUM_BYTES
  normal = sp_model.ModelProto.SentencePiece.NORMAL
  is_char = [len(p.piece) == 1 and p.type == normal for p in pieces[fixed:]]
  chars = sorted((p for p, c in zip(pieces[fixed:], is_char, strict=True) if c), key=lambda p: p.piece)
  learned = [p for p, c in zip(pieces[fixed:], is_char, strict=True) if not c]
  del model.pieces[:]
  model.pieces.extend(pieces[:fixed] + chars + learned)
  return model.SerializeToString()


def _training_error(family: str, vocab: int | None, message: str) -> str:
  """Turns SentencePiece's check failures into one line with the allowed range."""
  floor = FIRST_BYTE_ID + NUM_BYTES + 1
  if m := re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message):
    return f"vocab {vocab} is too small for {family} on this corpus; allowed range: {m[2]} to the corpus' maximum"
  if m := re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", message):
    return f"vocab {vocab} is too large for {family} on this corpus; allowed range: up to {m[2]}"
  if "sentences_.empty()" in message:
    return "empty corpus: no training text for the compiler; check the corpus and its train split"
  if family == "char" and "vocab_size" in message:
    return f"vocab {vocab} is too small for char; allowed range: at least {floor}"
  return f"SentencePiece could not train {family}:{vocab}: {message.splitlines()[-1]}"
