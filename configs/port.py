"""scripts/port.py config, the default `--config`: every key is a `--config.KEY=value` override."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.checkpoint = ""  # the source CPU: a training workdir or checkpoint directory
  c.to_isa = ""  # the target ISA spec (bpe:4000, unigram:4000, char, bpe:4000+perm:1, ...)
  c.method = "relearn"  # align | fvt | omp | procrustes | distill (0 steps) | relearn | finetune | scratch
  c.init = "align"  # the rows relearn / finetune / distill start from: align | fvt | omp | procrustes | distill
  c.donor = ""  # omp / procrustes: a CPU trained natively on the target ISA (a training workdir or checkpoint)
  c.omp_atoms = 8  # omp: k, the shared pieces each new piece is coded over
  c.distill_tokens = 65_536  # distill: ISA-B tokens of train-split text read
  c.distill_learning_rate = 1e-3  # distill: Adam on the new embedding rows
  c.steps = 300  # training steps (relearn, finetune, scratch)
  c.save_at = ""  # extra checkpoint steps for a recovery curve, e.g. '0,10,30,100' (then every one is kept)
  c.compile_dir = ""  # '' = the source's data.compile_dir (ISA B's compiled data must be there)
  c.corpus = ""  # '' = the source's corpus (another corpus is refused: a port changes the ISA, not the data)
  c.seed = 0
  c.learning_rate = 0.0  # 0 = the source's
  c.batch_size = 0  # rows a step; 0 = the source's (an imported LLM's is the tiny preset's 16)
  c.length = 0  # ids a row; 0 = the source's (an imported LLM's: min(max_len, 1024))
  return c
