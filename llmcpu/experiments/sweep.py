"""The sweep experiment (``kind = "sweep"``): the cross-ISA matrix at several model sizes and budgets, to find where a
CPU starts to use its prompt beyond the last bytes (relevance beyond the tail, issue 22).

Each point is the experiment's matrix config with a few keys changed, run as its own matrix workdir (runs are keyed
by corpus, architecture, ISA and seed only, so two sizes must not share one)::

  <workdir>/<point>/            a whole matrix workdir: compiled/, runs/, <report>/
  <workdir>/<point>/train_seconds.json   the wall time of the training that made the point's runs
  <workdir>/<point>/<report>/eval_seconds.json   the wall time of the cross-evaluation that made that report
  <workdir>/<report>/sweep.md   one table line per point; sweep.jsonl (the same figures) and experiment.json

``stages`` trains every point first (the expensive part, resumable); ``report`` then cross-evaluates each point into
``<point>/<report>`` and writes the table. A new ``--config.report=NAME`` re-runs only the cross-evaluation of the
same checkpoints into fresh report directories (finished runs are skipped).
"""

from __future__ import annotations

import json
import re
import time

import ml_collections

from llmcpu import fs
from llmcpu.errors import UserError
from llmcpu.experiments import base, matrix, tables

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_FIXED = ("kind", "points", "report")  # keys a point may not change: they belong to the sweep


def sweep_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  """The matrix config every point starts from, plus ``points``."""
  c = matrix.experiment_config(preset)
  c.kind = "sweep"
  # Points, ';'-separated: NAME, then optional space-separated KEY=VALUE overrides of this config's keys.
  c.points = "tiny"
  return c


def _value(old, text: str, key: str):
  """``text`` as the type of the key's current value (a typo'd number is refused, never stored as a string)."""
  try:
    if isinstance(old, bool):
      if text.lower() not in ("true", "false"):
        raise ValueError
      return text.lower() == "true"
    if isinstance(old, int):
      return int(text)
    if isinstance(old, float):
      return float(text)
  except ValueError:
    raise UserError(f"sweep point key {key}={text!r}: expected a {type(old).__name__}") from None
  return text


def points(exp: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(name, matrix config) of every point of ``exp.points``, checked: names distinct, keys known, values typed."""
  out: list[tuple[str, ml_collections.ConfigDict]] = []
  for item in _items(exp):
    name, _, rest = item.partition(":")
    name = name.strip()
    if not _NAME.match(name):
      raise UserError(f"sweep point name {name!r} must be letters, digits, '_', '-' or '.' (it names a directory)")
    if name in [n for n, _ in out] or name == (exp.report or "report"):
      raise UserError(f"sweep point {name!r} is named twice (or like the report directory); rename it")
    c = ml_collections.ConfigDict(exp.to_dict())
    c.kind = "matrix"
    del c["points"]
    for pair in rest.split():
      key, eq, text = pair.partition("=")
      if not eq or key in _FIXED:
        raise UserError(f"sweep point {name!r}: {pair!r} must be KEY=VALUE with KEY a config key other than {_FIXED}")
      *blocks, leaf = key.split(".")
      parent = c
      for part in blocks:
        parent = parent.get(part) if isinstance(parent, ml_collections.ConfigDict) else None
      if not isinstance(parent, ml_collections.ConfigDict) or leaf not in parent:
        raise UserError(f"sweep point {name!r}: unknown config key {key!r}")
      parent[leaf] = _value(parent[leaf], text, key)
    out.append((name, c))
  return out


def _items(exp: ml_collections.ConfigDict) -> list[str]:
  items = [x.strip() for x in exp.points.split(";") if x.strip()]
  if not items:
    raise UserError("experiment points is empty; give ';'-separated points, e.g. 'tiny; wide: model.d_model=128'")
  return items


@base.register("sweep")
class Sweep(base.Experiment):
  """Every point's matrix: all trained first, then all cross-evaluated; {point: report dir} plus the sweep table."""

  def plan(self) -> None:
    self.points = points(self.config)
    self.matrices = [matrix.Matrix(c, fs.join(self.workdir, name), log=self.log) for name, c in self.points]
    for m in self.matrices:
      m.plan()

  def stages(self) -> bool:
    for (name, c), m in zip(self.points, self.matrices, strict=True):
      self.log(f"== sweep point {name}")
      was = all(base.finished(p, c.steps) for p in _cpus(m))
      t0 = time.time()
      if not m.stages():
        return False
      if not was:  # the wall time of the training that made these runs (not of a rerun that skipped it)
        seconds = time.time() - t0
        fs.write_text(fs.join(m.workdir, "train_seconds.json"), json.dumps({"seconds": round(seconds, 1)}))
    return True

  def report(self) -> dict[str, str]:
    reports, lines = {}, []
    for (name, c), m in zip(self.points, self.matrices, strict=True):
      self.log(f"== sweep point {name}: cross-evaluation")
      # A report already newer than its checkpoints is skipped, and the matrix then rewrites its provenance with
      # ≈ 0 s: the seconds of the cross-evaluation that made it are kept in <point>/<report>/eval_seconds.json.
      root = fs.join(m.workdir, c.report or "report")
      kept = fs.join(root, "eval_seconds.json")
      before = json.loads(fs.read_text(kept))["seconds"] if fs.exists(kept) else None
      if before is None:
        before = _crosseval_seconds(fs.join(root, "experiment.json"))
      stamps = {x.name: _stamp(fs.join(root, x.name, "results.jsonl")) for x in m.planned.corpora}
      m.t0 = time.time()
      ran = False
      for corpus, out in m.report().items():
        reports[f"{name}/{corpus}"] = out
        ran |= stamps.get(corpus) is None or stamps[corpus] != _stamp(fs.join(out, "results.jsonl"))
        lines.append(point_row(name, c, m.workdir, out))
      seconds = _crosseval_seconds(fs.join(root, "experiment.json")) if ran or before is None else before
      fs.write_text(kept, json.dumps({"seconds": seconds}))
      for line in lines[-len(m.planned.corpora) :]:
        line["report_seconds"] = seconds
    root = fs.join(self.workdir, self.config.report or "report")
    fs.makedirs(root)
    fs.write_text(fs.join(root, "sweep.md"), sweep_markdown(lines) + "\n")
    fs.write_text(fs.join(root, "sweep.jsonl"), "".join(json.dumps(r) + "\n" for r in lines))
    record = {"config": self.config.to_dict(), "seconds": round(time.time() - self.t0, 1)}
    fs.write_text(fs.join(root, "experiment.json"), json.dumps(record, indent=1, sort_keys=True))
    self.sweep_dir = root
    return reports

  def printout(self, reports: dict[str, str]) -> str:
    return fs.read_text(fs.join(self.sweep_dir, "sweep.md")) + f"\nReports: {', '.join(reports.values())}"


def _cpus(m: matrix.Matrix) -> list[str]:
  return [p for corpus in m.planned.corpora for p in m.planned.cpus(m.workdir, corpus.name)]


def _stamp(path: str) -> int | None:
  return fs.stat(path)[1] if fs.exists(path) else None


def _read_jsonl(path: str) -> list[dict]:
  if not fs.exists(path):
    return []
  return [json.loads(x) for x in fs.read_text(path).splitlines() if x.strip()]


def point_row(name: str, c: ml_collections.ConfigDict, workdir: str, report_dir: str) -> dict:
  """One point's line: its size and budget, the first native cell's figures, the local baselines on the same
  prompts (calibration), the best foreign cell of that CPU, and the wall times."""
  rows = [r for r in _read_jsonl(fs.join(report_dir, "results.jsonl")) if r.get("status") == "ok"]
  calibration = _read_jsonl(fs.join(report_dir, "calibration.jsonl"))
  native = next((r for r in rows if r.get("native")), None)
  foreign = [r for r in rows if not r.get("native") and native and r["checkpoint"] == native["checkpoint"]]
  trained = fs.join(workdir, "train_seconds.json")
  return {
    "point": name,
    "d_model": c.model.d_model,
    "layers": c.model.num_layers,
    "length": c.data.length,
    "params": param_count(c, native["arch"], native["model_vocab"]) if native else None,
    "steps": c.steps,
    "tokens": c.steps * c.train.batch_size * c.data.length,
    "native": native
    and {
      "isa": native["model_isa"],
      "bits_per_byte": native.get("bits_per_byte"),
      "prompts": native.get("prompts"),
      **figures(native),
      "relevance_verdict": native.get("relevance_verdict"),
      "relevance_beyond_tail_verdict": native.get("relevance_beyond_tail_verdict"),
    },
    "foreign": {r["eval_isa"]: figures(r) for r in foreign},
    "baselines": {r["reference"]: figures(r) for r in calibration if r.get("reference") in _baseline_names()},
    "train_seconds": json.loads(fs.read_text(trained))["seconds"] if fs.exists(trained) else None,
    "report_seconds": None,  # filled in by the caller, which knows whether this report was made now
  }


_KEYS = ("relevance", "relevance_beyond_tail")


def figures(r: dict) -> dict:
  """A cell's relevance figures with their intervals (what the sweep table shows)."""
  return {k: r.get(k) for key in _KEYS for k in (key, f"{key}_ci", f"{key}_ci_info")}


def param_count(c: ml_collections.ConfigDict, arch: str, vocab_size: int) -> int:
  """The point's CPU's parameters with the native ISA's vocabulary: the closed-form count of the model config its
  training run builds."""
  from llmcpu.models.config import expected_param_count
  from llmcpu.training import trainer

  run = matrix.cpu_config(c, c.corpus, arch, "char", "")
  return expected_param_count(trainer.model_config_for(run, vocab_size))


def _baseline_names() -> tuple[str, ...]:
  from llmcpu.crosseval import coherence

  return tuple(coherence.BASELINES)


def _crosseval_seconds(path: str) -> float | None:
  if not fs.exists(path):
    return None
  seconds = [v for k, v in json.loads(fs.read_text(path)).get("seconds", {}).items() if k.startswith("crosseval")]
  return round(sum(seconds), 1) if seconds else None


def _fig(d: dict | None, key: str) -> str:
  return tables.fmt_key(d, key) if d else "—"


def sweep_markdown(lines: list[dict]) -> str:
  """The sweep as one Markdown table (95% cluster-bootstrap intervals; verdicts of the equivalence test)."""
  names = _baseline_names()
  head = [
    "point",
    "d_model × layers",
    "length",
    "params",
    "steps",
    "tokens",
    "native bits/byte",
    "relevance",
    "beyond tail",
    "verdict (beyond tail)",
    *(f"{n.split(': ', 1)[-1]}: relevance / beyond tail" for n in names),
    "train s",
    "eval s",
  ]
  out = [tables.row(head), tables.rule(1, len(head) - 1)]
  for p in lines:
    n = p["native"] or {}
    base_cells = [
      f"{_fig(p['baselines'].get(x), 'relevance')} / {_fig(p['baselines'].get(x), 'relevance_beyond_tail')}"
      for x in names
    ]
    bpb = n.get("bits_per_byte")
    out.append(
      tables.row(
        [
          p["point"],
          f"{p['d_model']} × {p['layers']}",
          str(p["length"]),
          f"{p['params']:,}" if p["params"] else "—",
          str(p["steps"]),
          f"{p['tokens'] / 1e6:.2f}M",
          f"{bpb:.3f}" if bpb is not None else "—",
          _fig(n, "relevance"),
          _fig(n, "relevance_beyond_tail"),
          n.get("relevance_beyond_tail_verdict") or "—",
          *base_cells,
          f"{p['train_seconds']:.0f}" if p["train_seconds"] is not None else "—",
          f"{p['report_seconds']:.0f}" if p["report_seconds"] is not None else "—",
        ]
      )
    )
  return "\n".join(out)
