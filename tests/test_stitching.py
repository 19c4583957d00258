"""Encoder swaps across ISAs (llmcpu.stitching.swap/score), each checked against an independent computation: a swap
of an encoder for itself is the native CPU, the closed-form stitch is numpy's least squares / an orthogonal map on
the same anchors, training the stitch leaves every other parameter bit-identical to its source."""

import dataclasses
import json
import shutil

import ml_collections
import numpy as np
import pytest
from flax import nnx

from llmcpu import compilers, models, toolchain
from llmcpu.errors import UserError
from llmcpu.training import checkpoints


@pytest.fixture(scope="module")
def cpus(compile_dir, tmp_path_factory):
  """Two tiny encoder-decoders on the pairs corpus, one on bpe:600 (A) and one on byte (B), a decoder on prose and an
  MLM encoder on the pairs (bpe:600)."""
  from conftest import tiny_config

  from llmcpu.training import trainer

  root = tmp_path_factory.mktemp("stitching")
  quiet = {"log": lambda _: None}
  lengths = dict(data__input_length=24, data__target_length=8)
  trainer.train(tiny_config("encoder_decoder", compile_dir, **lengths), str(root / "a"), **quiet)
  trainer.train(tiny_config("encoder_decoder", compile_dir, data__isa="byte", **lengths), str(root / "b"), **quiet)
  trainer.train(tiny_config("decoder", compile_dir, train__steps=0), str(root / "dec"), **quiet)
  trainer.train(tiny_config("encoder", compile_dir, data__corpus="pairs"), str(root / "mlm"), **quiet)
  return compile_dir, str(root / "a"), str(root / "b"), str(root / "dec"), str(root / "mlm")


def swap_config(decoder: str, encoder: str, **overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(decoder=decoder, encoder=encoder, variant="stitch", steps=4, save_at=""))
  c.update(anchor_docs=64, anchor_pairs=5000, compile_dir="", seed=0, learning_rate=0.0)
  c.update(overrides)
  return c


def named_params(model) -> dict[str, np.ndarray]:
  return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def score_of(path: str, compile_dir: str) -> dict:
  from llmcpu.compilers import from_blob
  from llmcpu.crosseval.library import Library
  from llmcpu.stitching.score import score

  model, meta, writes = checkpoints.load_model(path)
  reads = from_blob(meta["input_compiler_files"]) if "input_compiler_files" in meta else writes
  return score(model, writes, reads, Library(compile_dir), "pairs", prompts=16, input_length=24, target_length=8)


def test_a_swap_of_an_encoder_for_itself_is_the_native_cpu(cpus, tmp_path):
  from llmcpu.stitching import swap

  compile_dir, a, *_ = cpus
  swap.swap_encoder(swap_config(a, a, variant="zero_shot"), str(tmp_path), log=lambda _: None)
  swapped, meta, _ = checkpoints.load_model(str(tmp_path))
  native, _, _ = checkpoints.load_model(a)
  assert meta["input_isa_name"] == "bpe600" and meta["provenance"]["variant"] == "zero_shot"
  ids = np.array([[40, 41, 42, 3, 0], [50, 3, 0, 0, 0]], np.int32)
  dec = np.array([[1, 60, 61], [1, 62, 0]], np.int32)
  np.testing.assert_array_equal(np.asarray(swapped(ids, dec)), np.asarray(native(ids, dec)))
  mine, theirs = score_of(str(tmp_path), compile_dir), score_of(a, compile_dir)
  assert mine["bits_per_byte"] == theirs["bits_per_byte"] and mine["samples"] == theirs["samples"]
  from llmcpu import crosseval  # the matrix feeds one ISA to both stacks: a stitched CPU's row fails, saying why

  (row,) = crosseval.evaluate([str(tmp_path)], ["bpe:600"], compile_dir, log=lambda _: None)
  assert row["status"] == "failed" and "stitched encoder-decoder: it reads ISA bpe600 and writes bpe600" in row["error"]


def test_closed_form_stitches_equal_numpy_on_the_same_anchors(cpus, tmp_path):
  from llmcpu.stitching import swap
  from llmcpu.training import trainer

  compile_dir, a, b, *_ = cpus
  stitches = {}
  for variant in ("lstsq", "procrustes"):
    config = swap_config(a, b, variant=variant)
    swap.swap_encoder(config, str(tmp_path / variant), log=lambda _: None)
    model, meta, _ = checkpoints.load_model(str(tmp_path / variant))
    stitches[variant] = (np.asarray(model.stitch.kernel[...]), np.asarray(model.stitch.bias[...]))
    assert meta["provenance"]["anchors"]["pairs"] > 64
  meta_a, meta_b = checkpoints.load_meta(a), checkpoints.load_meta(b)
  setup = trainer.resolve(swap.swap_config(swap_config(a, b), meta_a, meta_b, b), str(tmp_path / "x"))
  model_a, model_b = checkpoints.load_model(a)[0], checkpoints.load_model(b)[0]
  x, y = swap.anchor_states(model_a, model_b, setup, 64, 5000, 0)
  x, y = x.astype(np.float64), y.astype(np.float64)
  solution = np.linalg.lstsq(np.concatenate([x, np.ones((len(x), 1))], 1), y, rcond=None)[0]
  kernel, bias = stitches["lstsq"]
  np.testing.assert_allclose(kernel, solution[:-1], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(bias, solution[-1], rtol=1e-4, atol=1e-5)
  u, _, vt = np.linalg.svd((x - x.mean(0)).T @ (y - y.mean(0)))
  rotation, (kernel, bias) = u @ vt, stitches["procrustes"]
  np.testing.assert_allclose(kernel, rotation, atol=1e-5)
  np.testing.assert_allclose(bias, y.mean(0) - x.mean(0) @ rotation, atol=1e-5)


def test_training_the_stitch_changes_nothing_else_and_resumes_bit_identically(cpus, tmp_path):
  from llmcpu.stitching import swap

  compile_dir, a, b, *_ = cpus
  config = swap_config(a, b, save_at="0,2")
  first = swap.swap_encoder(config, str(tmp_path / "a"), should_stop=lambda step: step == 3, log=lambda _: None)
  assert first.stopped == "preempted"
  swap.swap_encoder(config, str(tmp_path / "a"), log=lambda _: None)
  swap.swap_encoder(config, str(tmp_path / "b"), log=lambda _: None)
  resumed, whole = (named_params(checkpoints.load_model(str(tmp_path / d))[0]) for d in ("a", "b"))
  src_a, src_b = named_params(checkpoints.load_model(a)[0]), named_params(checkpoints.load_model(b)[0])
  expected = {
    **{k: v for k, v in src_a.items() if not k.startswith("encoder/")},
    **{f"encoder_embed/{k[len('embed/') :]}": v for k, v in src_b.items() if k.startswith("embed/")},
    **{k: v for k, v in src_b.items() if k.startswith("encoder/")},
  }
  assert set(resumed) == set(expected) | {"stitch/kernel", "stitch/bias"}
  for name, value in resumed.items():
    np.testing.assert_array_equal(value, whole[name], err_msg=name)  # stop + resume = one run
    if not name.startswith("stitch/"):
      np.testing.assert_array_equal(value, expected[name], err_msg=name)  # frozen: bit-identical to its source
  assert not np.array_equal(resumed["stitch/kernel"], np.eye(32, dtype=np.float32))  # the stitch did train
  assert score_of(str(tmp_path / "a"), compile_dir)["prompts"] == 16


def test_an_mlm_encoder_swaps_in(cpus, tmp_path):
  from llmcpu.stitching import swap

  compile_dir, a, *_, mlm = cpus
  swap.swap_encoder(swap_config(a, mlm, variant="procrustes"), str(tmp_path), log=lambda _: None)
  model, meta, _ = checkpoints.load_model(str(tmp_path))
  assert meta["provenance"]["encoder"]["arch"] == "encoder" and model.config.encoder_config.arch == "encoder"
  kernel = np.asarray(model.stitch.kernel[...])
  np.testing.assert_allclose(kernel @ kernel.T, np.eye(32), atol=1e-5)  # an orthogonal map
  assert score_of(str(tmp_path), compile_dir)["prompts"] == 16


def test_stitch_and_cross_attention_train_together(cpus, tmp_path):
  from llmcpu.stitching import swap

  _, a, b, *_ = cpus
  swap.swap_encoder(swap_config(a, b, variant="stitch_xattn", steps=2), str(tmp_path), log=lambda _: None)
  after, src_a = named_params(checkpoints.load_model(str(tmp_path))[0]), named_params(checkpoints.load_model(a)[0])
  changed = {
    k for k, v in after.items() if k in src_a and not k.startswith("encoder") and not np.array_equal(v, src_a[k])
  }
  assert changed and all("/cross/" in k or "/cross_norm/" in k for k in changed), changed


def test_the_native_xattn_control_trains_only_the_cross_attention_on_its_own_encoder(cpus, tmp_path):
  from llmcpu.stitching import swap

  _, a, *_ = cpus
  swap.swap_encoder(swap_config(a, a, variant="native_xattn", steps=2), str(tmp_path), log=lambda _: None)
  after, src = named_params(checkpoints.load_model(str(tmp_path))[0]), named_params(checkpoints.load_model(a)[0])
  changed = {k for k, v in after.items() if k in src and not np.array_equal(v, src[k])}
  assert changed and all("/cross/" in k or "/cross_norm/" in k for k in changed), changed
  for k in src:  # A's own encoder read through it, bit-identical
    if k.startswith("encoder/") or k.startswith("embed/"):
      np.testing.assert_array_equal(after[f"encoder_{k}" if k.startswith("embed/") else k], src[k])
  kernel, bias = after["stitch/kernel"], after["stitch/bias"]  # the identity stitch, frozen: no stitch trained
  np.testing.assert_array_equal(kernel, np.eye(kernel.shape[0], dtype=kernel.dtype))
  assert not bias.any()
  meta = checkpoints.load_meta(str(tmp_path))
  assert meta["provenance"]["steps"] == 2 and meta["step"] == 2


def test_bad_swaps_are_one_line_and_write_nothing(cpus, tmp_path):
  from llmcpu.stitching import swap

  compile_dir, a, b, dec, _ = cpus
  other = tmp_path / "other-corpus"
  shutil.copytree(b, other)
  for meta_path in other.glob("checkpoints/*/meta/metadata"):
    meta = json.loads(meta_path.read_text())
    meta["config"]["data"]["corpus"] = "prose"
    meta_path.write_text(json.dumps(meta))
  bare = tmp_path / "bare"  # a compile dir holding ISA A's data but not ISA B's
  shutil.copytree(compile_dir, bare, ignore=shutil.ignore_patterns("byte"))
  cases = [
    (swap_config(a, dec), "holds a decoder-only CPU: it has no encoder to swap in"),
    (swap_config(dec, a), "holds a decoder; the decoder side of a swap is an encoder_decoder"),
    (swap_config(a, b, variant="nope"), "unknown swap variant 'nope'"),
    (swap_config(a, str(other)), "trained on corpus 'pairs' and the encoder's on 'prose'"),
    (swap_config(a, b, compile_dir=str(bare)), r"no compiler byte \(data.input_isa\) under"),
    (swap_config(a, ""), "no --config.encoder"),
    (swap_config(a, b, variant="native_xattn"), "native_xattn is the control of a CPU reading its own encoder"),
  ]
  for i, (config, pattern) in enumerate(cases):
    with pytest.raises(UserError, match=pattern):
      swap.swap_encoder(config, str(tmp_path / f"out{i}"), log=lambda _: None)
    assert not (tmp_path / f"out{i}" / "checkpoints").exists()


def test_stitched_config_round_trips_and_counts_its_parameters():
  from llmcpu.models.config import ModelConfig, expected_param_count

  a = models.create("encoder_decoder", "tiny", vocab_size=300).config
  b = models.create("encoder", "tiny", vocab_size=500, d_model=32, num_heads=4, d_ff=64, num_layers=3).config
  with pytest.raises(UserError, match="the encoder is 32 wide and the decoder 64.*model.stitch=linear"):
    dataclasses.replace(a, encoder_config=b)
  with pytest.raises(UserError, match="belong to an encoder_decoder, not a decoder"):
    dataclasses.replace(a, arch="decoder", stitch="linear")
  stitched = dataclasses.replace(a, encoder_config=b, stitch="linear")
  assert ModelConfig(**json.loads(json.dumps(dataclasses.asdict(stitched)))) == stitched  # as a checkpoint holds it
  model = models.create_from_config(stitched)
  assert models.param_count(model) == expected_param_count(stitched)
  assert model.encode(np.array([[5, 499, 7]])).shape == (1, 3, 64)  # id 499: legal for the encoder's ISA
  np.testing.assert_array_equal(np.asarray(model.stitch.kernel[...]), np.eye(32, 64, dtype=np.float32))


def test_pairing_refuses_splits_of_other_documents(compile_dir):
  from llmcpu import compilers, toolchain
  from llmcpu.data import compiled

  bpe, byte = (compilers.load(toolchain.compiler_dir(compile_dir, n)) for n in ("bpe600", "byte"))
  test = toolchain.load_split(compile_dir, "pairs", bpe, "test")
  paired = compiled.pair(test, toolchain.load_split(compile_dir, "pairs", byte, "test"))
  assert paired.fields["target"] is test.fields["target"] and paired.manifest["input_compiler"] == "byte"
  with pytest.raises(UserError, match="do not hold the same documents"):
    compiled.pair(test, toolchain.load_split(compile_dir, "pairs", byte, "validation"))
  with pytest.raises(UserError, match="needs a seq2seq corpus"):
    compiled.pair(toolchain.load_split(compile_dir, "prose", bpe, "test"), test)


# ------------------------------------------------------------------------------------------------- embedding readouts


def readout_config(encoder: str, **overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(encoder=encoder, preset="tiny", compile_dir="", length=24, pool=2, relative=0))
  c.update(seed=0, steps=3, batch_size=8)
  c.update(overrides)
  return c


@pytest.fixture(scope="module")
def readouts(cpus, tmp_path_factory):
  """An absolute and a relative readout of the MLM encoder's embeddings (3 steps each)."""
  from llmcpu.stitching import readout

  *_, mlm = cpus
  root = tmp_path_factory.mktemp("readouts")
  readout.train(readout_config(mlm), str(root / "abs"), log=lambda _: None)
  readout.train(readout_config(mlm, relative=6), str(root / "rel"), log=lambda _: None)
  return str(root / "abs"), str(root / "rel")


def test_a_readout_reads_its_encoder_frozen_and_exactly(cpus, readouts):
  from llmcpu.stitching import readout, states

  compile_dir, *_, mlm = cpus
  model, meta, comp = checkpoints.load_model(readouts[0])
  source = checkpoints.load_model(mlm)[0]
  params, src = named_params(model), named_params(source)
  np.testing.assert_array_equal(params["encoder_embed/table"], src["embed/table"])  # frozen: bit-identical
  for name in (k for k in src if k.startswith("encoder/")):
    np.testing.assert_array_equal(params[name], src[name], err_msg=name)
  assert meta["config"]["data"]["objective"] == "reconstruct" and meta["provenance"]["encoder"]["isa"] == "bpe600"
  docs = readout.programs(compile_dir, "pairs", comp, "test")[:8]
  own = states.embeddings(model, docs, 24)
  np.testing.assert_array_equal(own, states.embeddings(source, docs, 24))  # the readout's embedding is A's, exactly
  ids = np.full((8, 24), 0, np.int32)
  for i, d in enumerate(docs):
    ids[i, : len(d)], ids[i, len(d)] = d, 3
  np.testing.assert_array_equal(
    np.asarray(models.generate(model, ids, 6)), np.asarray(models.generate_from_embedding(model, own, 6))
  )
  with pytest.raises(UserError, match=r"embeddings must be finite \[batch, 32\]"):
    models.generate_from_embedding(model, np.ones((2, 5)), 6)


def test_a_relative_readout_cannot_tell_a_rotated_encoder(cpus, readouts):
  """Relative representations are invariant to an orthogonal map applied to embeddings and anchors alike."""
  from llmcpu.stitching import readout, states

  compile_dir, *_ = cpus
  model, _, comp = checkpoints.load_model(readouts[1])
  docs = readout.programs(compile_dir, "pairs", comp, "test")[:8]
  own, anchors = states.embeddings(model, docs, 24), np.asarray(model.prefix.anchors[...])
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(32, 32)))
  rotated = readout.with_anchors(model, anchors @ q)
  np.testing.assert_allclose(
    np.asarray(rotated.condition(jnp_f32(own @ q))), np.asarray(model.condition(jnp_f32(own))), atol=2e-5
  )
  texts = readout.read(model, own, comp, 6)
  assert readout.read(rotated, (own @ q).astype(np.float32), comp, 6) == texts


def jnp_f32(x):
  import jax.numpy as jnp

  return jnp.asarray(x, jnp.float32)


def test_reconstruction_scores_known_answers():
  """Calibration: the originals score perfectly, another program's text does not, noise scores ~0."""
  from llmcpu.stitching import readout

  refs = ["add 12 5 =", "copy cat =", "sort dcba =", "mul 3 4 ="]
  perfect = readout.reconstruction(refs, refs, np.ones(4))
  assert perfect["exact_match"] == 1.0 and perfect["token_f1"] == 1.0 and perfect["bleu"] == pytest.approx(100.0)
  shifted = readout.reconstruction(refs[1:] + refs[:1], refs, np.zeros(4))
  assert shifted["exact_match"] == 0.0 and shifted["token_f1"] < 0.3 and shifted["chrf"] < perfect["chrf"]
  noise = readout.reconstruction(["qzx vvk", "jjj", "", "w"], refs, np.zeros(4))
  assert noise["exact_match"] == 0.0 and noise["token_f1"] == 0.0


def test_readout_of_a_decoder_is_refused(cpus, tmp_path):
  from llmcpu.stitching import readout

  *_, dec, _ = cpus
  with pytest.raises(UserError, match="holds a decoder-only CPU"):
    readout.train(readout_config(dec), str(tmp_path), log=lambda _: None)
  assert not (tmp_path / "checkpoints").exists()


def test_shuffled_inputs_give_every_document_another_documents_input(compile_dir):
  from llmcpu.stitching import score

  bpe = compilers.load(toolchain.compiler_dir(compile_dir, "bpe600"))
  test = toolchain.load_split(compile_dir, "pairs", bpe, "test")
  shuffled, source = score.shuffled_inputs(test, seed=3)
  assert sorted(source) == list(range(test.num_docs)) and not np.any(source == np.arange(test.num_docs))
  for i, j in enumerate(source):
    assert shuffled.fields["input"].doc(i).tolist() == test.fields["input"].doc(int(j)).tolist()
    assert shuffled.fields["target"].doc(i).tolist() == test.fields["target"].doc(i).tolist()
  assert np.array_equal(score.shuffled_inputs(test, seed=3)[1], source)


def test_paired_penalty_sees_a_small_shift_that_document_difficulty_hides():
  from llmcpu.crosseval import intervals
  from llmcpu.stitching import score

  rng = np.random.default_rng(0)
  nbytes = rng.integers(20, 200, 300).astype(float)
  nll = nbytes * rng.uniform(0.5, 3.0, 300)  # documents of very different difficulty
  native = {"docs_nll": nll.tolist(), "docs_bytes": nbytes.tolist()}
  cell = {"docs_nll": (nll + 0.01 * nbytes).tolist(), "docs_bytes": nbytes.tolist()}  # 0.01 nats more every byte
  value, (lo, hi) = score.paired_penalty(native, cell, "bits_per_byte")
  assert value == pytest.approx(0.01 / np.log(2)) and hi - lo < 1e-9  # the same shift on every document
  unpaired = intervals.bootstrap(np.stack([nll, nbytes], 1), intervals.ratio(0, 1, 1 / np.log(2)))
  assert unpaired[1] - unpaired[0] > 10 * value  # either figure's own interval cannot see it
  hits_n, hits_c = [1, 1, 0, 1, 0] * 20, [1, 0, 0, 1, 0] * 20
  value, ci = score.paired_penalty({"hits": hits_n}, {"hits": hits_c}, "exact_match")
  assert value == pytest.approx(0.2) and ci[0] < 0.2 < ci[1]
  with pytest.raises(UserError, match="same documents"):
    score.paired_penalty({"hits": hits_n}, {"hits": hits_c[:-1]}, "exact_match")


def test_paired_share_lost_by_hand():
  from llmcpu.stitching import score

  rng = np.random.default_rng(1)
  nbytes = rng.integers(20, 200, 200).astype(float)
  own = nbytes * rng.uniform(0.5, 3.0, 200)
  other = own + nbytes * rng.uniform(0.05, 0.2, 200)  # another document's input costs 0.05–0.2 nats per byte
  native, shuffled = {"docs_nll": own, "docs_bytes": nbytes}, {"docs_nll": other, "docs_bytes": nbytes}
  cell = {"docs_nll": own + 0.3 * (other - own), "docs_bytes": nbytes}  # 30% of the worth lost on every document
  value, ci = score.paired_share_lost(native, cell, shuffled, "bits_per_byte")
  assert value == pytest.approx(0.3) and ci[0] == pytest.approx(0.3) and ci[1] == pytest.approx(0.3)
  noisy = {"docs_nll": own + (0.3 + rng.normal(0, 0.5, 200)) * (other - own), "docs_bytes": nbytes}
  expected = ((noisy["docs_nll"].sum() - own.sum()) / (other.sum() - own.sum())).item()
  value, ci = score.paired_share_lost(native, noisy, shuffled, "bits_per_byte")
  assert value == pytest.approx(expected) and ci[0] < value < ci[1] and ci.clusters == 200
  # clusters of 10 documents that share their noise: fewer independent draws, a wider interval
  shared = np.repeat(rng.normal(0, 0.5, 20), 10)
  clustered = {"docs_nll": own + (0.3 + shared) * (other - own), "docs_bytes": nbytes}
  _, iid = score.paired_share_lost(native, clustered, shuffled, "bits_per_byte")
  _, by_cluster = score.paired_share_lost(native | {"docs_clusters": np.repeat(np.arange(20), 10).tolist()},
                                          clustered, shuffled, "bits_per_byte")  # fmt: skip
  assert by_cluster.clusters == 20 and by_cluster[1] - by_cluster[0] > 1.5 * (iid[1] - iid[0])
  # exact match: native 0.6, shuffled 0.1, cell 0.35 → (0.6 − 0.35) / (0.6 − 0.1) = 0.5
  hits = lambda ones: {"hits": [1] * ones + [0] * (20 - ones)}  # noqa: E731
  value, ci = score.paired_share_lost(hits(12), hits(7), hits(2), "exact_match")
  assert value == pytest.approx(0.5) and ci[0] <= 0.5 <= ci[1]
  assert score.paired_share_lost(hits(2), hits(1), hits(2), "exact_match") == (None, None)  # the input is worth 0
  assert score.paired_share_lost(hits(2), hits(1), hits(3), "exact_match") == (None, None)  # or less than nothing
  # worth 1 answer in 20 (one document): a third of the resamples drop it, the share undefined there: no interval
  value, ci = score.paired_share_lost(hits(3), hits(3), hits(2), "exact_match")
  assert value == 0.0 and ci is None
  with pytest.raises(UserError, match="same documents"):
    score.paired_share_lost(hits(12), hits(7), {"hits": [0] * 19}, "exact_match")


def test_swap_report_penalties_by_hand(tmp_path):
  from llmcpu.experiments import swapping as swaps

  def row(a, b, variant, step, em, seed=0, enc=1):
    return {"corpus": "p", "decoder": a, "encoder": b, "variant": variant, "seed": seed, "step": step,
            "encoder_seed": enc, "exact_match": em, "exact_match_ci": (em - 0.01, em + 0.01),
            "bits_per_byte": 2.0 - em, "bits_per_byte_ci": None}  # fmt: skip

  rows = [
    row(a, a, "native", 1000, em, s, s) for a, em, s in (("x", 0.5, 0), ("y", 0.3, 0), ("x", 0.4, 1), ("y", 0.2, 1))
  ]
  rows += [row("x", "y", "stitch", 0, 0.0), row("x", "y", "stitch", 30, 0.2), row("y", "x", "stitch", 30, 0.25)]
  rows[1]["hits"], rows[6]["hits"] = [1, 0, 0] * 10, [1, 0, 0] * 9 + [0, 0, 0]  # y's native, y←x: paired answers
  rows += [row("x", "x", "stitch", 30, 0.45), row("y", "y", "stitch", 30, 0.1)]
  rows += [row(a, a, "shuffled", 1000, em, s, s) for a, em, s in (("x", 0.0, 0), ("y", 0.1, 0))]  # the calibration
  # prose (spans:): no exact answers, so the matrices and penalties are in bits per byte (added = worse)
  prose = [dict(r, corpus="q", exact_match=None, exact_match_ci=None) for r in rows]
  # two seed pairs (0:1 and 1:0): every cell is the mean ± std over them, each penalty against its own decoder seed
  pairs = [dict(r, corpus="r") for r in rows]
  pairs += [row(a, b, "stitch", 30, em, 1, 0) | {"corpus": "r"} for a, b, em in (("x", "y", 0.1), ("y", "x", 0.15))]
  pairs += [row(a, a, "stitch", 30, em, 1, 0) | {"corpus": "r"} for a, em in (("x", 0.35), ("y", 0.2))]
  exp = ml_collections.ConfigDict(dict(prompts=10, eval_docs=0))
  swaps.write_report(rows + prose + pairs, str(tmp_path), exp, 1.0)
  text = (tmp_path / "swap.md").read_text()
  p, q, r = (
    text[text.index("## p:") : text.index("## q:")],
    text[text.index("## q:") : text.index("## r:")],
    text[text.index("## r:") :],
  )
  # penalty = row A's native exact match (decoder seed) − the cell's last step: x←y 0.5 − 0.2, y←x 0.3 − 0.25, …
  assert "| x | +0.050 | +0.300 |" in p
  # y←x with answers: the paired penalty of its hits (0.333 − 0.300 = 0.033); it loses 1 of 30 answers and gains
  # none, so no resample can show a negative penalty: the interval starts at exactly 0
  assert "| y | +0.033 (+0.000–+0.1" in p
  # share of the input's worth lost: penalty / (native − shuffled): x←y 0.3 / 0.5, y←x 0.05 / 0.2, y←y 0.2 / 0.2
  assert "| x | +0.100 | +0.600 |" in p and "| y | +0.250 | +1.000 |" in p
  assert "| x | 0 | 0.500 (0.490–0.510) | 1.500 | 0.000 (-0.010–0.010) | 2.000 |" in p
  assert "| x ← y | stitch | 0.000 (-0.010–0.010) | 0.200 (0.190–0.210) | 0.500 |" in p
  assert "### q: stitch — penalty (bits per byte)" in q and "exact match" not in q
  # bits per byte 2 − em: x←y 1.8 − native 1.5 = +0.300 added, y←x 1.75 − 1.7 = +0.050
  assert "| x | +0.050 | +0.300 |" in q and "| y | +0.050 | +0.200 |" in q
  # x←y: pair 0:1 0.2 (native x seed 0: 0.5, penalty 0.3), pair 1:0 0.1 (native x seed 1: 0.4, penalty 0.3)
  sd = np.std([0.2, 0.1], ddof=1)
  assert f"| x | {np.mean([0.45, 0.35]):.3f} ± {sd:.3f} | 0.150 ± {sd:.3f} |" in r
  assert "| x | +0.050 ± 0.000 | +0.300 ± 0.000 |" in r
  # step 0 only pair 0:1 saved: no figure; native A: the mean over the decoder seeds
  assert f"| x ← y | stitch | — | 0.150 ± {sd:.3f} | 0.450 |" in r
  for name in ("swap_p.png", "swap_recovery_p.png", "swap_q.png", "swap_r.png"):
    assert (tmp_path / name).stat().st_size > 0
  assert (tmp_path / "results.jsonl").read_text().count("\n") == len(rows + prose + pairs)


def test_swap_report_against_the_control_by_hand(tmp_path):
  from llmcpu.experiments import swapping as swaps

  def row(a, b, variant, step, hits, seed=0, enc=1):
    em = float(np.mean(hits))
    return {"corpus": "p", "decoder": a, "encoder": b, "variant": variant, "seed": seed, "step": step,
            "encoder_seed": enc, "exact_match": em, "exact_match_ci": None, "hits": hits,
            "bits_per_byte": 2.0 - em, "bits_per_byte_ci": None}  # fmt: skip

  ones = lambda k: [1] * k + [0] * (20 - k)  # noqa: E731
  rows = [row("x", "x", "native", 1000, ones(8), 0, 0), row("x", "x", "shuffled", 1000, ones(0), 0, 0)]
  rows += [
    row("x", "x", "native_xattn", 300, ones(12), 0, 0),
    row("x", "x", "native_xattn_shuffled", 300, ones(2), 0, 0),
  ]
  rows += [row("x", "x", "stitch_xattn", 300, ones(10))]
  exp = ml_collections.ConfigDict(dict(prompts=20, eval_docs=0))
  swaps.write_report(rows, str(tmp_path), exp, 1.0)
  text = (tmp_path / "swap.md").read_text()
  assert "| x | 0 + cross-attention (300 steps) | 0.600 | 1.400 | 0.100 | 1.900 |" in text
  section = lambda title: text[text.index(title) :].split("\n")[4]  # noqa: E731  (the first row of its matrix)
  # against the plain native: 0.4 − 0.5 = −0.1 (the 300 more steps of cross-attention show as a gain), share −0.25
  assert section("stitch_xattn — penalty (exact match)\n").startswith("| x | -0.100 (")
  assert section("stitch_xattn — share of the input's worth lost (exact match)\n").startswith("| x | -0.250 (")
  # against the control: 0.6 − 0.5 = +0.1 of an input worth 0.6 − 0.1 = 0.5: share +0.2, with its paired interval
  assert section("penalty (exact match), against native + cross-attention").startswith("| x | +0.100 (+0.000–")
  lost = section("share of the input's worth lost (exact match), against native + cross-attention")
  assert lost.startswith("| x | +0.200 (+0.000–") and "20 clusters" in lost
  assert "| x ← x | stitch_xattn | 0.500 | 0.400 | 0.600 |" in text  # recovery, beside both references
  pairs = swaps.pairs_of(rows)
  assert pairs == [(0, 1)] and swaps.Cells(rows, "p").variants == ["stitch_xattn"]


def test_languages_report_from_rows(tmp_path):
  from llmcpu.experiments import languages

  base = {"corpus": "p", "reader": "x", "bleu": 10.0, "chrf": 40.0, "token_f1": 0.5, "token_f1_ci": (0.4, 0.6),
          "exact_match": 0.1, "exact_match_ci": (0.05, 0.15), "cosine": 0.9, "cosine_ci": None,
          "chrf_floor": 20.0, "token_f1_floor": 0.4}  # fmt: skip
  base |= languages._floors(base, {"chrf": 20.0, "token_f1": 0.4})  # (40 − 20) / 80, (0.5 − 0.4) / 0.6
  arith = {"corpus": "p", "reader": "x", "source": "y", "source_seed": 0, "kind": "isa", "alignment": "procrustes",
           "analogies": 200, "candidates": 700, "decoded_exact_match_ci": None, "nn_top1_ci": None}  # fmt: skip
  rows = [
    base | {"source": "x", "source_seed": 0, "kind": "native", "alignment": "none"},
    base | {"source": "y", "source_seed": 0, "kind": "isa", "alignment": "procrustes", "exact_match": 0.0},
    base | {"source": "ids", "source_seed": None, "alignment": "none"},
    base | {"source": "ids", "source_seed": None, "alignment": "procrustes", "chrf": 10.0, "chrf_above_floor": -0.125},
    arith | {"query": "analogy", "decoded_exact_match": 0.02, "decoded_exact_match_ci": (0.0, 0.05), "nn_top1": 0.3,
             "nn_top1_ci": (0.25, 0.35)},
    arith | {"query": "c_only", "decoded_exact_match": 0.0, "nn_top1": 0.4},
    arith | {"query": "b_only", "decoded_exact_match": 0.01, "nn_top1": 0.05},
  ]  # fmt: skip
  exp = ml_collections.ConfigDict(dict(programs=200, readout=dict(pool=4, relative=64, steps=800)))
  languages.write_report(rows, str(tmp_path), exp, 1.0)
  text = (tmp_path / "languages.md").read_text()
  assert "- p, reader x: template floor chrF 20.0, token F1 0.400" in text
  row = "| p | x | own encoder | none | 10.0 | 40.0 | 0.500 (0.400–0.600) | 0.100 (0.050–0.150) | 0.900 |"
  assert row + " 0.250 | 0.167 |" in text
  assert "| p | x | y | procrustes | 10.0 | 40.0 | 0.500 (0.400–0.600) | 0.000 (0.050–0.150) |" in text
  assert "| p | x | token ids, zero-padded (control) | none |" in text
  # the ids through the fitted map: chrF 10 is below the floor of 20: (10 − 20) / 80
  assert "| p | x | token ids, zero-padded (control) | procrustes | 10.0 | 10.0 |" in text and "| -0.125 |" in text
  # the analogy beside its baselines: decoded (analogy, c only, b only), then top-1 (the same three)
  expected = (
    "| p | x | y (procrustes) | analogy | 0.020 (0.000–0.050) | 0.000 | 0.010 | 0.300 (0.250–0.350) | 0.400 | 0.050 |"
  )
  assert expected in text and "| c_only |" not in text
