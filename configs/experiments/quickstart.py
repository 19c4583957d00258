"""quickstart: four ISAs, tiny decoders, python_docs; ≤ 5 minutes on 2 host cores.

ISAs: a prefix-compatible pair (char ⊂ bpe:1000: every BPE ISA starts with the char ISA's opcodes), an unrelated
one (byte: the same text as raw UTF-8 bytes) and a fully permuted copy of char (same segmentation, other opcodes).
Judged like for like (the same prompt bytes in every column, cut at a word boundary, 96 bytes of output), these
500-step CPUs continue prose locally: their relevance does not beat the byte n-gram judge's own greedy continuation.
"""

from llmcpu.experiments.matrix import experiment_config


def get_config():
  c = experiment_config("tiny")
  c.kind = "matrix"
  c.corpus = "python_docs"
  c.compilers = "char,bpe:1000,byte,char+perm:1"
  c.archs = "decoder"
  c.steps = 500
  c.train.batch_size = 16
  c.data.length = 128
  c.crosseval.prompts = 64  # fewer than the default 256, to stay within 5 minutes
  c.crosseval.max_docs = 200
  return c
