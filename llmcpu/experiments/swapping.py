"""The encoder-swap experiment (``kind = "swap"``): every (decoder ISA A, encoder ISA B) pair, every stitching
variant, with numbers.

Stages, each resumable like the matrix's: compile every ISA; train native encoder-decoders on each ISA with
two seeds (in each of ``seed_pairs``, the first seed's CPUs keep their decoders and the second's lend their
encoders, so the diagonal is "the same ISA, another CPU"); swap every pair by every variant (``stitching.swap``;
trained variants saved at every budget; with stitch_xattn, its control ``swap.CONTROL``: each decoder CPU's
cross-attention trained as long on its own encoder); score natives and swaps on the held-out documents
(``stitching.score``: exact match of programs and bits per byte of the answers, 95% bootstrap intervals over
documents); write the report: a matrix per variant (exact match on programs, bits per byte of the spans on
``spans:`` prose), the stitching penalty and share lost (against the native and the control), recovery against
stitch-training steps and a figure of each, over the seed pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import ml_collections
import numpy as np

from llmcpu import compilers, fs
from llmcpu.crosseval import intervals
from llmcpu.crosseval.library import Library
from llmcpu.errors import UserError
from llmcpu.experiments import base, matrix, tables
from llmcpu.stitching import score, swap
from llmcpu.training import checkpoints


def swap_experiment_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  """configs/experiments/swap.py's base: an experiment config (the native encoder-decoders) plus the swaps."""
  c = matrix.experiment_config(preset)
  c.kind = "swap"
  c.corpus = "programs"
  c.archs = "encoder_decoder"
  c.seeds = "0,1"
  # DECODER:ENCODER seeds: whose decoders are kept (rows) and whose encoders are swapped in (columns), so the
  # diagonal is another CPU of the same ISA. More pairs (0:1,1:0) give every cell an interval over seed pairs.
  c.seed_pairs = "0:1"
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
  seeds: tuple[int, int]  # (the decoder's CPU seed, the encoder's)

  def path(self, workdir: str) -> str:
    (d, e), a, b = self.seeds, self.decoder.name, self.encoder.name
    return fs.join(workdir, "swaps", self.corpus.name, f"{a}.s{d}-reads-{b}.s{e}", self.variant)


def seed_pairs(exp: ml_collections.ConfigDict) -> list[tuple[int, int]]:
  """``seed_pairs`` as (decoder seed, encoder seed), each seed among ``seeds``."""
  seeds, pairs = base.seed_list(exp.seeds), []
  for item in base.split_list(exp.seed_pairs, "seed_pairs"):
    d, sep, e = (x.strip() for x in item.partition(":"))
    if not (sep and d.isdigit() and e.isdigit()):
      raise UserError(f"bad seed pair {item!r} in --config.seed_pairs: write DECODER:ENCODER seeds, e.g. 0:1,1:0")
    if int(d) not in seeds or int(e) not in seeds:
      raise UserError(f"seed pair {item} uses a seed outside --config.seeds={exp.seeds}; add it there")
    pairs.append((int(d), int(e)))
  return list(dict.fromkeys(pairs))


@base.register("swap")
class Swapping(matrix.Matrix):
  """The native encoder-decoders (the matrix's stages, without its cross-evaluation), then every swap."""

  def plan(self) -> None:
    exp = self.config
    self.variants = base.split_list(exp.variants, "variants")
    bad = [v for v in self.variants if v not in swap.VARIANTS]
    if bad:
      raise UserError(f"unknown swap variant {bad[0]!r}; choose from {', '.join(swap.VARIANTS)}")
    if "encoder_decoder" not in base.split_list(exp.archs, "archs"):
      raise UserError("the swap experiment swaps encoder_decoder CPUs' encoders: set --config.archs=encoder_decoder")
    self.seeds, self.pairs = base.seed_list(exp.seeds), seed_pairs(exp)
    self.budgets = base.step_list(exp.budgets)
    super().plan()

  def stages(self) -> bool:
    if not super().stages():  # compile, and train the native encoder-decoders
      return False
    self.isas = [compilers.parse(s) for s in base.split_list(self.config.compilers, "compilers")]
    isas, pairs = self.isas, self.pairs
    self.cells = [
      Cell(c, a, b, v, p)
      for c in self.planned.corpora
      for p in pairs
      for a in isas
      for b in isas
      for v in self.variants
    ]
    if "stitch_xattn" in self.variants:  # its control: each decoder CPU's cross-attention trained on its own encoder
      decoders = dict.fromkeys(d for d, _ in pairs)
      self.cells += [Cell(c, a, a, swap.CONTROL, (d, d)) for c in self.planned.corpora for d in decoders for a in isas]
    base.run_stages(
      "swap", [_swap(self.config, self.workdir, cell, self.budgets, self.log) for cell in self.cells], self.log
    )
    return True

  def report(self) -> dict[str, str]:
    exp, workdir, log = self.config, self.workdir, self.log
    lib = Library(fs.join(workdir, "compiled"), max_docs=exp.eval_docs)
    natives = [
      (corpus, a, s, v) for corpus in self.planned.corpora for a in self.isas for s in self.seeds for v in REFERENCES
    ]
    rows = [_native(exp, workdir, lib, corpus, a, s, v, log) for corpus, a, s, v in natives]
    for cell in self.cells:
      score_of = _score_control if cell.variant == swap.CONTROL else _score_cell
      rows += score_of(exp, workdir, lib, cell, log)
    out = fs.join(workdir, exp.report)
    write_report(rows, out, exp, time.time() - self.t0)
    log(f"== swap report: {out}")
    return {exp.report: out}

  def printout(self, reports: dict[str, str]) -> str:
    (out,) = reports.values()
    return "\n" + fs.read_text(fs.join(out, "swap.md")) + f"\nReport: {out} (swap.md, swap_*.png)"


def _cpu(exp, workdir: str, corpus, spec, seed: int) -> str:
  return matrix.cpu_dir(workdir, corpus.name, "encoder_decoder", spec.name, seed)


def _swap(exp, workdir: str, cell: Cell, budgets: list[int], log: Callable) -> base.Stage:
  """The run that swaps one cell's encoder (trained variants: saved at every budget)."""
  path = cell.path(workdir)
  steps = max(budgets) if cell.variant in swap.TRAINABLE else 0
  config = ml_collections.ConfigDict(
    dict(
      decoder=_cpu(exp, workdir, cell.corpus, cell.decoder, cell.seeds[0]),
      encoder=_cpu(exp, workdir, cell.corpus, cell.encoder, cell.seeds[1]),
      variant=cell.variant,
      steps=steps,
      save_at=",".join(map(str, budgets)),
      anchor_docs=exp.anchor_docs,
      anchor_pairs=exp.anchor_pairs,
      compile_dir="",
      seed=cell.seeds[0],
      learning_rate=exp.swap_learning_rate,
    )
  )
  return base.Stage(
    path, steps, f"{_tag(cell)} by {cell.variant}", functools.partial(swap.swap_encoder, config, path, log=log)
  )


def _evaluate(exp, lib: Library, path: str, shuffle: bool = False) -> dict:
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
    shuffle=shuffle,
  )
  provenance = {"checkpoint": path, "step": meta["step"], "isa_fingerprint": meta["isa_fingerprint"]}
  provenance["input_isa_fingerprint"] = meta.get("input_isa_fingerprint", meta["isa_fingerprint"])
  return figures | provenance | {"tokens_seen": meta["tokens_seen"], "swap": meta.get("provenance", {})}


def _native(exp, workdir: str, lib: Library, corpus, spec, seed: int, variant: str, log: Callable) -> dict:
  row = {"corpus": corpus.name, "decoder": spec.name, "encoder": spec.name, "variant": variant, "seed": seed}
  row |= _evaluate(exp, lib, _cpu(exp, workdir, corpus, spec, seed), shuffle=variant == "shuffled")
  log(f"{variant} {spec.name} (seed {seed}): {_figures(row)}")
  return row


def _score_cell(exp, workdir: str, lib: Library, cell: Cell, log: Callable) -> list[dict]:
  ckpts = fs.join(cell.path(workdir), "checkpoints")
  rows = []
  for step in sorted(int(s) for s in fs.listdir(ckpts) if s.isdigit()):
    row = {"corpus": cell.corpus.name, "decoder": cell.decoder.name, "encoder": cell.encoder.name}
    row |= {"variant": cell.variant, "seed": cell.seeds[0], "encoder_seed": cell.seeds[1]}
    row |= _evaluate(exp, lib, fs.join(ckpts, str(step)))
    log(f"{_tag(cell)} by {cell.variant} at step {step}: {_figures(row)}")
    rows.append(row)
  return rows


def _score_control(exp, workdir: str, lib: Library, cell: Cell, log: Callable) -> list[dict]:
  """The control's last step, read as its natives are: its own inputs, and another document's (its calibration)."""
  ckpts = fs.join(cell.path(workdir), "checkpoints")
  path = fs.join(ckpts, str(max(int(s) for s in fs.listdir(ckpts) if s.isdigit())))
  rows = []
  for variant, shuffle in ((swap.CONTROL, False), (CONTROL_SHUFFLED, True)):
    row = {"corpus": cell.corpus.name, "decoder": cell.decoder.name, "encoder": cell.encoder.name}
    row |= {"variant": variant, "seed": cell.seeds[0], "encoder_seed": cell.seeds[1]}
    row |= _evaluate(exp, lib, path, shuffle=shuffle)
    log(f"{variant} {cell.decoder.name} (seed {cell.seeds[0]}) at step {row['step']}: {_figures(row)}")
    rows.append(row)
  return rows


def _tag(cell: Cell) -> str:
  return f"{cell.decoder.name} (seed {cell.seeds[0]}) reads {cell.encoder.name} (seed {cell.seeds[1]})"


def _figures(row: dict) -> str:
  em = "" if row["exact_match"] is None else f"exact match {row['exact_match']:.3f}, "
  return em + f"bpb {row['bits_per_byte']:.3f}"


# ------------------------------------------------------------------------------------------------- report


def final_rows(rows: list[dict]) -> dict[tuple, dict]:
  """(corpus, decoder, encoder, variant, decoder seed, encoder seed) → the row of its last saved step (a native's
  encoder seed is its own)."""
  out: dict[tuple, dict] = {}
  for r in rows:
    key = (r["corpus"], r["decoder"], r["encoder"], r["variant"], r["seed"], r.get("encoder_seed", r["seed"]))
    if key not in out or r["step"] >= out[key]["step"]:
      out[key] = r
  return out


NAMES = {"exact_match": "exact match", "bits_per_byte": "bits per byte"}
# Rows of the natives, not swaps: each CPU reading its own inputs, and the same CPU reading another document's input
# (``score.shuffled_inputs``): the calibration of what reading the input is worth.
REFERENCES = ("native", "shuffled")
# The control of stitch + cross-attention (``swap.CONTROL``): the native with its cross-attention trained as long on
# its own encoder, and the same after another document's input.
CONTROL_SHUFFLED = f"{swap.CONTROL}_shuffled"
CONTROLS = (swap.CONTROL, CONTROL_SHUFFLED)
NOT_SWAPS = (*REFERENCES, *CONTROLS)
SHUFFLED_OF = {"native": "shuffled", swap.CONTROL: CONTROL_SHUFFLED}
AGAINST = {"native": "native", swap.CONTROL: "native + cross-attention"}


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


def _paired(native: dict | None, cell: dict | None, metric: str) -> bool:
  """Whether both rows carry what a paired interval resamples (rows of reports before it did not)."""
  key = "hits" if metric == "exact_match" else "docs_nll"
  return native is not None and cell is not None and key in native and key in cell


def pairs_of(rows: list[dict]) -> list[tuple[int, int]]:
  """The (decoder seed, encoder seed) pairs the swapped rows hold."""
  return sorted({(r["seed"], r["encoder_seed"]) for r in rows if r["variant"] not in NOT_SWAPS})


class Cells:
  """A corpus' scored rows, read per cell over the seed pairs: one pair shows its figure and 95% bootstrap interval
  over documents, more show mean ± std over the pairs (sample std); a cell some pair lacks shows nothing."""

  def __init__(self, rows: list[dict], corpus: str):
    mine = [r for r in rows if r["corpus"] == corpus]
    self.corpus, self.metric, self.pairs = corpus, metric_of(rows, corpus), pairs_of(mine)
    self.isas = list(dict.fromkeys(r["decoder"] for r in mine))
    self.seeds = sorted({r["seed"] for r in mine if r["variant"] == "native"})
    self.last = final_rows(mine)
    self.at: dict[tuple, dict] = {}  # (decoder, encoder, variant, seed pair, step) → row
    for r in mine:
      if r["variant"] in swap.TRAINED:
        self.at[(r["decoder"], r["encoder"], r["variant"], (r["seed"], r["encoder_seed"]), r["step"])] = r
    self.steps = sorted({k[-1] for k in self.at})
    self.variants = list(dict.fromkeys(r["variant"] for r in mine if r["variant"] not in NOT_SWAPS))
    self.has_control = any(r["variant"] == swap.CONTROL for r in mine)

  def native(self, a: str, seed: int, variant: str = "native") -> dict | None:
    return self.last.get((self.corpus, a, a, variant, seed, seed))

  def rows(self, a: str, b: str, variant: str, step: int | None = None) -> list[tuple[tuple, dict | None]]:
    """(seed pair, its row: the last step's, or ``step``'s) for every pair."""
    if step is None:
      return [(p, self.last.get((self.corpus, a, b, variant, *p))) for p in self.pairs]
    return [(p, self.at.get((a, b, variant, p, step))) for p in self.pairs]

  def value(
    self, a: str, b: str, variant: str, key: str, step: int | None = None, against: str = "native"
  ) -> tuple[float | None, str]:
    """(the mean over pairs, the cell's text) of ``key``, or of the penalty / share lost against ``against`` (the
    native, or ``swap.CONTROL``)."""
    got = self.rows(a, b, variant, step)
    if key in ("penalty", "lost"):
      return self._relative(a, got, key, against)
    found = [r for _, r in got if r is not None and r.get(key) is not None]
    if len(found) < len(got):  # a figure some pair lacks would mix pairs: none
      return None, "—"
    if len(found) == 1:
      return found[0][key], tables.fmt_key(found[0], key)
    mean, std = intervals.mean_std([r[key] for r in found])
    return mean, tables.fmt(mean, std=std)

  def _relative(self, a: str, got: list, key: str, against: str) -> tuple[float | None, str]:
    """The penalty or share lost of a cell's rows against row A's reference of each pair's decoder seed: with one
    pair and per-document figures, its 95% interval paired by document; else mean ± std over the pairs."""
    refs = [(self.native(a, p[0], against), self.native(a, p[0], SHUFFLED_OF[against])) for p, _ in got]
    if len(got) == 1 and _paired(refs[0][0], got[0][1], self.metric):
      (ref, shuffled), cell = refs[0], got[0][1]
      if key == "penalty":
        return _with_ci(*score.paired_penalty(ref, cell, self.metric))
      if _paired(ref, shuffled, self.metric):
        return _with_ci(*score.paired_share_lost(ref, cell, shuffled, self.metric))
    vals = [penalty(ref, r, self.metric) for (ref, _), (_, r) in zip(refs, got, strict=True)]
    if key == "lost":  # the penalty over the input's worth (shuffled inputs' penalty) of the same reference CPU
      worth = [penalty(ref, shuffled, self.metric) for ref, shuffled in refs]
      vals = [v / w if v is not None and w else None for v, w in zip(vals, worth, strict=True)]
    mean, std = intervals.mean_std(vals) if None not in vals else (None, None)
    text = "—" if mean is None else f"{mean:+.3f}" + ("" if std is None else f" ± {std:.3f}")
    return mean, text

  def native_mean(self, a: str, variant: str = "native") -> float | None:
    """Row A's native figure (or its shuffled-inputs figure): over the decoder seeds of the pairs."""
    return intervals.mean_std([(self.native(a, d, variant) or {}).get(self.metric) for d, _ in self.pairs])[0]


def _with_ci(value: float | None, ci) -> tuple[float | None, str]:
  if value is None:
    return None, "—"
  clusters = "" if ci is None else f", {ci.clusters} clusters"
  return value, f"{value:+.3f}" + ("" if ci is None else f" ({ci[0]:+.3f}–{ci[1]:+.3f}{clusters})")


def markdown(rows: list[dict], exp) -> str:
  """Per corpus and variant: the matrices of its metric and of bits per byte (rows: decoder ISA A, columns: encoder
  ISA B) and the stitching penalty; then recovery against stitch-training steps."""
  docs = f"the first {exp.eval_docs} test documents" if exp.eval_docs else "every test document"
  lines = [
    f"Bits per byte of the answers on {docs} and, on programs, the exact match of {exp.prompts} greedy answers. "
    "Rows: the CPU whose decoder is kept (ISA A, what the answer is written in); columns: the CPU whose encoder is "
    "swapped in (ISA B, what the input is read in), for each (decoder seed, encoder seed) pair, so the diagonal is "
    "another CPU of the same ISA. One pair: the figure and its 95% bootstrap interval over documents, resampled by "
    "cluster (a prose window with the other windows of its document; a program alone), with the number of "
    "clusters; more: mean ± std over the pairs.",
    "",
    "Penalty: how much worse the cell is than row A's native CPU of the same decoder seed (exact match lost, or bits "
    "per byte added); with one pair, its 95% bootstrap interval paired by document (both were scored on the same "
    "documents, so a difference is surer than either figure's own interval, which is mostly how hard the documents "
    "are). Calibration: each native CPU also reads *another document's* input (shuffled inputs), which costs it all "
    "its input is worth; share lost = penalty / that cost (0: the swap loses nothing; 1: as if it read another "
    "document; above 1: worse than that).",
    "",
    f"Control ({AGAINST[swap.CONTROL]}): stitch + cross-attention trains decoder A's cross-attention as many steps "
    "more than the native had; the control gives each native CPU the same steps of cross-attention training on its "
    "own encoder (everything else as stitch + cross-attention's run, minus the stitch), and every variant's penalty "
    "and share lost are shown against it too. Share lost with one pair: its 95% bootstrap interval of the ratio, "
    "paired by document (the swap, its reference and the reference's shuffled inputs all on the same documents).",
    "",
  ]
  for corpus in sorted({r["corpus"] for r in rows}):
    lines += _corpus_markdown(Cells(rows, corpus))
  return "\n".join(lines) + "\n"


def _corpus_markdown(cells: Cells) -> list[str]:
  """One corpus' sections: the natives (and controls), a matrix per variant and figure, the recovery table."""
  corpus, metric, isas, name = cells.corpus, cells.metric, cells.isas, NAMES[cells.metric]
  pairs = ", ".join(f"{d}:{e}" for d, e in cells.pairs)
  lines = [f"## {corpus}: natives (seed pairs, decoder:encoder: {pairs})", ""]
  keys = list(dict.fromkeys((metric, "bits_per_byte")))
  heads = ["seed"] + [NAMES[k] for k in keys] + [f"{NAMES[k]}, shuffled inputs" for k in keys]
  lines += [tables.row(["ISA", *heads]), tables.rule(1, len(heads))]
  for a in isas:
    for against in AGAINST if cells.has_control else ("native",):
      for seed in cells.seeds:
        own, other = cells.native(a, seed, against), cells.native(a, seed, SHUFFLED_OF[against])
        if own is None and against != "native":
          continue
        figs = [tables.fmt_key(own, k) for k in keys] + [tables.fmt_key(other, k) for k in keys]
        label = str(seed) if against == "native" else f"{seed} + cross-attention ({own['step']} steps)"
        lines.append(tables.row([a, label, *figs]))
  head, rule = tables.row(["A \\ B", *isas]), tables.rule(1, len(isas))
  shown = [(metric, "native"), ("bits_per_byte", "native"), ("penalty", "native"), ("lost", "native")]
  shown = list(
    dict.fromkeys(shown + ([("penalty", swap.CONTROL), ("lost", swap.CONTROL)] if cells.has_control else []))
  )
  for variant in cells.variants:
    for key, against in shown:
      title = {"penalty": f"penalty ({name})", "lost": f"share of the input's worth lost ({name})"}.get(key)
      title = NAMES[key] if title is None else title + ("" if against == "native" else f", against {AGAINST[against]}")
      lines += ["", f"### {corpus}: {variant} — {title}", "", head, rule]
      for a in isas:
        lines.append(tables.row([a, *(cells.value(a, b, variant, key, against=against)[1] for b in isas)]))
  return lines + _recovery_markdown(cells)


def _recovery_markdown(cells: Cells) -> list[str]:
  if not cells.steps:
    return []
  metric, isas = cells.metric, cells.isas
  refs = ["native", swap.CONTROL] if cells.has_control else ["native"]
  lines = ["", f"### {cells.corpus}: recovery ({NAMES[metric]}) against stitch-training steps", ""]
  lines += [
    tables.row(["A reads B", "variant", *(f"step {s}" for s in cells.steps), *(f"{AGAINST[r]} A" for r in refs)])
  ]
  lines += [tables.rule(2, len(cells.steps) + len(refs))]
  for a in isas:
    means = [cells.native_mean(a, r) for r in refs]
    for b in isas:
      for variant in swap.TRAINED:
        if variant in cells.variants:
          cols = [cells.value(a, b, variant, metric, s)[1] for s in cells.steps]
          ref = ["—" if m is None else f"{m:.3f}" for m in means]
          lines.append(tables.row([f"{a} ← {b}", variant, *cols, *ref]))
  return lines


def heatmaps(rows: list[dict], out: str, exp) -> None:
  """One figure per corpus: its metric's matrix for every variant, the mean over seed pairs (brighter = better)."""
  from llmcpu.crosseval.report import plt

  for corpus in sorted({r["corpus"] for r in rows}):
    cells = Cells(rows, corpus)
    metric, isas = cells.metric, cells.isas
    values = [r[metric] for r in cells.last.values() if r.get(metric) is not None]
    if metric == "exact_match":
      vmin, vmax, cmap = 0.0, max([0.05, *values]), "viridis"
    else:
      vmin, vmax, cmap = min(values, default=0.0), max(values, default=1.0), "viridis_r"
    fig, axes = plt.subplots(1, len(cells.variants), figsize=(3.2 * len(cells.variants), 3.4), squeeze=False)
    for ax, variant in zip(axes[0], cells.variants, strict=True):
      m = np.full((len(isas), len(isas)), np.nan)
      for i, a in enumerate(isas):
        for j, b in enumerate(isas):
          mean = cells.value(a, b, variant, metric)[0]
          m[i, j] = np.nan if mean is None else mean
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
  """The metric against stitch-training steps (mean over seed pairs), one line per (A reads B, trained variant),
  natives dashed."""
  from llmcpu.crosseval.report import plt

  for corpus in sorted({r["corpus"] for r in rows}):
    cells = Cells(rows, corpus)
    if not cells.steps:
      continue
    metric, isas = cells.metric, cells.isas
    fig, axes = plt.subplots(1, len(isas), figsize=(4.2 * len(isas), 3.6), squeeze=False, sharey=True)
    floor = min((s for s in cells.steps if s > 0), default=1) / 3
    for ax, a in zip(axes[0], isas, strict=True):
      for b in isas:
        for variant, style in zip(swap.TRAINED, ("-", ":"), strict=True):
          pts = [(s, cells.value(a, b, variant, metric, s)[0]) for s in cells.steps]
          pts = [(s, v) for s, v in pts if v is not None]
          if pts:
            xs, ys = [max(s, floor) for s, _ in pts], [v for _, v in pts]
            ax.plot(xs, ys, style, marker="o", ms=3, label=f"← {b} ({variant})")
      references = [("native", "--", "native"), ("shuffled", ":", "native, shuffled inputs")]
      references += [(swap.CONTROL, "-.", AGAINST[swap.CONTROL])] if cells.has_control else []
      for variant, style, label in references:
        ref = cells.native_mean(a, variant)
        if ref is not None:
          ax.axhline(ref, ls=style, c="k", lw=1, label=label)
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

  def figures() -> None:
    heatmaps(rows, out, exp)
    recovery_figure(rows, out, exp)

  base.write_report(out, rows, exp, seconds, texts={"swap.md": markdown(rows, exp)}, figures=figures)
