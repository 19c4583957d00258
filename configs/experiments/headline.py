"""headline: the README's main result. Three architectures × six ISAs × three seeds × both embedded corpora, tiny
CPUs, every cell with 95% intervals; the calibration table in each summary.md.

ISAs: the quickstart's four (bpe:1000 ⊂ bpe:4000, unrelated unigram:4000, fully permuted bpe:4000) plus char and
byte. The step budget is the smallest at which native CPUs measurably use their prompt (README, "How much training
makes a CPU execute"). On 2 CPU cores: see report/experiment.json for the wall time of each stage.
"""

from llmcpu.experiments.matrix import experiment_config


def get_config():
  c = experiment_config("tiny")
  c.kind = "matrix"
  c.corpus = "python_docs,programs"
  c.compiler_corpora = "python_docs,programs"  # kept when one corpus is run alone (--config.corpus=programs)
  c.compilers = "bpe:1000,bpe:4000,unigram:4000,bpe:4000+perm:1,char,byte"
  c.archs = "decoder,encoder,encoder_decoder"
  c.seeds = "0,1,2"
  c.steps = 1000
  c.train.batch_size = 16
  c.data.length = 128
  c.crosseval.prompts = 128  # of the first 200 test documents (max_docs): intervals of ±0.07 on relevance
  c.crosseval.program_prompts = 1000  # capped by max_docs (the test split is read up to 200 items): 200 per cell
  c.crosseval.max_docs = 200
  return c
