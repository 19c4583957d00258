"""programs: can a CPU still compute when fed foreign machine code? Tiny decoders on the `programs` corpus with a
char ISA, a BPE ISA and a permuted char ISA; exact match of the computed answers. ~14 minutes on 2 host cores."""

from llmcpu.experiments.matrix import experiment_config


def get_config():
  c = experiment_config("tiny")
  c.kind = "matrix"
  c.corpus = "programs"
  c.compilers = "char,bpe:1000,char+perm:1"
  c.archs = "decoder"
  c.steps = 3000
  c.train.batch_size = 16
  c.data.length = 128
  c.crosseval.program_prompts = 200
  return c
