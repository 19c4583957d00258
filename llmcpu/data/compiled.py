"""Compiled data: a corpus split encoded by one compiler, stored once, read by memory map.

Layout of one split, ``<root>/<split>/``::

  <field>.tokens.npy   int32 [total_tokens]   every document's ids, concatenated
  <field>.offsets.npy  int64 [num_docs + 1]   document i is tokens[offsets[i]:offsets[i+1]]
  <field>.nbytes.npy   int64 [num_docs]       UTF-8 bytes of document i's raw text (= its ids' piece bytes)
  labels.json          {name: [str, ...]}     per-document labels (e.g. the `programs` task)
  manifest.json        written last: counts and the fingerprints the split was built from

A split is valid only when its manifest exists and names the expected fingerprints; writers commit through
``fs.staged`` (a temporary directory renamed into place, or in a bucket the manifest written last), so an
interrupted build never looks valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence

import numpy as np

from llmcpu import fs, specials
from llmcpu.errors import UserError

MANIFEST = "manifest.json"
FORMAT_VERSION = 3  # 2: manifest stats carry each field's unk count; 3: and every file's size and sha256


@dataclasses.dataclass(frozen=True)
class CompiledField:
  """One text field of every document, as ids, with the raw byte count of each document."""

  tokens: np.ndarray  # int32 [T]
  offsets: np.ndarray  # int64 [N + 1]
  nbytes: np.ndarray  # int64 [N]

  def __len__(self) -> int:
    return len(self.nbytes)

  def doc(self, i: int) -> np.ndarray:
    return self.tokens[self.offsets[i] : self.offsets[i + 1]]

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  @classmethod
  def from_docs(cls, docs: Sequence[Sequence[int]], nbytes: Sequence[int]) -> CompiledField:
    """Builds a field in memory (tests, small corpora)."""
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate([np.asarray(d, dtype=np.int32) for d in docs]) if docs else np.zeros(0, np.int32)
    return cls(tokens=tokens.astype(np.int32), offsets=offsets, nbytes=np.asarray(nbytes, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class CompiledSplit:
  """A corpus split compiled for one ISA: ``fields['text']`` for prose, ``input``/``target`` for programs.

  ``piece_bytes`` (int64 [vocab_size], the ISA's ``Compiler.piece_bytes``) gives every id's UTF-8 bytes, which
  pipelines need for bits per byte; ``piece_spaces`` (int8 [vocab_size], ``Compiler.piece_spaces``) where each id's
  text has a space, which objectives that choose words (mlm, prefix_lm) need to find them in any ISA;
  ``llmcpu.toolchain.load_split`` fills both from the compiler, ``load`` alone cannot. ``roles``: the ISA's special
  ids (``Compiler.roles``; the project's fixed layout unless the ISA came from an existing tokenizer file).
  """

  fields: dict[str, CompiledField]
  labels: dict[str, list[str]]
  manifest: dict
  piece_bytes: np.ndarray | None = None
  piece_spaces: np.ndarray | None = None
  roles: specials.Roles = specials.OWN

  @property
  def num_docs(self) -> int:
    return len(next(iter(self.fields.values())))

  @property
  def vocab_size(self) -> int:
    return int(self.manifest["vocab_size"])

  @property
  def isa(self) -> str:
    return self.manifest["compiler"]

  @property
  def fingerprint(self) -> str:
    return self.manifest["compiler_fingerprint"]

  @property
  def kind(self) -> str:
    """'text' (one field) or 'seq2seq' (input/target pairs)."""
    return "seq2seq" if "target" in self.fields else "text"


def pair(target: CompiledSplit, source: CompiledSplit) -> CompiledSplit:
  """``target``'s split with its ``input`` field taken from ``source``: the same programs read in another ISA (a
  stitched encoder-decoder reads ``source``'s ISA and writes ``target``'s). Both must hold the same documents: equal
  counts, task labels and input bytes per document, or this is one UserError."""
  if target.kind != "seq2seq" or source.kind != "seq2seq":
    raise UserError(
      "data.input_isa needs a seq2seq corpus (input/target pairs: programs, or prose as spans:CORPUS): a prose "
      "objective draws its input and target from one stream of ids, so they cannot come from two ISAs"
    )
  a, b = target.fields["input"], source.fields["input"]
  same = len(a) == len(b) and target.labels == source.labels and np.array_equal(a.nbytes, b.nbytes)
  if not same or target.manifest.get("corpus") != source.manifest.get("corpus"):
    raise UserError(
      f"ISA {target.isa}'s and ISA {source.isa}'s compiled splits do not hold the same documents "
      f"({len(a)} vs {len(b)} docs, corpus {target.manifest.get('corpus')!r} vs {source.manifest.get('corpus')!r}); "
      "compile both from one corpus into one compile dir"
    )
  manifest = dict(target.manifest, input_compiler=source.isa, input_compiler_fingerprint=source.fingerprint)
  fields = {"input": b, "target": target.fields["target"], "own_input": a}  # own_input: see ``reconstruction``
  return dataclasses.replace(target, fields=fields, manifest=manifest)


def reconstruction(split: CompiledSplit) -> CompiledSplit:
  """Programs whose target is their own input (the ``reconstruct`` objective). A paired split (``pair``) keeps the
  input it reads and gets as target the program in its own ISA (``own_input``)."""
  own = split.fields.get("own_input", split.fields["input"])
  return dataclasses.replace(split, fields={"input": split.fields["input"], "target": own})


def read_manifest(path: str) -> dict | None:
  """The manifest of the split at ``path``, or None when there is no complete split there."""
  if not fs.exists(fs.join(path, MANIFEST)):
    return None
  try:
    return json.loads(fs.read_text(fs.join(path, MANIFEST)))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"corrupt compiled-data manifest {path}/{MANIFEST} ({e}); delete {path} and recompile") from e


def damaged_files(path: str, manifest: dict, *, contents: bool = True) -> list[str]:
  """What differs from the sizes (and, with ``contents``, the sha256) the manifest recorded for each file."""
  out = []
  for name, want in manifest.get("files", {}).items():
    p = fs.join(path, name)
    size = fs.stat(p)[0] if fs.exists(p) else None
    if size is None:
      out.append(f"{name} missing")
    elif size != want["bytes"]:
      out.append(f"{name} has {size} bytes, not {want['bytes']}")
    elif contents and hashlib.sha256(fs.read_bytes(p)).hexdigest() != want["sha256"]:
      out.append(f"{name} does not match its sha256")
  return out


def load(path: str, *, expect_fingerprint: str | None = None) -> CompiledSplit:
  """Memory-maps the split at ``path`` (a bucket's is read whole); checks it was built by ``expect_fingerprint``."""
  manifest = read_manifest(path)
  if manifest is None:
    raise UserError(f"no compiled data at {path}; build it with scripts/compile.py")
  if expect_fingerprint is not None and manifest["compiler_fingerprint"] != expect_fingerprint:
    raise UserError(
      f"compiled data at {path} was built by ISA {manifest['compiler_fingerprint'][:12]} "
      f"({manifest['compiler']}), not {expect_fingerprint[:12]}; recompile it with scripts/compile.py"
    )
  damaged = damaged_files(path, manifest, contents=False)
  if damaged:
    raise UserError(f"corrupt compiled data at {path} ({damaged[0]}); delete it and rerun scripts/compile.py")
  fields = {}
  try:
    for name in manifest["fields"]:
      arrays = {k: fs.load_npy(fs.join(path, f"{name}.{k}.npy"), mmap=True) for k in ("tokens", "offsets", "nbytes")}
      fields[name] = CompiledField(**arrays)
    labels = json.loads(fs.read_text(fs.join(path, "labels.json")))
  except Exception as e:  # OSError/ValueError locally, tf.errors.OpError in a bucket
    raise UserError(f"corrupt compiled data at {path} ({e}); delete it and rerun scripts/compile.py") from e
  split = CompiledSplit(fields=fields, labels=labels, manifest=manifest)
  if split.num_docs != manifest["num_docs"] or any(len(f.tokens) != f.offsets[-1] for f in fields.values()):
    raise UserError(f"corrupt compiled data at {path} (sizes disagree with manifest); delete it and recompile")
  return split


class SplitWriter:
  """Collects encoded documents; ``commit`` writes the split atomically (``fs.staged``, the manifest last)."""

  def __init__(self, path: str, fields: Sequence[str], label_names: Sequence[str] = (), unk_id: int | None = None):
    self.path = path
    self.unk_id = specials.UNK_ID if unk_id is None else unk_id  # the ISA's UNK (an ISA without one: -1, never)
    self._fields = list(fields)
    self._tokens: dict[str, list[np.ndarray]] = {f: [] for f in fields}
    self._lengths: dict[str, list[int]] = {f: [] for f in fields}
    self._nbytes: dict[str, list[int]] = {f: [] for f in fields}
    self._labels: dict[str, list[str]] = {name: [] for name in label_names}

  def add(self, field: str, flat: np.ndarray, lengths: np.ndarray, texts: Sequence[str]) -> None:
    """Appends a batch of documents: their ids concatenated, each one's length, and their raw texts."""
    if len(lengths) != len(texts):
      raise ValueError(f"{len(lengths)} encodings for {len(texts)} texts")
    self._tokens[field].append(np.asarray(flat, dtype=np.int32))
    self._lengths[field].extend(np.asarray(lengths).tolist())
    self._nbytes[field].extend(len(t.encode("utf-8")) for t in texts)

  def add_labels(self, name: str, values: Sequence[str]) -> None:
    self._labels[name].extend(values)

  def commit(self, manifest: dict) -> dict:
    counts = {len(v) for v in self._lengths.values()} | {len(v) for v in self._labels.values()}
    if len(counts) > 1:
      raise ValueError(f"fields disagree on the number of documents: {counts}")
    manifest = dict(manifest, format=FORMAT_VERSION, fields=self._fields, num_docs=counts.pop() if counts else 0)
    manifest["stats"] = {}
    files: dict[str, dict] = {}  # name → size and sha256, checked whenever the split is reused
    with fs.staged(self.path, MANIFEST) as out:

      def write(name: str, data: bytes) -> None:
        fs.write_bytes(fs.join(out, name), data)
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

      for f in self._fields:
        tokens = np.concatenate(self._tokens[f]) if self._tokens[f] else np.zeros(0, np.int32)
        offsets = np.zeros(len(self._lengths[f]) + 1, np.int64)
        np.cumsum(self._lengths[f], out=offsets[1:])
        for kind, array in (
          ("tokens", tokens),
          ("offsets", offsets),
          ("nbytes", np.asarray(self._nbytes[f], np.int64)),
        ):
          write(f"{f}.{kind}.npy", fs.npy_bytes(array))
        manifest["stats"][f] = {
          "tokens": int(len(tokens)),
          "bytes": int(sum(self._nbytes[f])),
          "unk": int(np.count_nonzero(tokens == self.unk_id)),
        }
      write("labels.json", json.dumps(self._labels).encode("utf-8"))
      manifest["files"] = files
      fs.write_text(fs.join(out, MANIFEST), json.dumps(manifest, indent=1))
    return manifest
