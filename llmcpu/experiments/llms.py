"""Pretrained LLMs as CPUs (``kind = "llms"``): import each Hugging Face model with its tokenizer's ISA, then the
cross-ISA matrix of those LLMs on each other's ISAs and on the project's own: compile → import → cross-evaluate.

``models`` lists local Hugging Face directories or hub ids; an id is looked up as ``<model_root>/<id>`` (nothing is
downloaded: a model that is not there is one line saying how to provide it). Each model's ISA is ``hf:<its dir>``;
``compilers`` adds the project's ISAs (trained on the corpus) as further columns. The imported CPUs live where the
matrix keeps its trained ones (``runs/<corpus>/decoder/<isa>/seed0``), so the matrix's cross-evaluation and report
run unchanged. Porting an LLM to another LLM's ISA is not here: porting supports the project's own ISAs only.
"""

from __future__ import annotations

import os

from llmcpu import compilers, crosseval, toolchain
from llmcpu.crosseval import capacity
from llmcpu.errors import UserError
from llmcpu.experiments import base, matrix
from llmcpu.experiments.base import split_list


def model_dir(model: str, root: str) -> str:
  """The local directory of ``model`` (a directory, or a hub id under ``root``); one line when there is none."""
  for path in (model, os.path.join(root, model) if root else ""):
    if path and os.path.isdir(os.path.expanduser(path)):
      return os.path.abspath(os.path.expanduser(path))
  where = f" or {os.path.join(root, model)}" if root else ""
  raise UserError(
    f"model {model!r} is not a local directory{where} and nothing is downloaded here: fetch it where there is "
    f"network (`huggingface-cli download {model} --local-dir DIR`, config.json + safetensors + tokenizer.json) and "
    "pass --config.models=DIR, or --config.model_root=ROOT holding ROOT/<id>"
  )


@base.register("llms")
class LLMs(matrix.Matrix):
  """The matrix with imported LLMs in place of trained CPUs; {corpus: report dir}."""

  def plan(self) -> None:
    self.timing = {}
    exp = self.config
    if exp.archs != "decoder" or str(exp.seeds) != "0" or exp.train_compilers:
      raise UserError("the llms experiment imports decoders once: leave archs, seeds and train_compilers unset")
    self.dirs = [model_dir(m, exp.model_root) for m in split_list(exp.models, "models")]
    own = compilers.parse_list(exp.compilers) if exp.compilers.strip() else []
    hf_specs = [compilers.parse(f"hf:{d}") for d in self.dirs]
    exp = exp.copy_and_resolve_references()
    exp.compilers = ",".join(str(s) for s in hf_specs + own)
    exp.train_compilers = ",".join(str(s) for s in hf_specs)
    self.config = exp
    self.planned = matrix._plan(exp, self.workdir)

  def stages(self) -> bool:
    """Compile every ISA, import every model once per corpus (skipped when its checkpoint exists)."""
    from llmcpu.training import hf_checkpoint  # jax/flax only when importing is asked for

    plan, log = self.planned, self.log
    built = toolchain.build_compilers(plan.specs, plan.sources, plan.compile_dir, leader=plan.leader, log=log)
    stats = toolchain.compile_corpora(plan.corpora, built, plan.compile_dir, leader=plan.leader, log=log)
    log("\n" + toolchain.format_isa_table(stats) + "\n\n" + toolchain.format_overlap_matrix(built) + "\n")
    options = crosseval.CrossEvalOptions(**self.config.crosseval.to_dict())
    capacity.check_corpora(plan.corpora, built[0], plan.compile_dir, options, generates=True, log=log)
    for corpus in plan.corpora:
      for src, spec in zip(self.dirs, plan.trained, strict=True):
        out = matrix.cpu_dir(self.workdir, corpus.name, "decoder", spec.name)
        if base.finished(out, 0):
          log(f"== import {spec.name} for {corpus.name}: done")
          continue
        hf_checkpoint.import_dir(src, out, log=log)
    return plan.leader
