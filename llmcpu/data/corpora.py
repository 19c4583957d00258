"""Corpora: every source of documents, reachable by one corpus string.

Accepted corpus strings (``load_corpus(spec)``):

  python_docs              English prose shipped with this Python (pydoc topics, stdlib docstrings); TFDS builder
  programs[:small]         synthetic computations with ground truth (fields input/target, label task); TFDS builder
  tfds:NAME[:TEXT_KEY]     any prepared TFDS text dataset, e.g. tfds:lm1b or tfds:wiki40b/en:text (key default text)
  text:GLOB                your own UTF-8 files, cut into documents of at most doc_bytes (see llmcpu.data.files)
  jsonl:GLOB[:FIELD]       one text per JSON line (field default text), cut the same way
  csv:GLOB[:COLUMN]        one text per row of the named column (header row; default text); tsv:GLOB[:COLUMN] too
  spans:CORPUS             span corruption done on a prose CORPUS's text (seq2seq; see ``llmcpu.data.spans``)

The two embedded corpora are prepared offline into the TFDS ``data_dir`` on first use (seconds) and then read back
through TFDS like any other dataset. Splits come from a hash of a stable key, so a document's split never depends
on the others: ``programs`` operands 90/5/5 into train/validation/test, ``python_docs`` 75/5/20 by source
module/topic (see ``llmcpu.data.python_docs``). Your own files go 75/5/20 *by bytes*, whole files or contiguous
regions of a file (see ``llmcpu.data.files``). ``tfds:`` keeps the dataset's own splits; its records over
``doc_bytes`` are cut like a text file.

TensorFlow Datasets is imported lazily: importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from llmcpu.data import files, programs, python_docs, spans
from llmcpu.data.sources import SPLITS, digest, import_tfds, tf_cpu_only
from llmcpu.errors import UserError

FORMS = (
  "python_docs, programs, programs:small, tfds:NAME[:TEXT_KEY], text:GLOB, jsonl:GLOB[:FIELD], csv:GLOB[:COLUMN], "
  "tsv:GLOB[:COLUMN], spans:CORPUS"
)
# The embedded builders by TFDS name: looking one up defines (so registers) its class, which TFDS needs first.
_BUILDERS = {"python_docs": python_docs.builder_class, "programs": programs.builder_class}
DOC_BYTES = files.DOC_BYTES  # documents of your own files and long tfds: records: at most this many bytes

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


def load_corpus(spec: str, *, data_dir: str | None = None, doc_bytes: int = DOC_BYTES) -> Corpus:
  """Resolves a corpus string; ``data_dir`` is the TFDS data dir (None: TFDS default or $TFDS_DATA_DIR);
  ``doc_bytes`` the most bytes of a document cut from your own files or a long ``tfds:`` record."""
  kind, _, rest = spec.partition(":")
  if kind == "python_docs" and not rest:
    return _load_python_docs(spec, data_dir)
  if kind == "programs" and rest in ("", "small"):
    return _load_programs(spec, rest or "default", data_dir)
  if kind == "tfds" and rest:
    files.check_doc_bytes(doc_bytes)
    return _load_tfds(spec, rest, data_dir, doc_bytes)
  if kind in files.FORMATS and rest:
    return _load_files(spec, doc_bytes)
  if kind == "spans" and rest:
    return spans.span_corpus(spec, load_corpus(rest, data_dir=data_dir, doc_bytes=doc_bytes))
  raise UserError(f"unknown corpus {spec!r}; use one of: {FORMS}")


# --- shared helpers -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TfdsReader:
  """Reads one feature per corpus field from a prepared TFDS dataset (picklable: no open handles)."""

  name: str  # tfds.builder name, e.g. "lm1b" or "python_docs/py3.11:1.0.0"
  data_dir: str | None
  keys: tuple[tuple[str, str], ...]  # (corpus field, TFDS feature key)
  module: str | None = None  # its builder_class() is called first so the builder class is registered
  doc_bytes: int = 0  # > 0: a record's single text field is cut into documents of at most this many bytes

  def __call__(self, split: str, limit: int | None) -> Iterator[dict[str, str]]:
    tfds = import_tfds()
    tf_cpu_only()
    if self.module:
      importlib.import_module(self.module).builder_class()
    builder = tfds.builder(self.name, data_dir=self.data_dir)
    # No autocache: a partial read (limit, an early stop) would warn that the cache was discarded.
    read_config = tfds.ReadConfig(try_autocache=False)
    ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    if limit is not None and not self.doc_bytes:  # cut records make several documents: counted below instead
      ds = ds.take(limit)
    # Batches cross the TF/Python boundary ~100x faster than single examples.
    ds = ds.map(lambda ex: {key: ex[key] for _, key in self.keys}).batch(512)
    n = 0
    for batch in tfds.as_numpy(ds):
      columns = [(field, batch[key]) for field, key in self.keys]
      for i in range(len(columns[0][1])):
        docs = [{f: _as_str(col[i]) for f, col in columns}]
        if self.doc_bytes:
          docs = [{"text": d} for d in files.cut_documents(docs[0]["text"], self.doc_bytes)]
        for doc in docs:
          if limit is not None and n >= limit:
            return
          n += 1
          yield doc


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


def _load_tfds(spec: str, rest: str, data_dir: str | None, doc_bytes: int) -> Corpus:
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
    "doc_bytes": doc_bytes,
    "num_records": num_docs,  # a record over doc_bytes makes several documents
    "tfds_num_bytes": {s: split_sig[s][1] for s in splits},
  }
  return Corpus(
    spec=spec,
    name=_safe(f"tfds-{name}-{key}"),
    fields=("text",),
    label_fields=(),
    splits=splits,
    fingerprint=digest({"tfds_name": builder.info.full_name, "key": key, "splits": split_sig, "doc_bytes": doc_bytes}),
    info=info,
    reader=_TfdsReader(name, data_dir, (("text", key),), doc_bytes=doc_bytes),
  )


def _ordered_splits(names: Any) -> tuple[str, ...]:
  names = list(names)
  return tuple([s for s in SPLITS if s in names] + sorted(s for s in names if s not in SPLITS))


# --- text:, jsonl:, csv:, tsv: -----------------------------------------------------------------------------------


def _load_files(spec: str, doc_bytes: int) -> Corpus:
  loaded = files.load_files(spec, doc_bytes)
  return Corpus(spec=spec, fields=("text",), label_fields=(), splits=SPLITS, **loaded)
