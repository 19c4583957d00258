"""The porting experiment (``kind = "porting"``): recovery curves of every method, for every (source ISA → target
ISA, architecture).

Stages, each resumable like the matrix's: compile every ISA; train a native CPU on each (the sources, and
the native ISA-B reference); port each source by each method, *one run per budget*, each with its own schedule
(warmup, cosine decay ending at that budget): a budget point is a run annealed for that budget, never a mid-decay
checkpoint of a longer run; score every run's end on ISA B's test split (bits per byte with a bootstrap interval over
documents); write the report. ``scratch`` also runs ``scratch_budgets``, multiples of the native's steps (default
1, 2 and 4×): scratch is trained to the native's budget and past it, so its crossings are found or bounded.

A curve is bits per byte (and, with ``crosseval.coherence``, relevance — exact match on ``programs``) against ISA-B
tokens seen (0 = zero-shot). Its gap is anchored twice, at the *zero-shot cell* (the source CPU fed ISA B's machine
code as is) and at *align* (the rows transplanted, 0 tokens), and runs to the *native* ISA-B CPU:
``closed = (anchor − bpb) / (anchor − native)``. "tokens to close 50/90/99%" interpolates ``closed`` on a log-token
axis between budget points, per seed and anchor; a share never reached is bounded, "> N" (N: the last budget's
tokens). "in all" adds the source CPU's own training tokens (on ISA A) to the ISA-B tokens. With several seeds a curve's
figures are the mean over seeds ± their standard deviation and the tokens to close are the mean (min–max) over
seeds; with one seed, the figure and its 95% bootstrap interval over documents.
``translate`` is the source CPU fed ISA B's code translated back into its own ISA (decode, re-encode): its bits per
byte are the source's native figure on the same text, at a host cost per call the table states.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable

import ml_collections

from llmcpu import compilers, crosseval, fs, toolchain
from llmcpu.crosseval.intervals import mean_std
from llmcpu.crosseval.library import Library
from llmcpu.errors import UserError
from llmcpu.experiments import base, matrix, tables
from llmcpu.porting import runner
from llmcpu.porting.transplant import translation_cost
from llmcpu.training import checkpoints

ALL_METHODS = ("translate", *runner.PORT_METHODS, *runner.EXTRA_METHODS)  # translate: evaluated, never written
# Ports that update no transformer weight (distill fits embedding rows only): the share-of-gap column's methods.
TRAINING_FREE = ("align", "fvt", *runner.EXTRA_METHODS)
# "relearn+omp": relearn (or finetune) started from another training-free method's rows (runner's ``init``); plain
# relearn / finetune start from align's.
COMPOSED = ("relearn", "finetune")
STARTS = tuple(m for m in TRAINING_FREE if m != "align")
DECODER_ONLY = "distill"  # llmcpu.porting.distill matches a causal CPU's states: no curve for other architectures
CLOSES = (0.5, 0.9, 0.99)


def porting_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  """configs/experiments/porting.py's base: an experiment config (the natives) plus the ports."""
  c = matrix.experiment_config(preset)
  c.kind = "porting"
  add_port_keys(c)
  c.ports = "bpe:4000>unigram:4000"  # comma-separated SOURCE>TARGET compiler specs
  c.report = "report-porting"
  c.crosseval.coherence = False  # True: curves also carry relevance (exact match on programs), at ~5 s a checkpoint
  c.crosseval.shuffled_prompts = False  # the calibration belongs to cross_eval; every port here is "native"
  # Relevance is judged for these architectures only: a tiny encoder-decoder's continuation ignores its prompt on
  # prose (README, headline), so its relevance curve would be flat at 0 whatever the port.
  c.relevance_archs = "decoder"
  return c


def add_port_keys(c: ml_collections.ConfigDict) -> None:
  """The keys of the ports: what each curve trains and from what (the porting and llms experiments')."""
  c.methods = ",".join(ALL_METHODS)
  c.budgets = "0,10,30,100,300"  # training steps of every trained port: one run per budget, annealed for it
  c.scratch_budgets = "1,2,4"  # scratch also trains these multiples of the native's steps (found or bounded)
  c.port_learning_rate = 0.0  # 0 = the source's
  # omp / procrustes (and relearn+omp, ...) borrow from a donor: the native CPU of ISA B this experiment trains
  # (same corpus, arch and seed). distill's budget is ISA-B tokens of text read, counted in every point's tokens.
  c.omp_atoms = runner.DEFAULTS["omp_atoms"]
  c.distill_tokens = runner.DEFAULTS["distill_tokens"]
  c.distill_learning_rate = runner.DEFAULTS["distill_learning_rate"]


@dataclasses.dataclass(frozen=True)
class Curve:
  corpus: object
  arch: str
  source: compilers.CompilerSpec
  target: compilers.CompilerSpec
  method: str
  seed: int

  def path(self, workdir: str) -> str:
    source = "scratch" if self.method == "scratch" else self.source.name  # one scratch run serves every source
    where = f"{source}-to-{self.target.name}"
    return fs.join(workdir, "ports", self.corpus.name, self.arch, where, self.method, f"seed{self.seed}")


@base.register("porting")
class Porting(matrix.Matrix):
  """A native CPU on every ISA of the ports (the matrix's stages, without its cross-evaluation), then every port."""

  def plan(self) -> None:
    self.plan_ports(_pairs(self.config.ports))
    isas = list(dict.fromkeys(s for pair in self.pairs for s in pair))
    self.config = exp = ml_collections.ConfigDict(self.config.to_dict())
    exp.compilers, exp.train_compilers = ",".join(map(str, isas)), ""  # every ISA gets a native CPU
    super().plan()

  def plan_ports(self, pairs: list[tuple[compilers.CompilerSpec, compilers.CompilerSpec]]) -> None:
    """The curves' pairs, methods and budgets, checked."""
    exp = self.config
    self.pairs, self.methods, self.budgets = pairs, _methods(exp.methods), base.step_list(exp.budgets)
    self.scratch_budgets = scratch_budgets(self.budgets, exp.get("scratch_budgets", ""), exp.steps)

  def stages(self) -> bool:
    if not super().stages():  # compile, and train the sources and the native references
      return False
    base.run_stages("port", self.port_stages(), self.log)
    return True

  def port_stages(self) -> list[base.Stage]:
    """Every port run (one per curve and budget), in order; sets ``self.curves`` (translate's included). Needs only
    ``plan()``: nothing is read or trained."""
    plan = self.planned
    skipped = sorted({m for m in self.methods if DECODER_ONLY in split_method(m)} if plan.archs != ["decoder"] else ())
    if skipped:
      self.log(f"== porting: {', '.join(skipped)} port decoders only: no such curve for the other architectures")
    self.curves = [
      Curve(corpus, arch, a, b, m, seed)
      for corpus in plan.corpora
      for arch in plan.archs
      for a, b in self.pairs
      for m in self.methods
      for seed in plan.seeds
      if arch == "decoder" or DECODER_ONLY not in split_method(m)
    ]
    return [
      _port(self.config, self.workdir, c, budget, self.log)
      for c in self.curves
      if c.method != "translate"
      for budget in self.curve_budgets(c)
    ]

  def curve_budgets(self, curve: Curve) -> list[int]:
    """The budgets a curve's runs train: training-free ports none but 0; scratch its own list; the rest
    ``budgets``."""
    if split_method(curve.method)[0] not in runner.TRAINED:
      return [0]
    return self.scratch_budgets if curve.method == "scratch" else self.budgets

  def report(self) -> dict[str, str]:
    exp = self.config
    out = fs.join(self.workdir, exp.report)
    refs: dict = {}  # (corpus, arch, source, target, seed) → reference cells, shared by every method's curve
    cells = fs.join(out, "cells")  # kept after the report, as the matrix's: a later seed or method scores only its own
    rows = [_score(exp, self.workdir, c, self.curve_budgets(c), refs, self.log, cells) for c in self.curves]
    attach_closes(rows)
    write_report(rows, out, exp, time.time() - self.t0)
    self.log(f"== porting report: {out}")
    return {exp.report: out}

  def printout(self, reports: dict[str, str]) -> str:
    (out,) = reports.values()
    return "\n" + fs.read_text(fs.join(out, "porting.md")) + f"\nReport: {out} (porting.md, recovery_*.png)"


def _pairs(value: str, resolve: Callable = compilers.parse, example: str = "bpe:4000>unigram:4000") -> list[tuple]:
  """``SOURCE>TARGET,...`` → [(resolve(source), resolve(target))]: compiler specs, or (llms) the models' ISAs."""
  pairs = []
  for item in base.split_list(value, "ports"):
    if item.count(">") != 1:
      raise UserError(f"port {item!r} is not SOURCE>TARGET, e.g. --config.ports={example}")
    a, b = (resolve(x.strip()) for x in item.split(">"))
    pairs.append((a, b))
  return pairs


def _methods(value: str) -> list[str]:
  methods = base.split_list(value, "methods")
  for m in methods:
    split_method(m)
  return methods


def split_method(method: str) -> tuple[str, str]:
  """A curve's method → (the runner's method, its ``init``): ``relearn+omp`` → (relearn, omp); ``relearn`` →
  (relearn, align). A UserError for anything else."""
  name, _, init = method.partition("+")
  if not init and name in ALL_METHODS:
    return name, "align"
  if name in COMPOSED and init in STARTS:
    return name, init
  composed = ", ".join(f"{m}+{s}" for m in COMPOSED for s in STARTS)
  raise UserError(f"unknown porting method {method!r}; choose from {', '.join(ALL_METHODS)}, {composed}")


def scratch_budgets(budgets: list[int], multiples: str, native_steps: int) -> list[int]:
  """``budgets`` and ``multiples`` (comma-separated, of the native's steps) of them: scratch's budgets."""
  what = f"--config.scratch_budgets={multiples!r} must be positive multiples of the native's steps, e.g. 1,2,4"
  try:
    factors = [float(x) for x in base.split_list(str(multiples), "scratch_budgets")] if str(multiples).strip() else []
  except ValueError:
    raise UserError(what) from None
  if any(not f > 0 for f in factors):
    raise UserError(what)
  return sorted(set(budgets) | {max(1, round(f * native_steps)) for f in factors})


def budget_path(workdir: str, curve: Curve, budget: int) -> str:
  """The run that trains ``curve``'s port for ``budget`` steps (align/fvt: 0), annealed for that budget."""
  return fs.join(curve.path(workdir), f"budget{budget}")


def _port(exp, workdir: str, curve: Curve, budget: int, log: Callable) -> base.Stage:
  """The run that ports one curve's source CPU for one budget, its schedule ending there. It is told the corpus and
  compile dir it trains and is scored on: a native trained here has the same ones, an imported LLM none."""
  path = budget_path(workdir, curve, budget)
  source = matrix.cpu_dir(workdir, curve.corpus.name, curve.arch, curve.source.name, curve.seed)
  donor = matrix.cpu_dir(workdir, curve.corpus.name, curve.arch, curve.target.name, curve.seed)  # native of ISA B
  method, init = split_method(curve.method)
  config = ml_collections.ConfigDict(
    dict(checkpoint=source, to_isa=str(curve.target), method=method, steps=budget, corpus=curve.corpus.spec)
  )
  config.update(seed=curve.seed, save_at="", compile_dir=fs.join(workdir, "compiled"), init=init, donor=donor)
  config.update(learning_rate=exp.port_learning_rate)
  for key in ("omp_atoms", "distill_tokens", "distill_learning_rate"):
    config[key] = exp.get(key, runner.DEFAULTS[key])
  tag = f"{curve.arch} {curve.source.name} → {curve.target.name} by {curve.method}, {budget} steps (seed {curve.seed})"
  return base.Stage(path, budget, tag, functools.partial(runner.port_checkpoint, config, path, log=log))


def _score(exp, workdir: str, curve: Curve, budgets: list[int], refs: dict, log: Callable, cells: str | None = None):
  """A curve's row: bits per byte (interval) at every saved budget, the zero-shot and native references. ``cells``:
  where finished cells are kept (``crosseval.evaluate``), so that a seed or method added later scores only its own."""
  compile_dir = fs.join(workdir, "compiled")
  options = crosseval.CrossEvalOptions.from_config(exp.crosseval)
  if curve.arch not in base.split_list(exp.get("relevance_archs", "") or curve.arch, "relevance_archs"):
    options = dataclasses.replace(options, coherence=False)
  cpu = lambda spec: matrix.cpu_dir(workdir, curve.corpus.name, curve.arch, spec.name, curve.seed)  # noqa: E731
  key = (curve.corpus.name, curve.arch, curve.source.name, curve.target.name, curve.seed)
  if key not in refs:
    isas = [str(curve.target), str(curve.source)]
    cpus = [cpu(curve.source), cpu(curve.target)]
    rows = crosseval.evaluate(cpus, isas, compile_dir, corpus=curve.corpus.spec, options=options, log=log, cells=cells)
    refs[key] = {(r["model_isa"], r["eval_isa"]): r for r in rows}
  cell = refs[key]
  zero = cell[(curve.source.name, curve.target.name)]
  native = cell[(curve.target.name, curve.target.name)]
  own = cell[(curve.source.name, curve.source.name)]
  row = dict(corpus=curve.corpus.name, arch=curve.arch, source=curve.source.name, target=curve.target.name)
  row |= dict(method=curve.method, seed=curve.seed, zero_shot_bpb=zero["bits_per_byte"])
  row |= dict(native_bpb=native["bits_per_byte"], source_native_bpb=own["bits_per_byte"])
  row |= dict(zero_shot_relevance=zero.get("relevance"), native_relevance=native.get("relevance"))
  row |= dict(native_tokens=checkpoints.load_meta(cpu(curve.target))["tokens_seen"])
  # "in all": the source CPU's own training tokens (ISA A) come with every port but scratch's.
  row["source_tokens"] = 0 if curve.method == "scratch" else checkpoints.load_meta(cpu(curve.source))["tokens_seen"]
  if curve.method == "translate":
    row["points"] = [_point(0, 0, own)]
    row["ms_per_1k_tokens"] = _translate_cost(compile_dir, curve)
  else:  # each budget's run, scored at its end
    paths = [fs.join(budget_path(workdir, curve, b), "checkpoints", str(b)) for b in budgets]
    target, spec = [str(curve.target)], curve.corpus.spec
    rows = crosseval.evaluate(paths, target, compile_dir, corpus=spec, options=options, log=log, cells=cells)
    tokens = [tokens_read(checkpoints.load_meta(p)) for p in paths]
    row["points"] = [_point(r["step"], t, r) for r, t in zip(rows, tokens, strict=True)]
  return row


def tokens_read(meta: dict) -> int:
  """ISA-B tokens a port has read: its trainer steps' and, for a distilled start, the text distill read."""
  return meta["tokens_seen"] + ((meta.get("provenance") or {}).get("distill") or {}).get("tokens", 0)


def _point(step: int, tokens: int, r: dict) -> dict:
  """One saved step: bits per byte and (when judged) relevance, each with its 95% bootstrap interval."""
  p = {"step": step, "tokens": tokens}
  for name, key in (("bpb", "bits_per_byte"), ("relevance", "relevance")):
    lo, hi = r.get(f"{key}_ci") or (None, None)
    clusters = (r.get(f"{key}_ci_info") or {}).get("clusters")
    p |= {name: r.get(key), f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_clusters": clusters}
  return p


def _translate_cost(compile_dir: str, curve: Curve) -> float:
  lib = Library(compile_dir)
  comp_b, comp_a = lib.compiler(str(curve.target)), lib.compiler(str(curve.source))
  split = toolchain.load_split(compile_dir, lib.corpus_name(curve.corpus.spec, comp_b), comp_b, "test")
  field = next(iter(split.fields.values()))
  docs = [field.doc(i).tolist() for i in range(min(split.num_docs, 64))]
  return 1000 * translation_cost(docs, comp_b, comp_a)  # seconds per 1000 ids → ms


ANCHORS = {"zero-shot": "zero_shot_bpb", "align": "align_bpb"}  # where a gap starts: the key of its bits per byte


def attach_closes(rows: list[dict]) -> None:
  """Every row's align anchor (the align port's bits per byte on the same pair and seed; else a relearn or finetune
  run's 0-step point, which is align's port) and its tokens to close the gap from each anchor."""
  align: dict[tuple, float] = {}
  for r in sorted(rows, key=lambda r: r["method"] != "align"):  # align's own figure first
    first = r["points"][0] if r["points"] else None
    if r["method"] in ("align", "relearn", "finetune") and first and first["tokens"] == 0:
      align.setdefault(_pair_key(r), first["bpb"])
  scratch = {_pair_key(r): r["points"] for r in rows if r["method"] == "scratch"}
  for r in rows:
    r["align_bpb"] = align.get(_pair_key(r))
    r["closes"] = closes(r)
    r["closes_align"] = closes(r, "align_bpb")
    r["share_translate"] = share_closed(r)
    theirs = scratch.get(_pair_key(r))
    for p in r["points"]:
      p["scratch_tokens"] = None if theirs is None or r["method"] == "scratch" else scratch_match(p["bpb"], theirs)


def scratch_match(bpb: float, scratch_points: list[dict]) -> float | None:
  """ISA-B tokens a scratch CPU of the same pair and seed needs to reach ``bpb``: the first of its budget points at or
  below it, interpolated on log tokens from the point before (linearly from a 0-token start); None when no budget
  of the scratch curve reaches it (the report bounds it by scratch's last tokens). Each scratch point is a run
  annealed for its budget, so this is "how much training from scratch the port is worth" (WECHSEL's comparison)."""
  prev = None
  for p in sorted(scratch_points, key=lambda p: p["tokens"]):
    if p["bpb"] <= bpb:
      if prev is None or p["tokens"] <= prev["tokens"]:
        return float(p["tokens"])
      f = (prev["bpb"] - bpb) / (prev["bpb"] - p["bpb"])
      if prev["tokens"] <= 0:
        return f * p["tokens"]
      return math.exp(math.log(prev["tokens"]) + f * (math.log(p["tokens"]) - math.log(prev["tokens"])))
    prev = p
  return None


def share_closed(row: dict) -> float | None:
  """The share of the align → translate gap a training-free port closes at 0 transformer updates:
  ``(align − bpb) / (align − translate)`` with translate = the source CPU's own bits per byte on the same text; None
  for a trained curve, without an align anchor, or when align is already at or below translate (no gap)."""
  align, translate = row.get("align_bpb"), row.get("source_native_bpb")
  first = row["points"][0] if row["points"] else None
  if row["method"] not in TRAINING_FREE or align is None or translate is None or first is None or first["step"]:
    return None
  return (align - first["bpb"]) / (align - translate) if align - translate > 0 else None


def _pair_key(row: dict) -> tuple:
  return tuple(row[k] for k in ("corpus", "arch", "source", "target", "seed"))


def closes(row: dict, anchor: str = "zero_shot_bpb") -> dict[str, int | None]:
  """Tokens at which the curve first closes 50/90/99% of the ``anchor`` → native gap (log-token interpolation);
  None where it never does (the report bounds it by the curve's last tokens) or there is no gap."""
  zero, native = row.get(anchor), row["native_bpb"]
  out: dict[str, int | None] = {f"{int(c * 100)}%": None for c in CLOSES}
  if zero is None or not zero - native > 0:
    return out
  gap = zero - native
  points = [(p["tokens"], (zero - p["bpb"]) / gap) for p in row["points"]]
  for c in CLOSES:
    prev = None
    for tokens, closed in points:
      if closed >= c:
        if prev is None or prev[0] <= 0 or tokens <= prev[0]:
          out[f"{int(c * 100)}%"] = tokens
        else:  # interpolate on log tokens between the last point below and this one
          f = (c - prev[1]) / (closed - prev[1])
          log_t = math.log(prev[0]) + f * (math.log(tokens) - math.log(prev[0]))
          out[f"{int(c * 100)}%"] = int(round(math.exp(log_t)))
        break
      prev = (tokens, closed)
  return out


_CURVE = ("corpus", "arch", "source", "target", "method")
_REFERENCES = (
  "zero_shot_bpb",
  "align_bpb",
  "native_bpb",
  "source_native_bpb",
  "zero_shot_relevance",
  "native_relevance",
  "source_tokens",
  "native_tokens",
)
METRICS = ("bpb", "relevance")


def aggregate(rows: list[dict]) -> list[dict]:
  """One curve per (corpus, arch, pair, method) over its seeds, at the steps every seed saved.

  Each point's metric is the mean over seeds with ``_std`` (≥ 2 seeds) and a band ``_lo``/``_hi``: mean ± std over
  seeds, or with one seed its 95% bootstrap interval over documents. ``closes`` keeps every seed's figure."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in _CURVE), []).append(r)
  out = []
  for rs in groups.values():
    steps = sorted(set.intersection(*({p["step"] for p in r["points"]} for r in rs)))
    curve = {k: rs[0][k] for k in _CURVE} | {"seeds": sorted(r["seed"] for r in rs), "points": []}
    for key in _REFERENCES:
      curve[key], curve[f"{key}_std"] = mean_std([r.get(key) for r in rs])
    curve["share_translate"], curve["share_translate_std"] = mean_std([r.get("share_translate") for r in rs])
    if "ms_per_1k_tokens" in rs[0]:
      curve["ms_per_1k_tokens"] = mean_std([r["ms_per_1k_tokens"] for r in rs])[0]
    for step in steps:
      ps = [next(p for p in r["points"] if p["step"] == step) for r in rs]
      point = {"step": step, "tokens": ps[0]["tokens"], "scratch_tokens": [p.get("scratch_tokens") for p in ps]}
      for m in METRICS:
        mean, std = mean_std([p.get(m) for p in ps])
        lo, hi = (mean - std, mean + std) if std is not None else (ps[0].get(f"{m}_lo"), ps[0].get(f"{m}_hi"))
        point |= {m: mean, f"{m}_std": std, f"{m}_lo": lo, f"{m}_hi": hi}
      curve["points"].append(point)
    for name in ("closes", "closes_align"):
      curve[name] = {c: [r.get(name, {}).get(c) for r in rs] for c in rs[0]["closes"]}
    out.append(curve)
  return out


def write_report(rows: list[dict], out: str, exp, seconds: float) -> None:
  """results.jsonl (every seed's curve; last: it marks the report finished), porting.md (curves over seeds) and one
  figure per (pair, arch)."""
  curves = aggregate(rows)

  def figures() -> None:
    for key in sorted({(r["corpus"], r["arch"], r["source"], r["target"]) for r in curves}):
      figure([r for r in curves if (r["corpus"], r["arch"], r["source"], r["target"]) == key], out)

  texts = {"porting.md": markdown(curves)}
  base.write_report(out, rows, exp, seconds, texts=texts, figures=figures, default=None)


def _fmt(p: dict, m: str = "bpb") -> str:
  """mean ± std over seeds, or the single seed's figure (95% bootstrap interval)."""
  lo, clusters = p.get(f"{m}_lo"), p.get(f"{m}_clusters")
  ci = None if lo is None else (lo, p[f"{m}_hi"])
  info = {"clusters": clusters} if clusters else None
  return tables.fmt(p.get(m), std=p.get(f"{m}_std"), ci=ci, info=info, missing="n/a")


def _ref(curve: dict, key: str) -> str:
  return _fmt({"v": curve[key], "v_std": curve.get(f"{key}_std")}, "v")


def _tokens(per_seed: list[int | None], bound: int) -> str:
  """Tokens to close a share of the gap over seeds: the figure, mean (min–max), or "> bound" (not reached within the
  curve's last ``bound`` tokens; "(k/n seeds)" when some seeds reached it)."""
  reached = [t for t in per_seed if t is not None]
  if len(reached) < len(per_seed):
    return f"> {bound:,}" + (f" ({len(reached)}/{len(per_seed)} seeds)" if reached else "")
  if len(reached) == 1 or min(reached) == max(reached):
    return f"{reached[0]:,}"
  return f"{round(sum(reached) / len(reached)):,} ({min(reached):,}–{max(reached):,})"


def _label(curve: dict) -> str:
  return f"| {curve['corpus']} | {curve['arch']} | {curve['source']} → {curve['target']} | {curve['method']} |"


def markdown(curves: list[dict]) -> str:
  """The bits-per-byte table, the tokens to close the gap from either anchor and, when judged, the relevance table."""
  seeds = sorted({s for c in curves for s in c["seeds"]})
  spread = "mean ± std over seeds" if len(seeds) > 1 else "figure (95% bootstrap interval over documents)"
  lines = [
    f"Bits per byte on ISA B's test split, {spread}; seeds {', '.join(map(str, seeds))}. Every budget is its own run, "
    "its schedule annealed for that budget. tokens: ISA-B tokens of the last budget; in all: plus the source CPU's "
    "own training tokens.",
    "",
    "0 updates: no transformer weight trained yet (distill's rows are fitted: its tokens are the text it read). "
    "share of align → translate: the share of the gap between align and translate (the source CPU on the same text "
    "in its own ISA) that a training-free port closes at 0 updates (1 = as good as translation, < 0 = worse than "
    "align, > 1 = better than translation: omp and procrustes read the rows of the native ISA-B CPU, the donor, "
    f"which is also this table's native reference; {'mean ± std over seeds' if len(seeds) > 1 else 'one seed'}; "
    "— for trained curves; no gap where align is already at or below translate).",
    "",
    "| corpus | arch | port | method | zero-shot | 0 updates | share of align → translate gap closed at 0 "
    "transformer updates | last | tokens | in all | native |",
    "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for c in curves:
    first, last = c["points"][0], c["points"][-1]
    zero_col = _fmt(first) + (f" · {c['ms_per_1k_tokens']:.2f} ms/1k ids" if c["method"] == "translate" else "")
    lines.append(
      f"{_label(c)} {_ref(c, 'zero_shot_bpb')} | {zero_col} | {_share(c)} | {_fmt(last)} | {last['tokens']:,} | "
      f"{_in_all(c, last['tokens'])} | {_ref(c, 'native_bpb')} |"
    )
  tables_ = lines + _closes_table(curves, len(seeds)) + _best_start_table(curves, len(seeds))
  tables_ += _scratch_table(curves, len(seeds))
  return "\n".join(tables_ + _relevance_table(curves, spread)) + "\n"


def _share(curve: dict) -> str:
  if curve["method"] not in TRAINING_FREE:
    return "—"
  if curve.get("align_bpb") is not None and not curve["align_bpb"] - (curve.get("source_native_bpb") or 0) > 0:
    return "no gap"
  return tables.fmt(curve.get("share_translate"), std=curve.get("share_translate_std"), digits=2)


def best_start(curves: list[dict], key: tuple) -> dict | None:
  """Of one (corpus, arch, pair)'s training-free curves with a relearn curve from their rows, the one with the lowest
  bits per byte at 0 updates (mean over seeds; read on the same test split the table reports)."""
  at = {c["method"]: c for c in curves if tuple(c[k] for k in _CURVE[:4]) == key}
  starts = [at[m] for m in TRAINING_FREE if m in at and relearn_of(m) in at and at[m]["points"]]
  return min(starts, key=lambda c: c["points"][0]["bpb"], default=None)


def relearn_of(method: str) -> str:
  """The curve that relearns from ``method``'s rows: relearn (align's) or relearn+METHOD."""
  return "relearn" if method == "align" else f"relearn+{method}"


def _best_start_table(curves: list[dict], seeds: int) -> list[str]:
  """Tokens to close 90% of the zero-shot → native gap: relearn from the best training-free start, from align, and
  scratch, per (corpus, arch, pair)."""
  keys = list(dict.fromkeys(tuple(c[k] for k in _CURVE[:4]) for c in curves))
  rows = []
  for key in keys:
    best = best_start(curves, key)
    if best is None:
      continue
    at = {c["method"]: c for c in curves if tuple(c[k] for k in _CURVE[:4]) == key}
    cells = [best["method"], _fmt(best["points"][0])]
    for name in (relearn_of(best["method"]), "relearn", "scratch"):
      c = at.get(name)
      cells.append("n/a" if c is None else _closed(c, "zero_shot_bpb", c["closes"]["90%"], c["points"][-1]["tokens"]))
    rows.append(f"| {key[0]} | {key[1]} | {key[2]} → {key[3]} | " + " | ".join(cells) + " |")
  if not rows:
    return []
  return [
    "",
    "ISA-B tokens to close 90% of the zero-shot → native gap ("
    + ("mean (min–max) over seeds" if seeds > 1 else "one seed")
    + "), relearn started from the best training-free start (lowest bits per byte at 0 updates among those with a "
    "relearn curve; chosen on the test split this table reads), from align, and scratch; the same budget rules as "
    "above (a distilled start counts the text it read). omp and procrustes also borrow the native ISA-B CPU's rows "
    "(the donor), whose own training tokens (native tokens above) no port column counts.",
    "",
    tables.row(
      ["corpus", "arch", "port", "best start", "its 0 updates", "best start + relearn", "align + relearn", "scratch"]
    ),  # fmt: skip
    tables.rule(4, 4),
    *rows,
  ]


def _scratch_table(curves: list[dict], seeds: int) -> list[str]:
  """What each port is worth in scratch training: at every budget of every port curve, the ISA-B tokens scratch
  needs to reach the port's bits per byte, and that over the port's own tokens (ISA-B only, and in all)."""
  rows = []
  for c in curves:
    if c["method"] == "scratch" or not any(p.get("scratch_tokens") for p in c["points"]):
      continue
    scratch = next((s for s in curves if s["method"] == "scratch" and _same_pair(s, c)), None)
    bound = scratch["points"][-1]["tokens"] if scratch else 0
    trained = c["method"] not in (*TRAINING_FREE, "translate")
    for p in c["points"][1 if trained else 0 :]:  # a trained curve's 0-step point is its start's row
      per_seed = p["scratch_tokens"]
      reached = [t for t in per_seed if t is not None]
      own, in_all = p["tokens"], p["tokens"] + (c.get("source_tokens") or 0)
      ratio = ratio_all = "—"
      if reached and len(reached) == len(per_seed):
        mean = sum(reached) / len(reached)
        ratio = f"{mean / own:.1f}×" if own else "∞"
        ratio_all = f"{mean / in_all:.2f}×" if in_all else "∞"
      elif len(reached) < len(per_seed):
        ratio = f"> {bound / own:.1f}×" if own else "∞"
        ratio_all = f"> {bound / in_all:.2f}×" if in_all else "∞"
      cells = [str(p["step"]), f"{own:,}", _fmt(p), _tokens([None if t is None else round(t) for t in per_seed], bound)]
      rows.append(f"{_label(c)} " + " | ".join([*cells, ratio, ratio_all]) + " |")
  if not rows:
    return []
  return [
    "",
    "What a port is worth in training from scratch (WECHSEL's comparison): at each budget of each port curve, the "
    "ISA-B tokens a scratch CPU of the same pair and seed needs to reach the port's bits per byte (scratch's own "
    "budgets, each annealed for itself, interpolated on log tokens; "
    + ("mean (min–max) over seeds" if seeds > 1 else "one seed")
    + "; > N: better than scratch's last budget), and that over the port's ISA-B tokens and over its tokens in all "
    "(the source CPU's own training added). Above 1× in all, porting saved training; below it, scratch would have "
    "been cheaper.",
    "",
    tables.row(["corpus", "arch", "port", "method", "steps", "ISA-B tokens", "bits per byte"])
    + " scratch tokens to match | × ISA-B tokens | × tokens in all |",
    tables.rule(4, 6),
    *rows,
  ]


def _same_pair(a: dict, b: dict) -> bool:
  return all(a[k] == b[k] for k in _CURVE[:4])


def _in_all(curve: dict, tokens: int) -> str:
  return f"{round(tokens + (curve.get('source_tokens') or 0)):,}"


def _closes_table(curves: list[dict], seeds: int) -> list[str]:
  """ISA-B tokens to close 50/90/99% of the gap from zero-shot and from align, and 90% counted in all."""
  lines = [
    "",
    "ISA-B tokens to close 50/90/99% of the gap to the native CPU, anchored at zero-shot and at align ("
    + ("mean (min–max) over seeds" if seeds > 1 else "interpolated on log tokens between budgets")
    + "); > N: not reached within the curve's N tokens; no gap: the anchor is already at or below native. "
    "90% in all adds the source CPU's own training tokens; native tokens: what the native CPU trained on.",
    "",
    tables.row(["corpus", "arch", "port", "method", "native tokens", "source tokens"])
    + " zero-shot → native 50% | 90% | 99% | align → native 50% | 90% | 99% | 90% in all (zero-shot) | "
    "90% in all (align) |",
    tables.rule(4, 10),
  ]
  for c in curves:
    bound = c["points"][-1]["tokens"]
    cells = [f"{round(c.get('native_tokens') or 0):,}", f"{round(c.get('source_tokens') or 0):,}"]
    for anchor, name in (("zero_shot_bpb", "closes"), ("align_bpb", "closes_align")):
      cells += [_closed(c, anchor, c[name][k], bound) for k in ("50%", "90%", "99%")]
    for anchor, name in (("zero_shot_bpb", "closes"), ("align_bpb", "closes_align")):
      per_seed = c[name]["90%"]
      shift = [None if t is None else t + (c.get("source_tokens") or 0) for t in per_seed]
      cells.append(_closed(c, anchor, shift, bound + round(c.get("source_tokens") or 0)))
    lines.append(f"{_label(c)} " + " | ".join(cells) + " |")
  return lines


def _closed(curve: dict, anchor: str, per_seed: list, bound: int) -> str:
  """A tokens-to-close cell: n/a without the anchor, "no gap" when the anchor is at or below native."""
  if curve.get(anchor) is None:
    return "n/a"
  if not curve[anchor] - curve["native_bpb"] > 0:
    return "no gap"
  return _tokens([None if t is None else round(t) for t in per_seed], bound)


def _relevance_table(curves: list[dict], spread: str) -> list[str]:
  judged = [c for c in curves if any(p.get("relevance") is not None for p in c["points"])]
  if not judged:
    return []
  steps = sorted({p["step"] for c in judged for p in c["points"]})
  lines = [
    "",
    f"Relevance (exact match on programs) of greedy continuations of ISA-B prompts, {spread}, by training step.",
    "",
    tables.row(["corpus", "arch", "port", "method", "zero-shot", *(f"step {s}" for s in steps), "native"]),
    tables.rule(4, len(steps) + 2),
  ]
  for c in judged:
    at = {p["step"]: p for p in c["points"]}
    cols = [_fmt(at[s], "relevance") if s in at else "" for s in steps]
    row = f"{_label(c)} {_ref(c, 'zero_shot_relevance')} | " + " | ".join(cols)
    lines.append(f"{row} | {_ref(c, 'native_relevance')} |")
  return lines


def figure(curves: list[dict], out: str) -> None:
  """Recovery of one (pair, arch): every method's bits per byte (and relevance, when judged) against tokens."""
  from llmcpu.crosseval.report import plt

  c0 = curves[0]
  panels = [m for m in METRICS if any(p.get(m) is not None for c in curves for p in c["points"])]
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
  floor = min((p["tokens"] for c in curves for p in c["points"] if p["tokens"] > 0), default=1) / 3
  band = "± std over seeds" if len(c0["seeds"]) > 1 else "95% interval over documents"
  for ax, m in zip(axes[0], panels, strict=True):
    for c in curves:
      pts = [p for p in c["points"] if p.get(m) is not None]
      xs = [max(p["tokens"], floor) for p in pts]
      (line,) = ax.plot(xs, [p[m] for p in pts], marker="o", label=c["method"])
      if pts and all(p[f"{m}_lo"] is not None for p in pts):
        lo, hi = [p[f"{m}_lo"] for p in pts], [p[f"{m}_hi"] for p in pts]
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    name = "bpb" if m == "bpb" else "relevance"
    if c0.get(f"zero_shot_{name}") is not None:
      ax.axhline(c0[f"zero_shot_{name}"], ls=":", c="gray", label="zero-shot (source CPU, ISA B code)")
    if c0.get(f"native_{name}") is not None:
      ax.axhline(c0[f"native_{name}"], ls="--", c="k", label="native ISA-B CPU")
    ax.set_xscale("log")
    ax.set_xlabel(f"ISA-B tokens seen (leftmost = 0, drawn at {floor:,.0f})")
    ax.set_ylabel("bits per byte on ISA B's test split" if m == "bpb" else "relevance (exact match on programs)")
    ax.set_title(f"{c0['arch']}: {c0['source']} → {c0['target']} ({c0['corpus']}; bands {band})", fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  name = f"recovery_{c0['corpus']}_{c0['arch']}_{c0['source']}-to-{c0['target']}.png"
  with fs.open(fs.join(out, name), "wb") as f:
    fig.savefig(f, dpi=120)
  plt.close(fig)
