"""The encoder-swap experiment: every (decoder ISA A, encoder ISA B) pair, every stitching variant, with numbers.

Stages, each resumable like ``experiment.run``: compile every ISA; train native encoder-decoders on each ISA with
two seeds (``decoder_seed``'s CPUs keep their decoders, ``encoder_seed``'s lend their encoders, so the diagonal is
"the same ISA, another CPU"); swap every pair by every variant (``stitching.swap``; trained variants saved at every
budget); score natives and swaps on the held-out programs (``stitching.score``: exact match and bits per byte of
the answers, 95% bootstrap intervals over programs); write the report: a matrix per variant, the stitching penalty
(native exact match of row A − the swapped cell's), recovery against stitch-training steps, and a figure of each.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable

import ml_collections
import numpy as np

from llmcpu import checkpoints, compilers, experiment, fs
from llmcpu.crosseval.library import Library
from llmcpu.errors import Stopped, UserError
from llmcpu.stitching import score, swap


def swap_experiment_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  """configs/experiments/swap.py's base: an experiment config (the native encoder-decoders) plus the swaps."""
  c = experiment.experiment_config(preset)
  c.corpus = "programs"
  c.archs = "encoder_decoder"
  c.seeds = "0,1"
  c.decoder_seed = 0  # whose decoders are kept (rows)
  c.encoder_seed = 1  # whose encoders are swapped in (columns; the diagonal is another CPU of the same ISA)
  c.variants = ",".join(swap.VARIANTS)
  c.budgets = "0,30,100,300"  # stitch-training steps at which every trained swap is saved and scored
  c.anchor_docs = 512
  c.anchor_pairs = 20000
  c.swap_learning_rate = 0.0  # 0 = the decoder CPU's
  c.prompts = 200  # held-out programs whose greedy answers are checked (exact match); 0: bits per byte only
  c.eval_docs = 0  # held-out documents scored for bits per byte (the first N; 0 = all)
  c.report = "report-swap"
  return c


@dataclasses.dataclass(frozen=True)
class Cell:
  corpus: object
  decoder: compilers.CompilerSpec  # ISA A: what the swapped CPU writes
  encoder: compilers.CompilerSpec  # ISA B: what it reads
  variant: str

  def path(self, workdir: str) -> str:
    where = f"{self.decoder.name}-reads-{self.encoder.name}"
    return fs.join(workdir, "swaps", self.corpus.name, where, self.variant)


def run(exp: ml_collections.ConfigDict, workdir: str, *, log: Callable[[str], None] = print) -> str:
  """Runs (or continues) the swap experiment; returns its report directory."""
  t0, workdir = time.time(), fs.abspath(workdir)
  variants = experiment.split_list(exp.variants, "variants")
  bad = [v for v in variants if v not in swap.VARIANTS]
  if bad:
    raise UserError(f"unknown swap variant {bad[0]!r}; choose from {', '.join(swap.VARIANTS)}")
  if "encoder_decoder" not in experiment.split_list(exp.archs, "archs"):
    raise UserError("the swap experiment swaps encoder_decoder CPUs' encoders: set --config.archs=encoder_decoder")
  seeds = experiment.seed_list(exp.seeds)
  if exp.decoder_seed not in seeds or exp.encoder_seed not in seeds:
    raise UserError(f"decoder_seed and encoder_seed must be among --config.seeds={exp.seeds}")
  budgets = sorted({int(b) for b in experiment.split_list(str(exp.budgets), "budgets")})
  plan = experiment.prepare(exp, workdir, log=log)  # compile, and train the native encoder-decoders
  if not plan.leader:
    return ""
  isas = [compilers.parse(s) for s in experiment.split_list(exp.compilers, "compilers")]
  cells = [Cell(corpus, a, b, v) for corpus in plan.corpora for a in isas for b in isas for v in variants]
  for cell in cells:
    _swap(exp, workdir, cell, budgets, log)
  lib = Library(fs.join(workdir, "compiled"), max_docs=exp.eval_docs)
  rows = [_native(exp, workdir, lib, corpus, a, s, log) for corpus in plan.corpora for a in isas for s in seeds]
  rows += [r for cell in cells for r in _score_cell(exp, workdir, lib, cell, log)]
  out = fs.join(workdir, exp.report)
  write_report(rows, out, exp, time.time() - t0)
  log(f"== swap report: {out}")
  return out


def _cpu(exp, workdir: str, corpus, spec, seed: int) -> str:
  return experiment.cpu_dir(workdir, corpus.name, "encoder_decoder", spec.name, seed)


def _swap(exp, workdir: str, cell: Cell, budgets: list[int], log: Callable) -> None:
  path = cell.path(workdir)
  steps = max(budgets) if cell.variant in swap.TRAINED else 0
  if experiment.finished(path, steps):
    return
  config = ml_collections.ConfigDict(
    dict(
      decoder=_cpu(exp, workdir, cell.corpus, cell.decoder, exp.decoder_seed),
      encoder=_cpu(exp, workdir, cell.corpus, cell.encoder, exp.encoder_seed),
      variant=cell.variant,
      steps=steps,
      save_at=",".join(map(str, budgets)),
      anchor_docs=exp.anchor_docs,
      anchor_pairs=exp.anchor_pairs,
      compile_dir="",
      seed=exp.decoder_seed,
      learning_rate=exp.swap_learning_rate,
    )
  )
  log(f"== swap: {cell.decoder.name} reads {cell.encoder.name} by {cell.variant}")
  fs.makedirs(path)
  result = swap.run(config, path, log=log)
  if result.stopped != "done":
    raise Stopped(f"stopped at step {result.step} of a swap; rerun the same command to continue")


def _evaluate(exp, lib: Library, path: str) -> dict:
  model, meta, writes = checkpoints.load_model(path)
  reads = compilers.from_blob(meta["input_compiler_files"]) if "input_compiler_files" in meta else writes
  d = meta["config"]["data"]
  figures = score.score(
    model,
    writes,
    reads,
    lib,
    d["corpus"],
    prompts=exp.prompts,
    input_length=d["input_length"],
    target_length=d["target_length"],
    answer_tokens=d["target_length"],
    seed=exp.crosseval.seed,
  )
  provenance = {"checkpoint": path, "step": meta["step"], "isa_fingerprint": meta["isa_fingerprint"]}
  provenance["input_isa_fingerprint"] = meta.get("input_isa_fingerprint", meta["isa_fingerprint"])
  return figures | provenance | {"tokens_seen": meta["tokens_seen"], "swap": meta.get("provenance", {})}


def _native(exp, workdir: str, lib: Library, corpus, spec, seed: int, log: Callable) -> dict:
  row = {"corpus": corpus.name, "decoder": spec.name, "encoder": spec.name, "variant": "native", "seed": seed}
  row |= _evaluate(exp, lib, _cpu(exp, workdir, corpus, spec, seed))
  log(f"native {spec.name} (seed {seed}): {_figures(row)}")
  return row


def _score_cell(exp, workdir: str, lib: Library, cell: Cell, log: Callable) -> list[dict]:
  ckpts = fs.join(cell.path(workdir), "checkpoints")
  rows = []
  for step in sorted(int(s) for s in fs.listdir(ckpts) if s.isdigit()):
    row = {"corpus": cell.corpus.name, "decoder": cell.decoder.name, "encoder": cell.encoder.name}
    row |= {"variant": cell.variant, "seed": exp.decoder_seed, "encoder_seed": exp.encoder_seed}
    row |= _evaluate(exp, lib, fs.join(ckpts, str(step)))
    log(f"{cell.decoder.name} reads {cell.encoder.name} by {cell.variant} at step {step}: {_figures(row)}")
    rows.append(row)
  return rows


def _figures(row: dict) -> str:
  em = "" if row["exact_match"] is None else f"exact match {row['exact_match']:.3f}, "
  return em + f"bpb {row['bits_per_byte']:.3f}"


# ------------------------------------------------------------------------------------------------- report


def _fmt(r: dict | None, key: str) -> str:
  if r is None or r.get(key) is None:
    return "—"
  ci = r.get(f"{key}_ci")
  return f"{r[key]:.3f} ({ci[0]:.3f}–{ci[1]:.3f})" if ci else f"{r[key]:.3f}"


def final_rows(rows: list[dict]) -> dict[tuple, dict]:
  """(corpus, decoder, encoder, variant) → the row of its last saved step (the natives by decoder seed)."""
  out: dict[tuple, dict] = {}
  for r in rows:
    key = (r["corpus"], r["decoder"], r["encoder"], r["variant"])
    if r["variant"] == "native":
      key += (r["seed"],)
    if key not in out or r["step"] >= out[key]["step"]:
      out[key] = r
  return out


NAMES = {"exact_match": "exact match", "bits_per_byte": "bits per byte"}


def metric_of(rows: list[dict], corpus: str) -> str:
  """What a corpus' matrices show: exact match where answers were checked (programs), else bits per byte of the
  answers (the spans of ``spans:`` prose)."""
  checked = any(r.get("exact_match") is not None for r in rows if r["corpus"] == corpus)
  return "exact_match" if checked else "bits_per_byte"


def penalty(native: dict | None, cell: dict | None, metric: str) -> float | None:
  """How much worse the swapped cell is than its decoder's native CPU (positive = worse, in the metric's units)."""
  if native is None or cell is None or native.get(metric) is None or cell.get(metric) is None:
    return None
  worse = native[metric] - cell[metric]
  return worse if metric == "exact_match" else -worse


def markdown(rows: list[dict], exp) -> str:
  """Per corpus and variant: the matrices of its metric and of bits per byte (rows: decoder ISA A, columns: encoder
  ISA B) and the stitching penalty; then recovery against stitch-training steps."""
  last = final_rows(rows)
  lines = [
    f"Held-out documents: bits per byte of the answers (every test program, or the first {exp.eval_docs or 'all'} "
    f"test documents) and, on programs, the exact match of {exp.prompts} greedy answers; 95% bootstrap intervals "
    f"over documents. Rows: the CPU whose decoder is kept (seed {exp.decoder_seed}; ISA A, what the answer is "
    f"written in); columns: the CPU whose encoder is swapped in (seed {exp.encoder_seed}; ISA B, what the input is "
    "read in). Penalty: how much worse the cell is than row A's native CPU (exact match lost, or bits per byte "
    "added).",
    "",
  ]
  for corpus in sorted({r["corpus"] for r in rows}):
    metric = metric_of(rows, corpus)
    isas = list(dict.fromkeys(r["decoder"] for r in rows if r["corpus"] == corpus))
    natives = {a: last.get((corpus, a, a, "native", exp.decoder_seed)) for a in isas}
    other = {a: last.get((corpus, a, a, "native", exp.encoder_seed)) for a in isas}
    lines += [f"## {corpus}: natives", ""]
    name = NAMES[metric]
    lines += [f"| ISA | {name} (decoder seed) | bpb | {name} (encoder seed) |", "|---|---:|---:|---:|"]
    for a in isas:
      lines.append(f"| {a} | {_fmt(natives[a], metric)} | {_fmt(natives[a], 'bits_per_byte')} | "
                   f"{_fmt(other[a], metric)} |")  # fmt: skip
    keys = dict.fromkeys((metric, "bits_per_byte", "penalty"))
    for variant in dict.fromkeys(r["variant"] for r in rows if r["variant"] != "native"):
      head = "| A \\ B | " + " | ".join(isas) + " |"
      rule = "|---|" + "---:|" * len(isas)
      for key in keys:
        title = f"penalty ({NAMES[metric]})" if key == "penalty" else NAMES[key]
        lines += ["", f"### {corpus}: {variant} — {title}", "", head, rule]
        for a in isas:
          cells = []
          for b in isas:
            r = last.get((corpus, a, b, variant))
            if key == "penalty":
              p = penalty(natives[a], r, metric)
              cells.append("—" if p is None else f"{p:+.3f}")
            else:
              cells.append(_fmt(r, key))
          lines.append(f"| {a} | " + " | ".join(cells) + " |")
    trained = [r for r in rows if r["corpus"] == corpus and r["variant"] in swap.TRAINED]
    steps = sorted({r["step"] for r in trained})
    if trained:
      lines += ["", f"### {corpus}: recovery ({NAMES[metric]}) against stitch-training steps", ""]
      lines += ["| A reads B | variant | " + " | ".join(f"step {s}" for s in steps) + " | native A |"]
      lines += ["|---|---|" + "---:|" * (len(steps) + 1)]
      for a in isas:
        for b in isas:
          for variant in swap.TRAINED:
            at = {r["step"]: r for r in trained if (r["decoder"], r["encoder"], r["variant"]) == (a, b, variant)}
            if at:
              cols = [_fmt(at.get(s), metric) for s in steps]
              lines.append(f"| {a} ← {b} | {variant} | " + " | ".join(cols) + f" | {_fmt(natives[a], metric)} |")
  return "\n".join(lines) + "\n"


def heatmaps(rows: list[dict], out: str, exp) -> None:
  """One figure per corpus: its metric's matrix for every variant (brighter = better)."""
  from llmcpu.crosseval.report import plt

  last = final_rows(rows)
  for corpus in sorted({r["corpus"] for r in rows}):
    metric = metric_of(rows, corpus)
    isas = list(dict.fromkeys(r["decoder"] for r in rows if r["corpus"] == corpus))
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] != "native"))
    values = [r[metric] for r in last.values() if r["corpus"] == corpus and r.get(metric) is not None]
    if metric == "exact_match":
      vmin, vmax, cmap = 0.0, max([0.05, *values]), "viridis"
    else:
      vmin, vmax, cmap = min(values, default=0.0), max(values, default=1.0), "viridis_r"
    fig, axes = plt.subplots(1, len(variants), figsize=(3.2 * len(variants), 3.4), squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
      m = np.full((len(isas), len(isas)), np.nan)
      for i, a in enumerate(isas):
        for j, b in enumerate(isas):
          r = last.get((corpus, a, b, variant))
          if r is not None and r.get(metric) is not None:
            m[i, j] = r[metric]
      ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap)
      for i in range(len(isas)):
        for j in range(len(isas)):
          ax.text(j, i, "—" if np.isnan(m[i, j]) else f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, c="w")
      ax.set_xticks(range(len(isas)), isas, rotation=45, fontsize=7)
      ax.set_yticks(range(len(isas)), isas, fontsize=7)
      ax.set_title(variant, fontsize=9)
      ax.set_xlabel("encoder ISA B (reads)", fontsize=7)
    axes[0][0].set_ylabel("decoder ISA A (writes)", fontsize=7)
    fig.suptitle(f"{NAMES[metric]} of swapped encoders ({corpus})", fontsize=9)
    fig.tight_layout()
    with fs.open(fs.join(out, f"swap_{corpus}.png"), "wb") as f:
      fig.savefig(f, dpi=120)
    plt.close(fig)


def recovery_figure(rows: list[dict], out: str, exp) -> None:
  """The metric against stitch-training steps, one line per (A reads B, trained variant), natives dashed."""
  from llmcpu.crosseval.report import plt

  last = final_rows(rows)
  for corpus in sorted({r["corpus"] for r in rows}):
    metric = metric_of(rows, corpus)
    trained = [r for r in rows if r["corpus"] == corpus and r["variant"] in swap.TRAINED]
    if not trained:
      continue
    isas = list(dict.fromkeys(r["decoder"] for r in rows if r["corpus"] == corpus))
    fig, axes = plt.subplots(1, len(isas), figsize=(4.2 * len(isas), 3.6), squeeze=False, sharey=True)
    floor = min((r["step"] for r in trained if r["step"] > 0), default=1) / 3
    for ax, a in zip(axes[0], isas, strict=True):
      for b in isas:
        for variant, style in zip(swap.TRAINED, ("-", ":"), strict=True):
          pts = sorted(
            (r["step"], r[metric]) for r in trained if (r["decoder"], r["encoder"], r["variant"]) == (a, b, variant)
          )
          if pts:
            ax.plot(
              [max(s, floor) for s, _ in pts], [e for _, e in pts], style, marker="o", ms=3, label=f"← {b} ({variant})"
            )
      native = last.get((corpus, a, a, "native", exp.decoder_seed))
      if native is not None:
        ax.axhline(native[metric], ls="--", c="k", lw=1, label="native")
      ax.set_xscale("log")
      ax.set_title(f"decoder {a}", fontsize=9)
      ax.set_xlabel(f"stitch-training steps (0 drawn at {floor:g})", fontsize=8)
      ax.legend(fontsize=6)
    axes[0][0].set_ylabel(f"{NAMES[metric]}, held-out documents")
    fig.tight_layout()
    with fs.open(fs.join(out, f"swap_recovery_{corpus}.png"), "wb") as f:
      fig.savefig(f, dpi=120)
    plt.close(fig)


def write_report(rows: list[dict], out: str, exp, seconds: float) -> None:
  """results.jsonl (every scored checkpoint; last: it marks the report finished), swap.md and the figures."""
  fs.makedirs(out)
  fs.remove(fs.join(out, "results.jsonl"))
  fs.write_text(fs.join(out, "swap.md"), markdown(rows, exp))
  heatmaps(rows, out, exp)
  recovery_figure(rows, out, exp)
  fs.write_text(fs.join(out, "experiment.json"), json.dumps({"config": exp.to_dict(), "seconds": round(seconds)}))
  fs.write_text(fs.join(out, "results.jsonl"), "".join(json.dumps(r, default=str) + "\n" for r in rows))
