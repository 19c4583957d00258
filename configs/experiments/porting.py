"""porting: port tiny decoders and encoder-decoders between ISAs by every method, and draw their recovery curves.

bpe:4000 → unigram:4000 (same size, other segmentation), bpe:1000 → bpe:4000 (a superset), bpe:4000 → its full
permutation (the same ISA, other opcodes: align is exact), char → bpe:1000 (characters to merges). Natives train
400 steps of 16 × 128 tokens (the quickstart's shape); ports are saved at 0, 10, 30, 100 and 300 steps and scored
on 128 held-out documents (bits per byte) and 64 held-out prompts (relevance), three seeds. About 40 minutes a seed
on 2 host cores: ``--config.seeds=0`` is the ≤ 45-minute run (intervals then over documents, not seeds).

  python scripts/experiment.py --config=configs/experiments/porting.py --workdir=runs/porting
"""

from llmcpu.experiments.porting import porting_config


def get_config():
  c = porting_config("tiny")
  c.kind = "porting"
  c.corpus = "python_docs"
  c.ports = "bpe:4000>unigram:4000,bpe:1000>bpe:4000,bpe:4000>bpe:4000+perm:1,char>bpe:1000"
  c.archs = "decoder,encoder_decoder"
  c.steps = 400
  c.train.batch_size = 16
  c.data.length = 128
  c.data.input_length = 96
  c.data.target_length = 32
  c.budgets = "0,10,30,100,300"
  c.seeds = "0,1,2"
  c.crosseval.max_docs = 128
  c.crosseval.coherence = True  # relevance curves beside bits per byte
  return c
