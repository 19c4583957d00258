"""Pretrained LLMs as CPUs (``kind = "llms"``): import each Hugging Face model with its tokenizer's ISA, then the
cross-ISA matrix of those LLMs on each other's ISAs and on the project's own: compile → import → cross-evaluate.

``models`` lists local Hugging Face directories or hub ids; an id is looked up as ``<model_root>/<id>`` (nothing is
downloaded: a model that is not there is one line saying how to provide it). Each model's ISA is ``hf:<its dir>``;
``compilers`` adds the project's ISAs (trained on the corpus) as further columns. The imported CPUs live where the
matrix keeps its trained ones (``runs/<corpus>/decoder/<isa>/seed0``), so the matrix's cross-evaluation and report
run unchanged. ``ports`` (``'MODEL>MODEL,...'`` over ``models``) also ports an LLM to another's ISA by every method of
``methods``, with the porting experiment's curves and report (``port_report``): the target LLM is the native
reference on its own ISA, and the port trains (relearn, finetune) and is scored on the corpus compiled here.
"""

from __future__ import annotations

import os

from llmcpu import compilers, crosseval, toolchain
from llmcpu.crosseval import capacity
from llmcpu.errors import UserError
from llmcpu.experiments import base, matrix, porting
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
    self.ports = self._plan_ports(hf_specs) if exp.get("ports", "").strip() else None

  def _plan_ports(self, hf_specs: list) -> porting.Porting:
    """The porting experiment over the imported CPUs: its pairs named by model, its report in ``port_report``."""
    names = split_list(self.config.models, "models")
    spec = dict(zip(names, hf_specs, strict=True))

    def model_isa(name: str):
      if name not in spec:
        raise UserError(
          f"{name!r} in --config.ports: a port is not SOURCE>TARGET over two of the models ({', '.join(names)})"
        )
      return spec[name]

    pairs = porting._pairs(self.config.ports, model_isa, example=f"{names[0]}>{names[-1]}")
    if any(a == b for a, b in pairs):
      raise UserError(f"a port is not SOURCE>TARGET over two of the models ({', '.join(names)}): they are the same")
    exp = self.config.copy_and_resolve_references()
    exp.report = exp.port_report
    ports = porting.Porting(exp, self.workdir, log=self.log)
    ports.planned, ports.t0 = self.planned, self.t0
    ports.plan_ports(pairs)
    return ports

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
    if self.ports is not None and plan.leader:
      base.run_stages("port", self.ports.port_stages(), log)
    return plan.leader

  def report(self) -> dict[str, str]:
    reports = super().report()
    return reports | (self.ports.report() if self.ports is not None else {})

  def printout(self, reports: dict[str, str]) -> str:
    ported = {k: v for k, v in reports.items() if self.ports is not None and k == self.ports.config.report}
    matrix_part = super().printout({k: v for k, v in reports.items() if k not in ported})
    return matrix_part + (self.ports.printout(ported) if ported else "")
