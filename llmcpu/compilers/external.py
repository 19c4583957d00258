"""Backends over existing tokenizer files, kept with their own id table (no re-layout): the ISA of a pretrained LLM.

- ``HfBackend``: a Hugging Face ``tokenizer.json`` through the ``tokenizers`` library (GPT-2-style byte-level BPE,
  and SentencePiece-converted files: Metaspace pieces with ``<0xNN>`` byte fallback).
- ``SpmFileBackend``: a SentencePiece ``.model`` written elsewhere (Llama-2, Gemma, T5), its ids as they are.

Special ids are found by role (``specials.Roles``) in the file; a role the file lacks is borrowed from another id
and recorded (``Roles.borrowed``). Such files need not be lossless (normalisation, no byte fallback):
``lossy_bytes`` measures what a document loses, and ``toolchain.compile_split`` records it per split.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm

from llmcpu import specials
from llmcpu.compilers.backends import META, flatten
from llmcpu.errors import UserError

TOKENIZER_CONFIG = "tokenizer_config.json"  # beside tokenizer.json: names the bos/eos/pad/unk tokens
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Role names tried, in order, when the file has no tokenizer_config.json (GPT-2's <|endoftext|> is both).
_ROLE_NAMES = {
  "bos": ("<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>", "<|im_start|>"),
  "eos": ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "<|im_end|>"),
  "pad": ("<pad>", "<|pad|>", "[PAD]"),
  "mask": ("<mask>", "[MASK]"),  # BERT/RoBERTa-style files; masked LM borrows EOS where there is none
}


def byte_level_alphabet() -> dict[str, int]:
  """GPT-2's byte ↔ printable character map (``bytes_to_unicode``), inverted: character → byte."""
  keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  chars, n = list(keep), 0
  for b in range(256):
    if b not in keep:
      keep.append(b)
      chars.append(256 + n)
      n += 1
  return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def _components(node: dict | None) -> list[str]:
  """The types of a tokenizer.json pre-tokenizer/decoder, looking inside ``Sequence``."""
  if not node:
    return []
  if node.get("type") == "Sequence":
    return [t for sub in node.get("pretokenizers", node.get("decoders", [])) for t in _components(sub)]
  return [node.get("type", "")]


def _token_text(value) -> str | None:
  return value.get("content") if isinstance(value, dict) else value


class HfBackend:
  """A ``tokenizer.json``: encodes without added specials (a literal ``<|endoftext|>`` in the text is text)."""

  family = "hf"
  file_name = "tokenizer.json"

  def __init__(self, data: bytes, roles: dict | None = None, source: str = "tokenizer.json"):
    from tokenizers import Tokenizer  # only here: the project's own ISAs do not need it

    self._data = data
    try:
      self.tok = Tokenizer.from_str(data.decode("utf-8"))
      spec = json.loads(data)
    except Exception as e:  # tokenizers raises a bare Exception on a malformed file
      raise UserError(f"unreadable tokenizer file {source} ({str(e).splitlines()[0]}); give a tokenizer.json") from e
    self.tok.no_padding()
    self.tok.no_truncation()
    self.tok.encode_special_tokens = True
    n = self.tok.get_vocab_size(with_added_tokens=True)
    by_id = {i: p for p, i in self.tok.get_vocab(with_added_tokens=True).items()}
    if sorted(by_id) != list(range(n)):
      raise UserError(f"{source}: ids are not 0…{n - 1} without gaps; such an id table cannot be an ISA")
    self.pieces = [by_id[i] for i in range(n)]
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    self.special_ids = sorted(i for i, t in added.items() if t.get("special"))
    self.added_text = {i: t["content"] for i, t in added.items() if not t.get("special")}
    self.unk_piece = (spec.get("model") or {}).get("unk_token")
    kinds = _components(spec.get("decoder")) + _components(spec.get("pre_tokenizer"))
    if "ByteLevel" in kinds:
      self.mode = "byte_level"
    elif "Metaspace" in kinds or "ByteFallback" in kinds or "Replace" in kinds:
      self.mode = "metaspace"
    else:
      raise UserError(
        f"{source}: unsupported tokenizer (decoder/pre-tokenizer {kinds or 'none'}); supported: byte-level BPE "
        "(GPT-2 style) and SentencePiece-converted (Metaspace) tokenizers"
      )
    self.roles = roles_from_names(self.pieces, self.special_ids, self.unk_piece, roles or {}, source)

  def model_proto(self) -> bytes:
    return self._data

  def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return flatten([e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)])

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def piece_raw(self, i: int) -> bytes:
    """The bytes id ``i`` stands for in decoded text: byte-level characters one byte each, ``<0xNN>`` its byte,
    ``▁`` a space, an added token its text (whatever its role: callers skip the specials)."""
    piece = self.added_text.get(i, self.pieces[i])
    if self.mode == "byte_level" and i not in self.added_text:
      alphabet = byte_level_alphabet()
      return bytes(alphabet.get(c, 0x3F) for c in piece)
    byte = _BYTE_PIECE.fullmatch(piece)
    return bytes([int(byte[1], 16)]) if byte else piece.replace(META, " ").encode("utf-8")

  def piece_bytes(self) -> np.ndarray:
    """UTF-8 bytes each id adds to decoded text: special tokens and UNK 0; byte-level pieces one byte per
    character; Metaspace pieces their text with ``▁`` read as a space, ``<0xNN>`` one byte."""
    alphabet = byte_level_alphabet() if self.mode == "byte_level" else {}
    out = np.zeros(len(self.pieces), np.int64)
    special = set(self.special_ids)
    for i, piece in enumerate(self.pieces):
      if i in special or piece == self.unk_piece:
        continue
      if i in self.added_text:
        out[i] = len(self.added_text[i].encode("utf-8"))
      elif self.mode == "byte_level":
        out[i] = sum(1 if c in alphabet else len(c.encode("utf-8")) for c in piece)
      else:
        out[i] = 1 if _BYTE_PIECE.fullmatch(piece) else len(piece.replace(META, " ").encode("utf-8"))
    return out


class SpmFileBackend:
  """An existing SentencePiece model with its own ids (``spm.model`` in the compiler directory)."""

  family = "spm"
  file_name = "spm.model"

  def __init__(self, data: bytes, roles: dict | None = None, source: str = "spm.model"):
    del roles  # a SentencePiece model names its own roles
    self._data = data
    try:
      self.sp = spm.SentencePieceProcessor(model_proto=data)
    except Exception as e:  # RuntimeError or OSError depending on the damage
      raise UserError(f"unreadable SentencePiece model {source} ({e}); give a SentencePiece .model file") from e
    n = self.sp.get_piece_size()
    self.pieces = [self.sp.id_to_piece(i) for i in range(n)]
    found = {"pad": self.sp.pad_id(), "bos": self.sp.bos_id(), "eos": self.sp.eos_id(), "unk": self.sp.unk_id()}
    control = [i for i in range(n) if self.sp.is_control(i)]
    self.roles = make_roles({k: v for k, v in found.items() if v >= 0}, control, source)

  def model_proto(self) -> bytes:
    return self._data

  def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return flatten(self.sp.encode(list(texts)))

  def decode(self, ids: Sequence[int]) -> str:
    return self.sp.decode([int(i) for i in ids])

  def piece_bytes(self) -> np.ndarray:
    """Control pieces and UNK 0, a byte piece 1, any other piece its text with ``▁`` read as a space."""
    out = np.zeros(len(self.pieces), np.int64)
    for i, piece in enumerate(self.pieces):
      if self.sp.is_control(i) or self.sp.is_unknown(i):
        continue
      out[i] = 1 if self.sp.is_byte(i) else len(piece.replace(META, " ").encode("utf-8"))
    return out


def read_role_names(tokenizer_json: str) -> dict:
  """``{role: token text}`` from the ``tokenizer_config.json`` beside ``tokenizer_json`` ({} without one)."""
  path = os.path.join(os.path.dirname(tokenizer_json), TOKENIZER_CONFIG)
  if not os.path.exists(path):
    return {}
  try:
    config = json.loads(open(path, encoding="utf-8").read())
  except ValueError as e:
    raise UserError(f"malformed {path} ({e}); fix or remove it (roles are then found by name)") from e
  names = {role: _token_text(config.get(f"{role}_token")) for role in ("bos", "eos", "pad", "unk", "mask")}
  return {role: name for role, name in names.items() if name}


def roles_from_names(pieces: list[str], special_ids: list[int], unk_piece, names: dict, source: str) -> specials.Roles:
  """Roles of a tokenizer.json: the tokens ``names`` gives (from tokenizer_config.json), else well-known names
  among its special tokens; a file with exactly one special token uses it as BOS and EOS."""
  index = {p: i for i, p in enumerate(pieces)}
  found = {}
  for role in ("bos", "eos", "pad", "unk", "mask"):
    name = names.get(role)
    if name is not None:
      if name not in index:
        raise UserError(f"{source}: its {TOKENIZER_CONFIG} names {role} token {name!r}, which is not in the vocab")
      found[role] = index[name]
  specials_text = {pieces[i] for i in special_ids}
  for role, candidates in _ROLE_NAMES.items():
    hit = next((c for c in candidates if c in specials_text), None)
    if role not in found and hit is not None:
      found[role] = index[hit]
  if "unk" not in found and unk_piece in index:
    found["unk"] = index[unk_piece]
  if len(special_ids) == 1:
    found.setdefault("eos", special_ids[0])
  return make_roles(found, special_ids, source)


def make_roles(found: dict, control: list[int], source: str) -> specials.Roles:
  """``Roles`` from the ids found per role: no EOS is an error; BOS and PAD borrow EOS's id when missing (MASK is
  None without one: ``Roles.mask_id`` says what masked LM uses then)."""
  if "eos" not in found:
    raise UserError(
      f"{source}: no end-of-sequence token found; add a {TOKENIZER_CONFIG} beside it naming eos_token "
      "(documents are packed as BOS + text + EOS)"
    )
  borrowed = tuple(r for r in ("bos", "pad") if r not in found)
  ids = {r: found.get(r, found["eos"]) for r in ("bos", "eos", "pad")}
  unk = found.get("unk")
  not_content = sorted(set(control) | set(ids.values()))
  mask = found.get("mask")
  not_content = sorted(set(not_content) | ({mask} if mask is not None else set()))
  return specials.Roles(ids["pad"], ids["bos"], ids["eos"], unk, tuple(not_content), mask=mask, borrowed=borrowed)


def lossy_bytes(text: str, decoded: str) -> int:
  """UTF-8 bytes of ``text`` that ``decoded`` does not give back: 0 when equal, else the bytes from the first to
  the last difference (the longer one's length less their common prefix and suffix)."""
  if text == decoded:
    return 0
  a, b = text.encode("utf-8"), decoded.encode("utf-8")
  n = min(len(a), len(b))
  prefix = next((i for i in range(n) if a[i] != b[i]), n)
  suffix = 0
  while suffix < n - prefix and a[-1 - suffix] == b[-1 - suffix]:
    suffix += 1
  return max(len(a), len(b)) - prefix - suffix
