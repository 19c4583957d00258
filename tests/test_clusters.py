"""Cluster ids of documents: python_docs parts group by their source module or topic, other corpora stay apart."""

import collections

from llmcpu.data import clusters, python_docs


def test_python_docs_clusters_are_the_sources_read_back_from_the_text():
  docs, _ = python_docs.collect_documents()
  by_source = collections.defaultdict(set)
  for doc_id, text in docs:
    by_source[python_docs.source_of(doc_id)].add(clusters.source_key("python_docs", text, 0))
  # Every part of a source gets the same cluster, read from its text alone (no id is stored in compiled data) ...
  assert all(len(keys) == 1 for keys in by_source.values())
  # ... and sources stay apart, but for pages that share a title (topics "if" and "else" are one page): merging
  # those makes the interval wider, never narrower.
  keys = collections.Counter(next(iter(k)) for k in by_source.values())
  merged = {k: n for k, n in keys.items() if n > 1}
  assert sum(merged.values()) - len(merged) <= 0.01 * len(by_source)
  test = [t for i, t in docs if python_docs.split_of(i) == "test"]
  ids = clusters.document_clusters("python_docs", {}, test, len(test))
  assert len(set(ids)) < 0.6 * len(test)  # the test split is far fewer sources than documents


def test_labels_then_text_then_one_cluster_per_document():
  assert clusters.document_clusters("spans:python_docs", {"source": ["a", "a", "b"]}, None, 3) == ["a", "a", "b"]
  texts = ["module json\nx", "module json\ny", "module os\nz"]
  got = clusters.document_clusters("python_docs", {}, texts, 3)
  assert got[0] == got[1] != got[2]
  assert clusters.document_clusters("programs", {"task": ["add", "add"]}, None, 2) == ["doc:0", "doc:1"]
  assert clusters.document_clusters("text:/x/*", {}, ["same", "same"], 2) == ["doc:0", "doc:1"]
