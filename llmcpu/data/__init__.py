"""Data: corpora (``load_corpus``) and their compiled forms."""

from llmcpu.data.corpora import DOC_BYTES, Corpus, load_corpus

__all__ = ["DOC_BYTES", "Corpus", "load_corpus"]
