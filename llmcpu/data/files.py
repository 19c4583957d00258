"""Your own files as a corpus: ``text:``, ``jsonl:``, ``csv:`` and ``tsv:``, cut into documents and split losslessly.

Documents. A text (a ``text:`` file, a ``jsonl:`` record's field, a ``csv:``/``tsv:`` cell) is cut into documents
of at most ``doc_bytes`` UTF-8 bytes (``DOC_BYTES`` by default): whole paragraphs (cut at blank lines) packed in
order; a paragraph over the limit is cut at line ends, a line over it at spaces, a word over it between characters.
A text's documents concatenate back to it byte for byte (a blank piece joins its neighbour instead of being dropped);
a blank text gives none. No document spans two texts.

Splits. The unit of assignment is a file when it holds at most ``1 / UNITS`` of the corpus' bytes, else contiguous
regions of the file of about that size (at document boundaries): with many files no file straddles two splits, with
a few big ones each is cut into regions, never interleaved document by document. Units are taken in the order of
the sha256 of their content (so identical units share a split): test until it holds ``SPLIT_PERCENTS`` test share
of the bytes, then validation until it holds its share, the rest train — whatever the number of files, the test
split holds at least 20% of the bytes (and at most one unit more).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator

from llmcpu.data.sources import SPLITS, digest
from llmcpu.errors import UserError

# At most this many bytes per document. The embedded prose cuts ~2 KB parts (python_docs.SECTION_BYTES); half that
# here, because a prompt is drawn from one held-out document: a 300 KB corpus' 20% test split holds ~30 documents of
# 2 KB — fewer than the 64 prompts of the quickstart — and ~75 of at most 1 KB (packed whole paragraphs average ~800).
DOC_BYTES = 1024
MIN_DOC_BYTES = 64  # a smaller limit cuts most sentences: refused
SPLIT_PERCENTS = (75, 5, 20)  # (train, validation, test) share of the bytes, as python_docs
UNITS = 50  # a unit (file or region) holds at most 1/UNITS of the corpus: split shares are met within ~2%
FORMATS = ("text", "jsonl", "csv", "tsv")
FORMAT_VERSION = 2  # 1: one document per file (64 KiB chunks), 90/5/5 by document; 2: this module
# Blank lines, then line ends, then runs of spaces: where a text over the limit is cut, coarsest first.
_BREAKS = (r"\n[ \t]*\n(?:[ \t]*\n)*", r"\n", r"[ \t]+")


def _nbytes(text: str) -> int:
  return len(text.encode("utf-8"))


def cut_documents(text: str, limit: int = DOC_BYTES) -> list[str]:
  """``text`` as documents of at most ``limit`` bytes (see the module docstring); ``"".join`` gives it back."""
  if not text.strip():
    return []
  docs: list[str] = []
  cur, size = "", 0
  for piece in _pieces(text, limit, 0):
    n = _nbytes(piece)
    if cur and size + n > limit:
      docs.append(cur)
      cur, size = "", 0
    cur, size = cur + piece, size + n
  docs.append(cur)
  # A blank document (e.g. the blank lines opening a file) joins its neighbour: nothing is dropped, none is empty.
  out: list[str] = []
  for d in docs:
    if out and (not d.strip() or not out[-1].strip()):
      out[-1] += d
    else:
      out.append(d)
  return out


def _pieces(text: str, limit: int, level: int) -> list[str]:
  """``text`` cut at ``_BREAKS[level]`` (each piece keeps the break after it), recursing into pieces over ``limit``."""
  if _nbytes(text) <= limit:
    return [text]
  if level == len(_BREAKS):
    return _hard_cut(text, limit)
  parts = re.split(f"({_BREAKS[level]})", text)  # odd items are the breaks
  units = ["".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]
  return [p for u in units if u for p in _pieces(u, limit, level + 1)]


def _hard_cut(text: str, limit: int) -> list[str]:
  out, cur, size = [], [], 0
  for ch in text:
    n = _nbytes(ch)
    if cur and size + n > limit:
      out.append("".join(cur))
      cur, size = [], 0
    cur.append(ch)
    size += n
  return [*out, "".join(cur)]


# --- reading files ------------------------------------------------------------------------------------------------


def parse_spec(spec: str) -> tuple[str, str, str]:
  """``FORMAT:PATH_OR_GLOB[:FIELD]`` → (format, glob, field); ``text:`` has no field (its files are the text)."""
  kind, _, rest = spec.partition(":")
  if kind not in FORMATS or not rest:
    raise UserError(f"bad corpus {spec!r}; write text:GLOB, jsonl:GLOB[:FIELD], csv:GLOB[:COLUMN] or tsv:GLOB[:COLUMN]")
  if kind == "text":
    return kind, rest, ""
  head, sep, tail = rest.rpartition(":")
  if sep and head and tail and "/" not in tail:  # a ':' inside a path (before its last '/') is part of the path
    return kind, head, tail
  if sep and not tail:
    raise UserError(f"bad corpus {spec!r}: empty field name after ':'; write {kind}:GLOB or {kind}:GLOB:FIELD")
  return kind, rest, "text"


def read_texts(path: str, kind: str, field: str) -> Iterator[tuple[int, str]]:
  """``(line, text)`` of every text in the file: line 1 for a ``text:`` file, else each record's starting line."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b"\n") + 1
    raise UserError(
      f"{path}:{line}: not UTF-8 (bad byte at offset {e.start}); convert the file or leave it out of the corpus"
    ) from None
  if kind == "text":
    yield 1, text
  elif kind == "jsonl":
    yield from _jsonl_texts(path, text.removeprefix("\ufeff"), field)
  else:
    yield from _table_texts(path, text.removeprefix("\ufeff"), field, "\t" if kind == "tsv" else ",")


def _jsonl_texts(path: str, text: str, field: str) -> Iterator[tuple[int, str]]:
  for line_no, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028 as is
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{line_no}: not a JSON line ({e.msg} at column {e.colno}); fix or remove it") from None
    if not isinstance(record, dict):
      raise UserError(f"{path}:{line_no}: a JSON object expected, got {type(record).__name__}; one object per line")
    if field not in record:
      keys = ", ".join(map(str, record)) or "none"
      raise UserError(f"{path}:{line_no}: no field {field!r} (fields: {keys}); name it: jsonl:GLOB:FIELD")
    value = record[field]
    if not isinstance(value, str):
      raise UserError(f"{path}:{line_no}: field {field!r} is {type(value).__name__}, not a string")
    yield line_no, value


def _table_texts(path: str, text: str, column: str, delimiter: str) -> Iterator[tuple[int, str]]:
  csv.field_size_limit(1 << 30)  # cells of long documents: the default is 128 KiB
  lines = text.splitlines(keepends=True)
  reader = csv.reader(lines, delimiter=delimiter, strict=True)
  kind = "tsv" if delimiter == "\t" else "csv"
  try:
    header = next(reader, None)
    if header is None:
      return
    if column not in header:
      raise UserError(f"{path}:1: no column {column!r} (columns: {', '.join(header)}); name it: {kind}:GLOB:COLUMN")
    index, start = header.index(column), reader.line_num + 1
    for row in reader:
      if row:  # a blank line
        if len(row) <= index:
          raise UserError(f"{path}:{start}: {len(row)} cells, but column {column!r} is cell {index + 1} of the header")
        yield start, row[index]
      start = reader.line_num + 1
  except csv.Error as e:
    raise UserError(f"{path}:{reader.line_num}: not {kind} ({e}); fix the quoting of that row") from None


def _file_documents(path: str, kind: str, field: str, limit: int) -> list[str]:
  return [doc for _, text in read_texts(path, kind, field) for doc in cut_documents(text, limit)]


# --- splits -------------------------------------------------------------------------------------------------------


def units_of(file_sizes: list[list[int]]) -> list[tuple[int, int, int]]:
  """``(file, first doc, end doc)`` of every unit: a whole file, or contiguous regions of a file over the cap."""
  total = sum(sum(s) for s in file_sizes)
  cap = max(1, total // UNITS)
  units = []
  for f, sizes in enumerate(file_sizes):
    size = sum(sizes)
    k = max(1, round(size / cap))
    # Each document goes to the region where its middle byte falls: k contiguous regions, as even as documents allow.
    region, start = [], 0
    for n in sizes:
      region.append(min(k - 1, (start + n // 2) * k // max(size, 1)))
      start += n
    bounds = [i for i in range(1, len(sizes)) if region[i] != region[i - 1]]
    edges = [0, *bounds, len(sizes)]
    units += [(f, a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]
  return units


def assign_units(keys: list[bytes], sizes: list[int], percents: tuple[int, int, int] = SPLIT_PERCENTS) -> list[int]:
  """Split index (into ``SPLITS``) of every unit: by key order, test filled to its byte share, then validation, then
  the rest train. Identical keys form one group, which shares a split; each split gets a group (needs ≥ 3 groups)."""
  groups: dict[bytes, list[int]] = {}
  for i, k in enumerate(keys):
    groups.setdefault(k, []).append(i)
  if len(groups) < len(SPLITS):
    raise ValueError(f"{len(groups)} distinct units cannot fill {len(SPLITS)} splits")
  total = sum(sizes)
  fill = [(2, percents[2] * total / 100), (1, percents[1] * total / 100), (0, math.inf)]  # test, validation, train
  out = [0] * len(keys)
  pos, filled, placed = 0, 0, 0
  for g, key in enumerate(sorted(groups)):
    left, later = len(groups) - g, len(fill) - 1 - pos  # groups to place (this one too), splits after this one
    if placed and (filled >= fill[pos][1] or left <= later):  # full, or the rest is needed by the later splits
      pos, filled, placed = pos + 1, 0, 0
    for i in groups[key]:
      out[i] = fill[pos][0]
      filled += sizes[i]
    placed += 1
  return out


# --- the corpus ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileReader:
  """Re-reads the files on each pass (no corpus held in memory), refusing files changed since loading."""

  files: tuple[str, ...]
  stats: tuple[tuple[int, int], ...]
  assign: bytes  # split index of each document, in file order
  kind: str
  field: str
  limit: int
  spec: str

  def __call__(self, split: str, limit: int | None) -> Iterator[dict[str, str]]:
    want, i, n = SPLITS.index(split), 0, 0
    for path, stat in zip(self.files, self.stats, strict=True):
      if _stat(path) != stat:
        raise UserError(f"{path} changed after corpus {self.spec!r} was loaded; load it again")
      for doc in _file_documents(path, self.kind, self.field, self.limit):
        if limit is not None and n >= limit:
          return
        if self.assign[i] == want:
          n += 1
          yield {"text": doc}
        i += 1


def _stat(path: str) -> tuple[int, int]:
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


def check_doc_bytes(doc_bytes: int) -> None:
  if not isinstance(doc_bytes, int) or doc_bytes < MIN_DOC_BYTES:
    raise UserError(f"doc_bytes={doc_bytes!r} is too small to hold a sentence; use at least {MIN_DOC_BYTES}")


def matching_files(spec: str, pattern: str) -> list[str]:
  full = os.path.abspath(os.path.expanduser(pattern))
  files = sorted(p for p in glob.glob(full, recursive=True) if os.path.isfile(p))
  if not files:
    hint = " ('[' starts a glob character class: write [[] for a literal '[')" if "[" in pattern else ""
    raise UserError(f"no files match {spec!r}{hint}; check the path or quote the glob so your shell does not expand it")
  return files


def load_files(spec: str, doc_bytes: int = DOC_BYTES) -> dict:
  """The ``Corpus`` fields (name, fingerprint, info, reader) of a ``text:``/``jsonl:``/``csv:``/``tsv:`` spec."""
  kind, pattern, field = parse_spec(spec)
  check_doc_bytes(doc_bytes)
  files = matching_files(spec, pattern)
  base = os.path.commonpath([os.path.dirname(p) for p in files])
  stats = tuple(_stat(p) for p in files)  # before reading: a file changed while being read is caught on the next pass
  h = hashlib.sha256()
  sizes: list[list[int]] = []
  digests: list[list[bytes]] = []  # per document: a unit's key hashes these, not its text (memory: 32 bytes a doc)
  for path in files:
    docs = _file_documents(path, kind, field, doc_bytes)
    h.update(json.dumps([os.path.relpath(path, base), len(docs)]).encode() + b"\0" + "\0".join(docs).encode("utf-8"))
    sizes.append([_nbytes(d) for d in docs])
    digests.append([hashlib.sha256(d.encode("utf-8")).digest() for d in docs])
  units = units_of(sizes)
  keys = [hashlib.sha256(b"".join(digests[f][a:b])).digest() for f, a, b in units]  # same text, same key
  if not any(sizes):
    raise UserError(f"corpus {spec!r} is empty: the {len(files)} matched file(s) hold no text")
  if len(set(keys)) < len(SPLITS):
    raise UserError(
      f"corpus {spec!r} is too small: {sum(map(len, sizes))} document(s) in {len(set(keys))} distinct part(s); "
      "need at least 3 for train/validation/test"
    )
  unit_split = assign_units(keys, [sum(sizes[f][a:b]) for f, a, b in units])
  doc_split = [s for (f, a, b), s in zip(units, unit_split, strict=True) for _ in range(a, b)]
  flat_sizes = [n for s in sizes for n in s]
  info = {
    "glob": os.path.abspath(os.path.expanduser(pattern)),
    "base": base,
    "format": kind,
    "field": field,
    "doc_bytes": doc_bytes,
    "num_files": len(files),
    "files_per_split": {
      s: len({f for (f, _, _), u in zip(units, unit_split, strict=True) if u == i}) for i, s in _ix()
    },
    "num_units": len(units),
    "num_docs": {s: doc_split.count(i) for i, s in _ix()},
    "num_bytes": {s: sum(n for n, d in zip(flat_sizes, doc_split, strict=True) if d == i) for i, s in _ix()},
  }
  fingerprint = digest(
    {"format": FORMAT_VERSION, "kind": kind, "field": field, "doc_bytes": doc_bytes, "files": h.hexdigest()}
  )
  reader = FileReader(tuple(files), stats, bytes(doc_split), kind, field, doc_bytes, spec)
  key = f"{info['glob']}:{field}" if field else info["glob"]
  name = f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
  return {"name": name, "fingerprint": fingerprint, "info": info, "reader": reader}


def _ix() -> Iterator[tuple[int, str]]:
  return enumerate(SPLITS)
