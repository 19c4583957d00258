"""The porting experiment: recovery curves of every method, for every (source ISA → target ISA, architecture).

Stages, each resumable like ``experiment.run``: compile every ISA; train a native CPU on each (the sources, and
the native ISA-B reference); port each source by each method with checkpoints at every budget; score every saved
step on ISA B's test split (bits per byte with a bootstrap interval over documents); write the report.

A curve is bits per byte against ISA-B tokens seen (0 = zero-shot). Its gap runs from the *zero-shot cell* (the
source CPU fed ISA B's machine code as is) to the *native* ISA-B CPU: ``closed = (zero − bpb) / (zero − native)``.
"tokens to close 50/90/99%" interpolates ``closed`` on a log-token axis between saved steps (— if never reached).
``translate`` is the source CPU fed ISA B's code translated back into its own ISA (decode, re-encode): its bits per
byte are the source's native figure on the same text, at a host cost per call the table states.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable

import ml_collections

from llmcpu import checkpoints, compilers, crosseval, experiment, fs, toolchain
from llmcpu.crosseval.library import Library
from llmcpu.errors import Stopped, UserError
from llmcpu.porting import runner
from llmcpu.porting.transplant import translation_cost

ALL_METHODS = ("translate", *runner.METHODS)  # translate: evaluated, never written
CLOSES = (0.5, 0.9, 0.99)


def porting_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  """configs/experiments/porting.py's base: an experiment config (the natives) plus the ports."""
  c = experiment.experiment_config(preset)
  c.ports = "bpe:4000>unigram:4000"  # comma-separated SOURCE>TARGET compiler specs
  c.methods = ",".join(ALL_METHODS)
  c.budgets = "0,10,30,100,300"  # training steps at which every trained port is saved and scored
  c.port_learning_rate = 0.0  # 0 = the source's
  c.report = "report-porting"
  c.crosseval.coherence = False  # curves are bits per byte
  return c


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


def run(exp: ml_collections.ConfigDict, workdir: str, *, log: Callable[[str], None] = print) -> str:
  """Runs (or continues) the porting experiment; returns its report directory."""
  t0, workdir = time.time(), fs.abspath(workdir)
  pairs, methods, budgets = _pairs(exp.ports), _methods(exp.methods), _budgets(exp.budgets)
  isas = []
  for spec in [s for pair in pairs for s in pair]:
    if spec not in isas:
      isas.append(spec)
  exp = ml_collections.ConfigDict(exp.to_dict())
  exp.compilers, exp.train_compilers = ",".join(map(str, isas)), ""  # every ISA gets a native CPU
  plan = experiment.prepare(exp, workdir, log=log)  # compile, and train the sources and the native references
  if not plan.leader:
    return ""
  curves = [
    Curve(corpus, arch, a, b, m, seed)
    for corpus in plan.corpora
    for arch in plan.archs
    for a, b in pairs
    for m in methods
    for seed in plan.seeds
  ]
  for curve in curves:
    _port(exp, workdir, curve, budgets, log)
  out = fs.join(workdir, exp.report)
  refs: dict = {}  # (corpus, arch, source, target, seed) → reference cells, shared by every method's curve
  rows = [_score(exp, workdir, curve, budgets, refs, log) for curve in curves]
  write_report(rows, out, exp, time.time() - t0)
  log(f"== porting report: {out}")
  return out


def _pairs(value: str) -> list[tuple[compilers.CompilerSpec, compilers.CompilerSpec]]:
  pairs = []
  for item in experiment.split_list(value, "ports"):
    if item.count(">") != 1:
      raise UserError(f"port {item!r} is not SOURCE>TARGET, e.g. --config.ports=bpe:4000>unigram:4000")
    a, b = (compilers.parse(x.strip()) for x in item.split(">"))
    pairs.append((a, b))
  return pairs


def _methods(value: str) -> list[str]:
  methods = experiment.split_list(value, "methods")
  bad = [m for m in methods if m not in ALL_METHODS]
  if bad:
    raise UserError(f"unknown porting method {bad[0]!r}; choose from {', '.join(ALL_METHODS)}")
  return methods


def _budgets(value: str) -> list[int]:
  try:
    budgets = sorted({int(x) for x in experiment.split_list(str(value), "budgets")})
  except ValueError:
    raise UserError(f"--config.budgets={value!r} must be comma-separated step counts, e.g. 0,10,30,100") from None
  if budgets[0] < 0:
    raise UserError(f"--config.budgets={value!r} must be steps ≥ 0")
  return budgets


def _port(exp, workdir: str, curve: Curve, budgets: list[int], log: Callable) -> None:
  if curve.method == "translate":
    return
  path = curve.path(workdir)
  steps = max(budgets) if curve.method in runner.TRAINED else 0
  if experiment.finished(path, steps):
    return
  source = experiment.cpu_dir(workdir, curve.corpus.name, curve.arch, curve.source.name, curve.seed)
  config = ml_collections.ConfigDict(
    dict(checkpoint=source, to_isa=str(curve.target), method=curve.method, steps=steps, corpus="", seed=curve.seed)
  )
  config.update(save_at=",".join(map(str, budgets)), compile_dir="", learning_rate=exp.port_learning_rate)
  log(f"== port {curve.arch} {curve.source.name} → {curve.target.name} by {curve.method} (seed {curve.seed})")
  fs.makedirs(path)
  result = runner.run(config, path, log=log)
  if result.stopped != "done":
    raise Stopped(f"stopped at step {result.step} of a port; rerun the same command to continue")


def _score(exp, workdir: str, curve: Curve, budgets: list[int], refs: dict, log: Callable) -> dict:
  """A curve's row: bits per byte (interval) at every saved budget, the zero-shot and native references."""
  compile_dir = fs.join(workdir, "compiled")
  options = crosseval.CrossEvalOptions.from_config(exp.crosseval)
  cpu = lambda spec: experiment.cpu_dir(workdir, curve.corpus.name, curve.arch, spec.name, curve.seed)  # noqa: E731
  key = (curve.corpus.name, curve.arch, curve.source.name, curve.target.name, curve.seed)
  if key not in refs:
    isas = [str(curve.target), str(curve.source)]
    cpus = [cpu(curve.source), cpu(curve.target)]
    rows = crosseval.evaluate(cpus, isas, compile_dir, corpus=curve.corpus.spec, options=options, log=log)
    refs[key] = {(r["model_isa"], r["eval_isa"]): r for r in rows}
  cell = refs[key]
  zero = cell[(curve.source.name, curve.target.name)]
  native = cell[(curve.target.name, curve.target.name)]
  own = cell[(curve.source.name, curve.source.name)]
  row = dict(corpus=curve.corpus.name, arch=curve.arch, source=curve.source.name, target=curve.target.name)
  row |= dict(method=curve.method, seed=curve.seed, zero_shot_bpb=zero["bits_per_byte"])
  row |= dict(native_bpb=native["bits_per_byte"], source_native_bpb=own["bits_per_byte"])
  if curve.method == "translate":
    row["points"] = [_point(0, 0, own)]
    row["ms_per_1k_tokens"] = _translate_cost(compile_dir, curve)
  else:
    steps = sorted(int(s) for s in fs.listdir(fs.join(curve.path(workdir), "checkpoints")) if s.isdigit())
    steps = [s for s in steps if s in budgets or s == max(steps)]
    paths = [fs.join(curve.path(workdir), "checkpoints", str(s)) for s in steps]
    target = [str(curve.target)]
    rows = crosseval.evaluate(paths, target, compile_dir, corpus=curve.corpus.spec, options=options, log=log)
    last = checkpoints.load_meta(paths[-1])
    per_step = last["tokens_seen"] / max(last["step"], 1)
    row["points"] = [_point(r["step"], int(r["step"] * per_step), r) for r in rows]
  row["closes"] = closes(row)
  return row


def _point(step: int, tokens: int, r: dict) -> dict:
  lo, hi = r.get("bits_per_byte_ci") or (None, None)
  return {"step": step, "tokens": tokens, "bpb": r["bits_per_byte"], "bpb_lo": lo, "bpb_hi": hi}


def _translate_cost(compile_dir: str, curve: Curve) -> float:
  lib = Library(compile_dir)
  comp_b, comp_a = lib.compiler(str(curve.target)), lib.compiler(str(curve.source))
  split = toolchain.load_split(compile_dir, lib.corpus_name(curve.corpus.spec, comp_b), comp_b, "test")
  field = next(iter(split.fields.values()))
  docs = [field.doc(i).tolist() for i in range(min(split.num_docs, 64))]
  return 1000 * translation_cost(docs, comp_b, comp_a)  # seconds per 1000 ids → ms


def closes(row: dict) -> dict[str, int | None]:
  """Tokens at which the curve first closes 50/90/99% of the zero-shot → native gap (log-token interpolation)."""
  zero, native = row["zero_shot_bpb"], row["native_bpb"]
  gap = zero - native
  out: dict[str, int | None] = {f"{int(c * 100)}%": None for c in CLOSES}
  if not gap > 0:
    return out
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


def write_report(rows: list[dict], out: str, exp, seconds: float) -> None:
  """results.jsonl (last: it marks the report finished), porting.md and one figure per (pair, arch)."""
  fs.makedirs(out)
  fs.remove(fs.join(out, "results.jsonl"))
  fs.write_text(fs.join(out, "porting.md"), markdown(rows))
  for key in sorted({(r["corpus"], r["arch"], r["source"], r["target"]) for r in rows}):
    figure([r for r in rows if (r["corpus"], r["arch"], r["source"], r["target"]) == key], out)
  fs.write_text(fs.join(out, "experiment.json"), json.dumps({"config": exp.to_dict(), "seconds": round(seconds)}))
  fs.write_text(fs.join(out, "results.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))


def _fmt(p: dict) -> str:
  return f"{p['bpb']:.3f} ({p['bpb_lo']:.3f}–{p['bpb_hi']:.3f})" if p["bpb_lo"] is not None else f"{p['bpb']:.3f}"


def _tokens(t: int | None) -> str:
  return "—" if t is None else f"{t:,}"


def markdown(rows: list[dict]) -> str:
  lines = [
    "| corpus | arch | port | method | zero-shot | 0 tokens | last | tokens | native | 50% | 90% | 99% |",
    "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    first, last = r["points"][0], r["points"][-1]
    zero_col = _fmt(first) if r["method"] != "translate" else f"{_fmt(first)} · {r['ms_per_1k_tokens']:.2f} ms/1k ids"
    lines.append(
      f"| {r['corpus']} | {r['arch']} | {r['source']} → {r['target']} | {r['method']} | {r['zero_shot_bpb']:.3f} | "
      f"{zero_col} | {_fmt(last)} | {last['tokens']:,} | {r['native_bpb']:.3f} | "
      + " | ".join(_tokens(r["closes"][k]) for k in ("50%", "90%", "99%"))
      + " |"
    )
  return "\n".join(lines) + "\n"


def figure(rows: list[dict], out: str) -> None:
  from llmcpu.crosseval.report import plt

  r0 = rows[0]
  fig, ax = plt.subplots(figsize=(6, 4))
  floor = min((p["tokens"] for r in rows for p in r["points"] if p["tokens"] > 0), default=1) / 3
  for r in rows:
    xs = [max(p["tokens"], floor) for p in r["points"]]
    (line,) = ax.plot(xs, [p["bpb"] for p in r["points"]], marker="o", label=r["method"])
    if all(p["bpb_lo"] is not None for p in r["points"]):  # 95% bootstrap intervals over documents
      lo, hi = [p["bpb_lo"] for p in r["points"]], [p["bpb_hi"] for p in r["points"]]
      ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
  ax.axhline(r0["zero_shot_bpb"], ls=":", c="gray", label="zero-shot (source CPU, ISA B code)")
  ax.axhline(r0["native_bpb"], ls="--", c="k", label="native ISA-B CPU")
  ax.set_xscale("log")
  ax.set_xlabel(f"ISA-B tokens seen (leftmost = 0, drawn at {floor:,.0f})")
  ax.set_ylabel("bits per byte on ISA B's test split")
  ax.set_title(f"{r0['arch']}: {r0['source']} → {r0['target']} ({r0['corpus']})")
  ax.legend(fontsize=7)
  fig.tight_layout()
  name = f"recovery_{r0['corpus']}_{r0['arch']}_{r0['source']}-to-{r0['target']}.png"
  with fs.open(fs.join(out, name), "wb") as f:
    fig.savefig(f, dpi=120)
  plt.close(fig)
