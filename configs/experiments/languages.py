"""languages: read foreign embedding languages. Tiny MLM encoders on `programs` (char, bpe:1000, unigram:1000; two
seeds, 1000 steps of 16 × 128 tokens); for each ISA two readouts of its seed-0 encoder's embedding (absolute, and
relative to 64 anchor programs; 800 steps of 64 programs); each fed 200 held-out programs embedded by its own
encoder, by another seed and by the other ISAs (as is, Procrustes-mapped, relative) and the padded-ids control; then
200 analogies with held-out operands.

  python scripts/experiment.py --config=configs/experiments/languages.py --workdir=runs/languages
"""

from llmcpu.experiments.languages import languages_config


def get_config():
  c = languages_config("tiny")
  c.kind = "languages"
  c.compilers = "char,bpe:1000,unigram:1000"
  c.steps = 1000
  c.train.batch_size = 16
  c.data.length = 128
  return c
