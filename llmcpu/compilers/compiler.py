"""A compiler: a backend (SentencePiece or bytes) plus an ISA transform, saved to and loaded from a directory.

A saved compiler directory holds ``isa.json`` (the manifest: family, vocab size, transform, fingerprint, corpus
fingerprint, trainer options), ``spm.model`` for SentencePiece families and ``perm.npy`` for permuted ISAs.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import os
import pathlib
import re
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from llmcpu import fs, specials
from llmcpu.compilers import backends, external, isa
from llmcpu.compilers.spec import CompilerSpec, parse
from llmcpu.errors import UserError

MANIFEST = "isa.json"
MODEL = "spm.model"
PERM = "perm.npy"
FORMAT_VERSION = 1
# ``Compiler.piece_spaces`` flags: the piece's text starts with, ends with, or holds inside a space (U+0020).
SPACE_FIRST, SPACE_LAST, SPACE_INSIDE = 1, 2, 4
_BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")


class Compiler:
  """Text → machine code for one ISA, and back. ``decode(encode(text)) == text`` for any Unicode string."""

  def __init__(self, spec: CompilerSpec, backend, perm: np.ndarray | None, manifest: dict):
    self.spec = spec
    self.backend = backend
    self.perm = perm
    self._inv = isa.inverse(perm) if perm is not None else None
    self.pieces = isa.permute_table(backend.pieces, perm) if perm is not None else list(backend.pieces)
    self.fingerprint = isa.fingerprint(self.pieces)
    self.manifest = dict(manifest, fingerprint=self.fingerprint, vocab_size=len(self.pieces))

  @property
  def name(self) -> str:
    return self.spec.name

  @property
  def family(self) -> str:
    return self.spec.family

  @property
  def vocab_size(self) -> int:
    return len(self.pieces)

  @property
  def roles(self) -> specials.Roles:
    """Which ids are PAD/BOS/EOS/UNK (and never content) in this ISA: the project's fixed layout, or the file's."""
    return getattr(self.backend, "roles", specials.OWN)

  def __repr__(self) -> str:
    return f"Compiler({self.spec}, vocab_size={self.vocab_size}, fingerprint={self.fingerprint})"

  @functools.cached_property
  def piece_bytes(self) -> np.ndarray:
    """int64 [vocab_size]: the UTF-8 bytes each id contributes to ``decode``'s output in a valid encoding.

    Special ids (pad, unk, bos, eos, mask, sentinels) count 0: UNK stands for text the ISA cannot name (with byte
    fallback no encoding by this compiler holds one). A byte piece ``<0xNN>`` counts 1, any other piece the UTF-8
    length of its text with the space marker ``▁`` read as a space. Compiling is lossless, so the piece bytes of a
    document's ids sum to its raw UTF-8 byte count and bits per byte can be counted per target. Read-only.
    """
    base = self.backend.piece_bytes()
    out = base if self._inv is None else base[self._inv]  # permuted: id perm[i] names backend piece i
    out.setflags(write=False)
    return out

  @functools.cached_property
  def piece_raw(self) -> tuple[bytes | None, ...]:
    """The UTF-8 bytes each id stands for in decoded text (``piece_bytes[i]`` of them; a byte piece its one byte, a
    byte-level piece possibly part of a character); None for an id with no text (specials, UNK). What compares a
    piece across ISAs of different notations (``▁`` vs GPT-2's byte alphabet), e.g. when porting."""
    out: list[bytes | None] = []
    for i, piece in enumerate(self.pieces):
      if self.piece_bytes[i] == 0:
        out.append(None)
      elif hasattr(self.backend, "piece_raw"):  # an existing tokenizer file: its own notation (never permuted)
        out.append(self.backend.piece_raw(i))
      else:
        byte = _BYTE_PIECE.fullmatch(piece)
        out.append(bytes([int(byte[1], 16)]) if byte else piece.replace(backends.META, " ").encode("utf-8"))
    return tuple(out)

  @functools.cached_property
  def piece_spaces(self) -> np.ndarray:
    """int8 [vocab_size]: where each id's text has a space (``SPACE_FIRST`` | ``SPACE_LAST`` | ``SPACE_INSIDE``); 0
    for special ids. What objectives need to find the starts of words (a space after a
    non-space) in any ISA without its text (``llmcpu.data.units``). Read-only."""
    out = np.zeros(self.vocab_size, np.int8)
    for i in range(self.vocab_size):
      if self.piece_bytes[i] == 0:  # specials, UNK: no text
        continue
      text = self.piece_raw[i].decode("utf-8", errors="replace")
      if not text:
        continue
      flags = (text[0] == " ") * SPACE_FIRST | (text[-1] == " ") * SPACE_LAST
      out[i] = flags | (" " in text[1:-1]) * SPACE_INSIDE
    out.setflags(write=False)
    return out

  def encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encodes a batch in parallel: (concatenated int32 ids, int64 lengths)."""
    for t in texts:
      if not isinstance(t, str):
        raise TypeError(f"compilers encode str, got {type(t).__name__}")
    flat, lengths = self.backend.encode_flat(texts)
    if self.perm is not None:
      flat = self.perm[flat]
    return flat, lengths

  def encode_marked(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``encode_flat`` of texts holding sentinel marks (``specials.sentinel_mark``): mark i compiles to sentinel i
    whatever the ISA, and each run of text between marks is encoded on its own (segmentation never crosses a mark;
    compiling is lossless, so the runs' ids decode back to the text without its marks)."""
    split = [specials.split_marks(t) for t in texts]
    encoded = iter(self.encode_batch([run for runs, _ in split for run in runs]))
    docs = []
    for _, sentinels in split:
      ids = list(next(encoded))
      for s in sentinels:  # n marks separate n + 1 runs
        ids += [s, *next(encoded)]
      docs.append(ids)
    lengths = np.array([len(d) for d in docs], np.int64)
    return np.fromiter(itertools.chain.from_iterable(docs), np.int32, count=int(lengths.sum())), lengths

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    flat, lengths = self.encode_flat(texts)
    return [a.tolist() for a in np.split(flat, np.cumsum(lengths)[:-1])] if len(texts) else []

  def encode(self, text: str) -> list[int]:
    return self.encode_flat([text])[0].tolist()

  def decode(self, ids: Iterable[int]) -> str:
    """Ids → text. Special ids decode to nothing; ids outside this ISA raise (see ``decode_foreign``)."""
    ids = np.asarray(list(ids), dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      bad = ids[(ids < 0) | (ids >= self.vocab_size)]
      raise ValueError(f"{len(bad)} ids outside ISA {self.name} (vocab {self.vocab_size}), e.g. {int(bad[0])}")
    if self._inv is not None:
      ids = self._inv[ids]
    return self.backend.decode(ids.tolist())

  def decode_foreign(self, ids: Iterable[int]) -> tuple[str, int]:
    """Decodes machine code that may hold illegal opcodes: drops them and returns how many it dropped."""
    ids = np.asarray(list(ids), dtype=np.int64)
    legal = (ids >= 0) & (ids < self.vocab_size)
    return self.decode(ids[legal]), int((~legal).sum())

  def id_to_piece(self, i: int) -> str:
    return self.pieces[i]

  def save(self, path: str) -> None:
    """Writes the compiler directory atomically (see ``fs.staged``: the manifest is its marker, written last)."""
    with fs.staged(path, MANIFEST) as out:
      proto = self.backend.model_proto()
      if proto is not None:
        fs.write_bytes(fs.join(out, getattr(self.backend, "file_name", MODEL)), proto)
      if self.perm is not None:
        fs.save_npy(fs.join(out, PERM), self.perm)
      fs.write_text(fs.join(out, MANIFEST), json.dumps(self.manifest, indent=1))


def to_blob(compiler: Compiler) -> dict:
  """The compiler's directory as JSON-safe data, so a checkpoint's metadata can carry its ISA."""
  with tempfile.TemporaryDirectory() as tmp:
    compiler.save(os.path.join(tmp, "c"))
    return {
      name: base64.b64encode(pathlib.Path(tmp, "c", name).read_bytes()).decode("ascii")
      for name in sorted(os.listdir(os.path.join(tmp, "c")))
    }


def from_blob(blob: dict) -> Compiler:
  """Inverse of ``to_blob``; checks the fingerprint like ``load``."""
  with tempfile.TemporaryDirectory() as tmp:
    for name, data in blob.items():
      if os.sep in name or name.startswith("."):
        raise UserError(f"corrupt compiler blob: bad file name {name!r}")
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(base64.b64decode(data))
    return load(tmp)


def load(path: str) -> Compiler:
  """Loads a compiler directory written by ``Compiler.save`` and checks its fingerprint."""
  if not fs.exists(fs.join(path, MANIFEST)):
    raise UserError(f"no compiler at {path} ({MANIFEST} missing); build it with scripts/compile.py")
  try:
    manifest = json.loads(fs.read_text(fs.join(path, MANIFEST)))
    spec = parse(manifest["spec"])
  except (ValueError, KeyError, UserError) as e:
    raise UserError(f"corrupt compiler manifest {path}/{MANIFEST} ({e}); rebuild it with scripts/compile.py") from e
  if spec.family == "byte":
    backend = backends.ByteBackend()
  else:
    name = external.HfBackend.file_name if spec.family == "hf" else MODEL
    try:
      proto = fs.read_bytes(fs.join(path, name))
    except Exception as e:  # OSError locally, tf.errors.OpError in a bucket
      raise UserError(f"unreadable compiler model {path}/{name} ({e}); rebuild it with scripts/compile.py") from e
    # The fingerprint covers the id → piece table, not the scores that decide segmentation: check the bytes too.
    if hashlib.sha256(proto).hexdigest() != manifest.get("model_sha256"):
      raise UserError(
        f"compiler model {path}/{name} does not match the sha256 in its {MANIFEST} (damaged or replaced); "
        "rebuild it with scripts/compile.py --config.rebuild"
      )
    backend = _backend(spec, proto, manifest.get("role_names"), f"{path}/{name}")
  perm = None
  if spec.permuted:
    try:
      perm = fs.load_npy(fs.join(path, PERM))
    except Exception as e:  # OSError/ValueError locally, tf.errors.OpError in a bucket
      raise UserError(f"unreadable permutation {path}/{PERM} ({e}); rebuild it with scripts/compile.py") from e
    if sorted(perm.tolist()) != list(range(len(backend.pieces))):
      raise UserError(f"corrupt permutation {path}/{PERM}: not a bijection of the vocabulary; rebuild it")
  compiler = Compiler(spec, backend, perm, manifest)
  if compiler.fingerprint != manifest.get("fingerprint"):
    raise UserError(
      f"compiler at {path} does not match its manifest (fingerprint {compiler.fingerprint} vs "
      f"{manifest.get('fingerprint')}); the files are corrupt or mixed: rebuild it with scripts/compile.py"
    )
  return compiler


def _backend(spec: CompilerSpec, proto: bytes, role_names: dict | None, source: str):
  """The backend of a SentencePiece-family or external compiler from its model file's bytes."""
  if spec.family == "hf":
    return external.HfBackend(proto, role_names, source)
  if spec.family == "spm":
    return external.SpmFileBackend(proto, None, source)
  return backends.SentencePieceBackend(spec.family, proto)


def from_file(spec: CompilerSpec) -> Compiler:
  """The compiler of an existing tokenizer file (``hf:PATH``/``spm:PATH``), its id table kept as the ISA."""
  try:
    with open(spec.path, "rb") as f:
      proto = f.read()
  except OSError as e:
    what = "a tokenizer.json (or its directory)" if spec.family == "hf" else "a SentencePiece .model"
    raise UserError(f"cannot read {spec.path} for {spec.family}: ({e.strerror}); give {what}") from e
  role_names = external.read_role_names(spec.path) if spec.family == "hf" else None
  backend = _backend(spec, proto, role_names, spec.path)
  manifest = _manifest_head(spec, {}) | {
    "source_path": spec.path,
    "model_sha256": hashlib.sha256(proto).hexdigest(),
    "role_names": role_names,
    "roles": backend.roles.to_json(),
    "special_ids": {
      "pad": backend.roles.pad,
      "unk": backend.roles.unk,
      "bos": backend.roles.bos,
      "eos": backend.roles.eos,
    },
    "trainer_options": {},
  }
  return Compiler(spec, backend, None, manifest)


def train(
  spec: CompilerSpec | str,
  texts: Iterable[str] | None = None,
  *,
  corpus: dict | None = None,
  options: dict | None = None,
  base: Compiler | None = None,
) -> Compiler:
  """Builds the compiler for ``spec``: trains its base on ``texts`` (or reuses ``base``), then transforms it."""
  spec = parse(spec) if isinstance(spec, str) else spec
  if spec.external:
    return from_file(spec)
  if base is not None and base.spec != spec.base:
    raise ValueError(f"base {base.spec} is not the base of {spec}")
  if base is None:
    base = _train_base(spec.base, texts, corpus or {}, options or {})
  if not spec.permuted:
    return base
  perm = isa.permutation(base.vocab_size, spec.perm_seed, spec.perm_fraction)
  manifest = dict(base.manifest, spec=str(spec), name=spec.name, base_fingerprint=base.fingerprint)
  manifest["transform"] = {"kind": "perm", "seed": spec.perm_seed, "fraction": spec.perm_fraction}
  return Compiler(spec, base.backend, perm, manifest)


def _manifest_head(spec: CompilerSpec, corpus: dict) -> dict:
  """The fields every untransformed compiler's manifest starts with (trained here or read from a file)."""
  return {
    "format": FORMAT_VERSION,
    "spec": str(spec),
    "name": spec.name,
    "family": spec.family,
    "transform": None,
    "corpus": corpus,
  }


def _train_base(spec: CompilerSpec, texts: Iterable[str] | None, corpus: dict, options: dict) -> Compiler:
  manifest = _manifest_head(spec, corpus) | {
    "special_ids": {"pad": specials.PAD_ID, "unk": specials.UNK_ID, "bos": specials.BOS_ID, "eos": specials.EOS_ID},
    "first_regular_id": specials.FIRST_REGULAR_ID,
  }
  if spec.family == "byte":
    backend = backends.ByteBackend()
    manifest["trainer_options"] = {}
  else:
    if texts is None:
      raise ValueError(f"{spec} needs training text")
    proto, used = backends.train_sentencepiece(spec.family, spec.vocab, _nonempty(texts), options)
    backend = backends.SentencePieceBackend(spec.family, proto)
    manifest["trainer_options"] = used
    manifest["sentencepiece_version"] = spm.__version__
    manifest["model_sha256"] = hashlib.sha256(proto).hexdigest()
  return Compiler(spec, backend, None, manifest)


def _nonempty(texts: Iterable[str]) -> Iterable[str]:
  return (t for t in texts if t)


def isa_overlap(a: Compiler, b: Compiler) -> float:
  """The compatibility of two ISAs: the share of regular ids that decode to the same piece in both. Where either
  ISA comes from a tokenizer file, every id counts and a piece is its bytes (files write pieces in their own
  notation: GPT-2's ``Ġthe`` and Llama's ``▁the`` are the same opcode text)."""
  if a.roles.own and b.roles.own:
    return isa.overlap(a.pieces, b.pieces, specials.FIRST_REGULAR_ID)
  return isa.overlap(a.piece_raw, b.piece_raw, 0)
