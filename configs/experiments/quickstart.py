"""quickstart: four ISAs, tiny decoders, python_docs; ≤ 5 minutes on 2 CPU cores.

ISAs: a prefix-compatible pair (bpe:1000 ⊂ bpe:4000: the same first merges), an unrelated learned ISA (unigram) and
a fully permuted copy of bpe:4000 (same segmentation, other opcodes).
"""

from llmcpu.experiment import experiment_config


def get_config():
  c = experiment_config("tiny")
  c.corpus = "python_docs"
  c.compilers = "bpe:1000,bpe:4000,unigram:4000,bpe:4000+perm:1"
  c.archs = "decoder"
  c.steps = 300
  c.train.batch_size = 16
  c.data.length = 128
  c.crosseval.prompts = 32
  c.crosseval.new_tokens = 32
  return c
