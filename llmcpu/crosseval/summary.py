"""summary.md: what the matrix shows, as checks computed on the rows (never hard-coded), each judged with intervals.

A row of the matrix is one CPU (ISA × architecture × corpus); with several seeds every claim is checked per seed
(``k/K`` counts (CPU, seed) pairs) and margins are reported as mean ± std over seeds. Intervals are 95% bootstrap
intervals over documents (prompts for the coherence axes), resampled by cluster (a python_docs module, the document
a window was cut from), each shown with its number of clusters. Claims checked when the matrix has the cells for them:
  1. the native cell has the lowest bits per byte of its row (and its interval is clear of every other cell's);
  2. a fully permuted ISA (same segmentation, every regular opcode moved) scores at or below the unigram baseline
     (``normalized_score`` ≤ 0);
  3. prefix-compatible pairs (the smaller ISA's regular ids decode to the same pieces in the larger one, e.g. BPE
     1000 vs 4000 merges on one corpus, or char vs any learned ISA) score above unrelated ISAs (neither native,
     permuted nor prefix pairs);
  4. native CPUs execute their prompt and the fully permuted cells do not, each read by an equivalence test (TOST at
     the stated margin, ``intervals.tost``): "executes", "does not execute (equivalent to 0)" or "undecided at N
     prompts" — an interval that merely includes 0 is not evidence of 0; native relevance and coherence are the
     highest of their rows, with disjoint intervals;
  5. on programs, exact match is high natively and collapses under mismatch;
  6. calibration: the coherence axes score the references whose answer is known as they must.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from llmcpu import compilers, specials
from llmcpu.crosseval import capacity, intervals
from llmcpu.crosseval import coherence as coherence_doc
from llmcpu.crosseval.capacity import MIN_PROMPTS
from llmcpu.crosseval.intervals import mean_std
from llmcpu.errors import UserError

# Share of the smaller ISA's regular ids that must decode to the same piece in the larger one for a "prefix-compatible"
# pair. Under the canonical id layout (specials, bytes, characters, learned) bpe:1000 is an exact prefix of bpe:4000
# (100%); caches built before it list SentencePiece's characters after the merges (~90% shared).
PREFIX_OVERLAP = 0.5


def _num(v) -> float | None:
  return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def pair_kind(r: dict) -> str:
  """native | permuted (full) | partial-permutation | prefix | unrelated, for one ok row."""
  if r.get("native"):
    return "native"
  try:
    a, b = compilers.parse(r["model_isa_spec"]), compilers.parse(r["eval_isa_spec"])
  except (UserError, KeyError):
    return "unrelated"
  if a.base == b.base and a != b:
    moved = [s.perm_fraction for s in (a, b) if s.permuted]
    return "permuted" if all(f >= 1.0 for f in moved) else "partial-permutation"
  # char is a prefix of every learned ISA of the same corpus (canonical layout: bytes, characters, learned pieces).
  related = a.family == b.family or "char" in (a.family, b.family) and "byte" not in (a.family, b.family)
  if related and not a.permuted and not b.permuted and shared_of_smaller(r) >= PREFIX_OVERLAP:
    return "prefix"
  return "unrelated"


def shared_of_smaller(r: dict) -> float:
  """The share of the smaller ISA's regular ids that decode to the same piece in the other (isa_overlap is over the
  larger vocabulary)."""
  small = min(r.get("model_vocab") or 0, r.get("eval_vocab") or 0) - specials.FIRST_REGULAR_ID
  large = max(r.get("model_vocab") or 0, r.get("eval_vocab") or 0) - specials.FIRST_REGULAR_ID
  return (r.get("isa_overlap") or 0.0) * large / small if small > 0 else 0.0


def _mean(xs: Sequence[float]) -> float | None:
  return float(np.mean(xs)) if xs else None


def _f(v: float | None, digits: int = 3) -> str:
  return "n/a" if v is None else f"{v:.{digits}f}"


def _verdict(ok: bool) -> str:
  return "holds" if ok else "DOES NOT HOLD"


def _ci(r: dict, metric: str) -> tuple[float, float] | None:
  """The interval, carrying its clusters and undefined resamples (``intervals.Interval``) when the row says them."""
  return _interval(r.get(f"{metric}_ci"), r.get(f"{metric}_ci_info"))


def _interval(ci, info: dict | None) -> tuple[float, float] | None:
  """``_ci`` of a stored ``[lo, hi]`` and its ``info`` (clusters, undefined resamples)."""
  if not ci:
    return None
  if info and info.get("clusters"):
    return intervals.Interval(ci[0], ci[1], **{k: info.get(k) or 0 for k in ("clusters", "undefined", "resamples")})
  return float(ci[0]), float(ci[1])


def _fmt_ci(ci, digits: int = 3) -> str:
  """`` (lo–hi, K clusters)`` (and the undefined resamples, if any); '' without an interval."""
  return "" if ci is None else intervals.describe(ci, ci.info() if isinstance(ci, intervals.Interval) else None, digits)


def _by_checkpoint(ok: Sequence[dict]) -> dict[str, list[dict]]:
  out: dict[str, list[dict]] = {}
  for r in ok:
    out.setdefault(r["checkpoint"], []).append(r)
  return out


def _cpu(r: dict) -> str:
  return f"{r['model_isa']} · {r['arch']}" + (f" · {r['corpus']}" if r.get("corpus") else "")


def native_best(ok: Sequence[dict], metric: str, name: str, lower_is_better: bool) -> list[str]:
  """Native best of its row, per (CPU, seed); interval separation; smallest margin over CPUs (mean ± std over seeds)."""
  sign = -1.0 if lower_is_better else 1.0
  checked, best, separated, misses = 0, 0, 0, []
  margins: dict[str, list[float]] = {}
  for cells in _by_checkpoint(ok).values():
    nat = [c for c in cells if c.get("native") and _num(c.get(metric)) is not None]
    others = [c for c in cells if not c.get("native") and _num(c.get(metric)) is not None]
    if not nat or not others:
      continue
    checked += 1
    n = nat[0]
    o = max(others, key=lambda c: sign * c[metric])  # the strongest competitor
    margin = sign * (n[metric] - o[metric])
    margins.setdefault(_cpu(n), []).append(margin)
    if margin >= 0:
      best += 1
    else:
      misses.append(f"{_cpu(n)} (seed {n.get('seed')}): native {n[metric]:.3f} vs {o['eval_isa']} {o[metric]:.3f}")
    n_ci = _ci(n, metric)
    o_cis = [_ci(c, metric) for c in others]
    if n_ci and all(o_ci for o_ci in o_cis):
      edge = max(sign * x for o_ci in o_cis for x in o_ci)  # the competitors' best interval end
      if min(sign * x for x in n_ci) > edge:
        separated += 1
  if not checked:
    return [f"- Native {name} best of its row: not checkable (no row has a native and another cell)."]
  stats = {cpu: mean_std(v) for cpu, v in margins.items()}
  worst = min(stats, key=lambda c: stats[c][0])
  m, sd = stats[worst]
  spread = f" ± {sd:.3f} (seeds)" if sd is not None else ""
  lines = [
    f"- Native {name} best of its row in {best}/{checked} (CPU, seed) pairs: {_verdict(best == checked)}; its "
    f"interval clear of every other cell's in {separated}/{checked}; smallest margin {m:.3f}{spread} ({worst})."
  ]
  return lines + [f"  - exception: {x}" for x in misses]


def permuted_at_or_below_unigram(ok: Sequence[dict]) -> list[str]:
  """normalized_score ≤ 0 ⇔ bpb ≥ the unigram's bpb (when the matched cell beats the unigram), so the claim is
  checked on bits per byte and holds even without a matched cell; the normalized score is shown when there is one."""
  cells = [r for r in ok if pair_kind(r) == "permuted" and _num(r.get("bpb_unigram")) is not None]
  if not cells:
    return ["- Fully permuted ISA ≤ unigram: not checkable (no permuted pair in the matrix)."]
  lines = []
  for r in cells:
    below = r["bits_per_byte"] >= r["bpb_unigram"]
    lines.append(
      f"  - {_cpu(r)} (seed {r.get('seed')}) on {r['eval_isa']}: bpb {r['bits_per_byte']:.3f}"
      f"{_fmt_ci(_ci(r, 'bits_per_byte'))} vs unigram {r['bpb_unigram']:.3f} {'≥ ✓' if below else '< ✗'}, "
      f"normalized score {_f(_num(r.get('normalized_score')), 2)}{_fmt_ci(_ci(r, 'normalized_score'), 2)}"
    )
  n = sum(r["bits_per_byte"] >= r["bpb_unigram"] for r in cells)
  head = f"- Fully permuted ISA scores at or below the unigram baseline (normalized score ≤ 0) in {n}/{len(cells)}"
  return [f"{head} cells: {_verdict(n == len(cells))}.", *lines]


def prefix_above_unrelated(ok: Sequence[dict]) -> list[str]:
  kinds = {id(r): pair_kind(r) for r in ok}
  prefix = [r for r in ok if kinds[id(r)] == "prefix" and _num(r.get("normalized_score")) is not None]
  unrelated = [r for r in ok if kinds[id(r)] == "unrelated" and _num(r.get("normalized_score")) is not None]
  baseline_name = "unrelated"
  if not unrelated:
    unrelated = [r for r in ok if kinds[id(r)] == "permuted" and _num(r.get("normalized_score")) is not None]
    baseline_name = "permuted (no unrelated cells)"
  if not prefix or not unrelated:
    return ["- Prefix-compatible pair above unrelated ISAs: not checkable (needs scored prefix and other cells)."]
  p = _mean([r["normalized_score"] for r in prefix])
  u = _mean([r["normalized_score"] for r in unrelated])
  lines = [
    f"- Prefix-compatible pairs: mean normalized score {p:.2f} vs {baseline_name} mean {u:.2f}: {_verdict(p > u)}."
  ]
  lines += [
    f"  - {_cpu(r)} (seed {r.get('seed')}) on {r['eval_isa']}: {r['normalized_score']:.2f}"
    f"{_fmt_ci(_ci(r, 'normalized_score'), 2)} (bpb {r['bits_per_byte']:.3f}, illegal rate "
    f"{r['illegal_rate']:.3f}, {shared_of_smaller(r):.0%} of the smaller ISA's ids shared)"
    for r in prefix
  ]
  return lines


def _verdict_of(r: dict) -> str:
  """A cell's relevance verdict (``intervals.tost``), with the number of prompts when undecided."""
  margin = r.get("equivalence_margin") or intervals.EQUIVALENCE_MARGIN
  verdict = r.get("relevance_verdict") or intervals.tost(r.get("relevance_ci90"), margin)
  return f"{verdict} at {r.get('prompts') or '?'} prompts" if verdict == intervals.UNDECIDED else verdict


def relevance_claims(ok: Sequence[dict]) -> list[str]:
  """Native CPUs execute their prompt; fully permuted code does not: each by an equivalence test (TOST), never by
  "the interval includes 0"."""
  cells = [r for r in ok if _num(r.get("relevance")) is not None]
  nat = [r for r in cells if r.get("native")]
  perm = [r for r in cells if pair_kind(r) == "permuted"]
  margins = sorted({r.get("equivalence_margin") or intervals.EQUIVALENCE_MARGIN for r in cells})
  test = (
    f"TOST at ±{'/'.join(f'{m:g}' for m in margins)}: executes = 90% interval above 0 and not inside the margin; "
    "equivalent to 0 = 90% interval inside it"
  )
  lines = []

  def detail(r: dict) -> str:
    on = "" if r.get("native") else f" on {r['eval_isa']}"
    ci90 = r.get("relevance_ci90")
    ci90 = f", 90% {ci90[0]:.3f}–{ci90[1]:.3f}" if ci90 else ""
    figure = f"relevance {r['relevance']:.3f}{_fmt_ci(_ci(r, 'relevance'))}{ci90}"
    return f"  - {_cpu(r)} (seed {r.get('seed')}){on}: {figure}: {_verdict_of(r)}"

  if nat:
    yes = [r for r in nat if _verdict_of(r) == intervals.EXECUTES]
    lines.append(
      f"- Native CPUs execute their prompt ({test}) in {len(yes)}/{len(nat)} (CPU, seed) pairs: "
      f"{_verdict(len(yes) == len(nat))}."
    )
    lines += [detail(r) for r in nat if r not in yes]
  if perm:
    zero = [r for r in perm if _verdict_of(r) == intervals.EQUIVALENT]
    lines.append(
      f"- Fully permuted code does not execute (relevance equivalent to 0, {test}) in {len(zero)}/{len(perm)} cells: "
      f"{_verdict(len(zero) == len(perm))}."
    )
    lines += [detail(r) for r in perm if r not in zero]
  return lines


def programs_exact_match(ok: Sequence[dict]) -> list[str]:
  cells = [r for r in ok if _num(r.get("exact_match")) is not None]
  if not cells:
    return []
  nat = [r["exact_match"] for r in cells if r.get("native")]
  foreign = [r["exact_match"] for r in cells if not r.get("native")]
  if not nat or not foreign:
    return ["- Programs exact match: not checkable (needs native and foreign cells)."]
  n, f = _mean(nat), _mean(foreign)
  ok_ = n > f and f <= 0.5 * n
  return [f"- Programs exact match: native mean {n:.3f} vs mismatched mean {f:.3f}: collapse {_verdict(ok_)}."]


def task_table(ok: Sequence[dict], calibration: Sequence[dict]) -> list[str]:
  """Where exact match comes from: each native CPU's exact match per task beside the local baselines' on the same
  programs (a task a baseline solves is no evidence of execution)."""
  nat = [r for r in ok if r.get("native") and r.get("exact_match_by_task")]
  bases = [r for r in calibration if r.get("reference") in coherence_doc.PROGRAM_BASELINES]
  bases = [r for r in bases if r.get("exact_match_by_task")]
  if not nat:
    return []
  tasks = sorted({t for r in [*nat, *bases] for t in r["exact_match_by_task"]})
  out = [
    "## Exact match by task",
    "",
    "Each native CPU's exact match per task, beside the local baselines' on the same programs: a task a baseline "
    "solves (the answer is the task's usual one, or the prompt's operand) is no evidence of execution.",
    "",
    "| CPU | seed | all | " + " | ".join(tasks) + " |",
    "|---|---:|---:|" + "---:|" * len(tasks),
  ]
  for r in [*bases, *nat]:
    name = r["reference"] if "reference" in r else _cpu(r)
    by = r["exact_match_by_task"]
    cells = " | ".join("–" if by.get(t) is None else f"{by[t]:.2f}" for t in tasks)
    overall = _num(r.get("exact_match", r.get("relevance")))  # calibration rows: relevance is exact match
    out.append(f"| {name} | {r.get('seed', '–')} | {_f(overall)} | {cells} |")
  return [*out, ""]


# ------------------------------------------------------------------------------------------------- calibration

FIGURES = ("fluency", "relevance", "coherence", "relevance_beyond_tail", "copy_rate")
# What each known reference must score: (figure, low, high) on the point estimate. The local baselines must earn no
# relevance beyond the tail: they read only the prompt's last bytes, so after the head-swapped prompt they write the
# same text, and the crossed difference is 0 (exactly, for these deterministic generators).
EXPECTED = {
  "true continuation": (("fluency", 0.95, 1.0), ("relevance", 0.95, 1.05), ("relevance_beyond_tail", 0.95, 1.05)),
  coherence_doc.NGRAM_BASELINE: (("relevance_beyond_tail", -0.1, 0.1),),
  coherence_doc.WORD_BASELINE: (("relevance_beyond_tail", -0.1, 0.1),),
  "another document's continuation": (("relevance", -0.1, 0.1),),
  "random bytes": (("fluency", 0.0, 0.1),),
  "repeated piece": (("fluency", 0.0, 0.1),),
  "prompt echoed": (("coherence", 0.0, 0.5),),
  "true answer": (("fluency", 0.95, 1.0), ("relevance", 0.95, 1.0)),
  "another program's answer (same task)": (("relevance", 0.0, 0.1),),
}


def _figure(r: dict, key: str) -> str:
  v = _num(r.get(key))
  return "n/a" if v is None else f"{v:.3f}{_fmt_ci(_ci(r, key))}"


def calibration_table(calibration: Sequence[dict], ok: Sequence[dict]) -> list[str]:
  """The known references, each with what it must score and whether it does; then the native CPUs fed their own
  prompts shuffled, whose relevance must fall well below their native figure."""
  if not calibration and not any(r.get("shuffled_prompt") for r in ok):
    return []
  out = [
    "## Calibration",
    "",
    "The coherence axes on references whose answer is known (same prompts, same judge as the cells), with 95% "
    "bootstrap intervals over prompts:",
    "",
    "| corpus | reference | prompts | fluency | relevance | coherence | relevance beyond tail | copy rate | expected "
    "| verdict |",
    "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
  ]
  for r in calibration:
    want = EXPECTED.get(r["reference"], ())
    ok_ = all(_num(r.get(k)) is not None and lo <= r[k] <= hi for k, lo, hi in want)
    expected = ", ".join(f"{k} in [{lo:g}, {hi:g}]" for k, lo, hi in want) or "—"
    verdict = _verdict(ok_) if want else "—"
    if want and (r.get("prompts") or 0) < MIN_PROMPTS:  # too few prompts to run it: no verdict either way
      verdict = f"not measured: {r.get('prompts') or 0} prompts (needs ≥ {MIN_PROMPTS})"
    out.append(
      f"| {r['corpus']} | {r['reference']} | {r['prompts']} | "
      + " | ".join(_figure(r, k) for k in FIGURES)
      + f" | {expected} | {verdict} |"
    )
  shuffled = [r for r in ok if r.get("native") and r.get("shuffled_prompt")]
  if shuffled:
    out += [
      "",
      "Native CPUs fed their own prompt with its opcodes shuffled (judged against the real prompt): relevance must "
      "fall well below the native figure (the shuffled interval's top below the native interval's bottom).",
      "",
      "| CPU | seed | native relevance | shuffled-prompt relevance | verdict |",
      "|---|---:|---:|---:|---|",
    ]
    for r in shuffled:
      s = r["shuffled_prompt"]
      n_ci, s_ci = _ci(r, "relevance"), _ci(s, "relevance")
      ok_ = bool(n_ci and s_ci and s_ci[1] < n_ci[0])
      out.append(
        f"| {_cpu(r)} | {r.get('seed')} | {_figure(r, 'relevance')} | {_figure(s, 'relevance')} | {_verdict(ok_)} |"
      )
  return [*out, ""]


def _baselines(calibration: Sequence[dict]) -> dict[str, dict[str, dict]]:
  """corpus → baseline name → its calibration row."""
  out: dict[str, dict[str, dict]] = {}
  for r in calibration:
    if r.get("reference") in (*coherence_doc.BASELINES, *coherence_doc.PROGRAM_BASELINES):
      out.setdefault(r["corpus"], {})[r["reference"]] = r
  return out


def _above(r: dict, base: dict, metric: str) -> tuple[bool, bool]:
  """(point estimate above the baseline's, interval clear above the baseline's interval)."""
  a, b = _num(r.get(metric)), _num(base.get(metric))
  ci, base_ci = _ci(r, metric), _ci(base, metric)
  return (a is not None and b is not None and a > b), bool(ci and base_ci and ci[0] > base_ci[1])


def baseline_claims(ok: Sequence[dict], calibration: Sequence[dict]) -> list[str]:
  """Every native CPU read against the purely local baselines on the same prompts: relevance (today's) above both,
  and relevance beyond the tail (which they cannot earn) above 0, with intervals."""
  prose = {c: {n: x for n, x in b.items() if n in coherence_doc.BASELINES} for c, b in _baselines(calibration).items()}
  bases = {c: b for c, b in prose.items() if b}
  nat = [r for r in ok if r.get("native") and _num(r.get("relevance")) is not None and bases.get(r.get("corpus"))]
  if not nat:
    return []
  lines, beats, clear, tail_pos = [], 0, 0, 0
  for r in nat:
    b = bases[r["corpus"]]
    marks = [_above(r, b[name], "relevance") for name in coherence_doc.BASELINES if name in b]
    beats += all(m[0] for m in marks)
    clear += all(m[1] for m in marks)
    verdict = r.get("relevance_beyond_tail_verdict")  # the equivalence test (intervals.tost), when it ran
    t_ci = _ci(r, "relevance_beyond_tail")
    tail_pos += verdict == "executes" if verdict else bool(t_ci and t_ci[0] > 0)
    base_text = "; ".join(f"{name.split(': ', 1)[-1]} {_figure(b[name], 'relevance')}" for name in b)
    lines.append(
      f"  - {_cpu(r)} (seed {r.get('seed')}): relevance {_figure(r, 'relevance')} vs {base_text}; relevance beyond "
      f"the tail {_figure(r, 'relevance_beyond_tail')} ({verdict or 'no verdict'}); copy rate "
      f"{_f(_num(r.get('copy_rate')))}"
    )
  n = len(nat)
  return [
    f"- Native relevance above both local baselines (the n-gram judge continuing greedily; the last word finished, "
    f"then another document) in {beats}/{n} (CPU, seed) pairs, interval clear of theirs in {clear}/{n}: "
    f"{_verdict(beats == n)}. A CPU at or below them is not shown to execute its prompt.",
    f"- Native relevance beyond the tail (prompt use before its last 8 bytes, which a local model cannot earn) "
    f'shown above 0 (equivalence test: "executes") in {tail_pos}/{n}: {_verdict(tail_pos == n)}.',
    *lines,
  ]


_ROUNDING = 1e-9  # two identical cells differ by summation order only (~1e-16): that is no difference


def _paired_line(label: str, p: dict) -> str:
  return f"{label} {p['difference']:+.3f}{_fmt_ci(_interval(p['ci'], p['info']))}"


def paired_row_claims(
  ok: Sequence[dict],
  calibration: Sequence[dict],
  metric: str,
  name: str,
  against: str = "cells",
  kind: str = "prose",
) -> list[str]:
  """Native ``metric`` against every other cell of its row (``against="cells"``) or against the local baselines
  (``"baselines"``, from the calibration rows), each difference paired by prompt: every column judged the same prompt
  bytes (the same programs), so what a prompt does to both sides cancels. Per (CPU, seed): above (every paired 95%
  interval above 0), below (some competitor clear above the native) or undecided at that many prompts. ``kind``:
  the cells read (prose or programs)."""
  bases = _baselines(calibration)
  nat = [
    r
    for r in ok
    if r.get("native")
    and r.get("prompt_table")
    and r["prompt_table"].get("kind", "prose") == kind
    and _num(r.get(metric)) is not None
  ]
  rows = _by_checkpoint(ok)
  verdicts: dict[str, int] = {"above": 0, "below": 0, "undecided": 0}
  details = []
  for r in nat:
    if against == "cells":
      rivals = [(c["eval_isa"], c) for c in rows[r["checkpoint"]] if not c.get("native") and c.get("prompt_table")]
    else:
      rivals = [(b.split(": ", 1)[-1], x) for b, x in bases.get(r.get("corpus"), {}).items() if x.get("prompt_table")]
    diffs = [(label, coherence_doc.paired(r["prompt_table"], c["prompt_table"], metric)) for label, c in rivals]
    diffs = [(label, p) for label, p in diffs if p and p["ci"] and p["difference"] is not None]
    if not diffs:
      continue
    worst_label, worst = min(diffs, key=lambda x: x[1]["ci"][0])
    if worst["ci"][0] > _ROUNDING:
      verdicts["above"] += 1
      continue
    below = [(label, p) for label, p in diffs if p["ci"][1] < -_ROUNDING]
    kind = "below" if below else "undecided"
    verdicts[kind] += 1
    shown = below or [(worst_label, worst)]
    what = "; ".join(_paired_line(f"native − {label}", p) for label, p in shown)
    at = f" at {worst['prompts']} prompts" if kind == "undecided" else ""
    details.append(f"  - {_cpu(r)} (seed {r.get('seed')}): {kind}{at}: {what}")
  n = sum(verdicts.values())
  if not n:
    return []
  whom = "every other cell of its row" if against == "cells" else "every local baseline"
  return [
    f"- Native {name} above {whom}, each difference paired by prompt (95% cluster bootstrap): above in "
    f"{verdicts['above']}/{n} (CPU, seed) pairs, below in {verdicts['below']}/{n}, undecided in "
    f"{verdicts['undecided']}/{n}: {_verdict(verdicts['above'] == n)}.",
    *details,
  ]


def _claims(ok: Sequence[dict], calibration: Sequence[dict]) -> list[str]:
  """Every claim of "What the matrix shows", in order."""
  return [
    *native_best(ok, "bits_per_byte", "bits per byte (lowest)", lower_is_better=True),
    *permuted_at_or_below_unigram(ok),
    *prefix_above_unrelated(ok),
    *relevance_claims(ok),
    *native_best(ok, "relevance", "relevance", lower_is_better=False),
    *baseline_claims(ok, calibration),
    *paired_row_claims(ok, calibration, "relevance", "relevance"),
    *paired_row_claims(ok, calibration, "relevance", "relevance", against="baselines"),
    *native_best(ok, "relevance_beyond_tail", "relevance beyond the tail", lower_is_better=False),
    *paired_row_claims(ok, calibration, "relevance_beyond_tail", "relevance beyond the tail"),
    *native_best(ok, "coherence", "coherence", lower_is_better=False),
    *programs_exact_match(ok),
    *paired_row_claims(ok, calibration, "exact_match", "exact match", kind="programs"),
    *paired_row_claims(ok, calibration, "exact_match", "exact match", against="baselines", kind="programs"),
  ]


def summarize(
  rows: Sequence[dict], tables: dict[str, str], calibration: Sequence[dict] = (), corpus_stats: dict | None = None
) -> str:
  ok = [r for r in rows if r.get("status") == "ok"]
  failed = [r for r in rows if r.get("status") != "ok"]
  models = {r["checkpoint"] for r in rows}
  seeds = sorted({r.get("seed") for r in ok if r.get("seed") is not None})
  isas = list(dict.fromkeys(r["eval_isa"] for r in rows))
  prompts = sorted({r["prompts"] for r in ok if r.get("prompts")})
  out = [
    "# Cross-ISA evaluation",
    "",
    f"{len(models)} checkpoints × {len(isas)} evaluation ISAs ({', '.join(isas)}): {len(ok)} cells scored, "
    f"{len(failed)} failed; seeds {', '.join(map(str, seeds)) or 'n/a'}; prompts per cell "
    f"{', '.join(map(str, prompts)) or 'n/a'}. Every model received each ISA's compiled "
    f"`{rows[0]['split'] if rows else 'test'}` split as is (no re-tokenization). Tables: mean ± std over seeds, or "
    "with one seed the figure and its 95% bootstrap interval over documents.",
    "",
    *([capacity.summary_line(corpus_stats), ""] if corpus_stats else []),
    "## What the matrix shows",
    "",
    *_claims(ok, calibration),
    "",
    *calibration_table(calibration, ok),
    *task_table(ok, calibration),
  ]
  for metric, table in tables.items():
    out += [f"## {metric}", "", table, ""]
  if failed:
    out += ["## Failed cells", ""]
    out += [f"- {r['checkpoint']} on {r['eval_isa']}: {r.get('error')}" for r in failed]
    out.append("")
  out += [
    "## How to read it",
    "",
    "- Bits per byte: Σ NLL over the scored ids of the documents / (ln 2 · UTF-8 bytes of the pieces they name); "
    "EOS, BOS, PAD and sentinels excluded; exact for every objective. Every column of a row scores the same bytes "
    "of the same documents: a decoder every byte; masked LM the words chosen per document from (seed, document) "
    "over byte spans that start before a space — a token boundary in every ISA — so every ISA masks exactly those "
    "bytes and hides the same words; prefix LM cuts each document at the same word boundaries, in bytes, so every "
    "ISA reads the same prefix and scores the same continuation; programs score each answer's bytes. Not "
    "span_corruption on prose, whose spans are drawn over one ISA's tokens: its columns score different bytes "
    "(spans:CORPUS is the comparable form).",
    "- Baselines: `bpb_uniform` = log2(model vocab) per token; `bpb_unigram` = the evaluation ISA's add-one unigram "
    "(train split counts) on the same targets; `bpb_matched` = the native cell of the same architecture and seed. "
    "normalized_score = (unigram − cell) / (unigram − matched): 1 native, 0 no better than counting opcodes, < 0 "
    "confidently wrong.",
    "- Illegal opcodes (ids ≥ the model's vocabulary): inputs mapped to UNK by the model's policy; an illegal target "
    "is scored as p(UNK) / (V_eval − V_model + 1), the UNK mass shared by every id the model cannot name (a proper "
    "distribution over the evaluation ISA). `misread_rate`: legal ids that name another piece in the model's ISA. "
    "`byte_context` = context tokens × bytes/token of the evaluation ISA.",
    "- Prose prompts: the same bytes in every column (each document cut at one byte offset, just before a space "
    "starting a word, that is a token boundary of every evaluation ISA; each ISA compiles that text); every output "
    "and the true continuation are judged on the same number of bytes. Baselines (calibration table): the byte "
    "n-gram judge continuing each prompt greedily, and the prompt's last word finished from the train lexicon "
    "followed by another document's text.",
    "- Coherence (prose): " + coherence_doc.PROSE_FORMULA,
    "- Coherence (programs): " + coherence_doc.PROGRAMS_FORMULA,
    "- Intervals: 95% BCa bootstrap over documents (bits per byte, normalized score: test documents; fluency, "
    "relevance, coherence, exact match: prompts), seeded, two-stage by cluster (clusters with replacement, then "
    "documents within them; BCa's acceleration from the jackknife over clusters): a python_docs document clusters "
    "with the other parts of its module or topic, a spans window with the other windows of its document, a program "
    "or another corpus' document is its own cluster. `(lo–hi, K clusters)`; resamples where a figure is undefined "
    "are counted next to it. Across seeds the tables show mean ± std.",
    "- Relevance verdicts: an equivalence test (TOST, two one-sided tests at 5% on the 90% interval) at the stated "
    "margin (`equivalence_margin`, default 0.1): executes = the 90% interval above 0 and not inside ±margin; does "
    "not execute (equivalent to 0) = inside ±margin; otherwise undecided at that many prompts.",
    "- Tables: native cells bold (Markdown, LaTeX), `*` suffix (CSV), outlined (heatmaps); `failed` = the cell "
    "could not be computed (see results.jsonl `error`).",
    "",
  ]
  return "\n".join(out)
