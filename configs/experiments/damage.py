"""damage: graded ISA drift. One CPU per (architecture, seed, corpus) is trained on bpe:1000 and read on bpe:1000 with
0, 1, 5, 10, 25, 50 and 100% of its regular opcodes renamed (`+perm:SEED:FRACTION`: exactly that share moved).
The report's heatmaps/damage_curves.png plots normalized score, relevance and (programs) exact match against the
share, with intervals; summary.md has the same numbers as a table.
"""

from llmcpu.experiment import experiment_config

FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


def get_config():
  c = experiment_config("tiny")
  c.corpus = "python_docs,programs"
  c.compilers = ",".join(["bpe:1000", *(f"bpe:1000+perm:1:{f:g}" for f in FRACTIONS)])
  c.train_compilers = "bpe:1000"
  c.archs = "decoder,encoder,encoder_decoder"
  c.seeds = "0,1,2"
  c.steps = 600
  c.train.batch_size = 16
  c.data.length = 128
  c.crosseval.prompts = 256
  c.crosseval.program_prompts = 1000
  return c
