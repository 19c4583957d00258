"""swap: swap the encoders of tiny encoder-decoders across ISAs on `programs`, by every stitching variant.

Natives: char, bpe:1000 and unigram:1000 encoder-decoders, two seeds each, 1500 steps of 64 programs (inputs up to 64
ids, answers up to 48). Every (decoder ISA A, encoder ISA B) pair: seed 0's decoder reads seed 1's encoder (the
diagonal: the same ISA, another CPU) through zero-shot, least-squares and Procrustes stitches (512 programs of
parallel anchors), and stitches trained 300 steps alone or with the cross-attention (saved at 0, 30, 100, 300); the
control of the latter, each native's cross-attention trained the same 300 steps on its own encoder (native_xattn).
Exact match on 200 held-out programs, bits per byte of the answers on all of them, 95% bootstrap intervals.

  python scripts/experiment.py --config=configs/experiments/swap.py --workdir=runs/swap
"""

from llmcpu.experiments.swapping import swap_experiment_config


def get_config():
  c = swap_experiment_config("tiny")
  c.kind = "swap"
  c.compilers = "char,bpe:1000,unigram:1000"
  c.steps = 1500
  c.train.batch_size = 64
  c.data.input_length = 64
  c.data.target_length = 48
  c.budgets = "0,30,100,300"
  return c
