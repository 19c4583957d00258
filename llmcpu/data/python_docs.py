"""The ``python_docs`` corpus: English prose shipped with every Python install, as a TFDS builder.

Sources:
  * one per pydoc topic (``pydoc_data.topics``: the language reference pages ``help()`` shows), ``topic:NAME``,
    made of paragraphs;
  * one per standard-library module, ``module:DOTTED.NAME``, made of sections: the line ``module DOTTED.NAME``, the
    module docstring, then each class's and function's docstring under a header line such as ``class JSONDecoder``
    or ``def JSONDecoder.decode(self, s)``.

Documents: each source is cut into parts of about ``SECTION_BYTES`` (2 KB) of whole sections (topics: whole
paragraphs; a single huge section is cut at its paragraphs), id ``SOURCE#N`` from 1 (``module:json.decoder#2``,
``topic:assignment#1``); every part starts with its source's first line (``module json.decoder``, the topic's
title), and a small source is a single part. Order: topics by name, then modules by path, parts in order.

Docstrings are read from the stdlib's own ``.py`` sources with ``ast`` (never imported: imports have side effects),
skipping site-packages, test directories and ``test_*.py``. The text depends on the Python version, so the builder
config is ``py<major>.<minor>``, the full version is recorded in the metadata, and a dataset prepared by another
micro version is regenerated. Splits: 75/5/20 by sha256 of the *source* id, so all parts of one module or topic
are in the same split (3.11.7: 1165/78/336 documents, 1.88 MB/123 KB/576 KB).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import platform
import sys
import sysconfig
import warnings
from collections.abc import Iterator

from llmcpu.data.sources import SPLITS, defined_once, import_tfds, split_for
from llmcpu.errors import UserError

SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})

# Documents are cut to about this many UTF-8 bytes (see split_sections). Whole modules and topics are too few for
# document-level statistics (722 sources on 3.11: half under 1.1 KB, the largest 84 KB), while pieces much smaller
# than a class docstring with its methods lose the context that makes them prose. 2 KB is ~500-700 BPE tokens (a
# row of the `small` preset holds a third to half of one, one of `base` two); sources under ~3 KB stay whole; on
# 3.11 it makes ~1580 documents of 2.57 MB. Bigger parts (3-4 KB) leave too few test documents, see below.
SECTION_BYTES = 2 * 1024
HUGE_SECTION = 2  # a single section over this many times SECTION_BYTES is cut at its paragraphs
# (train, validation, test) percent, by sha256 of the *source* id: all parts of a module or topic share a split, so
# no module's sections are in train while others are in test. 90/5/5 left 27 documents (63 KB) in test. With 2 KB
# parts on 3.11: 80/5/15 gives 278 test documents (480 KB), but only ~80% of other hash salts reach 200 documents
# (a few big modules decide a lot); 75/5/20 gives 336 documents (576 KB) and every one of 200 salts tried reaches
# 200 documents and 250 KB (5th percentile: 243 documents, 367 KB). Validation keeps its 5% (the same sources as
# before); test keeps every source it had and gains some from train.
SPLIT_PERCENTS = (75, 5, 20)


def python_version() -> str:
  return platform.python_version()


def config_name() -> str:
  return f"py{sys.version_info.major}.{sys.version_info.minor}"


def stdlib_dir() -> str:
  return sysconfig.get_paths()["stdlib"]


def stdlib_sources(root: str) -> list[tuple[str, str]]:
  """``(dotted module name, path)`` of the stdlib's own ``.py`` files, sorted by path."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    # config-*: build files (python-config.py); both are install-specific, not library documentation.
    dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("config-"))
    rel = os.path.relpath(dirpath, root)
    package = [] if rel == "." else rel.split(os.sep)
    if any(not p.isidentifier() for p in package):  # e.g. lib-dynload: not importable package paths
      continue
    for fn in sorted(filenames):
      stem = fn[:-3]
      if not fn.endswith(".py") or fn.startswith("test_") or stem.startswith("_sysconfigdata_"):
        continue
      parts = package if stem == "__init__" else [*package, stem]
      if parts and all(p.isidentifier() for p in parts):
        found.append((".".join(parts), os.path.join(dirpath, fn)))
  return sorted(found, key=lambda item: item[1])


def module_sections(name: str, source: bytes) -> list[str]:
  """``module NAME``, the module docstring, then each class/function docstring under its header line; [] if none."""
  with warnings.catch_warnings():  # invalid escape sequences in old sources are not our concern
    warnings.simplefilter("ignore")
    tree = ast.parse(source)
  sections = []
  doc = ast.get_docstring(tree, clean=True)
  if doc and doc.strip():
    sections.append(doc.strip())
  sections.extend(_definition_docs(tree.body, prefix=""))
  return [f"module {name}", *sections] if sections else []


def module_document(name: str, source: bytes) -> str:
  """The whole module as one text: its sections joined by blank lines; '' when there is no docstring."""
  return "\n\n".join(module_sections(name, source))


def _definition_docs(body: list[ast.stmt], prefix: str) -> Iterator[str]:
  for node in body:
    if isinstance(node, ast.ClassDef):
      header = f"class {prefix}{node.name}"
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
      kind = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
      header = f"{kind} {prefix}{node.name}({ast.unparse(node.args)})"
    else:
      continue
    doc = ast.get_docstring(node, clean=True)
    if doc and doc.strip():
      yield f"{header}\n{doc.strip()}"
    if isinstance(node, ast.ClassDef):  # methods and nested classes; nested functions rarely carry prose
      yield from _definition_docs(node.body, prefix=f"{prefix}{node.name}.")


def topic_documents() -> list[tuple[str, str]]:
  """``(id, text)`` per pydoc topic; none when this Python ships without ``pydoc_data``."""
  try:
    from pydoc_data.topics import topics
  except ImportError:
    return []
  docs = [(f"topic:{name}", inspect.cleandoc(text).strip()) for name, text in sorted(topics.items())]
  return [(i, t) for i, t in docs if t]


def paragraphs(text: str) -> list[str]:
  """``text`` cut at blank lines (``"\\n\\n"``) into pieces that ``"\\n\\n".join`` restores exactly.

  A run of extra blank lines stays at the end of the paragraph before it, so no piece is blank.
  """
  out: list[str] = []
  for piece in text.split("\n\n"):
    if out and not piece.strip():
      out[-1] += "\n\n" + piece
    else:
      out.append(piece)
  return out


def split_sections(sections: list[str], target: int = SECTION_BYTES) -> list[str]:
  """A document's texts of about ``target`` UTF-8 bytes, each a run of whole ``sections`` joined by blank lines.

  ``sections[0]`` opens with the document's header line (``module json.decoder``; a topic's title); every part
  after the first starts with that line again, then a blank line, so each part says what it documents. A section
  over ``HUGE_SECTION`` times ``target`` is first cut at its paragraphs (never inside one). The first section stays
  with the one after it (the header alone is no document). The parts are contiguous and as even as whole sections
  allow: k = round(size / target) parts, and each section (or paragraph) goes to the part where its middle byte
  falls. Joining the parts with blank lines, after dropping the repeated header line of the later parts, gives
  back the document.
  """
  if not sections:
    return []
  units: list[str] = []
  for section in sections:
    units.extend(paragraphs(section) if _nbytes(section) > HUGE_SECTION * target else [section])
  if len(units) > 1:
    units[:2] = [units[0] + "\n\n" + units[1]]
  sizes = [_nbytes(u) + 2 for u in units]  # + the blank line joining it to the next
  total = sum(sizes)
  k = max(1, round(total / target))
  groups: list[list[str]] = [[] for _ in range(k)]
  start = 0
  for unit, size in zip(units, sizes, strict=True):
    groups[min(k - 1, (start + size // 2) * k // total)].append(unit)
    start += size
  header = units[0].split("\n", 1)[0]
  texts = ["\n\n".join(g) for g in groups if g]
  return texts[:1] + [f"{header}\n\n{t}" for t in texts[1:]]


def _nbytes(text: str) -> int:
  return len(text.encode("utf-8"))


def collect_sources(root: str | None = None) -> tuple[list[tuple[str, list[str]]], dict]:
  """Every ``(source id, sections)`` in a fixed order (topics by name, then modules by path), and counts.

  A module's sections are its header line and docstrings; a topic's are its paragraphs. The source's text is
  ``"\\n\\n".join(sections)``.
  """
  root = root or stdlib_dir()
  topics = [(i, paragraphs(t)) for i, t in topic_documents()]
  modules, skipped = [], 0
  for name, path in stdlib_sources(root):
    with open(path, "rb") as f:
      source = f.read()
    try:
      sections = module_sections(name, source)
    except (SyntaxError, ValueError):  # e.g. a file written for another grammar (lib2to3 fixtures)
      skipped += 1
      continue
    if sections:
      modules.append((f"module:{name}", sections))
  return topics + modules, {"num_topics": len(topics), "num_modules": len(modules), "unparsable_files": skipped}


def is_stale(builder) -> bool:
  """A prepared dataset to regenerate: made by another micro version of Python (same major.minor: the text may
  differ), or with other part sizes or split shares than this code's (a dataset of the same VERSION made by a
  development copy). Older VERSIONs live in their own directories and are never read."""
  meta = builder.info.metadata
  return (
    meta.get("python_version") != python_version()
    or meta.get("section_bytes") != SECTION_BYTES
    or meta.get("split_percents") != dict(zip(SPLITS, SPLIT_PERCENTS, strict=True))
  )


def source_of(doc_id: str) -> str:
  """``module:json.decoder#3`` → ``module:json.decoder``: the source a document was cut from."""
  return doc_id.rpartition("#")[0]


def split_of(doc_id: str) -> str:
  """A document's split: its source's, so all parts of a module or topic share one split."""
  return split_for(source_of(doc_id), SPLIT_PERCENTS)


def collect_documents(root: str | None = None, target: int = SECTION_BYTES) -> tuple[list[tuple[str, str]], dict]:
  """All ``(id, text)`` documents (``SOURCE#PART``, parts numbered from 1) in a fixed order, and counts."""
  sources, counts = collect_sources(root)
  docs = [(f"{i}#{n}", t) for i, sections in sources for n, t in enumerate(split_sections(sections, target), 1)]
  return docs, counts


def __getattr__(name: str) -> type:
  # ``python_docs.PythonDocs`` still works; it imports TFDS on first access.
  if name == "PythonDocs":
    return builder_class()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@defined_once
def builder_class() -> type:
  """The TFDS builder ``PythonDocs``, defined (so registered with TFDS as ``python_docs``) on the first call.

  Not a module-level class: its base needs TensorFlow Datasets, and importing this module must stay cheap.
  """
  tfds = import_tfds()

  class PythonDocs(tfds.core.GeneratorBasedBuilder):
    """Pydoc topics and standard-library docstrings of the running Python, prepared offline."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
      "1.0.0": "Pydoc topics and stdlib docstrings (ast), 90/5/5 split by sha256 of the doc id.",
      "1.1.0": "Sources cut into ~2 KB parts of whole sections (ids SOURCE#N); 75/5/20 split by sha256 of the source.",
    }
    # No checksums/README files to find; and TFDS 4.9.10 locates a packaged builder's code with importlib_resources,
    # which it only requires on Python < 3.9 (ModuleNotFoundError here).
    code_path = None
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config_name(), description=f"Python {config_name()[2:]}")]

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({"id": tfds.features.Text(), "text": tfds.features.Text()}),
        disable_shuffling=True,  # keep the sorted, readable order: topics, then modules by path
        metadata=tfds.core.MetadataDict(),
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download: the text is on this machine
      root = stdlib_dir()
      docs, counts = collect_documents(root)
      by_split = {s: [(i, t) for i, t in docs if split_of(i) == s] for s in SPLITS}
      empty = [s for s in SPLITS if not by_split[s]]
      if empty:
        raise UserError(f"python_docs found too few documents under {root} (no {', '.join(empty)} split)")
      self.info.metadata.update(
        {
          "python_version": python_version(),
          "stdlib": root,
          **counts,
          # How documents are cut and split: part of the fingerprint, with the text below.
          "section_bytes": SECTION_BYTES,
          "split_percents": dict(zip(SPLITS, SPLIT_PERCENTS, strict=True)),
          "num_sources": {s: len({source_of(i) for i, _ in d}) for s, d in by_split.items()},
          "num_docs": {s: len(d) for s, d in by_split.items()},
          "num_bytes": {s: sum(len(t.encode("utf-8")) for _, t in d) for s, d in by_split.items()},
          # Any change of text (another micro version, a patched stdlib) changes the corpus fingerprint.
          "content_sha256": hashlib.sha256("\0".join(f"{i}\0{t}" for i, t in docs).encode("utf-8")).hexdigest(),
        }
      )
      return {s: self._generate_examples(d) for s, d in by_split.items()}

    def _generate_examples(self, docs):
      for doc_id, text in docs:
        yield doc_id, {"id": doc_id, "text": text}

  return PythonDocs
