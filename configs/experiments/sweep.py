"""sweep: where does a CPU use its prompt beyond its last 8 bytes? Size first, then budget (issue 22).

  python scripts/experiment.py --config=configs/experiments/sweep.py --workdir=runs/sweep [--config.report=NAME]

The quickstart's setting (python_docs, tiny decoders, batch 16, 500 steps) with one CPU per point, on the char ISA,
read natively and on one foreign column (bpe:1000), judged on 128 prompts (twice the quickstart's: narrower
intervals). Each point is a whole matrix workdir, <workdir>/<point>/; the table lands in <workdir>/report/sweep.md.
Every run is trained first, then every point cross-evaluated; a rerun with --config.report=NAME re-evaluates the
same checkpoints into fresh report directories without training anything.
"""

from llmcpu.experiments.sweep import sweep_config


def get_config():
  c = sweep_config("tiny")
  c.corpus = "python_docs"
  c.compilers = "char,bpe:1000"
  c.train_compilers = "char"
  c.archs = "decoder"
  c.steps = 500
  c.train.batch_size = 16
  c.data.length = 128
  c.crosseval.prompts = 128
  c.crosseval.max_docs = 200
  c.points = ";".join(
    [
      "tiny",  # d_model 64, 2 layers: the quickstart's CPU
      "wide128: model.d_model=128 model.d_ff=512",
      "wide256: model.d_model=256 model.d_ff=1024",
      "deep6: model.num_layers=6",
      "long256: data.length=256",  # the whole prompt + 96 bytes of output inside the trained length
      # Then budget, on the size that is cheapest per token (no size separated on relevance beyond the tail at 500)
      "tiny-s2000: steps=2000",
      "tiny-s4000: steps=4000",
      "wide128-s2000: model.d_model=128 model.d_ff=512 steps=2000",  # budget on a wider CPU
    ]
  )
  return c
