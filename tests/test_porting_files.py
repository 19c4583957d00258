"""Porting to and from ISAs read from tokenizer files (``hf:``): specials by role, pieces compared by their bytes.

References are independent of llmcpu's piece tables: GPT-2's byte↔character table written out here (the published
``bytes_to_unicode``), the tokenizers library's own ids, and an exact symmetry (a tokenizer file whose ids are a
permutation of another's: an aligned port is the same CPU with its rows permuted).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import PORTING_HELD_OUT, PORTING_TINY, write_docs
from flax import nnx
from test_external_isas import EOT, byte_level_bpe
from tokenizers import Tokenizer

from llmcpu import compilers, experiments, models, porting, specials

FIRST = specials.FIRST_REGULAR_ID


def gpt2_bytes_to_unicode() -> dict[int, str]:
  """GPT-2's published byte → printable character table (encoder.py's ``bytes_to_unicode``)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs), strict=True))


def permuted_file(src: str, dst: str, seed: int, renamed: int | None = None) -> np.ndarray:
  """A copy of ``src``'s tokenizer.json with ids renamed by a random permutation (merges name pieces, not ids, so
  it encodes the same text to renamed ids) of all its ids, or of the first ``renamed``; returns perm with new id =
  perm[old id]."""
  spec = json.loads(open(os.path.join(src, "tokenizer.json")).read())
  n = len(spec["model"]["vocab"])
  k = n if renamed is None else renamed
  perm = np.concatenate([np.random.default_rng(seed).permutation(k), np.arange(k, n)])
  spec["model"]["vocab"] = {p: int(perm[i]) for p, i in spec["model"]["vocab"].items()}
  for t in spec["added_tokens"]:
    t["id"] = int(perm[t["id"]])
  os.makedirs(dst, exist_ok=True)
  with open(os.path.join(dst, "tokenizer.json"), "w") as f:
    json.dump(spec, f)
  return perm


@pytest.fixture(scope="module")
def isas(tmp_path_factory, porting_isas) -> dict:
  root = tmp_path_factory.mktemp("porting_files")
  gpt = byte_level_bpe(str(root / "gpt"))
  perm = permuted_file(gpt, str(root / "gpt-perm"), seed=5)
  half = permuted_file(gpt, str(root / "gpt-half"), seed=6, renamed=200)
  return {
    "gpt": compilers.train(f"hf:{gpt}"),
    "gpt-perm": compilers.train(f"hf:{root / 'gpt-perm'}"),
    "perm": perm,
    "gpt-half": compilers.train(f"hf:{root / 'gpt-half'}"),
    "half": half,
    "dir": gpt,
    "small": porting_isas["small"],
  }


def test_piece_bytes_of_a_byte_level_file_follow_gpt2s_table(isas):
  comp, to_byte = isas["gpt"], {c: b for b, c in gpt2_bytes_to_unicode().items()}
  direct = Tokenizer.from_file(os.path.join(isas["dir"], "tokenizer.json"))
  for i in range(comp.vocab_size):
    piece = direct.id_to_token(i)
    want = None if piece == EOT else bytes(to_byte[c] for c in piece)
    assert comp.piece_raw[i] == want, (i, piece)


def test_isa_overlap_of_files_counts_the_ids_a_renaming_keeps(isas):
  for name, perm in (("gpt-perm", isas["perm"]), ("gpt-half", isas["half"])):  # all ids renamed; the first 200
    kept = np.mean(perm == np.arange(len(perm)))
    assert compilers.isa_overlap(isas["gpt"], isas[name]) == pytest.approx(kept)
  assert np.mean(isas["half"] == np.arange(len(isas["half"]))) > 0.4
  assert compilers.isa_overlap(isas["gpt"], isas["gpt"]) == 1.0


def test_align_between_files_that_differ_only_in_ids_is_the_same_cpu(isas):
  a, b, perm = isas["gpt"], isas["gpt-perm"], isas["perm"]
  ids_a = np.array(a.encode(PORTING_HELD_OUT[:200])[:64])
  np.testing.assert_array_equal(b.encode(PORTING_HELD_OUT[:200])[:64], perm[ids_a])  # the renamed file really renames
  model = models.create("decoder", "tiny", vocab_size=a.vocab_size, seed=1, tie_embeddings=False, **PORTING_TINY)
  ported, provenance = porting.port(model, a, b, "align")
  assert provenance["counts"] == {"special": 1, "copied": a.vocab_size - 1, "byte": 0, "unused": 0, "fvt": 0,
                                  "fallback": 0}  # fmt: skip
  before, after = params(model), params(ported)
  assert sorted(before) == sorted(after)
  for path, value in before.items():  # vocabulary rows moved by perm, bit for bit; every other parameter copied
    axes = [k for k, n in enumerate(value.shape) if n == a.vocab_size]
    want = np.moveaxis(np.moveaxis(value, axes[0], 0)[np.argsort(perm)], 0, axes[0]) if axes else value
    np.testing.assert_array_equal(after[path], want, err_msg=str(path))
  assert len([p for p in before if a.vocab_size in before[p].shape]) == 2  # the embedding and the untied head
  logits_a = np.asarray(model(ids_a[None]))[0]
  logits_b = np.asarray(ported(perm[ids_a][None]))[0]
  np.testing.assert_allclose(logits_b[:, perm], logits_a, rtol=1e-6, atol=1e-6)


def params(model) -> dict:
  return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_fvt_from_the_projects_isa_into_a_byte_level_file_by_hand(isas):
  a, b = isas["small"], isas["gpt"]
  table = np.random.default_rng(0).normal(size=(a.vocab_size, 8)).astype(np.float32)
  rows, counts = porting.fvt_rows(table, a, b)
  to_byte = {c: x for x, c in gpt2_bytes_to_unicode().items()}
  direct = Tokenizer.from_file(os.path.join(isas["dir"], "tokenizer.json"))

  def mean(ids):
    return table[list(ids)].astype(np.float64).mean(axis=0).astype(np.float32)

  regular_a = np.arange(FIRST, a.vocab_size)
  for j in range(b.vocab_size):
    piece = direct.id_to_token(j)
    if piece == EOT:  # GPT-2's one special is BOS and EOS: A's EOS row
      want = table[specials.EOS_ID]
    else:
      raw = bytes(to_byte[c] for c in piece)
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError:  # part of a character: A's byte pieces of its bytes
        want = mean(a.pieces.index(f"<0x{x:02X}>") for x in raw)
      else:
        ids = a.encode(text)
        want = mean(ids) if min(ids) >= FIRST else mean(regular_a)
    np.testing.assert_array_equal(rows[j], want, err_msg=f"id {j} {piece!r}")
  assert sum(counts.values()) == b.vocab_size and counts["special"] == 1 and counts["fvt"] > 0


def test_align_from_a_byte_level_file_into_the_projects_isa(isas):
  """B = the project's bpe, every id by hand: specials by role; a piece whose bytes the file has is copied (byte
  pieces through the file's one-byte pieces, a byte-fallback piece B never emits the fallback: GPT-2 has no UNK);
  the rest the mean of the file's own ids for its text."""
  a, b = isas["gpt"], isas["small"]
  table = np.random.default_rng(1).normal(size=(a.vocab_size, 8)).astype(np.float32)
  rows, counts = porting.align_rows(table, a, b)
  uni = gpt2_bytes_to_unicode()
  direct = Tokenizer.from_file(os.path.join(isas["dir"], "tokenizer.json"))
  eot = direct.token_to_id(EOT)
  regular_a = [i for i in range(a.vocab_size) if i != eot]

  def mean(ids):
    return table[list(ids)].astype(np.float64).mean(axis=0).astype(np.float32)

  copied = 0
  for j in range(b.vocab_size):
    piece = b.pieces[j]
    if j in (specials.BOS_ID, specials.EOS_ID, specials.PAD_ID):
      want = table[eot]
    elif j < FIRST:  # UNK, MASK, sentinels: no counterpart in the file
      want = mean(regular_a)
    else:
      byte = int(piece[3:5], 16) if piece.startswith("<0x") and len(piece) == 6 else None
      raw = bytes([byte]) if byte is not None else piece.replace("\u2581", " ").encode("utf-8")
      same = direct.token_to_id("".join(uni[x] for x in raw))
      if byte is not None and byte < 0x80 and b.encode(chr(byte)) != [j]:
        want = mean(regular_a)  # never emitted by B
      elif same is not None:
        want, copied = table[same], copied + 1
      else:
        want = mean(direct.encode(raw.decode("utf-8"), add_special_tokens=False).ids)
    np.testing.assert_array_equal(rows[j], want, err_msg=f"id {j} {piece!r}")
  assert copied > 200 and counts["copied"] == copied


def test_translation_maps_specials_by_role_and_keeps_the_text(isas):
  a, b = isas["small"], isas["gpt"]
  eot = b.roles.eos
  text = PORTING_HELD_OUT[:240]
  ids = [specials.BOS_ID] + a.encode(text[:120]) + [specials.EOS_ID, specials.sentinel_id(0)] + a.encode(text[120:])
  out = porting.translate_ids(ids, a, b)
  assert out == [eot] + b.encode(text[:120]) + [eot] + b.encode(text[120:])  # the sentinel has no counterpart
  back = porting.translate_ids(out, b, a)
  assert back == [specials.EOS_ID] + a.encode(text[:120]) + [specials.EOS_ID] + a.encode(text[120:])
  with pytest.raises(ValueError, match="outside ISA"):
    porting.translate_ids([b.vocab_size], b, a)


@pytest.mark.parametrize("method", ["omp", "procrustes"])
def test_donor_methods_anchor_on_pieces_with_the_same_bytes(isas, method):
  a, b = isas["small"], isas["gpt"]
  rng = np.random.default_rng(2)
  table_a = rng.normal(size=(a.vocab_size, 8)).astype(np.float32)
  donor = rng.normal(size=(b.vocab_size, 8)).astype(np.float32)
  align, _ = porting.align_rows(table_a, a, b)
  rows, counts = (porting.omp_rows if method == "omp" else porting.procrustes_rows)(table_a, donor, a, b)
  ids_b, ids_a = porting.donor.shared_ids(a, b)
  assert len(ids_b) > 100
  for j, i in zip(ids_b.tolist(), ids_a.tolist(), strict=True):  # anchors: the same bytes in both ISAs
    assert a.piece_raw[i] == b.piece_raw[j]
  np.testing.assert_array_equal(rows[ids_b], align[ids_b])
  missing = porting.donor.missing_ids(a, b, ids_b)
  assert counts == {"special": 1, "copied": b.vocab_size - 1 - len(missing), method: len(missing)}
  assert not np.array_equal(rows[missing], align[missing])


@pytest.mark.slow  # ~1 min: two natives and four port runs, trained and read
def test_porting_experiment_between_a_file_isa_and_the_projects(isas, tmp_path):
  c = experiments.porting.porting_config("tiny")
  ports = f"byte>hf:{isas['dir']},hf:{isas['dir']}>byte"
  c.update(corpus="text:" + write_docs(tmp_path), ports=ports, archs="decoder", steps=4, seeds="0")
  c.update(methods="translate,align,fvt,relearn", budgets="0,2")
  c.model.update(d_model=32, num_heads=2, d_ff=64, max_len=64)
  c.train.update(batch_size=8, peak_tflops=1.0)
  c.checkpoint.async_save = False
  c.data.length = 64
  c.crosseval.max_docs = 16
  (out,) = experiments.run(c, str(tmp_path / "exp"), log=lambda _: None).values()
  rows = [json.loads(line) for line in open(f"{out}/results.jsonl")]
  hf = compilers.parse(f"hf:{isas['dir']}").name
  assert sorted({(r["source"], r["target"]) for r in rows}) == sorted({("byte", hf), (hf, "byte")})
  assert all(r["method"] for r in rows) and len(rows) == 8
  for r in rows:
    assert all(np.isfinite(p["bpb"]) for p in r["points"]), r
  by = {(r["source"], r["method"]): r for r in rows}
  for source in ("byte", hf):  # relearn's step 0 is align's port; translate is the source on its own ISA
    assert by[source, "relearn"]["points"][0]["bpb"] == by[source, "align"]["points"][0]["bpb"]
    assert by[source, "translate"]["points"][0]["bpb"] == by[source, "translate"]["source_native_bpb"]
