"""Paired comparisons of two prose cells (``coherence.paired``) and the summary's row verdicts built on them.

The references: a by-hand pooled ratio (numpy sums, not ``prose_figures``), an exact symmetry (reordering one
cell's prompts changes nothing), and the property pairing exists for (a shift shared prompt by prompt is resolved
when neither cell's own interval can resolve it)."""

from __future__ import annotations

import numpy as np
import pytest

from llmcpu.crosseval import coherence, summary

K = len(coherence.TEXT_COLUMNS)
C = {name: i for i, name in enumerate(coherence.TEXT_COLUMNS)}


def _table(pmi_gen: np.ndarray, pmi_ref: np.ndarray, nbytes: float = 96.0) -> np.ndarray:
  """A prose table with only what relevance reads: each prompt's generated and reference PMI and bytes."""
  t = np.zeros((len(pmi_gen), 2 * K))
  t[:, C["pmi"]], t[:, C["bytes"]] = pmi_gen, nbytes
  t[:, K + C["pmi"]], t[:, K + C["bytes"]] = pmi_ref, nbytes
  return t


def _record(table: np.ndarray, docs=None) -> dict:
  docs = list(range(len(table))) if docs is None else docs
  return coherence.table_record(table, docs, [f"c{d // 2}" for d in docs])  # two prompts per cluster


@pytest.fixture(scope="module")
def shared_shift():
  """60 prompts whose difficulty and use vary widely; cell a gets 2 bits more PMI than cell b on every prompt."""
  rng = np.random.default_rng(0)
  ref = rng.uniform(5.0, 100.0, 60)
  b = rng.uniform(0.0, 40.0, 60)  # each prompt's own use, shared by both cells: what pairing cancels
  return _table(b + 2.0, ref), _table(b, ref)


def test_paired_difference_equals_a_by_hand_pooled_ratio(shared_shift):
  a, b = shared_shift
  p = coherence.paired(_record(a), _record(b), "relevance")
  ref = a[:, K + C["pmi"]].sum()  # the same references on both sides: same bytes, so the ratio of PMI sums
  want = a[:, C["pmi"]].sum() / ref - b[:, C["pmi"]].sum() / ref
  assert p["difference"] == pytest.approx(want, rel=1e-12)
  assert p["prompts"] == 60 and p["info"]["clusters"] == 30


def test_pairing_resolves_a_shared_shift_the_cells_own_intervals_cannot(shared_shift):
  a, b = shared_shift
  clusters = [f"c{d // 2}" for d in range(60)]
  own = [coherence.assess(t, "prose", keys=("relevance",), clusters=clusters)["relevance_ci"] for t in (a, b)]
  assert own[0][0] < own[1][1]  # unpaired: the two intervals overlap
  p = coherence.paired(_record(a), _record(b), "relevance")
  assert p["ci"][0] > 0  # paired: the difference is clear of 0
  assert coherence.paired(_record(b), _record(a), "relevance")["ci"][1] < 0


def test_prompts_are_matched_by_document_not_position(shared_shift):
  a, b = shared_shift
  order = np.random.default_rng(1).permutation(60)
  aligned = coherence.paired(_record(a), _record(b), "relevance")
  shuffled = coherence.paired(_record(a), _record(b[order], [int(d) for d in order]), "relevance")
  assert shuffled["difference"] == pytest.approx(aligned["difference"], rel=1e-12)
  assert shuffled["ci"] == pytest.approx(aligned["ci"], rel=1e-9)
  partial = coherence.paired(_record(a), _record(b[:30], list(range(30))), "relevance")
  assert partial["prompts"] == 30
  assert coherence.paired(_record(a[:1], [0]), _record(b[:1], [0]), "relevance") is None


def _row(ck: str, isa: str, native: bool, table: np.ndarray) -> dict:
  rec = _record(table)
  fig = coherence.assess(table, "prose", keys=("relevance",), clusters=rec["clusters"])
  return {
    "status": "ok",
    "checkpoint": ck,
    "model_isa": "x",
    "arch": "decoder",
    "eval_isa": isa,
    "native": native,
    "seed": 0,
    "relevance": fig["relevance"],
    "prompt_table": rec,
  }


def test_summary_row_verdicts_above_below_undecided(shared_shift):
  a, b = shared_shift
  rows = [_row("up", "x", True, a), _row("up", "y", False, b)]
  rows += [_row("down", "x", True, b), _row("down", "y", False, a)]
  noisy = a.copy()
  noisy[:, C["pmi"]] += np.random.default_rng(2).normal(0.0, 3.0, len(a))  # no shift, only noise: undecided
  rows += [_row("tie", "x", True, a), _row("tie", "y", False, noisy)]
  rows += [_row("same", "x", True, a), _row("same", "y", False, a.copy())]  # equal up to summation order
  (head, *details) = summary.paired_row_claims(rows, [], "relevance", "relevance")
  assert "above in 1/4" in head and "below in 1/4" in head and "undecided in 2/4" in head
  assert any("below: native − y -" in d for d in details)
  assert any("undecided at 60 prompts" in d for d in details)
  base = {"reference": coherence.NGRAM_BASELINE, "corpus": "c", **{k: v for k, v in _row("-", "-", False, b).items()}}
  mine = [_row("up", "x", True, a) | {"corpus": "c"}]
  (head, *_) = summary.paired_row_claims(mine, [base], "relevance", "relevance", against="baselines")
  assert "above every local baseline" in head and "above in 1/1" in head


# ------------------------------------------------------------------------------------------------- programs


def _program_record(hits, docs=None) -> dict:
  table = np.stack([np.asarray(hits, np.float64), np.ones(len(hits)), np.ones(len(hits))], axis=1)
  docs = list(range(len(hits))) if docs is None else docs
  return coherence.table_record(table, docs, [f"p{d}" for d in docs], kind="programs")


def test_paired_exact_match_on_programs_is_the_mean_of_hit_differences():
  a, b = [1, 1, 0, 1, 0, 1, 1, 0], [0, 1, 0, 0, 0, 1, 0, 0]
  p = coherence.paired(_program_record(a), _program_record(b), "exact_match")
  assert p["difference"] == pytest.approx(np.mean(a) - np.mean(b))  # 5/8 − 2/8, by hand
  assert p["ci"][0] <= p["difference"] <= p["ci"][1] and p["prompts"] == 8
  # Matched by program, not by position: b's programs in another order give the same difference.
  order = [3, 0, 7, 1, 6, 2, 5, 4]
  q = coherence.paired(_program_record(a), _program_record([b[i] for i in order], docs=order), "exact_match")
  assert q["difference"] == pytest.approx(p["difference"])


def test_task_prior_is_the_leave_one_out_mode_of_the_task():
  targets = ["1", "1", "2", "1", "x", "b", "a"]
  tasks = ["count", "count", "count", "count", "copy", "sort", "sort"]
  # count: every program's others hold "1" at least twice; copy: alone, so nothing; sort: each sees only the other.
  assert coherence.task_prior(targets, tasks) == ["1", "1", "1", "1", "", "a", "b"]
  hits = [p == t for p, t in zip(coherence.task_prior(targets, tasks), targets, strict=True)]
  assert hits == [True, True, False, True, False, False, False]  # a lone program earns nothing from its own answer


def test_last_operand_is_what_precedes_the_equals_sign():
  assert coherence.last_operand("copy qwerty =") == "qwerty"
  assert coherence.last_operand("count a in abcab =") == "abcab"
  assert coherence.last_operand("add 123 45 = ") == "45"
  assert coherence.last_operand("=") == ""


def test_row_verdicts_against_the_program_baselines():
  """A native CPU that beats the task prior on every program but only matches the operand copy is undecided, not
  above; the summary's task table shows both baselines beside it."""
  n = 60
  native = [1] * 30 + [0] * 30
  prior, operand = [0] * n, [1] * 28 + [0] * 32
  cell = {
    "native": True,
    "status": "ok",
    "checkpoint": "cpu",
    "eval_isa": "char",
    "corpus": "programs",
    "seed": 0,
    "model_isa": "char",
    "arch": "decoder",
    "exact_match": 0.5,
    "exact_match_by_task": {"copy": 1.0, "count": 0.0},
    "prompt_table": _program_record(native),
  }
  calib = [
    {"corpus": "programs", "reference": coherence.PRIOR_BASELINE, "prompts": n, "relevance": 0.0},
    {"corpus": "programs", "reference": coherence.OPERAND_BASELINE, "prompts": n, "relevance": 28 / n},
  ]
  calib[0] |= {"prompt_table": _program_record(prior), "exact_match_by_task": {"copy": 0.0, "count": 0.0}}
  calib[1] |= {"prompt_table": _program_record(operand), "exact_match_by_task": {"copy": 0.93, "count": 0.0}}
  lines = summary.paired_row_claims([cell], calib, "exact_match", "exact match", "baselines", kind="programs")
  assert "undecided in 1/1" in lines[0] and "the prompt's last operand copied +0.033" in lines[1]
  cell["prompt_table"] = _program_record([1] * 50 + [0] * 10)  # now clear of both
  lines = summary.paired_row_claims([cell], calib, "exact_match", "exact match", "baselines", kind="programs")
  assert "above in 1/1" in lines[0]
  assert summary.paired_row_claims([cell], calib, "relevance", "relevance", "baselines") == []  # prose only
  table = "\n".join(summary.task_table([cell], calib))
  assert "| baseline: the prompt's last operand copied | – | 0.467 | 0.93 | 0.00 |" in table
