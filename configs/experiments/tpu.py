"""tpu: ~100M-parameter CPUs on prepared TFDS text (lm1b), for a TPU VM (run with --distributed on pod slices).

Prepare the data where there is network first: `tfds build lm1b --data_dir=$DATA_DIR`, then pass
--config.data_dir=$DATA_DIR.
"""

from llmcpu.experiment import experiment_config


def get_config():
  c = experiment_config("base")
  c.corpus = "tfds:lm1b:text"
  c.compilers = "bpe:8000,bpe:32000,unigram:32000,byte,bpe:32000+perm:1,bpe:32000+perm:2:0.25"
  c.archs = "decoder,encoder,encoder_decoder"
  c.steps = 50_000
  c.train.batch_size = 256
  c.crosseval.max_docs = 20_000
  c.crosseval.prompts = 64
  return c
