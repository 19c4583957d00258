"""Which documents of a split are not independent: a cluster id per document, for intervals that resample clusters.

* ``python_docs``: a document is a ~2 KB part of one source (a stdlib module or a pydoc topic), and every part starts
  with its source's first line (``module json.decoder``, the topic's title; see ``llmcpu.data.python_docs``): that
  line is the cluster. One module's docstrings can be a fifth of the first 200 test documents.
* ``spans:CORPUS``: the windows cut from one document of CORPUS carry its source in the label ``source`` (written at
  compile time by ``llmcpu.data.spans``), so they cluster by that document's cluster in CORPUS.
* ``programs``: every program draws its task and operands independently (``llmcpu.data.programs``): the examples
  are i.i.d. draws from a fixed mixture of tasks, so each is its own cluster. Resampling task families instead would
  treat the nine fixed tasks as a sample of possible tasks, a different question (and 9 clusters give no interval).
* any other corpus (``text:``, ``tfds:``): no known structure, one cluster per document (the ordinary bootstrap).
"""

from __future__ import annotations

from collections.abc import Sequence

SOURCE_LABEL = "source"  # a split's label naming each document's cluster, when the corpus records one


def _first_line(text: str) -> str:
  return text.split("\n", 1)[0]


def source_key(corpus_spec: str, text: str, index: int) -> str:
  """The cluster of one document of ``corpus_spec`` (its ``index`` in the split when nothing groups it)."""
  if corpus_spec == "python_docs":
    return f"python_docs:{_first_line(text)}"
  return f"doc:{index}"


def document_clusters(corpus_spec: str, labels: dict[str, list[str]], texts: Sequence[str] | None, n: int) -> list[str]:
  """A cluster id for each of the ``n`` documents of a split: its ``source`` label when the split has one, else from
  its text (``texts``: each document's raw text, or None for a corpus that needs none)."""
  if SOURCE_LABEL in labels:
    return list(labels[SOURCE_LABEL][:n])
  if corpus_spec == "python_docs":
    if texts is None or len(texts) < n:
      raise ValueError(f"python_docs clusters come from the documents' text: give all {n} of them")
    return [source_key(corpus_spec, texts[i], i) for i in range(n)]
  return [f"doc:{i}" for i in range(n)]
