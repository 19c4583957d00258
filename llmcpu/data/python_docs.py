"""The ``python_docs`` corpus: English prose shipped with every Python install, as a TFDS builder.

Documents:
  * one per pydoc topic (``pydoc_data.topics``: the language reference pages ``help()`` shows), id ``topic:NAME``;
  * one per standard-library module, id ``module:DOTTED.NAME``: the module docstring, then each class's and
    function's docstring under a header line such as ``class JSONDecoder`` or ``def JSONDecoder.decode(self, s)``.

Docstrings are read from the stdlib's own ``.py`` sources with ``ast`` (never imported: imports have side effects),
skipping site-packages, test directories and ``test_*.py``. The text depends on the Python version, so the builder
config is ``py<major>.<minor>``, the full version is recorded in the metadata, and a dataset prepared by another
micro version is regenerated. Splits: 90/5/5 by sha256 of the document id.
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

from llmcpu.data.corpora import SPLITS, import_tfds, split_for
from llmcpu.errors import UserError

tfds = import_tfds()

SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


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


def module_document(name: str, source: bytes) -> str:
  """Module docstring, then class/function docstrings with header lines; '' when there is none."""
  with warnings.catch_warnings():  # invalid escape sequences in old sources are not our concern
    warnings.simplefilter("ignore")
    tree = ast.parse(source)
  sections = []
  doc = ast.get_docstring(tree, clean=True)
  if doc and doc.strip():
    sections.append(doc.strip())
  sections.extend(_definition_docs(tree.body, prefix=""))
  return "\n\n".join([f"module {name}", *sections]) if sections else ""


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
  docs = [(f"topic:{name}", inspect.cleandoc(text)) for name, text in sorted(topics.items())]
  return [(i, t) for i, t in docs if t.strip()]


def collect_documents(root: str | None = None) -> tuple[list[tuple[str, str]], dict]:
  """All ``(id, text)`` documents in a fixed order, and counts for the metadata."""
  root = root or stdlib_dir()
  topics = topic_documents()
  modules, skipped = [], 0
  for name, path in stdlib_sources(root):
    with open(path, "rb") as f:
      source = f.read()
    try:
      text = module_document(name, source)
    except (SyntaxError, ValueError):  # e.g. a file written for another grammar (lib2to3 fixtures)
      skipped += 1
      continue
    if text:
      modules.append((f"module:{name}", text))
  return topics + modules, {"num_topics": len(topics), "num_modules": len(modules), "unparsable_files": skipped}


class PythonDocs(tfds.core.GeneratorBasedBuilder):
  """Pydoc topics and standard-library docstrings of the running Python, prepared offline."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Pydoc topics and stdlib docstrings (ast), 90/5/5 split by sha256 of the doc id."}
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
    by_split = {s: [(i, t) for i, t in docs if split_for(i) == s] for s in SPLITS}
    empty = [s for s in SPLITS if not by_split[s]]
    if empty:
      raise UserError(f"python_docs found too few documents under {root} (no {', '.join(empty)} split)")
    self.info.metadata.update(
      {
        "python_version": python_version(),
        "stdlib": root,
        **counts,
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
