"""Exact bits per byte on any window: every content target carries the UTF-8 bytes of its own piece.

The pipeline's ``target_bytes`` come from ``Compiler.piece_bytes``; these tests recompute every figure independently:
the bytes of a piece from ``compiler.decode([id])`` (or 1 for a byte piece, read off the piece table), a document's
bytes from its raw text, its documents' order from the split, on real compiled splits (``bpe:600``, ``byte`` and
``char``).
"""

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import prose_corpus, tiny_config

from llmcpu import compilers, toolchain
from llmcpu.data import compiled
from llmcpu.data.pipeline import Pipeline
from llmcpu.errors import UserError
from llmcpu.specials import EOS_ID, FIRST_REGULAR_ID
from llmcpu.training import loss, trainer

BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory) -> str:
  """The prose corpus compiled by ``char`` (trained on it)."""
  workdir = str(tmp_path_factory.mktemp("compiled_char"))
  built = toolchain.build_compilers(compilers.parse_list("char"), [prose_corpus()], workdir, log=lambda _: None)
  toolchain.compile_corpora([prose_corpus()], built, workdir, log=lambda _: None)
  return workdir


def where(isa: str, compile_dir: str, char_dir: str) -> str:
  return char_dir if isa == "char" else compile_dir


def load(workdir: str, isa: str, corpus: str, split: str):
  compiler = compilers.load(toolchain.compiler_dir(workdir, compilers.parse(isa).name))
  return compiler, toolchain.load_split(workdir, corpus, compiler, split)


def independent_bytes(compiler) -> np.ndarray:
  """Bytes per id without ``piece_bytes``: 1 for a byte piece, else what the id decodes to on its own."""
  out = np.zeros(compiler.vocab_size, np.int64)
  for i in range(FIRST_REGULAR_ID, compiler.vocab_size):
    out[i] = 1 if BYTE_PIECE.fullmatch(compiler.id_to_piece(i)) else len(compiler.decode([i]).encode("utf-8"))
  return out


def one_pass(p: Pipeline) -> dict[str, np.ndarray]:
  batches = list(p.eval_batches())
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def raw_bytes(split, field: str) -> np.ndarray:
  """Each document's raw UTF-8 bytes, from the stored counts (written from the texts at compile time)."""
  return np.asarray(split.fields[field].nbytes)


def test_load_split_carries_piece_bytes_and_a_bare_split_is_refused(compile_dir):
  compiler, split = load(compile_dir, "bpe:600", "prose", "test")
  np.testing.assert_array_equal(split.piece_bytes, compiler.piece_bytes)
  bare = compiled.load(toolchain.split_dir(compile_dir, "prose", compiler.name, "test"))
  assert bare.piece_bytes is None
  with pytest.raises(UserError, match="load_split") as e:
    Pipeline(bare, objective="lm", global_batch=2, seed=0, length=16)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("isa", ["bpe:600", "byte", "char"])
def test_lm_pass_bytes_are_each_documents_raw_bytes(compile_dir, char_dir, isa):
  """(a) One eval pass: Σ target_bytes = the split's raw bytes, and per document (by target_docs) each one's."""
  compiler, split = load(where(isa, compile_dir, char_dir), isa, "prose", "validation")
  p = Pipeline(split, objective="lm", global_batch=8, seed=0, length=64, shuffle=False, document_ids=True)
  rows = one_pass(p)
  nbytes = raw_bytes(split, "text")
  assert rows["target_bytes"].sum(dtype=np.float64) == nbytes.sum()
  docs = rows["target_docs"]
  np.testing.assert_array_equal(np.bincount(docs[docs >= 0], rows["target_bytes"][docs >= 0], split.num_docs), nbytes)
  # Content targets in corpus order are the documents' ids in order, each labelled with its own document.
  content = docs >= 0
  np.testing.assert_array_equal(content, (rows["weights"] > 0) & (rows["targets"] != EOS_ID))
  np.testing.assert_array_equal(rows["targets"][content], np.asarray(split.fields["text"].tokens))
  np.testing.assert_array_equal(docs[content], np.repeat(np.arange(split.num_docs), split.fields["text"].lengths))
  assert np.all(docs[~content] == -1)


def test_lm_and_lm_targets_on_pairs(compile_dir):
  """Programs: ``lm`` counts input and target bytes, ``lm_targets`` the target's only."""
  _, split = load(compile_dir, "bpe:600", "pairs", "test")
  for objective, fields in (("lm", ("input", "target")), ("lm_targets", ("target",))):
    p = Pipeline(split, objective=objective, global_batch=4, seed=0, length=16, shuffle=False, document_ids=True)
    rows = one_pass(p)
    nbytes = sum(raw_bytes(split, f) for f in fields)
    docs = rows["target_docs"]
    np.testing.assert_array_equal(np.bincount(docs[docs >= 0], rows["target_bytes"][docs >= 0], split.num_docs), nbytes)


def window_bound_holds(nll_RxL: np.ndarray, target_bytes_RxL: np.ndarray, content_RxL: np.ndarray) -> None:
  """bpb ≤ (bits per content token) / (fewest bytes of a content token), per window and per batch."""
  for nll, nb, c in [
    *zip(nll_RxL, target_bytes_RxL, content_RxL, strict=True),
    (nll_RxL, target_bytes_RxL, content_RxL),
  ]:
    if not c.any():
      assert nb.sum() == 0
      continue
    bits = nll[c].sum() / math.log(2)
    assert nb[c].min() >= 1 and nb.sum() == nb[c].sum()
    assert bits / nb.sum() <= bits / c.sum() / nb[c].min() * (1 + 1e-12)


@pytest.mark.parametrize("isa", ["char", "bpe:600"])
def test_lm_target_bytes_are_each_pieces_bytes_and_bound_bpb(compile_dir, char_dir, isa):
  """(b) Every window of an epoch: bytes = the target piece's own bytes; bpb ≤ bits/token ÷ min bytes per token."""
  compiler, split = load(where(isa, compile_dir, char_dir), isa, "prose", "train")
  indep = independent_bytes(compiler)
  p = Pipeline(split, objective="lm", global_batch=512, seed=0, length=64)
  rng = np.random.default_rng(0)
  for step in range(p.steps_per_epoch):
    b = p.batch(step)
    content = (b["weights"] > 0) & (b["targets"] != EOS_ID)
    np.testing.assert_array_equal(b["target_bytes"], np.where(content, indep[b["targets"]], 0))
    # Arbitrary non-negative per-token NLLs: heavy-tailed, and all mass on the cheapest tokens.
    window_bound_holds(rng.exponential(rng.uniform(0.1, 8), content.shape), b["target_bytes"], content)
    cheap = np.where(content & (b["target_bytes"] == b["target_bytes"][content].min()), 8.0, 0.0)
    window_bound_holds(cheap, b["target_bytes"], content)
  if isa == "char":  # the char ISA: ≥ 1 byte per token, so bits per byte never exceeds bits per token
    assert indep[FIRST_REGULAR_ID:].min() >= 1


def test_metric_sums_and_finalize_agree_with_the_bytes(compile_dir):
  """loss.metric_sums/finalize on a real batch with random logits = Σ content NLL / (ln 2 · Σ piece bytes)."""
  compiler, split = load(compile_dir, "bpe:600", "prose", "validation")
  b = Pipeline(split, objective="lm", global_batch=4, seed=0, length=64, shuffle=False).batch(0)
  logits = jax.random.normal(jax.random.key(0), (*b["targets"].shape, compiler.vocab_size)) * 3
  sums = jax.device_get(loss.metric_sums(logits, jnp.asarray(b["targets"]), b["weights"], b["target_bytes"]))
  nll = np.asarray(loss.token_nll(logits, jnp.asarray(b["targets"])), np.float64)
  content = (b["weights"] > 0) & (b["targets"] != EOS_ID)
  want = nll[content].sum() / (math.log(2) * compiler.piece_bytes[b["targets"][content]].sum())
  assert loss.finalize(sums)["bits_per_byte"] == pytest.approx(want, rel=1e-5)


def test_mlm_bytes_are_the_chosen_pieces(compile_dir):
  """(c) MLM: each chosen token its own piece's bytes; its document from its place in the packed stream."""
  compiler, split = load(compile_dir, "bpe:600", "prose", "validation")
  indep = independent_bytes(compiler)
  p = Pipeline(split, objective="mlm", global_batch=8, seed=0, length=64, shuffle=False, document_ids=True)
  rows = one_pass(p)
  chosen = rows["weights"] > 0
  np.testing.assert_array_equal(rows["target_bytes"], np.where(chosen, indep[rows["targets"]], 0))
  stream_doc = np.repeat(np.arange(split.num_docs), split.fields["text"].lengths + 2)  # [BOS] + ids + [EOS]
  flat_docs, flat_chosen = rows["target_docs"].ravel(), chosen.ravel()
  np.testing.assert_array_equal(flat_docs[flat_chosen], stream_doc[np.flatnonzero(flat_chosen)])
  assert np.all(flat_docs[~flat_chosen] == -1)


@pytest.mark.parametrize("isa", ["bpe:600", "byte"])
def test_seq2seq_bytes_are_the_target_pieces(compile_dir, isa):
  """(c) seq2seq: untruncated, a pass sums to each target's raw bytes; truncated, to the bytes actually scored."""
  compiler, split = load(compile_dir, isa, "pairs", "test")
  indep = independent_bytes(compiler)
  target = split.fields["target"]
  longest_in, longest_tg = int(split.fields["input"].lengths.max()) + 1, int(target.lengths.max()) + 1
  for target_length, truncate in ((longest_tg, False), (max(2, longest_tg - 3), True)):
    p = Pipeline(
      split,
      objective="seq2seq",
      global_batch=8,
      seed=0,
      input_length=longest_in,
      target_length=target_length,
      shuffle=False,
      document_ids=True,
      truncate=truncate,
    )
    rows = one_pass(p)
    tgt, docs = rows["decoder_targets"], rows["target_docs"]
    content = (rows["decoder_weights"] > 0) & (tgt != EOS_ID)
    np.testing.assert_array_equal(rows["target_bytes"], np.where(content, indep[tgt], 0))
    np.testing.assert_array_equal(docs >= 0, content)
    per_doc = np.bincount(docs[content], rows["target_bytes"][content], split.num_docs)
    kept = [indep[target.doc(d)[: target_length - 1]].sum() for d in range(split.num_docs)]
    np.testing.assert_array_equal(per_doc, kept)
    if not truncate:
      np.testing.assert_array_equal(per_doc, raw_bytes(split, "target"))
    else:
      assert per_doc.sum() < raw_bytes(split, "target").sum() and p.summary()["truncated_targets"] > 0


def test_span_corruption_bytes_are_the_noise_pieces(compile_dir):
  """(c) span corruption: only noise tokens carry bytes (their own); each row's noise comes from its document."""
  compiler, split = load(compile_dir, "bpe:600", "prose", "validation")
  indep = independent_bytes(compiler)
  p = Pipeline(
    split, objective="span_corruption", global_batch=16, seed=0, input_length=64, target_length=24, document_ids=True
  )
  rows = one_pass(p)
  tgt, docs = rows["decoder_targets"], rows["target_docs"]
  noise = (rows["decoder_weights"] > 0) & (tgt >= FIRST_REGULAR_ID)  # not sentinels, not EOS
  np.testing.assert_array_equal(rows["target_bytes"], np.where(noise, indep[tgt], 0))
  np.testing.assert_array_equal(docs >= 0, noise)
  doc_ids = [set(split.fields["text"].doc(d).tolist()) for d in range(split.num_docs)]
  for row_docs, row_tgt, row_noise in zip(docs, tgt, noise, strict=True):
    ds = np.unique(row_docs[row_noise])
    assert len(ds) <= 1 and set(row_tgt[row_noise].tolist()) <= (doc_ids[ds[0]] if len(ds) else set())
  per_doc = np.bincount(docs[noise], rows["target_bytes"][noise], split.num_docs)
  assert np.all(per_doc <= raw_bytes(split, "text")) and per_doc.sum() > 0


def test_trainer_bpb_on_char_never_exceeds_bits_per_token(char_dir, tmp_path):
  """(d) A tiny decoder on char: every logged train window and the eval keep bpb ≤ bits per content token.

  loss/ln 2 is over weighted tokens (EOS included); bits per content token ≤ that × weighted / content tokens, and
  on char every content token has ≥ 1 byte. The old per-document bytes put a document's bytes on its EOS, which gave
  windows without an EOS no bytes and windows with one many times the bits per token.
  """
  config = tiny_config("decoder", char_dir, data__isa="char", train__steps=4)
  config.train.eval_every, config.train.eval_batches = 4, 2
  workdir = str(tmp_path)
  result = trainer.train(config, workdir, log=lambda _: None)
  run = trainer.resolve(config, workdir)

  def ratio(batches):
    weights = sum(float((b["weights"] > 0).sum()) for b in batches)
    content = sum(float(((b["weights"] > 0) & (b["targets"] != EOS_ID)).sum()) for b in batches)
    return weights / content

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [r for r in map(json.loads, f) if "train/loss" in r]
  assert len(rows) == 4
  for r in rows:
    bound = r["train/loss"] / math.log(2) * ratio([run.train_data.batch(r["step"] - 1)])
    assert 0 < r["train/bits_per_byte"] <= bound * (1 + 1e-5), r
  eval_batches = [b for _, b in zip(range(2), run.eval_data.eval_batches(), strict=False)]
  ev = result.eval
  assert 0 < ev["bits_per_byte"] <= ev["loss"] / math.log(2) * ratio(eval_batches) * (1 + 1e-5)
