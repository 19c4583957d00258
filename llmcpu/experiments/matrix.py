"""The cross-ISA matrix experiment (``kind = "matrix"``) as one resumable job: compile → train every (corpus ×
architecture × ISA) → cross-evaluate → report.

Layout under the experiment workdir::

  compiled/                               the compile cache (scripts/compile.py's workdir)
  runs/<corpus>/<arch>/<isa>/seed<k>/     one CPU each: its training workdir (checkpoints, metrics.jsonl, TensorBoard)
  <report>/<corpus>/                      cross-evaluation: results.jsonl, calibration.jsonl, matrices, heatmaps,
                                          summary.md (``report`` by default; see ``report`` below); cells/, one
                                          file per finished cell, which a later run with more seeds or ISAs reuses
  <report>/experiment.json                the config, and the wall time of each stage (provenance)

Every stage skips what is already done: cached compilers and splits, runs whose last checkpoint is at the final
step, reports newer than every checkpoint they cover. A crashed or preempted run continues where it stopped.

``compilers`` are the evaluation ISAs (the matrix columns); CPUs are trained on ``train_compilers`` (default: all
of them) with every seed of ``seeds``, so a damage curve trains one CPU per seed and reads it on many ISAs. Runs are
keyed by (corpus, architecture, ISA, seed) only: two experiments with the same training settings can share a
workdir (and so their runs) if they write different ``report`` directories.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable

import ml_collections

from llmcpu import compilers, crosseval, data, fs, toolchain
from llmcpu.crosseval import capacity
from llmcpu.data import objectives
from llmcpu.errors import UserError
from llmcpu.experiments import base, damage
from llmcpu.experiments.base import seed_list, split_list
from llmcpu.training import checkpoints, parallel
from llmcpu.training.run_config import base_config, check_ranges

ARCHS = ("encoder", "decoder", "encoder_decoder")


def experiment_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  """The base of every configs/experiments/*.py: what to compile, which CPUs to train, and how to cross-evaluate.

  The ``data``/``model``/``train``/``checkpoint`` blocks mirror the training config of ``preset``; a value changed
  there (``--config.train.learning_rate=1e-3``) is applied to every run, and so are ``parallelism`` and ``mesh``.
  ``steps`` sets every run's length.
  """
  defaults = base_config("decoder", preset)
  c = ml_collections.ConfigDict()
  c.kind = "matrix"  # which experiment (llmcpu.experiments.REGISTRY): matrix, damage, porting, swap, languages, llms
  c.corpus = "python_docs"  # comma-separated corpora: CPUs are trained and cross-evaluated on each
  c.compiler_corpora = ""  # corpora whose train splits train the compilers ('' = `corpus`)
  c.compilers = "bpe:1000,bpe:4000,unigram:4000,bpe:4000+perm:1"  # evaluation ISAs (the matrix columns)
  c.train_compilers = ""  # ISAs that get CPUs, comma-separated ('' = every one of `compilers`)
  c.archs = "decoder"  # comma-separated: encoder, decoder, encoder_decoder
  c.preset = preset
  c.steps = defaults.train.steps
  c.seeds = "0"  # comma-separated: every CPU is trained once per seed (tables: mean ± std over seeds)
  # Grouped training (llmcpu.training.group): CPUs of one shape (a corpus and architecture; ISAs of equal vocabulary,
  # every seed) trained as one stacked model under one jit. auto: on where jax runs on an accelerator, off on the
  # host (measured not to help there: README, Grouped training); on; off.
  c.group = "auto"
  c.group_max = 18  # most CPUs in one group
  c.report = "report"  # report directory under the workdir: another name lets two experiments share the same runs
  c.data_dir = ""  # TFDS data_dir ('' = TFDS default)
  c.doc_bytes = data.DOC_BYTES  # most bytes of a document cut from your own files (text:, jsonl:, ...) or tfds: records
  for block in ("data", "model", "train", "checkpoint"):
    c[block] = defaults[block]
  del c.model["arch"]
  c.parallelism = defaults.parallelism  # jit (over a mesh) or pmap, for every run
  c.mesh = defaults.mesh
  c.crosseval = ml_collections.ConfigDict(dataclasses.asdict(crosseval.CrossEvalOptions()))
  return c


def cpu_config(exp: ml_collections.ConfigDict, corpus: str, arch: str, isa: str, compile_dir: str, seed: int = 0):
  """The training config of one CPU (a cell's row): the preset's, with the experiment's changes to it."""
  c = base_config(arch, exp.preset)
  defaults = base_config("decoder", exp.preset)
  for block in ("data", "model", "train", "checkpoint"):
    for key, value in exp[block].items():
      if value != defaults[block][key]:
        c[block][key] = value
  c.seed = seed
  c.parallelism = exp.parallelism
  c.mesh = ml_collections.ConfigDict(exp.mesh.to_dict())
  c.data.corpus = corpus
  c.data.compile_dir = compile_dir
  c.data.isa = isa
  c.train.steps = exp.steps
  c.train.eval_every = 0  # the cross-evaluation is the evaluation
  c.checkpoint.every = exp.steps
  c.checkpoint.keep = 1
  return c


def cpu_dir(workdir: str, corpus_name: str, arch: str, isa_name: str, seed: int = 0) -> str:
  """The training workdir of one CPU."""
  return fs.join(workdir, "runs", corpus_name, arch, isa_name, f"seed{seed}")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What an experiment config asks for, checked before anything runs."""

  specs: list  # evaluation ISAs (matrix columns)
  trained: list  # ISAs that get CPUs
  archs: list[str]
  seeds: list[int]
  corpora: list  # CPUs are trained and evaluated on each
  sources: list  # corpora the compilers are trained on
  compile_dir: str
  leader: bool  # compiles (and cross-evaluates) for every process sharing the workdir

  def cpus(self, workdir: str, corpus_name: str) -> list[str]:
    return [
      cpu_dir(workdir, corpus_name, a, s.name, seed) for a in self.archs for s in self.trained for seed in self.seeds
    ]


@base.register("matrix", "damage")
class Matrix(base.Experiment):
  """The cross-ISA matrix: compile every ISA, train every CPU, cross-evaluate each corpus; {corpus: report dir}.

  The damage experiment (configs/experiments/damage.py) is this one on graded permutations of one ISA: its report
  adds the damage curves (``damage.view``), as does any matrix whose rows hold one."""

  checks_prompts = True  # the cross-evaluation generates from the test split: say up front what it supports

  def plan(self) -> None:
    self.timing: dict[str, float] = {}
    self.planned = _plan(self.config, self.workdir)

  def stages(self) -> bool:
    """Compile every ISA, train every CPU (what is done already is skipped); False off the leader."""
    exp, plan, log = self.config, self.planned, self.log
    log(
      f"== compile: {len(plan.corpora)} corpora × {len(plan.specs)} compilers "
      f"(trained on {', '.join(c.name for c in plan.sources)})"
    )
    built = toolchain.build_compilers(plan.specs, plan.sources, plan.compile_dir, leader=plan.leader, log=log)
    stats = toolchain.compile_corpora(plan.corpora, built, plan.compile_dir, leader=plan.leader, log=log)
    log("\n" + toolchain.format_isa_table(stats) + "\n\n" + toolchain.format_overlap_matrix(built) + "\n")
    if self.checks_prompts:  # what each corpus' held-out split can measure, said (or refused) before any training
      options = crosseval.CrossEvalOptions(**exp.crosseval.to_dict())
      generates = any(a != "encoder" for a in plan.archs)
      capacity.check_corpora(plan.corpora, built[0], plan.compile_dir, options, generates=generates, log=log)
    self.timing["compile"] = time.time() - self.t0
    base.run_stages("train", _cpu_stages(exp, plan, self.workdir, log), log)
    self.timing["train"] = time.time() - self.t0 - self.timing["compile"]
    if not plan.leader:  # one report per workdir: process 0 cross-evaluates on its own devices and writes it
      log("== report: left to process 0, which writes it into the shared workdir")
    return plan.leader

  def report(self) -> dict[str, str]:
    exp, plan, timing = self.config, self.planned, self.timing
    report_root = fs.join(self.workdir, exp.report or "report")
    reports = {}
    for corpus in plan.corpora:
      t0 = time.time()
      reports[corpus.name] = _cross_evaluate(exp, plan, self.workdir, report_root, corpus, self.t0, self.log)
      timing[f"crosseval {corpus.name}"] = time.time() - t0
    timing["total"] = time.time() - self.t0
    _write_provenance(report_root, exp, timing)
    self.log(f"== done in {timing['total']:.0f}s")
    return reports

  def printout(self, reports: dict[str, str]) -> str:
    lines = []
    for name, out in reports.items():
      rows = crosseval.load_rows(fs.join(out, "results.jsonl"))
      lines += [f"\n## {name}: bits per byte (rows: model ISA, columns: evaluation ISA; ** = native)\n"]
      lines += [crosseval.markdown_table(rows, "bits_per_byte")]
      lines += [f"\n## {name}: normalized score (1 = native, 0 = unigram baseline, < 0 = confidently wrong)\n"]
      lines += [crosseval.markdown_table(rows, "normalized_score"), f"\nReport: {out} (summary.md, tables, heatmaps)"]
    return "\n".join(lines)


def _plan(exp: ml_collections.ConfigDict, workdir: str) -> Plan:
  """Checks every list and number of the config (before hours of compiling, not at the first CPU)."""
  import jax

  compile_dir = fs.join(workdir, "compiled")
  specs = compilers.parse_list(exp.compilers)
  trained = compilers.parse_list(exp.train_compilers) if exp.train_compilers else specs
  missing = [str(s) for s in trained if s not in specs]
  if missing:
    raise UserError(f"train_compilers {', '.join(missing)} are not among the evaluation compilers; add them")
  archs = split_list(exp.archs, "archs")
  for arch in archs:
    if arch not in ARCHS:
      raise UserError(f"unknown arch {arch!r} in --config.archs; choose from {', '.join(ARCHS)}")
  seeds = seed_list(exp.seeds)
  grouping(exp)  # a bad group knob is refused before anything is compiled
  for arch in archs:
    check_ranges(cpu_config(exp, exp.corpus, arch, str(trained[0]), "", seeds[0]))
  load = dict(data_dir=exp.data_dir or None, doc_bytes=exp.get("doc_bytes", data.DOC_BYTES))
  corpora = [data.load_corpus(c, **load) for c in split_list(exp.corpus, "corpus")]
  sources = corpora
  if exp.compiler_corpora:
    sources = [data.load_corpus(c, **load) for c in split_list(exp.compiler_corpora, "corpus")]
  _check_isas_kept(workdir, compile_dir, specs, sources)
  # Processes sharing the compile directory (a pod slice on a bucket): process 0 compiles, the others wait for what
  # it commits. Processes each on its own disk compile their own copy.
  leader = not parallel.shared_directory(compile_dir) or jax.process_index() == 0
  return Plan(specs, trained, archs, seeds, corpora, sources, compile_dir, leader)


def grouping(exp: ml_collections.ConfigDict) -> bool:
  """Whether ``exp.group`` asks for grouped training here (auto: on an accelerator driven by one process)."""
  import jax

  if exp.get("group", "off") not in ("auto", "on", "off"):
    raise UserError(f"--config.group={exp.group!r} must be auto, on or off")
  if exp.get("group_max", 1) < 1:
    raise UserError(f"--config.group_max={exp.group_max} must be at least 1")
  if exp.get("group", "off") == "on" and jax.process_count() > 1:
    raise UserError("--config.group=on trains a group in one process; with several processes set it to auto or off")
  one_accelerator = jax.default_backend() != "cpu" and jax.process_count() == 1  # a pod slice trains CPUs alone
  return exp.get("group", "off") == "on" or (exp.get("group") == "auto" and one_accelerator)


def _cpu_stages(exp: ml_collections.ConfigDict, plan: Plan, workdir: str, log: Callable) -> list[base.Stage]:
  """Every CPU's training run. Seeds outermost: an experiment stopped part-way has every cell of its first seeds,
  not every seed of a few cells. With grouping on, the unfinished CPUs of one shape are grouped instead (finished
  ones stay single stages, skipped as done)."""
  jobs = [(c, a, s, seed) for seed in plan.seeds for c in plan.corpora for a in plan.archs for s in plan.trained]
  if grouping(exp):
    return _group_stages(exp, plan, workdir, jobs, log)
  return [_cpu_stage(exp, plan, workdir, job, log) for job in jobs]


def _cpu_stage(exp, plan: Plan, workdir: str, job: tuple, log: Callable) -> base.Stage:
  """One CPU trained alone, with the config and objective a finished run is checked against."""
  from llmcpu.training import trainer  # jax/flax only when training is asked for

  corpus, arch, spec, seed = job
  path = cpu_dir(workdir, corpus.name, arch, spec.name, seed)
  config = cpu_config(exp, corpus.spec, arch, str(spec), plan.compile_dir, seed)
  objective = objectives.objective_for(config, "seq2seq" if "target" in corpus.fields else "text")
  tag = f"{corpus.name} {arch} {spec.name} seed {seed}"
  return base.Stage(path, exp.steps, tag, functools.partial(trainer.train, config, path, log=log), config=config,
                    objective=objective)  # fmt: skip


def _group_stages(exp, plan: Plan, workdir: str, jobs: list, log: Callable) -> list[base.Stage]:
  """Finished CPUs as single stages (skipped), the others in groups of one shape, at most ``exp.group_max`` each."""
  from llmcpu.training import group

  tools = toolchain.Toolchain(plan.compile_dir)
  singles, shapes = [], {}
  for job in jobs:
    stage = _cpu_stage(exp, plan, workdir, job, log)
    if base.finished(stage.path, exp.steps):  # skipped by run_stages (its "done" line checks the config)
      singles.append(stage)
      continue
    corpus, arch, spec, _ = job
    vocab = tools.compiler(spec, corpus=corpus.spec).vocab_size
    shapes.setdefault((corpus.name, arch, vocab), []).append(stage)
  stages = []
  for (corpus_name, arch, vocab), members in shapes.items():
    for i in range(0, len(members), exp.group_max):
      chunk = members[i : i + exp.group_max]
      if len(chunk) == 1:  # a group of one is a CPU trained alone
        stages.append(chunk[0])
        continue
      paths, configs = [m.path for m in chunk], [m.config for m in chunk]
      tag = f"{corpus_name} {arch} group of {len(chunk)} ({vocab} ids)"
      train = functools.partial(group.train_group, configs, paths, log=log)
      stages.append(base.Stage(paths[0], exp.steps, tag, train, members=tuple(paths[1:])))
  return singles + stages


def _cross_evaluate(exp, plan: Plan, workdir: str, report_root: str, corpus, t_start: float, log: Callable) -> str:
  """One corpus's report, unless it is newer than every checkpoint it covers; returns its directory."""
  options = crosseval.CrossEvalOptions(**exp.crosseval.to_dict())
  out = fs.join(report_root, corpus.name)
  cpus = plan.cpus(workdir, corpus.name)
  results = fs.join(out, "results.jsonl")
  if fs.exists(results) and fs.stat(results)[1] > max(checkpoints.saved_ns(c) for c in cpus):
    log(f"== cross-eval {corpus.name}: done")
    return out
  log(f"== cross-eval {corpus.name}: {len(cpus)} models × {len(plan.specs)} ISAs ({time.time() - t_start:.0f}s in)")
  specs = [str(s) for s in plan.specs]
  # Finished cells, kept after the report too: a preempted matrix continues from them (SIGTERM raises Stopped), and a
  # seed or ISA added later evaluates only its own cells (each is keyed by its checkpoint's step and save time).
  cells = fs.join(out, "cells")
  rows = crosseval.evaluate(cpus, specs, plan.compile_dir, corpus=corpus.spec, options=options, log=log, cells=cells)
  calibration = crosseval.calibrate(plan.compile_dir, corpus.spec, specs, options) if options.coherence else []
  stats = capacity.corpus_stats(plan.compile_dir, corpus, plan.specs[0], options)
  crosseval.write_report(rows, out, calibration, views=(damage.view,), corpus_stats=stats)
  return out


def _check_isas_kept(workdir: str, compile_dir: str, specs, sources) -> None:
  """Refuses to retrain a compiler that CPUs in this workdir were trained with (they would no longer match it)."""
  if not fs.isdir(fs.join(workdir, "runs")):
    return
  want = toolchain.corpora_fingerprint(sources)
  for spec in specs:
    have = toolchain.trained_on(compile_dir, spec)
    if have is not None and have.get("fingerprint") != want:
      raise UserError(
        f"compiler {spec.name} in {compile_dir} was trained on {','.join(have['specs'])}, this config would retrain "
        f"it on {','.join(c.spec for c in sources)} and orphan the CPUs in {workdir}/runs: add "
        f"--config.compiler_corpora={','.join(have['specs'])} (evaluate a subset of corpora with the same ISAs) or "
        "use a new --workdir"
      )


def _write_provenance(directory: str, exp: ml_collections.ConfigDict, timing: dict[str, float]) -> None:
  """experiment.json: the config and the wall time of each stage of this invocation (stages already done take ~0)."""
  import json
  import platform

  record = {
    "config": exp.to_dict(),
    "seconds": {k: round(v, 1) for k, v in timing.items()},
    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
  }
  fs.makedirs(directory)
  fs.write_text(fs.join(directory, "experiment.json"), json.dumps(record, indent=1, sort_keys=True))
