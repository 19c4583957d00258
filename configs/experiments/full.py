"""full: all three architectures, seven ISAs (every family, a permuted and a half-permuted ISA), both embedded
corpora. Hours on a laptop (XLA:CPU), minutes on a GPU."""

from llmcpu.experiments.matrix import experiment_config


def get_config():
  c = experiment_config("small")
  c.kind = "matrix"
  c.corpus = "python_docs,programs"
  c.compilers = "bpe:1000,bpe:4000,unigram:4000,char,word:4000,byte,bpe:4000+perm:1,bpe:4000+perm:2:0.5"
  c.archs = "decoder,encoder,encoder_decoder"
  c.steps = 2000
  return c
