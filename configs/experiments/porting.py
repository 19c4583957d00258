"""porting: port tiny decoders and encoder-decoders between ISAs by every method, and draw their recovery curves.

bpe:4000 → unigram:4000 (same size, other segmentation), bpe:1000 → bpe:4000 (a superset), bpe:4000 → its full
permutation (the same ISA, other opcodes: align is exact), char → bpe:1000 (characters to merges). Natives train
400 steps of 16 × 128 tokens (the quickstart's shape); ports are saved at 0, 10, 30, 100 and 300 steps and scored
on 128 held-out documents. About 25 minutes on 2 host cores.

  python scripts/experiment.py --config=configs/experiments/porting.py --workdir=runs/porting
"""

from llmcpu.porting.recovery import porting_config


def get_config():
  c = porting_config("tiny")
  c.corpus = "python_docs"
  c.ports = "bpe:4000>unigram:4000,bpe:1000>bpe:4000,bpe:4000>bpe:4000+perm:1,char>bpe:1000"
  c.archs = "decoder,encoder_decoder"
  c.steps = 400
  c.train.batch_size = 16
  c.data.length = 128
  c.data.input_length = 96
  c.data.target_length = 32
  c.budgets = "0,10,30,100,300"
  c.seeds = "0"
  c.crosseval.max_docs = 128
  return c
