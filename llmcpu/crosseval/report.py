"""The cross-evaluation report: results.jsonl, a matrix per metric (Markdown, CSV, LaTeX, heatmap) and summary.md.

Matrices: rows are the CPUs (``model ISA · arch``, with the corpus when there are several), columns the evaluation
ISAs. A CPU trained with several seeds is one row: its cell shows the mean over seeds ± their standard deviation;
with one seed the cell shows the figure and its 95% bootstrap interval over documents, resampled by cluster
(``(lo–hi, K clusters)``), when the row has one. Native cells (the evaluation ISA is the model's own, by fingerprint)
are bold in Markdown and LaTeX, carry a trailing ``*`` in CSV (which holds the means; ``results.jsonl`` has every
per-seed figure and interval) and are outlined in heatmaps; failed cells read ``failed``; cells with no figure are
empty. ``matrix(rows, metric)`` and ``markdown_table(rows, metric)`` rebuild any table from the rows (e.g. for a
README).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import textwrap
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from llmcpu import fs  # noqa: E402
from llmcpu.crosseval import capacity, summary  # noqa: E402
from llmcpu.crosseval.intervals import mean_std  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Metric:
  title: str
  lower_is_better: bool = False
  digits: int = 3


METRICS: dict[str, Metric] = {
  "bits_per_byte": Metric("bits per byte (lower is better)", lower_is_better=True),
  "normalized_score": Metric("normalized score: 1 native, 0 unigram, <0 worse", digits=2),
  "coherence": Metric("coherence = fluency x fit(relevance), in [0, 1]"),
  "relevance": Metric("relevance: prompt dependence, 1 = true continuation, 0 = independent of the prompt"),
  "relevance_beyond_tail": Metric(
    "relevance beyond the tail: output change when only the prompt's head (all but its last words) is swapped, "
    "1 = true continuation, 0 = none (local models)"
  ),
  "relevance_beyond_tail_judge": Metric(
    "relevance beyond the tail, judge-side estimate (other heads + this tail; not 0 for local models)"
  ),
  "relevance_beyond_copying": Metric("relevance with bytes copied from the prompt (8-byte n-grams) deleted"),
  "copy_rate": Metric("copy rate: share of output bytes in >= 8-byte n-grams of the prompt", lower_is_better=True),
  "fluency": Metric("fluency: well-formed text of the corpus, 1 = held-out text"),
  "token_accuracy": Metric("token accuracy"),
  "illegal_rate": Metric("illegal opcode rate (ids >= model vocab)", lower_is_better=True),
  "misread_rate": Metric("misread opcode rate (legal ids naming another piece)", lower_is_better=True),
  "isa_overlap": Metric("ISA overlap (shared id -> piece)", digits=2),
  "exact_match": Metric("programs: exact match of the greedy answer"),
  "representation_agreement": Metric("encoders: cosine of native vs foreign pooled embeddings"),
  "bpb_unigram": Metric("unigram baseline bits per byte", lower_is_better=True),
}
ALWAYS = (
  "bits_per_byte",
  "normalized_score",
  "coherence",
  "relevance",
  "fluency",
  "token_accuracy",
  "illegal_rate",
  "misread_rate",
  "isa_overlap",
)
HEADLINE = ("bits_per_byte", "normalized_score", "fluency", "relevance", "relevance_beyond_tail", "coherence")


@dataclasses.dataclass
class Cell:
  """One matrix cell: the mean over seeds, their standard deviation (≥ 2 seeds) or the single seed's interval."""

  mean: float
  std: float | None = None
  ci: tuple[float, float] | None = None
  seeds: int = 1
  clusters: int | None = None  # the interval's resampled clusters (documents or prompts grouped by source)
  undefined: str = ""  # "k/N": resamples where the figure was undefined, when any were


@dataclasses.dataclass
class Matrix:
  rows: list[str]
  columns: list[str]
  values: list[list[Cell | str | None]]  # a Cell, "failed", or None
  native: np.ndarray  # bool [rows, columns]

  def means(self) -> np.ndarray:
    return np.array([[v.mean if isinstance(v, Cell) else np.nan for v in row] for row in self.values], float)


def row_label(r: dict, multi_corpus: bool) -> str:
  if r.get("model_isa") is None:
    return f"failed: {os.path.basename(os.path.normpath(str(r['checkpoint'])))}"
  label = f"{r['model_isa']} · {r['arch']}"
  return f"{label} · {r['corpus']}" if multi_corpus else label


def labels(rows: Sequence[dict]) -> dict[str, str]:
  """checkpoint → its row label. Seeds of one CPU share a label; a second run of the same CPU and seed gets its
  checkpoint name."""
  multi = len({r["corpus"] for r in rows if r.get("corpus")}) > 1
  out: dict[str, str] = {}
  taken: set[tuple] = set()
  for r in rows:
    ck = r["checkpoint"]
    if ck in out:
      continue
    label = row_label(r, multi)
    if (label, r.get("seed")) in taken:
      label = f"{label} ({os.path.basename(os.path.normpath(str(ck)))})"
    taken.add((label, r.get("seed")))
    out[ck] = label
  return out


def matrix(rows: Sequence[dict], metric: str) -> Matrix:
  names_of = labels(rows)
  columns = list(dict.fromkeys(r["eval_isa"] for r in rows))
  col_index = {c: i for i, c in enumerate(columns)}
  info = {}
  for r in rows:
    info.setdefault(names_of[r["checkpoint"]], (r.get("arch") or "~", col_index.get(r.get("model_isa"), len(columns))))
  # By architecture, then in column order of the model's ISA: native cells fall on a diagonal.
  names = sorted(info, key=lambda n: (info[n][0], info[n][1], n))
  row_index = {n: i for i, n in enumerate(names)}
  found: dict[tuple[int, int], list[dict]] = {}
  native = np.zeros((len(names), len(columns)), bool)
  for r in rows:
    i, j = row_index[names_of[r["checkpoint"]]], col_index[r["eval_isa"]]
    found.setdefault((i, j), []).append(r)
    native[i, j] |= bool(r.get("native"))
  values: list[list[Cell | str | None]] = [[None] * len(columns) for _ in names]
  for (i, j), cell_rows in found.items():
    values[i][j] = cell_of(cell_rows, metric)
  return Matrix(names, columns, values, native)


def cell_of(cell_rows: list[dict], metric: str) -> Cell | str | None:
  """One matrix cell of ``metric``: mean ± std over seeds, or the single run's interval; "failed" if any failed."""
  if any(r.get("status") != "ok" for r in cell_rows):
    return "failed"
  figures = [_number(r.get(metric)) for r in cell_rows]
  mean, std = mean_std(figures)
  if mean is None:
    return None
  ci = cell_rows[0].get(f"{metric}_ci") if len(cell_rows) == 1 else None
  info = (cell_rows[0].get(f"{metric}_ci_info") or {}) if ci else {}
  undefined = f"{info['undefined']}/{info.get('resamples')}" if info.get("undefined") else ""
  return Cell(mean, std, tuple(ci) if ci else None, len(cell_rows), info.get("clusters"), undefined)


def _number(v) -> float | None:
  return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def format_cell(v, digits: int, *, spread: bool = True, pm: str = "±", dash: str = "–") -> str:
  """A cell as text: the figure, then ± its std over seeds or its interval (with its cluster count)."""
  if isinstance(v, str):
    return v
  if v is None:
    return ""
  text = f"{v.mean:.{digits}f}"
  if spread and v.std is not None:
    text += f" {pm} {v.std:.{digits}f}"
  elif spread and v.ci is not None:
    clusters = f", {v.clusters} clusters" if v.clusters else ""
    clusters += f", {v.undefined} resamples undefined" if v.undefined else ""
    text += f" ({v.ci[0]:.{digits}f}{dash}{v.ci[1]:.{digits}f}{clusters})"
  return text


def markdown_table(rows: Sequence[dict], metric: str, *, spread: bool = True) -> str:
  m, spec = matrix(rows, metric), METRICS.get(metric, Metric(metric))
  lines = ["| model ISA · arch | " + " | ".join(m.columns) + " |", "|---|" + "---:|" * len(m.columns)]
  for i, name in enumerate(m.rows):
    cells = []
    for j, v in enumerate(m.values[i]):
      text = format_cell(v, spec.digits, spread=spread) or "–"
      cells.append(f"**{text}**" if m.native[i, j] and isinstance(v, Cell) else text)
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_csv(m: Matrix, digits: int, path: str) -> None:
  f = io.StringIO(newline="")
  w = csv.writer(f)
  w.writerow(["model", *m.columns])
  for i, name in enumerate(m.rows):
    cells = [
      format_cell(v, digits, spread=False) + ("*" if m.native[i, j] and isinstance(v, Cell) else "")
      for j, v in enumerate(m.values[i])
    ]
    w.writerow([name, *cells])
  fs.write_text(path, f.getvalue())


def save_figure(fig, path: str) -> None:
  """PNG through ``fs`` (a bucket path too), then closed."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  plt.close(fig)
  fs.write_bytes(path, buf.getvalue())


def _tex(s: str) -> str:
  for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("·", r"$\cdot$")):
    s = s.replace(a, b)
  return s


def latex_table(m: Matrix, title: str, digits: int) -> str:
  lines = [
    r"\begin{table}[t]",
    r"\centering",
    r"\begin{tabular}{l" + "r" * len(m.columns) + "}",
    r"\toprule",
    "model ISA $\\cdot$ arch & " + " & ".join(_tex(c) for c in m.columns) + r" \\",
    r"\midrule",
  ]
  for i, name in enumerate(m.rows):
    cells = []
    for j, v in enumerate(m.values[i]):
      text = (
        r"\textit{failed}" if v == "failed" else "--" if v is None else format_cell(v, digits, pm="$\\pm$", dash="--")
      )
      cells.append(f"\\textbf{{{text}}}" if m.native[i, j] and isinstance(v, Cell) else text)
    lines.append(_tex(name) + " & " + " & ".join(cells) + r" \\")
  note = "mean $\\pm$ std over seeds, or (95\\% bootstrap interval over clusters of documents)"
  lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{_tex(title)}; {note}; native cells in bold.}}"]
  lines.append(r"\end{table}")
  return "\n".join(lines) + "\n"


def heatmap(m: Matrix, spec: Metric, path: str) -> None:
  data = m.means()
  h, w = data.shape
  fig, ax = plt.subplots(figsize=(3.0 + 1.0 * w, 1.8 + 0.45 * h), dpi=120)
  cmap = plt.get_cmap("viridis_r" if spec.lower_is_better else "viridis").with_extremes(bad="#d9d9d9")
  finite = data[np.isfinite(data)]
  vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
  im = ax.imshow(
    np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-9, aspect="auto"
  )
  for i in range(h):
    for j in range(w):
      v = m.values[i][j]
      if isinstance(v, Cell):
        shade = (v.mean - vmin) / (vmax - vmin) if vmax > vmin else 0.5
        dark = shade > 0.55 if spec.lower_is_better else shade < 0.45
        ax.text(
          j,
          i,
          format_cell(v, spec.digits, spread=False),
          ha="center",
          va="center",
          fontsize=8,
          color="white" if dark else "black",
        )
      elif v == "failed":
        ax.text(j, i, "failed", ha="center", va="center", fontsize=8, color="#a00000")
      if m.native[i, j]:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.2))
  ax.set_xticks(range(w), m.columns, rotation=30, ha="right", fontsize=8)
  ax.set_yticks(range(h), m.rows, fontsize=8)
  ax.set_xlabel("evaluation ISA (machine code fed as is)")
  ax.set_title(textwrap.fill(spec.title + " — native outlined", 12 * w + 20), fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.tight_layout()
  save_figure(fig, path)


def metrics_present(rows: Sequence[dict]) -> list[str]:
  """The always-reported metrics plus any other metric with at least one figure."""
  return [k for k in METRICS if k in ALWAYS or any(_number(r.get(k)) is not None for r in rows)]


def load_rows(path: str, name: str = "results.jsonl") -> list[dict]:
  """Rows from a results.jsonl (or the report directory holding one; ``name`` picks another file there)."""
  if fs.isdir(path):
    path = fs.join(path, name)
  if not fs.exists(path):
    return []
  return [json.loads(line) for line in fs.read_text(path).splitlines() if line.strip()]


def _write_jsonl(rows: Sequence[dict], path: str) -> None:
  """Rows as JSON lines, without private keys (``_docs``: per-document arrays), written atomically."""
  lines = [
    json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, sort_keys=True, default=_json_default) + "\n"
    for r in rows
  ]
  fs.write_text(path, "".join(lines))


@dataclasses.dataclass(frozen=True)
class View:
  """A figure an experiment adds to the report, and its table in summary.md."""

  name: str  # its key in write_report's paths
  path: str
  title: str
  table: str


def write_report(
  rows: Sequence[dict],
  out_dir: str,
  calibration: Sequence[dict] | None = None,
  *,
  views: Sequence[Callable[[Sequence[dict], str], View | None]] = (),
  corpus_stats: dict | None = None,
) -> dict:
  """Writes every file of the report; returns their paths. ``views`` (rows, out_dir) draw an experiment's own
  figures (None: nothing to draw), their tables last in summary.md. ``corpus_stats`` (``capacity.corpus_stats``)
  goes to corpus_stats.json and a line of summary.md. ``results.jsonl`` is written last: a report directory holding
  it is complete."""
  out_dir = fs.abspath(out_dir)
  for sub in ("tables", "heatmaps"):
    fs.makedirs(fs.join(out_dir, sub))
  paths: dict = {"results": fs.join(out_dir, "results.jsonl"), "tables": {}, "heatmaps": {}}
  fs.remove(paths["results"])  # an interrupted rewrite must not leave the old marker behind
  for metric in metrics_present(rows):
    spec, m = METRICS[metric], matrix(rows, metric)
    base = fs.join(out_dir, "tables", metric)
    fs.write_text(base + ".md", f"### {spec.title}\n\n{markdown_table(rows, metric)}\n")
    write_csv(m, spec.digits, base + ".csv")
    fs.write_text(base + ".tex", latex_table(m, spec.title, spec.digits))
    png = fs.join(out_dir, "heatmaps", f"{metric}.png")
    heatmap(m, spec, png)
    paths["tables"][metric] = {ext: f"{base}.{ext}" for ext in ("md", "csv", "tex")}
    paths["heatmaps"][metric] = png
  if calibration is not None:
    paths["calibration"] = fs.join(out_dir, "calibration.jsonl")
    _write_jsonl(calibration, paths["calibration"])
  drawn = [v for v in (view(rows, out_dir) for view in views) if v is not None]
  paths |= {v.name: v.path for v in drawn}
  if corpus_stats is not None:
    paths["corpus_stats"] = capacity.write_stats(out_dir, corpus_stats)
  paths["summary"] = fs.join(out_dir, "summary.md")
  tables = {k: markdown_table(rows, k) for k in HEADLINE if k in metrics_present(rows)}
  if any(_number(r.get("exact_match")) is not None for r in rows):
    tables["exact_match"] = markdown_table(rows, "exact_match")
  tables |= {v.title: v.table for v in drawn}
  fs.write_text(paths["summary"], summary.summarize(rows, tables, calibration or [], corpus_stats))
  _write_jsonl(rows, paths["results"])
  return paths


def _json_default(o):
  if isinstance(o, np.generic):
    return o.item()
  raise TypeError(f"not JSON serializable: {type(o).__name__}")
