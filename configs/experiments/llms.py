"""llms: pretrained LLMs as CPUs, on each other's ISAs and on the project's, and ported to each other's (issue 28).

Each model is imported with its tokenizer.json as its ISA (scripts/import_hf.py's import) and cross-evaluated on
every ISA: its own, the other LLMs', and `compilers` (the project's, trained on the corpus). Nothing is downloaded:
list local directories in `models`, or hub ids found under `model_root` (ROOT/gpt2, ROOT/EleutherAI/pythia-70m, ...).
The importer computes GPT-2, GPT-NeoX (Pythia), Llama and Qwen2; the defaults are the issue's three, one per family
of the first three (add Qwen/Qwen2.5-0.5B for the fourth).
Models with learned positions (GPT-2) score rows of at most their max_len; the scoring batch is `train.batch_size`.
"""

from llmcpu.experiments.matrix import experiment_config
from llmcpu.experiments.porting import add_port_keys


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
  # Porting one LLM to another's ISA (configs/experiments/porting.py's keys): 'MODEL>MODEL,...' over `models`, the
  # target model its native reference (and omp/procrustes' donor, of any width); '' = no ports.
  add_port_keys(c)
  c.ports = ""
  c.methods = "translate,align,fvt"  # relearn/finetune train the whole-size model: add them on an accelerator
  c.budgets = "0,100,300"
  c.scratch_budgets = ""
  c.port_report = "report-porting"
  return c
