"""Experiments: each a module with one ``Experiment`` subclass registered under the ``kind`` its configs set
(configs/experiments/*.py), run by scripts/experiment.py through ``run``.

  matrix     the cross-ISA matrix: compile → train every CPU → cross-evaluate → report (``kind = "matrix"``)
  damage     graded ISA drift: the matrix on partly permuted ISAs, plus its damage curves (``kind = "damage"``)
  porting    recovery curves of CPUs ported to another ISA by every method (``kind = "porting"``)
  swapping   encoders swapped across ISAs by every stitching variant (``kind = "swap"``)
  sweep      the matrix at several sizes and budgets, one workdir per point, and one table (``kind = "sweep"``)
  llms       pretrained LLMs imported with their tokenizers' ISAs, cross-evaluated like the matrix (``kind = "llms"``)
  languages  readouts of encoders' embeddings fed other encoders' embeddings; analogies (``kind = "languages"``)

``base`` holds the protocol (plan → stages → report), the registry, the stage runner and the report writer;
``tables`` the Markdown helpers.
"""

from llmcpu.experiments import damage, languages, llms, matrix, porting, swapping, sweep
from llmcpu.experiments.base import REGISTRY, Experiment, lookup, register, run

__all__ = [
  "REGISTRY",
  "Experiment",
  "damage",
  "languages",
  "llms",
  "lookup",
  "matrix",
  "porting",
  "register",
  "run",
  "swapping",
  "sweep",
]
