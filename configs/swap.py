"""scripts/swap.py config, the default `--config`: every key is a `--config.KEY=value` override."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.decoder = ""  # the encoder_decoder whose decoder (and ISA A, what the swapped CPU writes) is kept
  c.encoder = ""  # the CPU whose encoder (and ISA B, what the swapped CPU reads) is swapped in: encoder[_decoder]
  c.variant = "stitch"  # zero_shot | lstsq | procrustes (0 steps) | stitch | stitch_xattn | native_xattn (trained)
  c.steps = 300  # training steps of the stitch (stitch, stitch_xattn)
  c.save_at = ""  # extra checkpoint steps for a recovery curve, e.g. '0,10,30,100' (then every one is kept)
  c.anchor_docs = 512  # training programs compiled by both ISAs whose token states fit a closed-form stitch
  c.anchor_pairs = 20000  # at most this many (B token, A token) state pairs
  c.compile_dir = ""  # '' = the decoder CPU's data.compile_dir (both ISAs' compiled data must be there)
  c.seed = 0
  c.learning_rate = 0.0  # 0 = the decoder CPU's
  return c
