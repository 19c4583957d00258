"""colab_accel: the quickstart's question at the `small` size (d_model 256, 4 layers), for one Colab accelerator —
a T4 GPU or a TPU v2-8 — in about 15–30 minutes (an estimate: not yet timed on either; the notebook picks it there).

The quickstart's four ISAs (char ⊂ bpe:1000, unrelated byte, fully permuted char) plus bpe:4000, so that the
compatible pair bpe:1000 ⊂ bpe:4000 of the headline is in the matrix too. Five decoders of 2000 steps of 32 × 256
tokens, which tiny CPUs need to use their prompt on BPE ISAs (README: "How much training makes a CPU execute").
The batch divides the 8 cores of a v2-8. The judge of the cross-evaluation runs on the host's cores either way.
"""

from llmcpu.experiments.matrix import experiment_config


def get_config():
  c = experiment_config("small")
  c.kind = "matrix"
  c.corpus = "python_docs"
  c.compilers = "char,bpe:1000,bpe:4000,byte,char+perm:1"
  c.archs = "decoder"
  c.steps = 2000
  c.train.batch_size = 32
  c.data.length = 256
  c.crosseval.prompts = 128
  c.crosseval.max_docs = 200
  return c
