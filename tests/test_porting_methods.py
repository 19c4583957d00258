"""Donor porting methods (omp, procrustes) against independent numpy: a naive OMP written out here, exact recovery
of a k-sparse signal, numpy's SVD Procrustes; exact ports to a permuted ISA; one-line refusals."""

import re

import numpy as np
import pytest
from conftest import PORTING_HELD_OUT, PORTING_TEXTS, PORTING_TINY

from llmcpu import models, porting, specials
from llmcpu.errors import UserError
from llmcpu.porting import donor

FIRST = specials.FIRST_REGULAR_ID


def naive_omp(atoms: np.ndarray, target: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
  """OMP of one target, one python loop per step: argmax |<r, a/‖a‖>| over unused atoms, then lstsq on the picked."""
  picked, residual, coef = [], target.copy(), np.zeros(0)
  for _ in range(k):
    best, best_score = -1, -1.0
    for i, a in enumerate(atoms):
      score = abs(float(residual @ a) / np.linalg.norm(a))
      if i not in picked and score > best_score:
        best, best_score = i, score
    picked.append(best)
    coef = np.linalg.lstsq(atoms[picked].T, target, rcond=None)[0]
    residual = target - atoms[picked].T @ coef
  return picked, coef


def test_omp_codes_equal_a_naive_omp():
  rng = np.random.default_rng(0)
  atoms, targets = rng.normal(size=(60, 16)), rng.normal(size=(25, 16))
  index, coef = donor.omp_codes(atoms, targets, 5)
  assert index.shape == coef.shape == (25, 5)
  for m in range(25):
    picked, want = naive_omp(atoms, targets[m], 5)
    assert index[m].tolist() == picked
    np.testing.assert_allclose(coef[m], want, rtol=1e-9, atol=1e-12)


def test_omp_recovers_a_k_sparse_signal_exactly():
  rng = np.random.default_rng(1)
  atoms = rng.normal(size=(80, 40))
  support = np.array([[3, 17, 55], [0, 41, 79], [10, 11, 12]])
  weights = rng.uniform(1.0, 2.0, size=(3, 3)) * rng.choice([-1, 1], size=(3, 3))
  targets = np.einsum("mk,mkd->md", weights, atoms[support])
  index, coef = donor.omp_codes(atoms, targets, 3)
  for m in range(3):
    order = np.argsort(index[m])
    assert index[m][order].tolist() == sorted(support[m].tolist())
    np.testing.assert_allclose(coef[m][order], weights[m][np.argsort(support[m])], rtol=1e-9)
  index, coef = donor.omp_codes(atoms, targets, 6)  # more atoms than the signal needs: the extra ones get ~0
  np.testing.assert_allclose(np.einsum("mk,mkd->md", coef, atoms[index]), targets, atol=1e-9)


def split(a, b):
  """Anchors and the missing pieces, written out: same text in both ISAs (an ASCII byte piece only through what each
  ISA emits for its character), and B's regular non-byte pieces without one."""
  pairs = {}
  for j, piece in enumerate(b.pieces):
    if j >= FIRST and piece in a.pieces and not re.fullmatch(r"<0x[0-7][0-9A-F]>", piece):
      pairs[j] = a.pieces.index(piece)
  for c in map(chr, range(128)):
    if len(b.encode(c)) == len(a.encode(c)) == 1:
      pairs[b.encode(c)[0]] = a.encode(c)[0]
  ids_b = sorted(pairs)
  missing = [j for j in range(FIRST, b.vocab_size) if j not in pairs and not re.fullmatch(r"<0x..>", b.pieces[j])]
  return np.array(ids_b), np.array([pairs[j] for j in ids_b]), missing


def test_omp_rows_apply_the_donor_codes_to_the_source_rows(porting_isas):
  a, b = porting_isas["small"], porting_isas["big"]
  rng = np.random.default_rng(2)
  src, don = rng.normal(size=(a.vocab_size, 12)).astype(np.float32), rng.normal(size=(b.vocab_size, 12))
  rows, counts = porting.omp_rows(src, don.astype(np.float32), a, b, k=4)
  ids_b, ids_a, missing = split(a, b)
  assert counts == {"special": FIRST, "copied": 400 - FIRST, "omp": 200} and len(missing) == 200
  np.testing.assert_array_equal(rows[:FIRST], src[:FIRST])
  np.testing.assert_array_equal(rows[ids_b], src[ids_a])  # shared pieces: bit-exact copies, as align
  atoms = don.astype(np.float32).astype(np.float64)[ids_b]
  for j in missing[:20]:
    picked, coef = naive_omp(atoms, don.astype(np.float32).astype(np.float64)[j], 4)
    want = (coef @ src.astype(np.float64)[ids_a][picked]).astype(np.float32)
    np.testing.assert_allclose(rows[j], want, rtol=1e-5, atol=1e-6)


def test_procrustes_rows_equal_numpys_svd_solution(porting_isas):
  a, b = porting_isas["small"], porting_isas["big"]
  rng = np.random.default_rng(3)
  src = rng.normal(size=(a.vocab_size, 12))
  rotation = np.linalg.qr(rng.normal(size=(12, 12)))[0]
  don = rng.normal(size=(b.vocab_size, 12))
  ids_b, ids_a, missing = split(a, b)
  don[ids_b] = (src[ids_a] - 0.5) @ rotation.T + 0.01 * rng.normal(size=(len(ids_b), 12))  # a rotated copy
  rows, counts = porting.procrustes_rows(src, don, a, b)
  assert counts == {"special": FIRST, "copied": 400 - FIRST, "procrustes": 200}
  x, y = don[ids_b], src[ids_a]
  u, _, vt = np.linalg.svd((x - x.mean(0)).T @ (y - y.mean(0)))  # Schönemann's solution written out
  want = (don[missing] - x.mean(0)) @ (u @ vt) + y.mean(0)
  np.testing.assert_allclose(rows[missing], want, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(u @ vt, rotation, atol=0.05)  # and it finds the rotation that made the donor
  np.testing.assert_array_equal(rows[ids_b], src[ids_a])


def test_ports_to_and_from_bytes_follow_what_each_isa_emits(porting_isas):
  """bpe → byte: every piece of B is a byte; an ASCII byte takes the row of the character piece A emits for it (A's
  byte-fallback piece for that character is never emitted, so never trained), other bytes A's byte piece — the only
  copies. byte → bpe: B's character pieces take A's byte rows, B's never-emitted ASCII byte pieces A's UNK row; omp
  anchors on the characters and codes only B's multi-byte pieces."""
  a, b = porting_isas["small"], porting_isas["byte"]
  rng = np.random.default_rng(4)
  t, don = rng.normal(size=(a.vocab_size, 6)), rng.normal(size=(b.vocab_size, 6))
  assert all(re.fullmatch(r"<0x[0-9A-F]{2}>", p) for p in b.pieces[FIRST:]) and b.vocab_size == FIRST + 256
  rows, counts = porting.align_rows(t, a, b)
  by_char = 0
  for byte in range(256):
    j, piece = FIRST + byte, f"<0x{byte:02X}>"
    emitted = a.encode(chr(byte)) if byte < 0x80 else [a.pieces.index(piece)]
    assert len(emitted) == 1  # every ASCII character is one id of A: a character piece or a byte piece
    np.testing.assert_array_equal(rows[j], t[emitted[0]])
    by_char += a.pieces[emitted[0]] != piece
  assert a.pieces[a.encode("a")[0]] == "a" and not np.array_equal(rows[FIRST + 0x61], t[a.pieces.index("<0x61>")])
  assert by_char > 80 and counts == {"special": FIRST, "copied": 256 - by_char, "byte": by_char, "unused": 0,
                                     "fvt": 0, "fallback": 0}  # fmt: skip
  np.testing.assert_array_equal(porting.fvt_rows(t, a, b)[0], rows)  # nothing to average: fvt is align
  for method_rows in (porting.omp_rows(t, don, a, b, 4), porting.procrustes_rows(t, don, a, b)):
    np.testing.assert_array_equal(method_rows[0], rows)  # nothing missing: the donor methods keep align's rows
    assert list(method_rows[1].values())[-1] == 0

  tb = rng.normal(size=(b.vocab_size, 6))
  rows, counts = porting.align_rows(tb, b, a)
  for c in map(chr, range(0x80)):
    (j,) = a.encode(c)
    if a.pieces[j] == c:  # A's character piece: B's byte row; A's byte piece for it is never emitted: UNK's row
      np.testing.assert_array_equal(rows[j], tb[FIRST + ord(c)])
      np.testing.assert_array_equal(rows[a.pieces.index(f"<0x{ord(c):02X}>")], tb[specials.UNK_ID])
  assert counts["unused"] == by_char and counts["copied"] == 256 - by_char
  ids_b, ids_a, missing = split(b, a)
  assert len(missing) == a.vocab_size - FIRST - 256 - by_char  # B's multi-byte pieces
  assert np.isin(porting.missing_ids(b, a, porting.shared_ids(b, a)[0]), missing).all()
  omp, _ = porting.omp_rows(tb, don_a := rng.normal(size=(a.vocab_size, 6)), b, a, 3)
  np.testing.assert_array_equal(np.delete(omp, missing, axis=0), np.delete(rows, missing, axis=0))
  for j in missing[:10]:
    picked, coef = naive_omp(don_a[ids_b], don_a[j], 3)
    np.testing.assert_allclose(omp[j], coef @ tb[ids_a][picked], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", [*porting.ROW_METHODS, "distill"])
@pytest.mark.parametrize("tied", [True, False])
def test_every_method_ports_a_permuted_isa_exactly(porting_isas, method, tied):
  from llmcpu.porting import distill

  a, b = porting_isas["small"], porting_isas["perm"]
  source = models.create("decoder", "tiny", vocab_size=a.vocab_size, seed=0, tie_embeddings=tied, **PORTING_TINY)
  target = models.create("decoder", "tiny", vocab_size=b.vocab_size, seed=1, tie_embeddings=tied, **PORTING_TINY)
  native = models.create("decoder", "tiny", vocab_size=b.vocab_size, seed=2, tie_embeddings=tied, **PORTING_TINY)
  porting.transplant(source, target, a, b, "align" if method == "distill" else method, donor=native)
  if method == "distill":  # every piece is shared: nothing to fit, nothing moves
    docs = [np.asarray(b.encode(t), np.int64) for t in PORTING_TEXTS[:3]]
    assert distill.distill(source, target, a, b, docs, tokens=500)["rows"] == 0
  ids_a = a.encode(PORTING_HELD_OUT)[:48]
  ids_b = b.encode(PORTING_HELD_OUT)[:48]
  assert ids_b == b.perm[ids_a].tolist()
  logits_a, logits_b = np.asarray(source(np.array([ids_a]))), np.asarray(target(np.array([ids_b])))
  np.testing.assert_array_equal(logits_b[..., b.perm], logits_a)


@pytest.mark.parametrize("tied", [True, False])
def test_donor_methods_port_every_vocabulary_parameter(porting_isas, tied):
  a, b = porting_isas["small"], porting_isas["big"]
  source = models.create("decoder", "tiny", vocab_size=a.vocab_size, seed=0, tie_embeddings=tied, **PORTING_TINY)
  native = models.create("decoder", "tiny", vocab_size=b.vocab_size, seed=2, tie_embeddings=tied, **PORTING_TINY)
  target, provenance = porting.port(source, a, b, "omp", donor=native, atoms=3)
  assert provenance["counts"] == {"special": FIRST, "copied": 400 - FIRST, "omp": 200} and provenance["atoms"] == 3
  want, _ = porting.omp_rows(np.asarray(source.embed.table[...]), np.asarray(native.embed.table[...]), a, b, 3)
  np.testing.assert_array_equal(np.asarray(target.embed.table[...]), want)
  if not tied:
    head = np.asarray(source.head.kernel[...]).T
    want, _ = porting.omp_rows(head, np.asarray(native.head.kernel[...]).T, a, b, 3)
    np.testing.assert_array_equal(np.asarray(target.head.kernel[...]).T, want)


def test_procrustes_from_a_donor_of_another_width_is_exact(porting_isas):
  """A donor 20 wide whose rows are B's true 12-wide rows through a map with orthonormal rows (plus a shift): the
  semi-orthogonal Procrustes fitted on the shared pieces undoes it, so every missing row comes back exactly."""
  a, b = porting_isas["small"], porting_isas["big"]
  rng = np.random.default_rng(5)
  src = rng.normal(size=(a.vocab_size, 12))
  ids_b, ids_a, missing = split(a, b)
  true = rng.normal(size=(b.vocab_size, 12))
  true[ids_b] = src[ids_a]
  widen = np.linalg.qr(rng.normal(size=(20, 12)))[0].T  # [12, 20], orthonormal rows
  don = true @ widen + rng.normal(size=20)
  rows, counts = porting.procrustes_rows(src, don, a, b)
  assert rows.shape == (b.vocab_size, 12) and counts["procrustes"] == len(missing) == 200
  np.testing.assert_allclose(rows[missing], true[missing], atol=1e-9)
  np.testing.assert_array_equal(rows[ids_b], src[ids_a])


def test_omp_from_a_donor_of_another_width(porting_isas):
  """The codes come from the donor's 20-wide rows (a naive OMP there), the rows from the source's 12-wide ones."""
  a, b = porting_isas["small"], porting_isas["big"]
  rng = np.random.default_rng(6)
  src, don = rng.normal(size=(a.vocab_size, 12)), rng.normal(size=(b.vocab_size, 20))
  rows, _ = porting.omp_rows(src, don, a, b, k=3)
  ids_b, ids_a, missing = split(a, b)
  assert rows.shape == (b.vocab_size, 12)
  for j in missing[:10]:
    picked, coef = naive_omp(don[ids_b], don[j], 3)
    np.testing.assert_allclose(rows[j], coef @ src[ids_a][picked], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", porting.DONOR_METHODS)
def test_a_wider_tied_donor_ports_an_untied_source(porting_isas, method):
  """Only the donor's vocabulary rows are read: a 64-wide tied donor lends its table to both the embedding and the
  untied head of a 32-wide source."""
  a, b = porting_isas["small"], porting_isas["big"]
  source = models.create("decoder", "tiny", vocab_size=a.vocab_size, seed=0, tie_embeddings=False, **PORTING_TINY)
  wide = models.create("decoder", "tiny", vocab_size=b.vocab_size, seed=3, **{**PORTING_TINY, "d_model": 64})
  target, provenance = porting.port(source, a, b, method, donor=wide, atoms=3)
  table = np.asarray(wide.embed.table[...])
  by_method = dict(
    omp=lambda t: porting.omp_rows(t, table, a, b, 3), procrustes=lambda t: porting.procrustes_rows(t, table, a, b)
  )
  want, counts = by_method[method](np.asarray(source.embed.table[...]))
  np.testing.assert_array_equal(np.asarray(target.embed.table[...]), want)
  want, _ = by_method[method](np.asarray(source.head.kernel[...]).T)
  np.testing.assert_array_equal(np.asarray(target.head.kernel[...]).T, want)
  assert provenance["counts"] == counts


def test_donor_refusals(porting_isas):
  a, b = porting_isas["small"], porting_isas["big"]
  source = models.create("decoder", "tiny", vocab_size=400, seed=0, **PORTING_TINY)
  for method in porting.DONOR_METHODS:
    with pytest.raises(UserError, match=f"method {method} needs a donor CPU trained natively on ISA bpe600"):
      porting.port(source, a, b, method)
  with pytest.raises(UserError, match="donor CPU has vocab_size 400, not ISA bpe600's 600"):
    porting.port(source, a, b, "omp", donor=source)
  native = models.create("decoder", "tiny", vocab_size=600, seed=0, **PORTING_TINY)
  with pytest.raises(UserError, match="1 ≤ k ≤ the 277 shared pieces, got k=0"):
    porting.port(source, a, b, "omp", donor=native, atoms=0)
  with pytest.raises(UserError, match="unknown porting method 'nope'"):
    porting.port(source, a, b, "nope", donor=native)


# ---------------------------------------------------------------------------------------------------------------
# distill: only B's new rows train, to match the source's hidden states on the same text.
# ---------------------------------------------------------------------------------------------------------------


def params(model) -> dict:
  from flax import nnx

  return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("tied", [True, False])
def test_distill_moves_only_the_new_rows_and_lowers_its_loss(porting_isas, tied):
  from llmcpu.porting import distill

  a, b = porting_isas["small"], porting_isas["big"]
  cfg = {**PORTING_TINY, "num_layers": 2}
  source = models.create("decoder", "tiny", vocab_size=a.vocab_size, seed=0, tie_embeddings=tied, **cfg)
  target, _ = porting.port(source, a, b, "align")
  before = params(target)
  docs = [np.asarray(b.encode(t), np.int64) for t in PORTING_TEXTS[:10]]
  report = distill.distill(source, target, a, b, docs, tokens=1000, length=32, batch=4, learning_rate=0.002)
  after = params(target)
  new = split(a, b)[2]  # B's pieces A lacks (byte pieces keep align's rows)
  assert report["rows"] == len(new) == 200 and 1000 <= report["tokens"] < 1000 + 4 * 32
  for name, value in before.items():
    if name != "embed/table":
      np.testing.assert_array_equal(after[name], value, err_msg=name)  # the body and an untied head: untouched
  old = np.setdiff1d(np.arange(b.vocab_size), new)
  np.testing.assert_array_equal(after["embed/table"][old], before["embed/table"][old])  # specials + shared rows
  moved = np.abs(after["embed/table"][new] - before["embed/table"][new]).max(axis=1) > 0
  assert moved.mean() > 0.3  # the new pieces that occur in the windows did train
  assert report["loss_after"] < 0.9 * report["loss_before"]  # on the same windows (0.83 → 0.63 when written)
  again, _ = porting.port(source, a, b, "align")
  distill.distill(source, again, a, b, docs, tokens=1000, length=32, batch=4, learning_rate=0.002)
  np.testing.assert_array_equal(params(again)["embed/table"], after["embed/table"])  # same seed → same bits


def test_distill_pairs_positions_where_both_segmentations_end(porting_isas):
  from llmcpu.porting import distill

  a, b = porting_isas["small"], porting_isas["big"]
  window = np.asarray(b.encode(PORTING_HELD_OUT[:200]), np.int64)
  ids_a, pos_b, pos_a = distill.pair(window, a, b, 1000)
  assert a.decode(ids_a.tolist()) == PORTING_HELD_OUT[:200] and len(pos_b) == len(pos_a) > 10
  for i, j in zip(pos_b, pos_a, strict=True):  # the same text read up to there, written out independently
    assert b.decode(window[: i + 1].tolist()) == a.decode(ids_a[: j + 1].tolist())
  every = {len(a.decode(ids_a[: j + 1].tolist())) for j in range(len(ids_a))}
  assert len(pos_b) == len(every & {len(b.decode(window[: i + 1].tolist())) for i in range(len(window))})


def test_tapped_final_states_are_the_decoders_hidden_states():
  import jax.numpy as jnp

  model = models.create("decoder", "tiny", vocab_size=64, seed=0, **{**PORTING_TINY, "num_layers": 3})
  ids = np.arange(40, 64)[None] % 64
  middle, last = model.decoder.tapped(model.embed_ids(ids), 3)
  np.testing.assert_allclose(np.asarray(last), np.asarray(model.hidden(ids)), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(model.decoder.final_norm(middle)), np.asarray(last), rtol=1e-6, atol=1e-6)
  assert not jnp.allclose(model.decoder.tapped(model.embed_ids(ids), 1)[0], middle)


def test_distill_refuses_an_encoder(porting_isas):
  from llmcpu.porting import distill

  a, b = porting_isas["small"], porting_isas["big"]
  enc = models.create("encoder", "tiny", vocab_size=a.vocab_size, seed=0, **PORTING_TINY)
  with pytest.raises(UserError, match="method distill ports decoders only"):
    distill.distill(enc, enc, a, b, [])
