"""The damage experiment (``kind = "damage"``): graded ISA drift. CPUs read their own ISA with a share of its opcodes
renamed (``+perm:SEED:FRACTION``); the curves of normalized score, relevance and exact match against that share.

It runs as the cross-ISA matrix (``matrix.Matrix``) whose report adds ``view``: heatmaps/damage_curves.png and its
table in summary.md, drawn for any matrix whose rows hold a curve (a native point and two damaged ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmcpu import compilers, fs
from llmcpu.crosseval.report import METRICS, Cell, View, cell_of, format_cell, plt, save_figure

DAMAGE_METRICS = ("normalized_score", "relevance", "exact_match")


def damage_points(rows: Sequence[dict]) -> dict[tuple[str, str, str], dict[str, list]]:
  """Cells of CPUs trained on an unpermuted ISA, read on that ISA with a share of its opcodes permuted, by
  (corpus, model ISA, arch): ``{"fraction": [...], metric: [Cell | None, ...]}`` sorted by fraction (0 = native)."""
  groups: dict[tuple, dict[float, list[dict]]] = {}
  for r in rows:
    if r.get("status") != "ok":
      continue
    try:
      a, b = compilers.parse(r["model_isa_spec"]), compilers.parse(r["eval_isa_spec"])
    except Exception:  # noqa: BLE001 - a spec from another version: not a damage point
      continue
    if a.permuted or a.base != b.base:
      continue
    fraction = 0.0 if b == a else b.perm_fraction
    groups.setdefault((r["corpus"], r["model_isa"], r["arch"]), {}).setdefault(fraction, []).append(r)
  out = {}
  for key, by_fraction in groups.items():
    if len(by_fraction) < 3:  # a curve needs the native point and at least two damaged ones
      continue
    fractions = sorted(by_fraction)
    out[key] = {"fraction": fractions}
    for metric in DAMAGE_METRICS:
      out[key][metric] = [cell_of(by_fraction[f], metric) for f in fractions]
  return out


def damage_markdown(rows: Sequence[dict]) -> str:
  """The damage curves as a table: one line per (CPU, metric), one column per permuted share."""
  curves = damage_points(rows)
  fractions = sorted({f for v in curves.values() for f in v["fraction"]})
  if not curves:
    return ""
  lines = [
    "| CPU | metric | " + " | ".join(f"{f:g}" for f in fractions) + " |",
    "|---|---|" + "---:|" * len(fractions),
  ]
  for (corpus, isa, arch), v in sorted(curves.items()):
    for metric in DAMAGE_METRICS:
      if not any(isinstance(c, Cell) for c in v[metric]):
        continue
      by_f = dict(zip(v["fraction"], v[metric], strict=True))
      cells = [format_cell(by_f.get(f), METRICS[metric].digits) or "–" for f in fractions]
      lines.append(f"| {isa} · {arch} · {corpus} | {metric} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def damage_figure(rows: Sequence[dict], path: str) -> bool:
  """One panel per metric: each CPU's figure against the share of its ISA's opcodes permuted (symlog axis), with
  error bars (± std over seeds, or the 95% interval with one seed). False when the rows hold no damage curve."""
  curves = damage_points(rows)
  metrics = [m for m in DAMAGE_METRICS if any(isinstance(c, Cell) for v in curves.values() for c in v[m])]
  if not curves or not metrics:
    return False
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), dpi=120, squeeze=False)
  color = {key: f"C{i % 10}" for i, key in enumerate(sorted(curves))}  # one colour per CPU in every panel
  for ax, metric in zip(axes[0], metrics, strict=True):
    for (corpus, isa, arch), v in sorted(curves.items()):
      pts = [(f, c) for f, c in zip(v["fraction"], v[metric], strict=True) if isinstance(c, Cell)]
      if not pts:
        continue
      x = np.array([f for f, _ in pts])
      y = np.array([c.mean for _, c in pts])
      lo = np.array([c.mean - (c.std if c.std is not None else c.mean - c.ci[0] if c.ci else 0.0) for _, c in pts])
      hi = np.array([c.mean + (c.std if c.std is not None else c.ci[1] - c.mean if c.ci else 0.0) for _, c in pts])
      ax.errorbar(
        x,
        y,
        yerr=[y - lo, hi - y],
        marker="o",
        ms=3,
        capsize=2,
        lw=1.2,
        color=color[corpus, isa, arch],
        label=f"{isa} · {arch} · {corpus}",
      )
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(-0.001, 1.1)
    ax.set_xlabel("share of opcodes permuted")
    ax.set_title(METRICS[metric].title, fontsize=8)
    ax.axhline(0.0, color="#999999", lw=0.8)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=6, loc="best")
  fig.suptitle("Graded ISA drift: a CPU reading its own ISA with a share of the opcodes renamed", fontsize=9)
  fig.tight_layout()
  save_figure(fig, path)
  return True


def view(rows: Sequence[dict], out_dir: str) -> View | None:
  """The damage curves of a cross-evaluation report (``crosseval.write_report``'s ``views``), None without one."""
  path = fs.join(out_dir, "heatmaps", "damage_curves.png")
  if not damage_figure(rows, path):
    return None
  title = "damage curve (share of opcodes permuted; heatmaps/damage_curves.png)"
  return View("damage_curves", path, title, damage_markdown(rows))
