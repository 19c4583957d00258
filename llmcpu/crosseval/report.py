"""The cross-evaluation report: results.jsonl, a matrix per metric (Markdown, CSV, LaTeX, heatmap) and summary.md.

Matrices: rows are the CPUs (``model ISA · arch``, with the corpus when there are several), columns the evaluation
ISAs. Native cells (the evaluation ISA is the model's own, by fingerprint) are bold in Markdown and LaTeX, carry a
trailing ``*`` in CSV and are outlined in heatmaps; failed cells read ``failed``; cells with no figure are empty.
``matrix(rows, metric)`` and ``markdown_table(rows, metric)`` rebuild any table from the rows (e.g. for a README).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from llmcpu.crosseval import summary  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Metric:
  title: str
  lower_is_better: bool = False
  digits: int = 3


METRICS: dict[str, Metric] = {
  "bits_per_byte": Metric("bits per byte (lower is better)", lower_is_better=True),
  "normalized_score": Metric("normalized score: 1 native, 0 unigram, <0 worse", digits=2),
  "token_accuracy": Metric("token accuracy"),
  "illegal_rate": Metric("illegal opcode rate (ids >= model vocab)", lower_is_better=True),
  "misread_rate": Metric("misread opcode rate (legal ids naming another piece)", lower_is_better=True),
  "isa_overlap": Metric("ISA overlap (shared id -> piece)", digits=2),
  "coherence": Metric("coherence of generations in [0, 1]"),
  "exact_match": Metric("programs: exact match of the greedy answer"),
  "representation_agreement": Metric("encoders: cosine of native vs foreign pooled embeddings"),
  "bpb_unigram": Metric("unigram baseline bits per byte", lower_is_better=True),
}
ALWAYS = (
  "bits_per_byte",
  "normalized_score",
  "token_accuracy",
  "illegal_rate",
  "misread_rate",
  "isa_overlap",
  "coherence",
)


@dataclasses.dataclass
class Matrix:
  rows: list[str]
  columns: list[str]
  values: list[list[float | str | None]]  # a number, "failed", or None
  native: np.ndarray  # bool [rows, columns]


def row_label(r: dict, multi_corpus: bool) -> str:
  if r.get("model_isa") is None:
    return f"failed: {os.path.basename(os.path.normpath(str(r['checkpoint'])))}"
  label = f"{r['model_isa']} · {r['arch']}"
  return f"{label} · {r['corpus']}" if multi_corpus else label


def _labels(rows: Sequence[dict]) -> dict[str, str]:
  """checkpoint → its row label, made unique (a second run of the same CPU gets its checkpoint name)."""
  multi = len({r["corpus"] for r in rows if r.get("corpus")}) > 1
  out: dict[str, str] = {}
  for r in rows:
    ck = r["checkpoint"]
    if ck in out:
      continue
    label = row_label(r, multi)
    if label in out.values():
      label = f"{label} ({os.path.basename(os.path.normpath(str(ck)))})"
    out[ck] = label
  return out


def matrix(rows: Sequence[dict], metric: str) -> Matrix:
  labels = _labels(rows)
  columns = list(dict.fromkeys(r["eval_isa"] for r in rows))
  col_index = {c: i for i, c in enumerate(columns)}
  info = {}
  for r in rows:
    info.setdefault(labels[r["checkpoint"]], (r.get("arch") or "~", col_index.get(r.get("model_isa"), len(columns))))
  # By architecture, then in column order of the model's ISA: native cells fall on a diagonal.
  names = sorted(info, key=lambda n: (info[n][0], info[n][1], n))
  row_index = {n: i for i, n in enumerate(names)}
  values: list[list[float | str | None]] = [[None] * len(columns) for _ in names]
  native = np.zeros((len(names), len(columns)), bool)
  for r in rows:
    i, j = row_index[labels[r["checkpoint"]]], col_index[r["eval_isa"]]
    values[i][j] = "failed" if r.get("status") != "ok" else _number(r.get(metric))
    native[i, j] = bool(r.get("native"))
  return Matrix(names, columns, values, native)


def _number(v) -> float | None:
  return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _fmt(v, digits: int) -> str:
  return v if isinstance(v, str) else "" if v is None else f"{v:.{digits}f}"


def markdown_table(rows: Sequence[dict], metric: str) -> str:
  m, spec = matrix(rows, metric), METRICS.get(metric, Metric(metric))
  lines = ["| model ISA · arch | " + " | ".join(m.columns) + " |", "|---|" + "---:|" * len(m.columns)]
  for i, name in enumerate(m.rows):
    cells = []
    for j, v in enumerate(m.values[i]):
      text = _fmt(v, spec.digits) or "–"
      cells.append(f"**{text}**" if m.native[i, j] and text not in ("–", "failed") else text)
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_csv(m: Matrix, digits: int, path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["model", *m.columns])
    for i, name in enumerate(m.rows):
      cells = [
        _fmt(v, digits) + ("*" if m.native[i, j] and isinstance(v, float) else "") for j, v in enumerate(m.values[i])
      ]
      w.writerow([name, *cells])


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
      text = r"\textit{failed}" if v == "failed" else "--" if v is None else _fmt(v, digits)
      cells.append(f"\\textbf{{{text}}}" if m.native[i, j] and isinstance(v, float) else text)
    lines.append(_tex(name) + " & " + " & ".join(cells) + r" \\")
  lines += [r"\bottomrule", r"\end{tabular}", f"\\caption{{{_tex(title)}; native cells in bold.}}", r"\end{table}"]
  return "\n".join(lines) + "\n"


def heatmap(m: Matrix, spec: Metric, path: str) -> None:
  data = np.array([[v if isinstance(v, float) else np.nan for v in row] for row in m.values], float)
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
      if isinstance(v, float):
        shade = (v - vmin) / (vmax - vmin) if vmax > vmin else 0.5
        dark = shade > 0.55 if spec.lower_is_better else shade < 0.45
        ax.text(j, i, f"{v:.{spec.digits}f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
      elif v == "failed":
        ax.text(j, i, "failed", ha="center", va="center", fontsize=8, color="#a00000")
      if m.native[i, j]:
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.2))
  ax.set_xticks(range(w), m.columns, rotation=30, ha="right", fontsize=8)
  ax.set_yticks(range(h), m.rows, fontsize=8)
  ax.set_xlabel("evaluation ISA (machine code fed as is)")
  ax.set_title(spec.title + " — native outlined", fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def metrics_present(rows: Sequence[dict]) -> list[str]:
  """The always-reported metrics plus any other metric with at least one figure."""
  return [k for k in METRICS if k in ALWAYS or any(_number(r.get(k)) is not None for r in rows)]


def load_rows(path: str) -> list[dict]:
  """Rows from a results.jsonl (or the report directory holding one)."""
  if os.path.isdir(path):
    path = os.path.join(path, "results.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_report(rows: Sequence[dict], out_dir: str) -> dict:
  """Writes every file of the report; returns their paths."""
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  for sub in ("tables", "heatmaps"):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  paths: dict = {"results": os.path.join(out_dir, "results.jsonl"), "tables": {}, "heatmaps": {}}
  with open(paths["results"], "w") as f:
    for r in rows:
      f.write(json.dumps(r, sort_keys=True, default=_json_default) + "\n")
  for metric in metrics_present(rows):
    spec, m = METRICS[metric], matrix(rows, metric)
    base = os.path.join(out_dir, "tables", metric)
    with open(base + ".md", "w") as f:
      f.write(f"### {spec.title}\n\n{markdown_table(rows, metric)}\n")
    write_csv(m, spec.digits, base + ".csv")
    with open(base + ".tex", "w") as f:
      f.write(latex_table(m, spec.title, spec.digits))
    png = os.path.join(out_dir, "heatmaps", f"{metric}.png")
    heatmap(m, spec, png)
    paths["tables"][metric] = {ext: f"{base}.{ext}" for ext in ("md", "csv", "tex")}
    paths["heatmaps"][metric] = png
  paths["summary"] = os.path.join(out_dir, "summary.md")
  with open(paths["summary"], "w") as f:
    f.write(summary.summarize(rows, {k: markdown_table(rows, k) for k in ("bits_per_byte", "normalized_score")}))
  return paths


def _json_default(o):
  if isinstance(o, np.generic):
    return o.item()
  raise TypeError(f"not JSON serializable: {type(o).__name__}")
