"""Text metrics (``llmcpu.metrics.text``) against sacrebleu recomputed here and counts by hand."""

import numpy as np
import pytest
import sacrebleu

from llmcpu.metrics import text as text_metrics

HYPS = ["the cat sat", "a a b", "a a b", "", "x", "dog", "  same  "]
REFS = ["the cat sat on", "a b b", "a a c", "", "", "cat", "same"]


def test_bleu_equals_sacrebleu_and_is_100_on_identical_corpora():
  refs = ["the quick brown fox jumps over the lazy dog", "hello world and all who inhabit it", "add 12 5 ="]
  assert text_metrics.bleu(refs, refs) == pytest.approx(100.0)
  hyps = ["the quick brown fox jumped over a lazy dog", "hello there world", "add 12 6 ="]
  assert text_metrics.bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-12)
  assert 0 < text_metrics.bleu(hyps, refs) < 100
  items = text_metrics.bleu_items(hyps, refs)
  expected = [sacrebleu.corpus_bleu([h], [[r]]).score for h, r in zip(hyps, refs, strict=True)]
  np.testing.assert_allclose(items, expected, atol=1e-12)
  assert text_metrics.bleu([], []) == 0.0


def test_token_f1_and_exact_match_by_hand():
  # P, R by hand: 3/3 and 3/4 → 6/7; multisets {a,a,b} vs {a,b,b} share a once and b once → 2/3; {a,a,b} vs
  # {a,a,c} share a twice → 2/3; both empty → 1; one empty → 0; disjoint → 0; equal words → 1.
  expected = [6 / 7, 2 / 3, 2 / 3, 1.0, 0.0, 0.0, 1.0]
  np.testing.assert_allclose(text_metrics.token_f1_items(HYPS, REFS), expected, atol=1e-15)
  assert text_metrics.token_f1(HYPS, REFS) == pytest.approx(np.mean(expected), abs=1e-15)
  # As sets, "a a b" and "a b b" are the same set; {a,b} vs {a,c} share one of two → 1/2.
  by_sets = [6 / 7, 1, 1 / 2, 1, 0, 0, 1]
  np.testing.assert_allclose(text_metrics.token_f1_items(HYPS, REFS, sets=True), by_sets, atol=1e-15)
  np.testing.assert_array_equal(text_metrics.exact_match_items(HYPS, REFS), [0, 0, 0, 1, 0, 0, 1])
  assert text_metrics.exact_match(HYPS, REFS) == pytest.approx(2 / 7)
  assert text_metrics.token_f1([], []) == 0.0 and text_metrics.exact_match([], []) == 0.0
  with pytest.raises(ValueError, match="one reference per hypothesis"):
    text_metrics.token_f1(HYPS, REFS[:-1])


def test_chrf_equals_sacrebleu():
  refs = ["the quick brown fox", "hello world"]
  assert text_metrics.chrf(refs, refs) == pytest.approx(100.0)
  hyps = ["the quick brown cat", "hello word"]
  assert text_metrics.chrf(hyps, refs) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-12)


def test_cosine_rows_by_hand():
  a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
  b = np.array([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0], [-1.0, 0.0]])
  np.testing.assert_allclose(text_metrics.cosine_rows(a, b), [0.0, 1.0, 0.0, -1.0], atol=1e-15)


def test_empty_and_mismatched_corpora():
  assert text_metrics.chrf([], []) == 0.0 and text_metrics.bleu([], []) == 0.0
  with pytest.raises(ValueError, match="one reference per hypothesis"):
    text_metrics.chrf(["a"], ["a", "b"])
  with pytest.raises(ValueError, match="one reference per hypothesis"):
    text_metrics.exact_match_items(["a", "b"], ["a"])


def test_program_table_counts_exact_answers_as_the_text_metric_does():
  from llmcpu.crosseval import coherence  # the programs table reads exact match from llmcpu.metrics.text

  answers, targets, tasks = [" 42", "7", "abc", "x y"], ["42", "8", "abc", "x"], ["add", "add", "sort", "sort"]
  # by hand: exact after strip 1, 0, 1, 0; well-formed (an integer for add, lowercase letters for sort) 1, 1, 1, 0
  expected = np.array([[1, 1, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]], np.float64)
  np.testing.assert_array_equal(coherence.program_table(answers, targets, tasks), expected)
  assert coherence.program_table([], [], []).shape == (0, 3)
