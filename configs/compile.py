"""scripts/compile.py config, the default `--config`: every key is a `--config.KEY=value` override."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # corpus or comma-separated corpora: python_docs, programs, tfds:NAME[:KEY], text:GLOB, jsonl:GLOB[:FIELD],
  # csv:GLOB[:COLUMN], tsv:GLOB[:COLUMN]
  c.corpus = "python_docs"
  c.compilers = "unigram:4000,bpe:1000,bpe:4000,char,byte,bpe:4000+perm:1"  # compiler specs, comma-separated
  c.data_dir = ""  # TFDS data_dir ('' = TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.doc_bytes = 1024  # most bytes of a document cut from your own files or a long tfds: record (data.DOC_BYTES)
  c.rebuild = False  # rebuild every compiler and split even if the cache is current
  return c
