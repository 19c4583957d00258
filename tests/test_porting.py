"""Porting a CPU to another ISA: FVT and align rows (and transplanted models) against a naive per-piece loop, an
exact port to a permuted ISA, bit-exact copies of everything not indexed by the vocabulary, refusals, binary
translation."""

import os
import re

import jax
import numpy as np
import pytest
from conftest import PORTING_HELD_OUT, PORTING_TINY
from flax import nnx

from llmcpu import compilers, models, porting, specials
from llmcpu.errors import UserError

FIRST = specials.FIRST_REGULAR_ID


def table(vocab: int, dim: int = 8, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(vocab, dim)).astype(np.float32)


def numpy_fvt(table_a: np.ndarray, a: compilers.Compiler, b: compilers.Compiler) -> np.ndarray:
  """FVT written out: specials copied; a byte piece of B that B emits for an ASCII character takes the mean of what
  A emits for it, one B never emits but A does takes A's UNK row, any other A's byte piece; else the mean of A's
  segmentation."""
  out = np.zeros((b.vocab_size, table_a.shape[1]), np.float32)
  for j, piece in enumerate(b.pieces):
    if j < FIRST:
      out[j] = table_a[j]
    elif re.fullmatch(r"<0x[0-9A-F]{2}>", piece):
      char = chr(int(piece[3:5], 16))
      if char.isascii() and b.encode(char) == [j]:
        out[j] = table_a[a.encode(char)].astype(np.float64).mean(axis=0).astype(np.float32)
      elif char.isascii() and a.encode(char) == [a.pieces.index(piece)]:
        out[j] = table_a[specials.UNK_ID]
      else:
        out[j] = table_a[a.pieces.index(piece)]
    else:
      text = " ".join(piece.split("\u2581"))
      ids = a.encode(text)
      assert a.decode(ids) == text and min(ids) >= FIRST
      out[j] = table_a[ids].astype(np.float64).mean(axis=0).astype(np.float32)
  return out


def numpy_align(table_a: np.ndarray, a: compilers.Compiler, b: compilers.Compiler) -> np.ndarray:
  """align written out, piece by piece: a piece of B that A has (by its string) takes A's row; the rest FVT."""
  fvt = numpy_fvt(table_a, a, b)
  out = np.empty_like(fvt)
  for j, piece in enumerate(b.pieces):
    byte = re.fullmatch(r"<0x[0-9A-F]{2}>", piece)
    out[j] = table_a[a.pieces.index(piece)] if j >= FIRST and piece in a.pieces and not byte else fvt[j]
  return out


@pytest.mark.parametrize("pair", [("small", "big"), ("big", "small"), ("small", "byte"), ("byte", "big")])
def test_fvt_rows_equal_numpy(porting_isas, pair):
  a, b = porting_isas[pair[0]], porting_isas[pair[1]]
  t = table(a.vocab_size)
  rows, counts = porting.fvt_rows(t, a, b)
  assert rows.dtype == np.float32 and rows.shape == (b.vocab_size, 8)
  np.testing.assert_array_equal(rows, numpy_fvt(t, a, b))
  assert counts["fallback"] == 0 and counts["copied"] == 0 and counts["special"] == FIRST
  assert sum(counts.values()) == b.vocab_size


def test_fvt_from_bytes_is_the_mean_of_each_pieces_utf8_bytes(porting_isas):
  t = table(porting_isas["byte"].vocab_size)
  rows, _ = porting.fvt_rows(t, porting_isas["byte"], porting_isas["big"])
  for j in range(FIRST + 256, porting_isas["big"].vocab_size):
    raw = porting_isas["big"].pieces[j].replace("\u2581", " ").encode("utf-8")
    want = t[[FIRST + x for x in raw]].astype(np.float64).mean(axis=0).astype(np.float32)
    np.testing.assert_array_equal(rows[j], want)


class _UnkOnly:
  """A stand-in ISA A whose compiler knows only 'a' and encodes anything else as UNK (no byte fallback)."""

  name, fingerprint = "unk-only", "0"
  pieces = list(specials.SPECIAL_PIECES) + ["a"]
  vocab_size = len(pieces)
  piece_bytes = np.array([0] * FIRST + [1])
  piece_raw = (None,) * FIRST + (b"a",)
  roles = specials.OWN

  def encode_batch(self, texts):
    return [[FIRST] * len(t) if set(t) <= {"a"} else [specials.UNK_ID] for t in texts]

  def decode(self, ids):
    return "a" * len(ids)


def test_fallback_is_the_mean_of_as_regular_rows(porting_isas):
  a, b = _UnkOnly(), porting_isas["byte"]
  t = table(a.vocab_size, seed=3)
  t[FIRST] = [1, 2, 3, 4, 5, 6, 7, 8]
  rows, counts = porting.align_rows(t, a, b)
  a_row = FIRST + ord("a")
  np.testing.assert_array_equal(rows[a_row], t[FIRST])  # byte 'a' → A's text 'a'
  others = [j for j in range(FIRST, b.vocab_size) if j != a_row]
  np.testing.assert_array_equal(rows[others], np.broadcast_to(t[FIRST], (len(others), 8)))
  assert counts == {"special": FIRST, "copied": 0, "byte": 1, "unused": 0, "fvt": 0, "fallback": 255}


def test_align_rows_copy_shared_pieces_and_fvt_the_rest(porting_isas):
  a, b = porting_isas["big"], porting_isas["small"]  # shrink the ISA: every piece of small is in big
  t = table(a.vocab_size)
  rows, counts = porting.align_rows(t, a, b)
  index = {p: i for i, p in enumerate(a.pieces)}
  np.testing.assert_array_equal(rows, t[[index[p] for p in b.pieces]])
  assert counts == {"special": FIRST, "copied": b.vocab_size - FIRST, "byte": 0, "unused": 0, "fvt": 0, "fallback": 0}
  small = t[: porting_isas["small"].vocab_size]
  rows, counts = porting.align_rows(small, porting_isas["small"], porting_isas["big"])
  np.testing.assert_array_equal(rows, numpy_align(small, porting_isas["small"], porting_isas["big"]))
  np.testing.assert_array_equal(rows[:400], small)  # bpe:400 is a prefix of bpe:600: its rows stay in place
  assert counts["copied"] == 400 - FIRST and counts["fvt"] == 200


def bits_per_byte(logits: np.ndarray, ids: list[int], compiler: compilers.Compiler) -> float:
  logp = np.asarray(jax.nn.log_softmax(logits[0, :-1], axis=-1), np.float64)
  nll = -logp[np.arange(len(ids) - 1), ids[1:]].sum()
  return nll / np.log(2) / compiler.piece_bytes[ids[1:]].sum()


@pytest.mark.parametrize("arch,tied", [("decoder", True), ("decoder", False), ("encoder_decoder", False)])
def test_align_to_a_permuted_isa_is_exact(porting_isas, arch, tied):
  a, b = porting_isas["small"], porting_isas["perm"]
  source = models.create(arch, "tiny", vocab_size=a.vocab_size, seed=0, tie_embeddings=tied, **PORTING_TINY)
  target = models.create(arch, "tiny", vocab_size=b.vocab_size, seed=1, tie_embeddings=tied, **PORTING_TINY)
  provenance = porting.transplant(source, target, a, b, "align")
  assert provenance["counts"] == {
    "special": FIRST,
    "copied": 400 - FIRST,
    "byte": 0,
    "unused": 0,
    "fvt": 0,
    "fallback": 0,
  }
  ids_a = a.encode(PORTING_HELD_OUT)[:48]
  ids_b = b.encode(PORTING_HELD_OUT)[:48]
  assert ids_b == b.perm[ids_a].tolist()  # same segmentation, other opcodes
  args_a = (np.array([ids_a]),) * (2 if arch == "encoder_decoder" else 1)
  args_b = (np.array([ids_b]),) * (2 if arch == "encoder_decoder" else 1)
  logits_a, logits_b = np.asarray(source(*args_a)), np.asarray(target(*args_b))
  np.testing.assert_allclose(logits_b[..., b.perm], logits_a, rtol=1e-6, atol=1e-6)
  assert bits_per_byte(logits_b, ids_b, b) == pytest.approx(bits_per_byte(logits_a, ids_a, a), rel=1e-9, abs=1e-6)


def flat_params(model) -> dict:
  return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("arch", models.ARCHS)
@pytest.mark.parametrize("tied", [True, False])
def test_align_to_a_bigger_isa_keeps_shared_rows_and_the_body(porting_isas, arch, tied):
  a, b = porting_isas["small"], porting_isas["big"]
  source = models.create(arch, "tiny", vocab_size=a.vocab_size, seed=0, tie_embeddings=tied, **PORTING_TINY)
  target = models.create(arch, "tiny", vocab_size=b.vocab_size, seed=1, tie_embeddings=tied, **PORTING_TINY)
  before = flat_params(source)
  provenance = porting.transplant(source, target, a, b, "align")
  after = flat_params(target)
  vocab_paths = {("embed", "table")} | ({("head", "kernel")} if not tied else set())
  assert set(provenance["ported"]) == {"/".join(p) for p in vocab_paths}
  assert provenance["copied"] == len(before) - len(vocab_paths)
  for path, value in before.items():
    if path not in vocab_paths:
      np.testing.assert_array_equal(after[path], value, err_msg=str(path))
  shared = [i for i in range(a.vocab_size) if b.pieces[i] == a.pieces[i]]
  assert len(shared) == a.vocab_size  # bpe:400 is a prefix of bpe:600
  np.testing.assert_array_equal(after["embed", "table"][shared], before["embed", "table"][shared])
  np.testing.assert_array_equal(after["embed", "table"], numpy_align(before["embed", "table"], a, b))
  if not tied:  # the head is ported from the head's own columns
    np.testing.assert_array_equal(after["head", "kernel"][:, shared], before["head", "kernel"][:, shared])
    want = numpy_align(before["head", "kernel"].T, a, b).T
    np.testing.assert_array_equal(after["head", "kernel"], want)
  np.testing.assert_array_equal(flat_params(source)["embed", "table"], before["embed", "table"])  # source untouched


def test_port_builds_the_target(porting_isas):
  source = models.create("encoder", "tiny", vocab_size=400, seed=0, **PORTING_TINY)
  target, provenance = porting.port(source, porting_isas["small"], porting_isas["big"], "fvt")
  assert target.config == source.config.replace(vocab_size=600)
  assert provenance["method"] == "fvt" and provenance["counts"]["fvt"] > 200
  assert provenance["target_fingerprint"] == porting_isas["big"].fingerprint


def test_refusals(porting_isas):
  a, b = porting_isas["small"], porting_isas["big"]
  source = models.create("decoder", "tiny", vocab_size=400, seed=0, **PORTING_TINY)
  wider = models.create("decoder", "tiny", vocab_size=600, seed=0, **{**PORTING_TINY, "d_model": 64})
  with pytest.raises(UserError, match=r"differ in d_model \(32 vs 64\)"):
    porting.transplant(source, wider, a, b, "align")
  with pytest.raises(UserError, match="vocab_size 400 but ISA bpe600 has 600"):
    porting.transplant(source, source, a, b, "align")
  with pytest.raises(UserError, match="unknown porting method 'nope'"):
    porting.port(source, a, b, "nope")


def test_translate_ids(porting_isas):
  a, b = porting_isas["small"], porting_isas["big"]
  text = PORTING_HELD_OUT[:300]
  ids = [specials.BOS_ID] + a.encode(text[:150]) + [specials.sentinel_id(0)] + a.encode(text[150:])
  want = [specials.BOS_ID] + b.encode(text[:150]) + [specials.sentinel_id(0)] + b.encode(text[150:])
  assert porting.translate_ids(ids, a, b) == want
  assert porting.translate_ids([], a, b) == []
  assert porting.translation_cost([ids], a, b) > 0


# ---------------------------------------------------------------------------------------------------------------
# Porting through the training loop (llmcpu.porting.runner, scripts/port.py): ordinary checkpoints of ISA B.
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """Prose compiled by bpe:600, its full permutation and byte; a tiny decoder trained 12 steps on bpe:600."""
  from conftest import prose_corpus, tiny_config

  from llmcpu import toolchain
  from llmcpu.training import trainer

  root = tmp_path_factory.mktemp("porting")
  built = toolchain.build_compilers(
    compilers.parse_list("bpe:600,bpe:600+perm:1,byte"), [prose_corpus()], str(root / "c"), log=lambda _: None
  )
  toolchain.compile_corpora([prose_corpus()], built, str(root / "c"), log=lambda _: None)
  trainer.train(tiny_config("decoder", str(root / "c")), str(root / "src"), log=lambda _: None)
  return str(root / "c"), str(root / "src")


def port_config(src: str, **overrides):
  import ml_collections

  c = ml_collections.ConfigDict(dict(checkpoint=src, to_isa="byte", method="relearn", steps=6, save_at=""))
  c.update(compile_dir="", corpus="", seed=0, learning_rate=0.0)
  c.update(overrides)
  return c


def named_params(model) -> dict[str, np.ndarray]:
  return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_align_onto_a_permuted_copy_runs_as_the_source_with_zero_tokens(source, tmp_path):
  from llmcpu import crosseval
  from llmcpu.porting import runner
  from llmcpu.training import checkpoints

  compile_dir, src = source
  result = runner.port_checkpoint(
    port_config(src, to_isa="bpe:600+perm:1", method="align"), str(tmp_path), log=lambda _: None
  )
  assert result.step == 0
  meta = checkpoints.load_meta(str(tmp_path))
  assert meta["isa_name"] == "bpe600-perm1" and meta["provenance"]["method"] == "align"
  assert meta["provenance"]["tokens"] == 0 and meta["provenance"]["source"]["isa"] == "bpe600"
  options = crosseval.CrossEvalOptions(coherence=False)
  rows = crosseval.evaluate([src, str(tmp_path)], ["bpe:600", "bpe:600+perm:1"], compile_dir, options=options)
  bpb = {(r["model_isa"], r["eval_isa"]): r["bits_per_byte"] for r in rows}
  assert bpb[("bpe600-perm1", "bpe600-perm1")] == pytest.approx(bpb[("bpe600", "bpe600")], rel=1e-6)
  assert bpb[("bpe600-perm1", "bpe600")] > bpb[("bpe600", "bpe600")] + 0.5  # and it no longer runs the old code


def test_relearn_changes_only_the_vocabulary_and_resumes_bit_identically(source, tmp_path):
  from llmcpu.porting import runner
  from llmcpu.training import checkpoints

  _, src = source
  config = port_config(src, save_at="0,2")
  first = runner.port_checkpoint(config, str(tmp_path / "a"), should_stop=lambda step: step == 3, log=lambda _: None)
  assert first.stopped == "preempted" and first.step == 3
  runner.port_checkpoint(config, str(tmp_path / "a"), log=lambda _: None)
  runner.port_checkpoint(config, str(tmp_path / "b"), log=lambda _: None)
  before = named_params(checkpoints.load_model(src)[0])
  resumed, meta, compiler = checkpoints.load_model(str(tmp_path / "a"))
  after, whole = named_params(resumed), named_params(checkpoints.load_model(str(tmp_path / "b"))[0])
  assert compiler.name == "byte" and meta["config"]["train"]["trainable"] == "^embed/table$"
  for name, value in after.items():
    np.testing.assert_array_equal(value, whole[name], err_msg=name)  # stop + resume = one run
    if name != "embed/table":
      np.testing.assert_array_equal(value, before[name], err_msg=name)  # frozen: bit-identical to the source
  zero = named_params(checkpoints.load_model(str(tmp_path / "a" / "checkpoints" / "0"))[0])["embed/table"]
  assert not np.array_equal(after["embed/table"], zero)  # the rows did train
  assert sorted(int(p.name) for p in (tmp_path / "a" / "checkpoints").iterdir()) == [0, 2, 3, 6]  # 3: the stop


@pytest.mark.parametrize(
  "overrides, pattern",
  [
    ({"method": "nope"}, "unknown porting method 'nope'"),
    ({"method": "translate"}, "method translate changes no weights"),
    ({"to_isa": "char"}, "no compiler char under .*scripts/compile.py --config.corpus=prose --config.compilers=char"),
    ({"corpus": "elsewhere"}, "trained on corpus 'prose', not 'elsewhere'"),
    ({"checkpoint": "/nonexistent/run"}, "no checkpoint under /nonexistent/run"),
  ],
)
def test_bad_ports_are_one_line_and_write_nothing(source, tmp_path, overrides, pattern):
  from llmcpu.porting import runner

  with pytest.raises(UserError, match=pattern):
    runner.port_checkpoint(port_config(source[1], **overrides), str(tmp_path / "out"), log=lambda _: None)
  assert not (tmp_path / "out" / "checkpoints").exists()


def test_tokens_to_close_the_gap_by_hand():
  from llmcpu.experiments import porting as recovery

  def point(tokens, bpb):
    return {"step": tokens // 10, "tokens": tokens, "bpb": bpb, "bpb_lo": bpb - 0.1, "bpb_hi": bpb + 0.1}

  # zero-shot 6, native 4: closed = (6 − bpb) / 2 → 0.25 at 100 tokens, 0.75 at 10,000, 1.0 at 100,000.
  row = {"zero_shot_bpb": 6.0, "native_bpb": 4.0, "points": [point(0, 6.0), point(100, 5.5), point(10_000, 4.5)]}
  row["points"].append(point(100_000, 4.0))
  closes = recovery.closes(row)
  # 50%: halfway from 0.25 to 0.75 between 100 and 10,000 tokens on a log axis → 10^3 = 1,000.
  assert closes["50%"] == 1000
  # 90%: (0.9 − 0.75) / 0.25 = 0.6 of the way from 10^4 to 10^5 → 10^4.6.
  assert closes["90%"] == round(10**4.6)
  assert closes["99%"] == round(10 ** (4 + 0.24 / 0.25))
  row["points"] = [point(0, 6.0), point(100, 5.9)]
  assert recovery.closes(row) == {"50%": None, "90%": None, "99%": None}  # never reached
  row["native_bpb"] = 7.0  # no gap to close (the zero-shot cell already beats the native CPU)
  assert recovery.closes(row) == {"50%": None, "90%": None, "99%": None}


def test_porting_report_is_committed_last(tmp_path, monkeypatch):
  import ml_collections

  from llmcpu.experiments import porting as recovery

  rows = [
    {"corpus": "c", "arch": "decoder", "source": "a", "target": "b", "method": m, "seed": 0, "zero_shot_bpb": 6.0,
     "native_bpb": 4.0, "source_native_bpb": 3.9, "ms_per_1k_tokens": 0.5,
     "points": [{"step": 0, "tokens": 0, "bpb": 5.0, "bpb_lo": 4.9, "bpb_hi": 5.1}],
     "closes": {"50%": 0, "90%": None, "99%": None}}
    for m in ("translate", "align")
  ]  # fmt: skip
  written = []
  real = recovery.fs.write_text
  monkeypatch.setattr(recovery.fs, "write_text", lambda p, t: (written.append(os.path.basename(p)), real(p, t)))
  recovery.write_report(rows, str(tmp_path), ml_collections.ConfigDict({"x": 1}), 1.0)
  assert written[-1] == "results.jsonl" and (tmp_path / "recovery_c_decoder_a-to-b.png").stat().st_size > 0
  table = (tmp_path / "porting.md").read_text()
  assert "| c | decoder | a → b | translate | 6.000 | 5.000 (4.900–5.100) · 0.50 ms/1k ids |" in table


def test_porting_curves_over_seeds_by_hand():
  from llmcpu.experiments import porting as recovery

  def row(seed, bpb, closes90):
    points = [{"step": 0, "tokens": 0, "bpb": bpb, "bpb_lo": None, "bpb_hi": None, "relevance": 0.1 * (seed + 1)}]
    return {"corpus": "c", "arch": "decoder", "source": "a", "target": "b", "method": "relearn", "seed": seed,
            "zero_shot_bpb": 6.0, "native_bpb": 4.0, "source_native_bpb": 3.9, "zero_shot_relevance": 0.0,
            "native_relevance": 0.5, "points": points, "closes": {"50%": 0, "90%": closes90, "99%": None}}  # fmt: skip

  (curve,) = recovery.aggregate([row(0, 3.0, 100), row(1, 3.2, 300)])
  assert curve["seeds"] == [0, 1] and curve["points"][0]["bpb"] == pytest.approx(3.1)
  assert curve["points"][0]["bpb_std"] == pytest.approx(np.std([3.0, 3.2], ddof=1))
  text = recovery.markdown([curve])
  assert "| c | decoder | a → b | relearn | 6.000 ± 0.000 | 3.100 ± 0.141 | — | 3.100 ± 0.141 | 0 |" in text
  # native tokens, source tokens (unknown here: 0), zero-shot anchor 50/90/99 (the curve ends at 0 tokens: "> 0"),
  # no align anchor on these rows (n/a), 90% in all.
  assert "| relearn | 0 | 0 | 0 | 200 (100–300) | > 0 | n/a | n/a | n/a | 200 (100–300) | n/a |" in text
  assert "| c | decoder | a → b | relearn | 0.000 ± 0.000 | 0.150 ± 0.071 | 0.500 ± 0.000 |" in text
  (curve,) = recovery.aggregate([row(0, 3.0, 100), row(1, 3.2, None)])
  assert "> 0 (1/2 seeds)" in recovery.markdown([curve])


def _curve_row(method, points, source_tokens):
  rows = [{"step": t // 10, "tokens": t, "bpb": b, "bpb_lo": None, "bpb_hi": None} for t, b in points]
  return {"corpus": "c", "arch": "decoder", "source": "a", "target": "b", "method": method, "seed": 0,
          "zero_shot_bpb": 6.0, "native_bpb": 4.0, "source_native_bpb": 3.9, "source_tokens": source_tokens,
          "native_tokens": 6400, "points": rows}  # fmt: skip


def test_tokens_to_close_from_both_anchors_with_bounds_by_hand():
  from llmcpu.experiments import porting as recovery

  # zero-shot 6, align 5 (the align port's own point), native 4; the source CPU trained on 1,000 tokens of ISA A.
  align = _curve_row("align", [(0, 5.0)], 1000)
  relearn = _curve_row("relearn", [(0, 5.0), (100, 4.5), (10_000, 4.0)], 1000)
  scratch = _curve_row("scratch", [(0, 8.0), (100, 5.5), (1000, 4.8)], 0)
  recovery.attach_closes([scratch, relearn, align])
  assert relearn["align_bpb"] == scratch["align_bpb"] == 5.0
  # relearn from zero-shot: closed 0.5, 0.75, 1.0 → 50% at 0 tokens; 90%: 0.6 of 10^2 → 10^4; 99%: 0.96 of it.
  assert relearn["closes"] == {"50%": 0, "90%": round(10**3.2), "99%": round(10**3.92)}
  # relearn from align (gap 1): closed 0, 0.5, 1.0 → 50% at 100; 90%: 0.8 of 10^2 → 10^4; 99%: 0.98 of it.
  assert relearn["closes_align"] == {"50%": 100, "90%": round(10**3.6), "99%": round(10**3.96)}
  # scratch from zero-shot: closed −1, 0.25, 0.6 → 50% at 5/7 of 10^2 → 10^3, 90% never; from align never.
  assert scratch["closes"] == {"50%": round(10 ** (2 + 5 / 7)), "90%": None, "99%": None}
  assert scratch["closes_align"] == {"50%": None, "90%": None, "99%": None}
  text = recovery.markdown(recovery.aggregate([align, relearn, scratch]))
  # last tokens 10,000, in all + 1,000 of the source's; closes: native, source, zero-shot ×3, align ×3, 90% in all ×2.
  assert "| relearn | 6.000 | 5.000 | — | 4.000 | 10,000 | 11,000 | 4.000 |" in text
  assert "| relearn | 6,400 | 1,000 | 0 | 1,585 | 8,318 | 100 | 3,981 | 9,120 | 2,585 | 4,981 |" in text
  # not reached: bounded by the curve's last tokens (1,000), in all by those plus the source's (none for scratch)
  assert "| scratch | 6,400 | 0 | 518 | > 1,000 | > 1,000 | > 1,000 | > 1,000 | > 1,000 | > 1,000 | > 1,000 |" in text


def test_scratch_tokens_to_match_each_port_point_by_hand():
  from llmcpu.experiments import porting as recovery

  # scratch: 8.0 at 0 tokens, 5.5 at 100, 4.8 at 1,000; the source CPU trained on 1,000 tokens of ISA A.
  scratch = _curve_row("scratch", [(0, 8.0), (100, 5.5), (1000, 4.8)], 0)
  relearn = _curve_row("relearn", [(0, 6.5), (10, 5.15), (100, 4.5)], 1000)
  align = _curve_row("align", [(0, 6.5)], 1000)
  recovery.attach_closes([scratch, relearn, align])
  got = [p["scratch_tokens"] for p in relearn["points"]]
  # 6.5: 0.6 of the way from 8.0 (0 tokens) to 5.5 (100) → linearly 60 tokens; 5.15: half way from 100 to 1,000 on
  # log tokens → 10^2.5; 4.5: better than scratch's best (4.8) → not reached.
  assert got[0] == pytest.approx(60.0) and got[1] == pytest.approx(10**2.5) and got[2] is None
  assert align["points"][0]["scratch_tokens"] == pytest.approx(60.0)
  assert all(p["scratch_tokens"] is None for p in scratch["points"])  # scratch is not compared with itself
  text = recovery.markdown(recovery.aggregate([scratch, relearn, align]))
  # per point: steps, ISA-B tokens, bits per byte, scratch tokens, × ISA-B tokens, × tokens in all (+ 1,000)
  assert f"| relearn | 1 | 10 | 5.150 | 316 | {10**2.5 / 10:.1f}× | {10**2.5 / 1010:.2f}× |" in text
  assert "| relearn | 10 | 100 | 4.500 | > 1,000 | > 10.0× | > 0.91× |" in text
  assert "| align | 0 | 0 | 6.500 | 60 | ∞ | 0.06× |" in text
  assert "| relearn | 0 | 0 |" not in text  # a trained curve's start is its start's row, not repeated


def test_share_of_the_align_to_translate_gap_and_the_best_start_by_hand():
  from llmcpu.experiments import porting as recovery

  # zero-shot 6, align 5, translate (the source's own figure) 3.9, native 4: the align → translate gap is 1.1.
  def seeds(method, points_by_seed):
    return [_curve_row(method, points, 1000) | {"seed": s} for s, points in enumerate(points_by_seed)]

  rows = seeds("align", [[(0, 5.0)], [(0, 5.0)]])
  rows += seeds("omp", [[(0, 4.45)], [(0, 4.56)]])  # closes 0.55 / 1.1 = 0.5 and 0.44 / 1.1 = 0.4
  rows += seeds("procrustes", [[(0, 5.55)], [(0, 5.55)]])  # worse than align: −0.5
  rows += seeds("distill", [[(0, 4.8)], [(0, 4.8)]])  # 0.2/1.1, but no relearn from its rows: not a start
  rows += seeds("relearn", [[(0, 5.0), (100, 4.5), (10_000, 4.0)]] * 2)
  # relearn from omp's rows: zero-shot gap 2, closed 0.775 then 0.9 at 100 tokens (both seeds' shapes alike).
  rows += seeds("relearn+omp", [[(0, 4.45), (100, 4.2), (10_000, 4.0)], [(0, 4.56), (100, 4.2), (10_000, 4.0)]])
  rows += seeds("scratch", [[(0, 8.0), (100, 5.5), (1000, 4.8)]] * 2)
  recovery.attach_closes(rows)
  shares = {(r["method"], r["seed"]): r["share_translate"] for r in rows}
  assert shares[("omp", 0)] == pytest.approx(0.5) and shares[("omp", 1)] == pytest.approx(0.4)
  assert shares[("align", 0)] == 0.0 and shares[("procrustes", 1)] == pytest.approx(-0.5)
  assert shares[("relearn", 0)] is None and shares[("scratch", 0)] is None  # trained curves: no share
  curves = recovery.aggregate(rows)
  text = recovery.markdown(curves)
  spread = np.std([0.5, 0.4], ddof=1)
  assert f"| c | decoder | a → b | omp | 6.000 ± 0.000 | 4.505 ± 0.078 | 0.45 ± {spread:.2f} |" in text
  assert "| c | decoder | a → b | relearn | 6.000 ± 0.000 | 5.000 ± 0.000 | — |" in text
  assert recovery.best_start(curves, ("c", "decoder", "a", "b"))["method"] == "omp"  # distill has no relearn curve
  # best start, its 0 updates, 90% of zero-shot → native: relearn+omp at 100 tokens, relearn 1,585, scratch never.
  assert "| c | decoder | a → b | omp | 4.505 ± 0.078 | 100 | 1,585 | > 1,000 |" in text
  rows = [_curve_row("align", [(0, 3.8)], 0), _curve_row("omp", [(0, 4.0)], 0)]
  recovery.attach_closes(rows)
  text = recovery.markdown(recovery.aggregate(rows))
  assert "| omp | 6.000 | 4.000 | no gap |" in text  # align (3.8) already below translate (3.9)


def test_align_anchor_falls_back_to_a_trained_port_at_zero_tokens_and_says_no_gap():
  from llmcpu.experiments import porting as recovery

  # No align curve: relearn's 0-token point is align's port. Here align (3.5) already beats the native (4.0).
  finetune = _curve_row("finetune", [(0, 3.5), (100, 3.0)], 10)
  translate = _curve_row("translate", [(0, 3.9)], 10)
  recovery.attach_closes([translate, finetune])
  assert translate["align_bpb"] == finetune["align_bpb"] == 3.5
  assert finetune["closes_align"] == {"50%": None, "90%": None, "99%": None}
  assert finetune["closes"] == {"50%": 0, "90%": 0, "99%": 0}  # from zero-shot: closed 1.25 at 0 tokens
  text = recovery.markdown(recovery.aggregate([finetune]))
  assert "| finetune | 6,400 | 10 | 0 | 0 | 0 | no gap | no gap | no gap | 10 | no gap |" in text


def test_scratch_budgets_are_multiples_of_the_native_steps():
  from llmcpu.experiments import porting as recovery

  budgets = [0, 10, 30, 100, 300]
  assert recovery.scratch_budgets(budgets, "1,2,4", 400) == [0, 10, 30, 100, 300, 400, 800, 1600]
  assert recovery.scratch_budgets(budgets, "0.25", 400) == budgets  # 100: already a budget
  assert recovery.scratch_budgets(budgets, "", 400) == budgets
  for bad in ("x", "0", "-1"):
    with pytest.raises(UserError, match="scratch_budgets"):
      recovery.scratch_budgets(budgets, bad, 400)


@pytest.fixture(scope="module")
def donor(source, tmp_path_factory):
  """A tiny decoder trained natively on bpe:600+perm:1 (the donor of omp / procrustes ports to it)."""
  from conftest import tiny_config

  from llmcpu.training import trainer

  path = str(tmp_path_factory.mktemp("donor"))
  trainer.train(tiny_config("decoder", source[0], data__isa="bpe:600+perm:1", train__steps=2), path, log=lambda _: None)
  return path


@pytest.mark.parametrize("method, init", [("omp", "align"), ("procrustes", "align"), ("distill", "omp")])
def test_donor_and_distill_ports_through_the_runner(source, donor, tmp_path, method, init):
  from llmcpu.porting import runner
  from llmcpu.training import checkpoints

  _, src = source
  config = port_config(src, to_isa="bpe:600+perm:1", method=method, init=init, donor=donor, omp_atoms=4)
  assert runner.port_checkpoint(config, str(tmp_path), log=lambda _: None).step == 0
  before = named_params(checkpoints.load_model(src)[0])
  ported, meta, compiler = checkpoints.load_model(str(tmp_path))
  after = named_params(ported)
  np.testing.assert_array_equal(after["embed/table"][compiler.perm], before["embed/table"])  # a permutation: exact
  for name, value in before.items():
    if name != "embed/table":
      np.testing.assert_array_equal(after[name], value, err_msg=name)
  p = meta["provenance"]
  assert p["method"] == method and p["tokens"] == 0 and p["donor"]["checkpoint"] == donor
  assert p["transplant"]["method"] == (init if method == "distill" else method)
  assert p["transplant"]["counts"] == {"special": FIRST, "copied": 600 - FIRST, p["transplant"]["method"]: 0}
  if method == "distill":
    assert p["init"] == "omp" and p["distill"]["rows"] == 0 and p["distill"]["tokens"] == 0  # nothing new to fit


def test_relearn_starts_from_the_init_rows(source, donor, tmp_path):
  from llmcpu.porting import runner
  from llmcpu.training import checkpoints

  _, src = source
  config = port_config(src, to_isa="bpe:600+perm:1", init="procrustes", donor=donor, steps=2, save_at="0")
  runner.port_checkpoint(config, str(tmp_path), log=lambda _: None)
  meta = checkpoints.load_meta(str(tmp_path))
  assert meta["provenance"]["init"] == "procrustes" and meta["provenance"]["transplant"]["method"] == "procrustes"
  assert meta["step"] == 2 and meta["config"]["train"]["trainable"] == "^embed/table$"


@pytest.mark.parametrize(
  "overrides, pattern",
  [
    ({"method": "omp"}, r"method omp needs a donor CPU trained natively on ISA bpe600-perm1: pass --config.donor"),
    ({"init": "procrustes"}, r"method procrustes needs a donor CPU .*--config.donor=RUN"),
    ({"method": "omp", "donor": "SRC"}, "the donor CPU speaks ISA bpe600, not the target bpe600-perm1"),
    ({"method": "omp", "donor": "/nonexistent/donor"}, "no checkpoint under /nonexistent/donor"),
    ({"init": "nope"}, r"unknown --config.init='nope'; choose one of align, fvt, omp, procrustes, distill"),
    ({"method": "distill", "init": "distill"}, "method distill starts from another method's rows"),
  ],
)
def test_bad_donor_ports_are_one_line_and_write_nothing(source, tmp_path, overrides, pattern):
  from llmcpu.porting import runner

  overrides = {k: source[1] if v == "SRC" else v for k, v in overrides.items()}
  config = port_config(source[1], to_isa="bpe:600+perm:1", **overrides)
  with pytest.raises(UserError, match=pattern):
    runner.port_checkpoint(config, str(tmp_path / "out"), log=lambda _: None)
  assert not (tmp_path / "out" / "checkpoints").exists()


def test_port_config_lists_the_runners_defaults():
  import importlib.util

  from llmcpu.porting import runner

  spec = importlib.util.spec_from_file_location(
    "port_config", os.path.join(os.path.dirname(__file__), "..", "configs", "port.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert {k: config[k] for k in runner.DEFAULTS} == runner.DEFAULTS
