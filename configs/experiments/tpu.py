"""tpu: ~100M-parameter CPUs on prepared TFDS text (lm1b), for a TPU VM (run with --distributed on pod slices).

Prepare the data where there is network first, e.g. into a bucket (README, "On a TPU VM"):
`python -c "import tensorflow_datasets as tfds; tfds.builder('lm1b', data_dir='gs://BUCKET/tfds').download_and_prepare()"`
(`tfds build` would need apache_beam), then pass --config.data_dir=gs://BUCKET/tfds.
"""

from llmcpu.experiments.matrix import experiment_config


def get_config():
  c = experiment_config("base")
  c.kind = "matrix"
  c.corpus = "tfds:lm1b:text"
  c.compilers = "bpe:8000,bpe:32000,unigram:32000,byte,bpe:32000+perm:1,bpe:32000+perm:2:0.25"
  c.archs = "decoder,encoder,encoder_decoder"
  c.steps = 50_000
  c.train.batch_size = 256  # global; divides every slice's devices (v4-8: 4, v4-32: 16, v5litepod-32: 32) and 2×2×2
  # Pure data parallel: a ~110M-parameter CPU with its AdamW moments (~1.8 GB in float32) fits one chip, so sharding
  # it only adds collectives. On a v4-32 (16 devices, 4 hosts) that is 16 rows per chip. To shard anyway (bigger
  # models): --config.mesh.fsdp=4 splits parameters and moments over 4 chips, --config.mesh.tensor=2 the 12 heads,
  # d_ff 3072 and the vocabularies (one that does not divide, like the byte ISA's, stays replicated); batch_size must
  # divide by devices / tensor. tests/test_tpu_shape.py runs this config shrunk on a 2 × 2 × 2 mesh and under pmap.
  # Sized by llmcpu.training.memory (tests/test_memory.py): without remat the dense [B, H, L, L] scores of 12 layers
  # need ~114 GiB per v4 chip at 64 rows. The Pallas flash kernel (no [L, L] scores in HBM) with remat "dots"
  # (matmul outputs kept, the rest recomputed) needs ~14.3 GiB per chip on a v4-8 (32 GiB), 4.8 on a v4-32, 8.0 per
  # v5e-8 chip (16 GiB): ≥ 50% headroom, with less recompute than remat "full" (5.3 / 2.6 / 3.5 GiB, the fallback).
  c.model.attention_impl = "pallas"  # TPU only; cross-attention, decoding and lengths off the 128-tile use XLA's
  c.model.remat = "dots"
  c.parallelism = "jit"
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.crosseval.max_docs = 20_000
  c.crosseval.prompts = 64
  return c
