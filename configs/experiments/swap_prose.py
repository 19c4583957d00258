"""swap_prose: swap the encoders of tiny encoder-decoders across ISAs on prose, by every stitching variant.

The task is T5's span filling on python_docs with the spans drawn over words of the text (``spans:python_docs``,
see ``llmcpu.data.spans``), so every ISA compiles the same examples and the bits per byte of the filled spans are
comparable across ISAs. Natives: char, bpe:1000 and unigram:1000 encoder-decoders, two seeds each, 1000 steps of 32
windows (inputs up to 128 ids, spans up to 48; the rare longer one truncated and counted). Every (decoder ISA A,
encoder ISA B) pair as in configs/experiments/swap.py (seed 0's decoder reads seed 1's encoder; stitches trained 300
steps, saved at 0, 30, 100, 300; the native + cross-attention control trained 300 steps on its own encoder). Bits
per byte of the spans of the first 512 held-out windows, 95% bootstrap intervals over windows.

  python scripts/experiment.py --config=configs/experiments/swap_prose.py --workdir=runs/swap_prose
"""

from llmcpu.experiments.swapping import swap_experiment_config


def get_config():
  c = swap_experiment_config("tiny")
  c.kind = "swap"
  c.corpus = "spans:python_docs"
  c.compilers = "char,bpe:1000,unigram:1000"
  c.steps = 1000
  c.train.batch_size = 32
  c.data.input_length = 128
  c.data.target_length = 48
  c.data.truncate = True
  c.budgets = "0,30,100,300"
  c.prompts = 0  # span filling: bits per byte of the spans is the task, no exact answers
  c.eval_docs = 512
  c.report = "report-swap-prose"
  return c
