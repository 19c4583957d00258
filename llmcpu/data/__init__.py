"""Data: corpora (``load_corpus``) and their compiled forms."""

from llmcpu.data.corpora import Corpus, load_corpus

__all__ = ["Corpus", "load_corpus"]
