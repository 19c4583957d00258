"""llms: pretrained LLMs as CPUs, on each other's ISAs and on the project's (issue 28 item 4, the matrix half).

Each model is imported with its tokenizer.json as its ISA (scripts/import_hf.py's import) and cross-evaluated on
every ISA: its own, the other LLMs', and `compilers` (the project's, trained on the corpus). Nothing is downloaded:
list local directories in `models`, or hub ids found under `model_root` (ROOT/gpt2, ROOT/EleutherAI/pythia-70m, ...).
Models with learned positions (GPT-2) score rows of at most their max_len; the scoring batch is `train.batch_size`.
"""

from llmcpu.experiments.matrix import experiment_config


def get_config():
  c = experiment_config("tiny")
  c.kind = "llms"
  c.models = "gpt2,EleutherAI/pythia-70m,HuggingFaceTB/SmolLM2-135M"  # local dirs, or hub ids under model_root
  c.model_root = ""  # a directory holding downloaded models as ROOT/<hub id>
  c.corpus = "python_docs"
  c.compilers = "bpe:4000"  # the project's ISAs, as further columns ('' = the LLMs' ISAs only)
  c.train.batch_size = 8
  c.crosseval.prompts = 64
  c.crosseval.max_docs = 200
  return c
