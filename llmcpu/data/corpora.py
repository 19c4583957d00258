"""Corpora: every source of documents, reachable by one corpus string.

Accepted corpus strings (``load_corpus(spec)``):

  python_docs              English prose shipped with this Python (pydoc topics, stdlib docstrings); TFDS builder
  programs[:small]         synthetic computations with ground truth (fields input/target, label task); TFDS builder
  tfds:NAME[:TEXT_KEY]     any prepared TFDS text dataset, e.g. tfds:lm1b or tfds:wiki40b/en:text (key default text)
  text:GLOB                your own UTF-8 files: one document per file; files over 64 KiB split at blank lines
  spans:CORPUS             span corruption done on a prose CORPUS's text (seq2seq; see ``llmcpu.data.spans``)

The two embedded corpora are prepared offline into the TFDS ``data_dir`` on first use (seconds) and then read back
through TFDS like any other dataset. Splits come from a hash of a stable key, so a document's split never depends
on the others: ``text:`` documents and ``programs`` operands 90/5/5 into train/validation/test, ``python_docs``
75/5/20 by source module/topic (see ``llmcpu.data.python_docs``).

TensorFlow Datasets is imported lazily: importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from llmcpu.data import programs, python_docs, spans
from llmcpu.data.sources import SPLITS, digest, import_tfds, split_for, tf_cpu_only
from llmcpu.errors import UserError

FORMS = "python_docs, programs, programs:small, tfds:NAME[:TEXT_KEY], text:GLOB, spans:CORPUS"
# The embedded builders by TFDS name: looking one up defines (so registers) its class, which TFDS needs first.
_BUILDERS = {"python_docs": python_docs.builder_class, "programs": programs.builder_class}
TEXT_CHUNK_BYTES = 64 * 1024  # text: files larger than this are split at blank lines into documents up to this size

Reader = Callable[[str, "int | None"], Iterator[dict[str, str]]]


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A named collection of documents in splits; ``documents(split)`` streams them in a fixed order."""

  spec: str  # the corpus string as given
  name: str  # filesystem-safe, stable key for caches
  fields: tuple[str, ...]  # text fields of every document
  label_fields: tuple[str, ...]  # per-document labels (not text to model)
  splits: tuple[str, ...]
  fingerprint: str  # hex digest; changes whenever the documents would change
  info: dict  # provenance (python_version, num_docs, data_dir, ...)
  reader: Reader | None = dataclasses.field(default=None, repr=False, compare=False)
  marked: bool = False  # its texts hold sentinel marks (spans:CORPUS): compiled by Compiler.encode_marked

  def documents(self, split: str, limit: int | None = None) -> Iterator[dict[str, str]]:
    """Yields ``{field: str}`` for every field and label field of each document of ``split``, in a fixed order."""
    if split not in self.splits:
      raise UserError(f"corpus {self.spec!r} has no split {split!r}; use one of: {', '.join(self.splits)}")
    if limit is not None and limit < 0:
      raise UserError(f"document limit must be >= 0, got {limit}")
    if self.reader is None:
      raise UserError(f"corpus {self.spec!r} has no reader; build it with llmcpu.data.load_corpus")
    return self.reader(split, limit)


def load_corpus(spec: str, *, data_dir: str | None = None) -> Corpus:
  """Resolves a corpus string; ``data_dir`` is the TFDS data dir (None: TFDS default or $TFDS_DATA_DIR)."""
  kind, _, rest = spec.partition(":")
  if kind == "python_docs" and not rest:
    return _load_python_docs(spec, data_dir)
  if kind == "programs" and rest in ("", "small"):
    return _load_programs(spec, rest or "default", data_dir)
  if kind == "tfds" and rest:
    return _load_tfds(spec, rest, data_dir)
  if kind == "text" and rest:
    return _load_text(spec, rest)
  if kind == "spans" and rest:
    return spans.span_corpus(spec, load_corpus(rest, data_dir=data_dir))
  raise UserError(f"unknown corpus {spec!r}; use one of: {FORMS}")


# --- shared helpers -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TfdsReader:
  """Reads one feature per corpus field from a prepared TFDS dataset (picklable: no open handles)."""

  name: str  # tfds.builder name, e.g. "lm1b" or "python_docs/py3.11:1.0.0"
  data_dir: str | None
  keys: tuple[tuple[str, str], ...]  # (corpus field, TFDS feature key)
  module: str | None = None  # its builder_class() is called first so the builder class is registered

  def __call__(self, split: str, limit: int | None) -> Iterator[dict[str, str]]:
    tfds = import_tfds()
    tf_cpu_only()
    if self.module:
      importlib.import_module(self.module).builder_class()
    builder = tfds.builder(self.name, data_dir=self.data_dir)
    # No autocache: a partial read (limit, an early stop) would warn that the cache was discarded.
    read_config = tfds.ReadConfig(try_autocache=False)
    ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    if limit is not None:
      ds = ds.take(limit)
    # Batches cross the TF/Python boundary ~100x faster than single examples.
    ds = ds.map(lambda ex: {key: ex[key] for _, key in self.keys}).batch(512)
    for batch in tfds.as_numpy(ds):
      columns = [(field, batch[key]) for field, key in self.keys]
      for i in range(len(columns[0][1])):
        yield {field: _as_str(col[i]) for field, col in columns}


def _as_str(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _safe(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


# --- embedded TFDS builders ---------------------------------------------------------------------------------------


def _prepared(cls: type, config: str, data_dir: str | None, stale: Callable[[Any], bool] = lambda b: False):
  """Returns ``cls`` prepared offline in ``data_dir``, generating it first when missing or stale."""
  tfds = import_tfds()
  tf_cpu_only()
  builder = cls(config=config, data_dir=data_dir)
  if builder.is_prepared() and not stale(builder):
    return builder
  modes = tfds.download.GenerateMode
  mode = modes.FORCE_REDOWNLOAD if builder.is_prepared() else modes.REUSE_DATASET_IF_EXISTS  # prepared = stale
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
  except Exception:
    again = cls(config=config, data_dir=data_dir)
    if again.is_prepared() and not stale(again):  # another process prepared it at the same time
      return again
    raise
  return cls(config=config, data_dir=data_dir)  # fresh: its info comes from what was written


def _embedded_corpus(spec: str, name: str, builder: Any, module: str, keys: tuple, labels: tuple) -> Corpus:
  meta = dict(builder.info.metadata)
  info = {
    "tfds_name": builder.info.full_name,
    "data_dir": os.fspath(builder.data_dir_root),
    **meta,
  }
  # Where the stdlib lives is provenance, not content: the same docs on another machine keep their fingerprint.
  fingerprint = digest({"tfds_name": builder.info.full_name, "metadata": {k: meta[k] for k in meta if k != "stdlib"}})
  exact = f"{builder.name}/{builder.builder_config.name}:{builder.version}"  # tfds.builder syntax for this variant
  reader = _TfdsReader(exact, os.fspath(builder.data_dir_root), keys + labels, module)
  return Corpus(
    spec=spec,
    name=name,
    fields=tuple(f for f, _ in keys),
    label_fields=tuple(f for f, _ in labels),
    splits=SPLITS,
    fingerprint=fingerprint,
    info=info,
    reader=reader,
  )


def _load_python_docs(spec: str, data_dir: str | None) -> Corpus:
  config = python_docs.config_name()
  builder = _prepared(python_docs.builder_class(), config, data_dir, python_docs.is_stale)
  return _embedded_corpus(spec, f"python_docs-{config}", builder, python_docs.__name__, (("text", "text"),), ())


def _load_programs(spec: str, config: str, data_dir: str | None) -> Corpus:
  builder = _prepared(programs.builder_class(), config, data_dir)
  name = "programs" if config == "default" else f"programs-{config}"
  keys = (("input", "input"), ("target", "target"))
  return _embedded_corpus(spec, name, builder, programs.__name__, keys, (("task", "task"),))


# --- tfds:NAME[:TEXT_KEY] -----------------------------------------------------------------------------------------


def _load_tfds(spec: str, rest: str, data_dir: str | None) -> Corpus:
  parts = rest.split(":")
  if len(parts) > 2 or not all(parts):
    raise UserError(f"bad corpus {spec!r}; write tfds:NAME or tfds:NAME:TEXT_KEY, e.g. tfds:lm1b:text")
  name, key = parts[0], parts[1] if len(parts) == 2 else "text"
  tfds = import_tfds()
  # Our own builders must be registered before TFDS looks the name up (tfds:python_docs works once prepared).
  if name.split("/")[0] in _BUILDERS:
    _BUILDERS[name.split("/")[0]]()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"unknown TFDS dataset {name!r}; see `tfds.list_builders()` for names") from None
  except Exception as e:  # a builder whose code needs something missing (a package, a config)
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise UserError(f"cannot open TFDS dataset {name!r}: {first}") from None
  root = os.fspath(builder.data_dir_root)
  # Checked before anything could download: offline, an unprepared dataset must fail at once.
  if not builder.is_prepared():
    raise UserError(
      f"tfds dataset {name!r} is not prepared under data_dir={root}; prepare it where there is network "
      f"(tfds build {name} --data_dir={root}) or point --config.data_dir at where it is"
    )
  features = builder.info.features
  available = list(features.keys()) if hasattr(features, "keys") else []
  if key not in available:
    raise UserError(f"TFDS dataset {name!r} has no feature {key!r}; available: {', '.join(available) or 'none'}")
  splits = _ordered_splits(builder.info.splits.keys())
  num_docs = {s: int(builder.info.splits[s].num_examples) for s in splits}
  if not splits or not any(num_docs.values()):
    raise UserError(f"corpus {spec!r} is empty: TFDS dataset {name!r} has no examples under data_dir={root}")
  split_sig = {s: [num_docs[s], int(builder.info.splits[s].num_bytes)] for s in splits}
  info = {
    "tfds_name": builder.info.full_name,
    "data_dir": root,
    "text_key": key,
    "num_docs": num_docs,
    "tfds_num_bytes": {s: split_sig[s][1] for s in splits},
  }
  return Corpus(
    spec=spec,
    name=_safe(f"tfds-{name}-{key}"),
    fields=("text",),
    label_fields=(),
    splits=splits,
    fingerprint=digest({"tfds_name": builder.info.full_name, "key": key, "splits": split_sig}),
    info=info,
    reader=_TfdsReader(name, data_dir, (("text", key),)),
  )


def _ordered_splits(names: Any) -> tuple[str, ...]:
  names = list(names)
  return tuple([s for s in SPLITS if s in names] + sorted(s for s in names if s not in SPLITS))


# --- text:GLOB ----------------------------------------------------------------------------------------------------


def _load_text(spec: str, pattern: str) -> Corpus:
  full = os.path.abspath(os.path.expanduser(pattern))
  files = sorted(p for p in glob.glob(full, recursive=True) if os.path.isfile(p))
  if not files:
    hint = " ('[' starts a glob character class: write [[] for a literal '[')" if "[" in pattern else ""
    raise UserError(f"no files match {spec!r}{hint}; check the path or quote the glob so your shell does not expand it")
  base = os.path.commonpath([os.path.dirname(p) for p in files])
  rels = tuple(os.path.relpath(p, base) for p in files)
  h = hashlib.sha256()
  keys: list[bytes] = []
  sizes: list[int] = []
  for rel, text in zip(rels, _read_texts(files, spec), strict=True):
    h.update(json.dumps([rel, len(text)]).encode() + b"\0" + text.encode("utf-8"))
    for doc in text_documents(text):
      data = doc.encode("utf-8")
      keys.append(hashlib.sha256(data).digest())  # by content: duplicate documents share a split
      sizes.append(len(data))
  if not keys:
    raise UserError(f"corpus {spec!r} is empty: the {len(files)} matched file(s) hold no text")
  if len(keys) < 3:
    raise UserError(f"corpus {spec!r} has {len(keys)} document(s); need at least 3 for train/validation/test")
  assign = _assign_splits(keys)
  reader = _TextReader(tuple(files), tuple(_stat(p) for p in files), assign, spec)
  num_docs = {s: assign.count(i) for i, s in enumerate(SPLITS)}
  num_bytes = {s: sum(n for n, a in zip(sizes, assign, strict=True) if a == i) for i, s in enumerate(SPLITS)}
  info = {"glob": full, "base": base, "num_files": len(files), "num_docs": num_docs, "num_bytes": num_bytes}
  return Corpus(
    spec=spec,
    name=f"text-{hashlib.sha256(full.encode()).hexdigest()[:8]}",
    fields=("text",),
    label_fields=(),
    splits=SPLITS,
    fingerprint=digest({"text_format": 1, "chunk": TEXT_CHUNK_BYTES, "files": h.hexdigest()}),
    info=info,
    reader=reader,
  )


def text_documents(text: str) -> list[str]:
  """A file's documents: the whole text, or chunks cut at blank lines when large; they concatenate back to it."""
  if len(text.encode("utf-8")) <= TEXT_CHUNK_BYTES:
    return [text] if text.strip() else []
  parts = re.split(r"(\n[ \t]*\n(?:[ \t]*\n)*)", text)  # odd items are the blank-line separators
  units = ["".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]
  chunks, cur, size = [], [], 0
  for unit in units:
    n = len(unit.encode("utf-8"))
    if cur and size + n > TEXT_CHUNK_BYTES:
      chunks.append("".join(cur))
      cur, size = [], 0
    cur.append(unit)
    size += n
  if cur:
    chunks.append("".join(cur))
  return [c for c in chunks if c.strip()]


def _read_texts(files: list[str] | tuple[str, ...], spec: str) -> Iterator[str]:
  for path in files:
    with open(path, "rb") as f:
      data = f.read()
    try:
      yield data.decode("utf-8")
    except UnicodeDecodeError as e:
      raise UserError(
        f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it or leave it out of {spec!r}"
      ) from None


def _assign_splits(keys: list[bytes]) -> bytes:
  """Split index per document by hash; with few documents an empty split borrows one from the largest."""
  assign = bytearray(SPLITS.index(split_for(k)) for k in keys)
  for want in range(len(SPLITS)):
    if want in assign:
      continue
    donor = max(range(len(SPLITS)), key=lambda s: assign.count(s))
    i = min((i for i, s in enumerate(assign) if s == donor), key=lambda i: keys[i])
    assign[i] = want
  return bytes(assign)


def _stat(path: str) -> tuple[int, int]:
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


@dataclasses.dataclass(frozen=True)
class _TextReader:
  """Re-reads the files on each pass (no corpus held in memory), refusing files changed since loading."""

  files: tuple[str, ...]
  stats: tuple[tuple[int, int], ...]
  assign: bytes  # split index of each document in file order
  spec: str

  def __call__(self, split: str, limit: int | None) -> Iterator[dict[str, str]]:
    want, i, n = SPLITS.index(split), 0, 0
    for path, stat, text in zip(self.files, self.stats, _read_texts(self.files, self.spec), strict=True):
      if _stat(path) != stat:
        raise UserError(f"{path} changed after corpus {self.spec!r} was loaded; load it again")
      for doc in text_documents(text):
        if limit is not None and n >= limit:
          return
        if self.assign[i] == want:
          n += 1
          yield {"text": doc}
        i += 1
