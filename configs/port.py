"""scripts/port.py config, the default `--config`: every key is a `--config.KEY=value` override."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.checkpoint = ""  # the source CPU: a training workdir or checkpoint directory
  c.to_isa = ""  # the target ISA spec (bpe:4000, unigram:4000, char, bpe:4000+perm:1, ...)
  c.method = "relearn"  # align | fvt (0 steps) | relearn | finetune | scratch; translate: see the porting experiment
  c.steps = 300  # training steps (relearn, finetune, scratch)
  c.save_at = ""  # extra checkpoint steps for a recovery curve, e.g. '0,10,30,100' (then every one is kept)
  c.compile_dir = ""  # '' = the source's data.compile_dir (ISA B's compiled data must be there)
  c.corpus = ""  # '' = the source's corpus (another corpus is refused: a port changes the ISA, not the data)
  c.seed = 0
  c.learning_rate = 0.0  # 0 = the source's
  return c
