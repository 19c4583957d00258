"""Stitching math against independent computations: closed-form maps (augmented lstsq, polar decomposition, planted
maps), relative representations, the padded-ids control, byte alignment of two segmentations, and programs
analogies parsed back and re-checked (text metrics: test_metrics_text.py)."""

import re

import numpy as np
import pytest

from llmcpu.data import programs
from llmcpu.data.sources import split_for
from llmcpu.errors import UserError
from llmcpu.stitching import analogies, anchors, closed_form


def rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


def random_orthogonal(d: int, seed: int) -> np.ndarray:
  q, r = np.linalg.qr(rng(seed).normal(size=(d, d)))
  return q * np.sign(np.diag(r))


# ------------------------------------------------------------------------------------------------- fit_linear


def test_fit_linear_equals_augmented_lstsq():
  x, y = rng(1).normal(size=(50, 6)), rng(2).normal(size=(50, 4))
  w, b = closed_form.fit_linear(x, y)
  solution = np.linalg.lstsq(np.hstack([x, np.ones((50, 1))]), y, rcond=None)[0]
  np.testing.assert_allclose(w, solution[:6], atol=1e-10)
  np.testing.assert_allclose(b, solution[6], atol=1e-10)
  w0, b0 = closed_form.fit_linear(x, y, bias=False)
  np.testing.assert_allclose(w0, np.linalg.lstsq(x, y, rcond=None)[0], atol=1e-10)
  assert not b0.any()


def test_fit_linear_recovers_a_planted_affine_map():
  x = rng(3).normal(size=(40, 8)).astype(np.float32)
  w_true, b_true = rng(4).normal(size=(8, 5)), rng(5).normal(size=5)
  y = x.astype(np.float64) @ w_true + b_true
  w, b = closed_form.fit_linear(x, y)
  np.testing.assert_allclose(w, w_true, atol=1e-9)
  np.testing.assert_allclose(b, b_true, atol=1e-9)
  out = closed_form.apply(x, w, b)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, y, atol=1e-4)


def test_fit_linear_refuses_underdetermined_mismatched_and_non_finite():
  x, y = rng(6).normal(size=(8, 8)), rng(7).normal(size=(8, 3))
  with pytest.raises(UserError, match="at least Db \\+ bias = 9"):
    closed_form.fit_linear(x, y)
  closed_form.fit_linear(x, y, bias=False)  # 8 rows for 8 unknowns: determined
  with pytest.raises(UserError, match="as many rows"):
    closed_form.fit_linear(x, y[:7])
  x[3, 2] = np.nan
  with pytest.raises(UserError, match="non-finite"):
    closed_form.fit_linear(x, y, bias=False)


# ------------------------------------------------------------------------------------------------- fit_procrustes


def test_fit_procrustes_equals_the_polar_factor_and_the_svd_form():
  x, y = rng(8).normal(size=(30, 5)), rng(9).normal(size=(30, 5))
  r, b = closed_form.fit_procrustes(x, y)
  # Square case: R is the orthogonal polar factor of M = x_cᵀ y_c, M (MᵀM)^(-1/2), computed via eigh.
  m = (x - x.mean(0)).T @ (y - y.mean(0))
  vals, vecs = np.linalg.eigh(m.T @ m)
  np.testing.assert_allclose(r, m @ vecs @ np.diag(vals**-0.5) @ vecs.T, atol=1e-10)
  np.testing.assert_allclose(b, y.mean(0) - x.mean(0) @ r, atol=1e-12)
  # Rectangular cases: U Vᵀ of the thin SVD, orthonormal rows (Db < Da) or columns (Db > Da).
  for db, da in ((3, 6), (6, 3)):
    x, y = rng(db).normal(size=(25, db)), rng(da + 10).normal(size=(25, da))
    r, _ = closed_form.fit_procrustes(x, y, center=False)
    u, _, vt = np.linalg.svd(x.T @ y)
    k = min(db, da)
    np.testing.assert_allclose(r, u[:, :k] @ vt[:k], atol=1e-10)
    gram = r @ r.T if db < da else r.T @ r
    np.testing.assert_allclose(gram, np.eye(k), atol=1e-10)


def test_fit_procrustes_recovers_a_planted_rotation_and_translation():
  q, shift = random_orthogonal(7, seed=11), rng(12).normal(size=7)
  x = rng(13).normal(size=(20, 7))
  r, b = closed_form.fit_procrustes(x, x @ q + shift)
  np.testing.assert_allclose(r, q, atol=1e-10)
  np.testing.assert_allclose(b, shift, atol=1e-10)
  np.testing.assert_allclose(r.T @ r, np.eye(7), atol=1e-12)
  r0, b0 = closed_form.fit_procrustes(x, x @ q, center=False)
  np.testing.assert_allclose(r0, q, atol=1e-10)
  assert not b0.any()


def test_fit_procrustes_beats_random_rotations_on_noisy_data():
  q = random_orthogonal(6, seed=14)
  x = rng(15).normal(size=(200, 6))
  y = x @ q + 0.3 * rng(16).normal(size=(200, 6))
  r, b = closed_form.fit_procrustes(x, y)
  fitted = np.sum((x @ r + b - y) ** 2)
  for seed in range(20):
    other = random_orthogonal(6, seed=100 + seed)
    assert fitted < np.sum((x @ other + (y.mean(0) - x.mean(0) @ other) - y) ** 2)
  assert fitted < np.sum((x @ q - y) ** 2)  # even the planted map scores no better on the noisy sample


# ------------------------------------------------------------------------------------------------- relative


def test_relative_by_hand_in_2d():
  x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
  anchors_2d = np.array([[0.0, 2.0], [3.0, 0.0]])
  s = np.sqrt(0.5)
  np.testing.assert_allclose(closed_form.relative(x, anchors_2d), [[0.0, 1.0], [s, s], [0.0, 0.0]], atol=1e-15)


def test_relative_is_invariant_to_a_shared_rotation_and_scale():
  x, anchor_rows = rng(17).normal(size=(12, 9)), rng(18).normal(size=(5, 9))
  q = random_orthogonal(9, seed=19)
  base = closed_form.relative(x, anchor_rows)
  np.testing.assert_allclose(closed_form.relative(3.0 * x @ q, anchor_rows @ q), base, atol=1e-12)
  # Not invariant to rotating only one side: the test can fail.
  assert np.abs(closed_form.relative(x @ q, anchor_rows) - base).max() > 0.1


# ------------------------------------------------------------------------------------------------- padded_ids


def test_padded_ids_pads_truncates_and_counts():
  rows = [[40, 41, 42], [], [7, 8, 9, 10, 11, 12], [99, 100, 101, 102]]
  out, truncated = closed_form.padded_ids(rows, 4)
  assert out.shape == (4, 4) and out.dtype == np.float32
  expected = np.array([[40, 41, 42, 0], [0, 0, 0, 0], [7, 8, 9, 10], [99, 100, 101, 102]], np.float32)
  np.testing.assert_array_equal(out, expected)
  assert truncated == 1  # a row of exactly ``width`` ids is not truncated
  empty, none = closed_form.padded_ids([], 16)
  assert empty.shape == (0, 16) and none == 0
  big = 2**24 - 1
  assert closed_form.padded_ids([[big]], 2)[0][0, 0] == big
  with pytest.raises(UserError, match="outside"):
    closed_form.padded_ids([[3, -1]], 4)
  with pytest.raises(UserError, match="width"):
    closed_form.padded_ids([[3]], 0)


# ------------------------------------------------------------------------------------------------- align


# "hello world" (11 bytes) in two made-up ISAs: ids are positions in each piece list, bytes their text's length.
PIECES_B = ["<s>", "hel", "lo", " wor", "ld"]  # ends 0, 3, 5, 9, 11
PIECES_A = ["he", "llo", " ", "<sep>", "world", "</s>"]  # ends 2, 5, 6, 6, 11, 11
PB_B = np.array([0, 3, 2, 4, 2], np.int64)
PB_A = np.array([2, 3, 1, 0, 5, 0], np.int64)


def test_align_by_hand_on_two_segmentations_of_hello_world():
  ids_b, ids_a = np.arange(5), np.arange(6)
  assert "".join(p for p in PIECES_B if not p.startswith("<")) == "hello world"
  assert "".join(p for p in PIECES_A if not p.startswith("<")) == "hello world"
  np.testing.assert_array_equal(anchors.token_ends(ids_b, PB_B), [0, 3, 5, 9, 11])
  # <s> covers nothing; "hel" ends in the first l (byte 2) → "llo"; "lo" ends at o (4) → "llo"; " wor" ends at r
  # (8) → "world", not the 0-byte <sep> before it; "ld" ends at d (10) → "world".
  np.testing.assert_array_equal(anchors.align(ids_b, ids_a, PB_B, PB_A), [-1, 1, 1, 4, 4])
  # The other way: "he" → "hel", "llo" → "lo", " " → " wor", <sep> none, "world" → "ld", </s> none.
  np.testing.assert_array_equal(anchors.align(ids_a, ids_b, PB_A, PB_B), [1, 2, 3, -1, 4, -1])
  with pytest.raises(UserError, match="cover 9 and 11 bytes"):
    anchors.align(ids_b[:4], ids_a, PB_B, PB_A)
  with pytest.raises(UserError, match="vocab"):
    anchors.align([0, 5], ids_a, PB_B, PB_A)


def random_segmentation(gen: np.random.Generator, pb: np.ndarray, total: int) -> np.ndarray:
  """Random ids covering exactly ``total`` bytes (0-byte ids anywhere); ``pb`` needs a 1-byte id."""
  ids, covered = [], 0
  while covered < total:
    i = int(gen.integers(len(pb)))
    if covered + pb[i] <= total:
      ids.append(i)
      covered += int(pb[i])
  return np.array(ids)


def test_align_equals_a_byte_by_byte_owner_table():
  gen = rng(20)
  for _ in range(20):
    total = int(gen.integers(1, 60))
    pb_b, pb_a = gen.integers(0, 5, size=30), gen.integers(0, 4, size=30)
    pb_b[0] = pb_a[0] = 1  # a 1-byte piece in each, so every length can be covered
    ids_b, ids_a = random_segmentation(gen, pb_b, total), random_segmentation(gen, pb_a, total)
    owner_a = np.repeat(np.arange(len(ids_a)), pb_a[ids_a])  # owner_a[byte] = index of A's token holding it
    last_b = np.cumsum(pb_b[ids_b]) - 1
    expected = np.where(pb_b[ids_b] > 0, owner_a[np.maximum(last_b, 0)], -1)
    np.testing.assert_array_equal(anchors.align(ids_b, ids_a, pb_b, pb_a), expected)


def test_pairs_stacks_aligned_rows_and_subsamples_deterministically():
  # Hidden state rows name (document, token): 100·doc + token, in B and (negated) in A.
  ids_b = [np.arange(5), np.array([1, 2, 3, 4, 0])]  # document 1 ends in padding (<s> = 0 bytes)
  ids_a = [np.arange(6), np.array([0, 1, 2, 4])]
  hidden_b = [np.array([[100 * d + j, 1.0] for j in range(len(i))]) for d, i in enumerate(ids_b)]
  hidden_a = [np.array([[-(100 * d + k)] for k in range(len(i))]) for d, i in enumerate(ids_a)]
  x, y = anchors.pairs(hidden_b, hidden_a, ids_b, ids_a, PB_B, PB_A, max_pairs=100, seed=0)
  # Document 0 as by hand; document 1: "hel" → "llo" (1), "lo" → 1, " wor" → "world" (3), "ld" → 3, pad dropped.
  np.testing.assert_array_equal(x[:, 0], [1, 2, 3, 4, 100, 101, 102, 103])
  np.testing.assert_array_equal(y[:, 0], [-1, -1, -4, -4, -101, -101, -103, -103])
  x3, y3 = anchors.pairs(hidden_b, hidden_a, ids_b, ids_a, PB_B, PB_A, max_pairs=3, seed=7)
  assert x3.shape == (3, 2) and y3.shape == (3, 1)
  assert set(x3[:, 0]) <= set(x[:, 0]) and list(x3[:, 0]) == sorted(x3[:, 0])
  partner = dict(zip(x[:, 0], y[:, 0], strict=True))
  assert all(partner[b] == a for b, a in zip(x3[:, 0], y3[:, 0], strict=True))
  again = anchors.pairs(hidden_b, hidden_a, ids_b, ids_a, PB_B, PB_A, max_pairs=3, seed=7)
  np.testing.assert_array_equal(again[0], x3)
  with pytest.raises(UserError, match="one row per id"):
    anchors.pairs([hidden_b[0][:4]], hidden_a[:1], ids_b[:1], ids_a[:1], PB_B, PB_A, max_pairs=3, seed=0)


# ------------------------------------------------------------------------------------------------- analogies

_INPUT = re.compile(r"([a-z0-9]+)(?: ([a-z0-9 -]+?))? =")  # "<task> <operands> =", as programs writes inputs


def operands(text: str, task: str) -> list:
  """The operands of one programs input, parsed back from the string alone."""
  m = _INPUT.fullmatch(text)
  assert m and m[1] == task, text
  if task == "words2num":
    value = programs.words2num(m[2])
    assert programs.num2words(value) == m[2]
    return [value]
  if task == "count":
    letter, word_in, s = m[2].split(" ")
    assert word_in == "in"
    return [letter, s]
  parts = m[2].split(" ")
  return [int(p) if p.isdigit() else p for p in parts]


def test_analogies_hold_and_use_held_out_operands():
  made = analogies.make(200, seed=0)
  assert len(made) == 200 and len({x.texts for x in made}) == 200
  assert {(x.task, x.slot) for x in made} == set(analogies.SLOTS)
  pools = programs.number_pools()["test"]
  held_out = {n for numbers in pools.values() for n in numbers}
  for x in made:
    assert x.answer not in (x.a, x.b, x.c) and len(set(x.texts)) == 4
    ops = [operands(t, x.task) for t in x.texts]
    rest = [[o for i, o in enumerate(op) if i != x.slot] for op in ops]
    va, vb, vc, vd = (op[x.slot] for op in ops)
    if x.kind == "shift":
      assert va - vb == vd - vc and va != vb
      assert rest[0] == rest[1] == rest[2] == rest[3]
      numbers = [op for row in ops for op in row]
      assert all(isinstance(n, int) and 0 <= n <= 9999 and n in held_out for n in numbers), x
      assert all(str(n) in t for n, t in zip((va, vb, vc, vd), x.texts, strict=True)) or x.task == "words2num"
    else:
      assert rest[0] == rest[1] and rest[2] == rest[3]
      if len(va) == 1:  # the counted letter: x in a and the answer, y in b and c
        assert va == vd != vb == vc
      else:
        (p,) = [i for i in range(len(va)) if va[i] != vb[i]]  # a and b differ in exactly one position
        assert len(va) == len(vb) and len(vc) == len(vd) and p < len(vc)
        assert [i for i in range(len(vc)) if vc[i] != vd[i]] == [p]
        assert vc[p] == vb[p] and vd[p] == va[p]
      alphabet = programs.COUNT_LETTERS if x.task == "count" else programs.LETTERS
      strings = [op for row in ops for op in row if isinstance(op, str) and len(op) > 1]
      assert strings and all(split_for(f"str:{s}") == "test" for s in strings), x
      assert all(3 <= len(s) <= 10 and set(s) <= set(alphabet) for s in strings)


def test_analogies_are_deterministic_per_seed():
  first = analogies.make(40, seed=3)
  assert first == analogies.make(40, seed=3)
  assert first[:10] == analogies.make(10, seed=3)
  assert first != analogies.make(40, seed=4)
  assert analogies.make(40, seed=3, split="validation") != first
  with pytest.raises(UserError, match="split"):
    analogies.make(5, seed=0, split="dev")


def test_nearest_excludes_the_inputs():
  candidates = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
  query = np.array([1.0, 0.05])
  cos = candidates @ query / np.linalg.norm(candidates, axis=1) / np.linalg.norm(query)
  assert analogies.nearest(query, candidates, []) == int(np.argmax(cos)) == 0
  assert analogies.nearest(query, candidates, [0]) == 1
  assert analogies.nearest(query, candidates, [0, 1]) == 3
  with pytest.raises(UserError, match="excluded"):
    analogies.nearest(query, candidates, range(5))


def test_analogy_baselines_by_hand_on_a_2d_table():
  # rows: a, b, c, answer, distractor. Cosines by hand (a, b, c are never candidates):
  #   c only  (1, 1): answer 3/√10 = 0.95, distractor 0       → the answer: the baseline already "solves" it
  #   b only  (0, 1): answer 1/√5 = 0.45, distractor 1/√2 = 0.71 → the distractor
  #   analogy (1, 0) − (0, 1) + (1, 1) = (2, 0): answer 2/√5 = 0.89, distractor −0.71 → the answer
  space = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [-1.0, 1.0]])
  ia, ib, ic, ians = (np.array([i]) for i in range(4))
  got = analogies.queries(space, ia, ib, ic, ians)
  np.testing.assert_array_equal(got["analogy"], [[2.0, 0.0]])
  excluded = np.array([[0, 1, 2]])
  hits = {q: analogies.top1_hits(v, space, excluded, ians)[0] for q, v in got.items()}
  assert hits == {"analogy": 1.0, "c_only": 1.0, "b_only": 0.0, "oracle": 1.0}
  # the query e(a) would find a itself without the exclusion; with it, the answer (2/√5 against distractor −1/√2)
  assert analogies.top1_hits(space[[0]], space, excluded, ians)[0] == 1.0


def test_template_floor_by_hand():
  from collections import Counter

  from llmcpu.stitching import readout

  refs = ["add 12 5 =", "copy cat =", "count a in abcab =", "words2num seven =", "sort dcba ="]
  floor = readout.template_floor(refs, seed=3)
  templates = floor["templates"]
  assert [t.split(" ", 1)[0] for t in templates] == [r.split(" ", 1)[0] for r in refs]  # the task right
  # the program format: the task's operand count (words2num writes its number in any number of words)
  for t, r in zip(templates, refs, strict=True):
    assert t.endswith(" =") and (len(t.split()) == len(r.split()) or r.startswith("words2num"))
  assert readout.template_floor(refs, seed=3)["templates"] == templates and templates != refs

  def f1(h: str, r: str) -> float:  # multiset token F1, by hand
    common = sum((Counter(h.split()) & Counter(r.split())).values())
    return 0.0 if common == 0 else 2 * common / (len(h.split()) + len(r.split()))

  assert floor["token_f1"] == pytest.approx(np.mean([f1(t, r) for t, r in zip(templates, refs, strict=True)]))
  assert floor["token_f1"] > 0.3  # the task word and "=" always match
  assert 0 < floor["chrf"] < 100
  assert readout.above_floor(70.0, 40.0, 100.0) == pytest.approx(0.5)
  assert readout.above_floor(0.25, 0.5, 1.0) == pytest.approx(-0.5) and readout.above_floor(1.0, 1.0, 1.0) is None
  with pytest.raises(UserError, match="not a program input"):
    readout.template_floor(["the cat sat"])
