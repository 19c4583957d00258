"""The teacher-forced own-vs-other-prompt gap (llmcpu.crosseval.prompt_gap) against an independent recompute: each
document's prompt and target compiled on their own from the raw text, scored one unpadded row at a time through
the model, log-softmax in float64 numpy."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

import llmcpu.models as models
from llmcpu import specials
from llmcpu.crosseval import prompt_gap
from llmcpu.crosseval.library import Library
from llmcpu.errors import UserError
from llmcpu.training import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT, TARGET = 48, 24


@pytest.fixture(scope="module")
def docs_of(compile_dir):
  lib = Library(compile_dir)
  comp = lib.compiler("bpe:600")
  name = lib.corpus_name("prose", comp)
  split = lib.split(name, comp, "train")  # the fixture's test split holds 4 documents: the train split has more
  raw = lib.raw_texts(name, comp, "train")["text"]
  byte = lib.compiler("byte")
  compiled = [(comp, split), (byte, lib.split(lib.corpus_name("prose", byte), byte, "train"))]
  cuts = lib.prompt_cuts("prose", [comp, byte], "train", PROMPT, TARGET + 24)
  ends = prompt_gap.target_ends(raw, compiled, cuts, TARGET)
  docs = sorted(ends)[:6]
  return comp, split, raw, cuts, ends, docs


def _log_softmax64(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _target_nll64(model, arch, prompt, target, comp=None) -> float:
  """NLL (nats) of ``target`` after ``prompt``, one unpadded row as the CPU is trained: a decoder ``[BOS] prompt
  target``, an encoder-decoder ``prompt EOS`` → ``[BOS] tail target``, on prose (``comp`` given) the tail being the
  prompt's last ids whose decoded bytes (at least 1 each) fit its ``decoder_context``, counted one id at a time."""
  if arch == "decoder":
    seq = [specials.BOS_ID, *prompt, *target]
    logp = _log_softmax64(model(np.asarray([seq[:-1]], np.int32))[0])
    rows = range(len(seq) - 1 - len(target), len(seq) - 1)
  else:
    tail, used = [], 0
    for t in reversed(list(prompt) if comp is not None else []):
      used += max(len(comp.decode([t]).encode("utf-8")), 1)
      if used > model.config.decoder_context:
        break
      tail.insert(0, t)
    dec = [specials.BOS_ID, *tail, *target[:-1]]
    logp = _log_softmax64(model(np.asarray([[*prompt, specials.EOS_ID]]), np.asarray([dec], np.int32))[0])
    rows = range(len(tail), len(tail) + len(target))
  return -sum(logp[r, t] for r, t in zip(rows, target, strict=True))


def _reference(model, arch, comp, raw, cuts, ends, docs, other):
  """bits per byte own / other from each document's text, one unpadded row at a time."""
  nll = {"own": 0.0, "other": 0.0}
  nbytes = 0
  for i, d in enumerate(docs):
    b = raw[d].encode("utf-8")
    target_text = b[cuts[d] : ends[d]].decode("utf-8")
    target = comp.encode(target_text)
    nbytes += len(target_text.encode("utf-8"))
    for key, src in (("own", d), ("other", docs[other[i]])):
      prompt = comp.encode(raw[src].encode("utf-8")[: cuts[src]].decode("utf-8"))
      nll[key] += _target_nll64(model, arch, prompt, target, comp)
  return nll["own"] / (math.log(2) * nbytes), nll["other"] / (math.log(2) * nbytes), nbytes


def test_derangement():
  for n in (2, 3, 17):
    other = prompt_gap.derangement(n, seed=n)
    assert sorted(other) == list(range(n)) and all(other != np.arange(n))
  with pytest.raises(UserError):
    prompt_gap.derangement(1, 0)


@pytest.mark.slow  # two tiny CPUs compiled and scored twice: ~45 s that would push the default run past 10 minutes
@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_gap_matches_an_independent_recompute(docs_of, arch):
  comp, split, raw, cuts, ends, docs = docs_of
  model = models.create(arch, "tiny", comp.vocab_size, seed=3)
  got = prompt_gap.prompt_gap(model, arch, comp, split, cuts, ends, docs, seed=1, batch_size=4)
  own, other, nbytes = _reference(model, arch, comp, raw, cuts, ends, docs, prompt_gap.derangement(len(docs), 1))
  assert got["target_bytes_total"] == nbytes
  np.testing.assert_allclose([got["bpb_own"], got["bpb_other"]], [own, other], rtol=2e-5)
  np.testing.assert_allclose(got["gap"], other - own, atol=1e-4)
  assert got["documents"] == len(docs) and got["gap_ci"] is not None
  assert got["gap_ci"][0] <= got["gap"] <= got["gap_ci"][1]
  assert got["head_bpb_own"] > 0  # the first bytes are scored too


def test_head_table_counts_the_first_bytes():
  own = [np.array([1.0, 2.0, 3.0]), np.array([4.0])]
  other = [np.array([2.0, 2.0, 5.0]), np.array([1.0])]
  nbytes = [np.array([3.0, 4.0, 2.0]), np.array([9.0])]
  t = prompt_gap.gap_table(own, other, nbytes, head_bytes=7)
  np.testing.assert_array_equal(t, [[6, 9, 9, 3, 4, 7], [4, 1, 9, 0, 0, 0]])


@pytest.mark.slow  # trains two CPUs and starts the script twice: about a minute on 2 cores
def test_measure_and_script_on_trained_checkpoints(compile_dir, tmp_path):
  """Two runs (a decoder and an encoder-decoder, 2 steps each) on the same cuts; the script prints one line each."""
  runs = []
  for arch in ("decoder", "encoder_decoder"):
    c = tiny_config(arch, compile_dir, train__steps=2, checkpoint__every=2)
    c.data.corpus, c.data.input_length, c.data.target_length = "prose", 64, 32
    trainer.train(c, str(tmp_path / arch), log=lambda _: None)
    runs.append(str(tmp_path / arch))
  rows = prompt_gap.measure(runs, split="train", prompt_bytes=PROMPT, target_bytes=TARGET, num_docs=6, log=print)
  assert [r["arch"] for r in rows] == ["decoder", "encoder_decoder"]
  assert rows[0]["target_bytes_total"] == rows[1]["target_bytes_total"] and rows[0]["documents"] == 6
  out = tmp_path / "gap.jsonl"
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "prompt_gap.py"), *runs, "--split=train", "--docs=6"]
  cmd += [f"--prompt_bytes={PROMPT}", f"--target_bytes={TARGET}", f"--out={out}", "--per_byte=3"]
  env = dict(os.environ, PYTHONPATH=ROOT)
  p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  assert p.stdout.count("bits per byte own") == 2 and len(out.read_text().splitlines()) == 2
  assert p.stdout.count("gap per target byte") == 2
  assert [[b["byte"] for b in json.loads(r)["per_byte"]] for r in out.read_text().splitlines()] == [[0, 1, 2, 3]] * 2
  p = subprocess.run(cmd[:3] + ["--prompt_bytes=0"], capture_output=True, text=True, env=env, timeout=300)
  assert p.returncode != 0 and "error:" in p.stderr and "Traceback" not in p.stderr


def test_byte_table_spreads_each_id_over_its_bytes():
  """Hand-computed: an id of w bytes puts (other − own) / (w ln 2) on each of its bytes; short targets count 0."""
  own = [np.array([1.0, 2.0]), np.array([4.0])]
  other = [np.array([3.0, 2.5]), np.array([1.0])]
  nbytes = [np.array([2.0, 1.0]), np.array([1.0])]
  t = prompt_gap.byte_table(own, other, nbytes, last_byte=3) * math.log(2)
  np.testing.assert_allclose(t[:, :4], [[1.0, 1.0, 0.5, 0.0], [-3.0, 0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(t[:, 4:] / math.log(2), [[1, 1, 1, 0], [1, 0, 0, 0]])
  figs = prompt_gap.byte_figures(prompt_gap.byte_table(own, other, nbytes, last_byte=3))
  assert [f["documents"] for f in figs] == [2, 1, 1, 0]
  np.testing.assert_allclose([f["gap"] for f in figs[:3]], np.array([-1.0, 1.0, 0.5]) / math.log(2))
  assert math.isnan(figs[3]["gap"]) and figs[3]["gap_ci"] is None  # no document reaches byte 3


def test_per_byte_gap_matches_a_per_document_recompute(docs_of, compile_dir):
  """On the byte ISA (one id per byte) the mean gap at byte k, recomputed one document at a time from
  ``target_nll``'s NLLs; weighted by the documents reaching each byte, it sums to the whole-target gap."""
  _, _, raw, cuts, ends, docs = docs_of
  lib = Library(compile_dir)
  byte = lib.compiler("byte")
  split = lib.split(lib.corpus_name("prose", byte), byte, "train")
  model = models.create("decoder", "tiny", byte.vocab_size, seed=3)
  last = max(ends[d] - cuts[d] for d in docs) - 1  # the last byte of the longest target
  got = prompt_gap.prompt_gap(model, "decoder", byte, split, cuts, ends, docs, seed=1, batch_size=8, per_byte=last)
  other = prompt_gap.derangement(len(docs), 1)
  parts = [prompt_gap.split_ids(byte, split, d, cuts[d], ends[d]) for d in docs]
  prompts = [p for p, _, _ in parts] + [parts[j][0] for j in other]
  targets = [t for _, t, _ in parts] * 2
  nll = prompt_gap.target_nll(model, "decoder", prompts, targets, batch_size=len(prompts))  # one batch: one compile
  sums, counts = np.zeros(last + 1), np.zeros(last + 1)
  for i, d in enumerate(docs):  # one document at a time, position i of its target = byte i
    a, b = nll[i], nll[len(docs) + i]
    assert len(a) == ends[d] - cuts[d]
    sums[: len(a)] += (b - a) / math.log(2)
    counts[: len(a)] += 1
  rows = got["per_byte"]
  assert [r["byte"] for r in rows] == list(range(last + 1)) and [r["documents"] for r in rows] == counts.tolist()
  np.testing.assert_allclose([r["gap"] for r in rows], sums / counts, atol=1e-5)
  assert abs(rows[0]["gap"]) < 1e-6  # byte 0 is the same space after the same prompts, permuted: 0 by symmetry
  weighted = sum(r["gap"] * r["documents"] for r in rows) / got["target_bytes_total"]
  np.testing.assert_allclose(weighted, got["gap"], atol=1e-6)
  assert all(r["gap_ci"] is None or r["gap_ci"][0] <= r["gap"] <= r["gap_ci"][1] for r in rows)


def test_prompts_longer_than_the_cpu_reads_are_refused(docs_of):
  comp, split, raw, cuts, ends, docs = docs_of
  model = models.create("decoder", "tiny", comp.vocab_size, seed=3)
  with pytest.raises(UserError, match="lower --prompt_bytes"):
    prompt_gap.prompt_gap(model, "decoder", comp, split, cuts, ends, docs, max_row_ids=10)
  with pytest.raises(UserError, match="lower --prompt_bytes"):
    prompt_gap.prompt_gap(model, "encoder_decoder", comp, split, cuts, ends, docs, max_prompt_ids=5)


@pytest.mark.slow  # two tiny CPUs compiled and scored twice
@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_program_gap_matches_an_independent_recompute(compile_dir, arch):
  """Programs: each answer after its own program vs another's, recomputed from the raw texts compiled one by one,
  fed as the CPU is trained, one unpadded row at a time, float64 log-softmax."""
  lib = Library(compile_dir)
  comp = lib.compiler("bpe:600")
  name = lib.corpus_name("pairs", comp)
  split = lib.split(name, comp, "test")
  raw = lib.raw_texts(name, comp, "test")
  docs = list(range(0, 12, 2))
  model = models.create(arch, "tiny", comp.vocab_size, seed=3)
  got = prompt_gap.program_gap(model, arch, comp, split, docs, seed=1, batch_size=4)
  other = prompt_gap.derangement(len(docs), 1)
  nll = {"own": 0.0, "other": 0.0}
  nbytes = 0
  for i, d in enumerate(docs):
    target = comp.encode(raw["target"][d])
    nbytes += len(raw["target"][d].encode("utf-8"))
    for key, src in (("own", d), ("other", docs[other[i]])):
      nll[key] += _target_nll64(model, arch, comp.encode(raw["input"][src]), target)
  assert got["target_bytes_total"] == nbytes and got["documents"] == len(docs)
  want = [nll["own"] / (math.log(2) * nbytes), nll["other"] / (math.log(2) * nbytes)]
  np.testing.assert_allclose([got["bpb_own"], got["bpb_other"]], want, rtol=2e-5)
  assert got["gap_ci"] is not None and got["gap_ci"][0] <= got["gap"] <= got["gap_ci"][1]


KEEP = 16


def _word_start_offsets(raw: bytes) -> set[int]:
  """Offsets of a space that follows a non-space and precedes a word character (an independent regex)."""
  return {m.start() for m in re.finditer(rb"(?<=\S) (?=[A-Za-z0-9_\x80-\xff])", raw)}


def _token_end_offsets(comp, ids, upto: int) -> set[int]:
  """Byte offsets (≤ ``upto``) at which an id ends: the length of each decoded prefix of the document's ids."""
  ids, out = [int(t) for t in ids], set()
  for k in range(1, len(ids) + 1):
    out.add(end := len(comp.decode(ids[:k]).encode("utf-8")))
    if end > upto:
      break
  return out


def test_splice_points_are_the_shared_word_starts_before_the_kept_bytes(compile_dir, docs_of):
  comp, split, raw, cuts, ends, docs = docs_of
  lib = Library(compile_dir)
  byte = lib.compiler("byte")
  byte_split = lib.split(lib.corpus_name("prose", byte), byte, "train")
  got = prompt_gap.splice_points(raw, [(comp, split), (byte, byte_split)], {d: cuts[d] for d in docs}, KEEP)
  assert got, "the fixture should have documents with a tail start"
  for d in docs:
    b = raw[d].encode("utf-8")
    shared = _word_start_offsets(b) & _token_end_offsets(comp, split.fields["text"].doc(d), cuts[d])
    shared &= _token_end_offsets(byte, byte_split.fields["text"].doc(d), cuts[d])
    want = sorted(p for p in shared if 0 < p <= cuts[d] - KEEP)
    assert (got[d].tolist() if d in got else []) == want


@pytest.mark.slow  # a tiny decoder scored one unpadded row at a time in float64: ~20 s
def test_kept_tail_gap_matches_a_recompute_from_spliced_text(docs_of):
  """The other prompt is another document's opening (its text up to its last shared word start at or before both
  tail starts), then this document's own text from its tail start to the cut, compiled as one text: the id-level
  splice must score the same."""
  comp, split, raw, cuts, ends, docs = docs_of
  points = prompt_gap.splice_points(raw, [(comp, split)], {d: cuts[d] for d in docs}, KEEP)
  docs = [d for d in docs if d in points]
  model = models.create("decoder", "tiny", comp.vocab_size, seed=5)
  got = prompt_gap.prompt_gap(model, "decoder", comp, split, cuts, ends, docs, seed=2, batch_size=4, points=points)
  other = prompt_gap.derangement(len(docs), 2)
  nll_own = nll_other = 0.0
  nbytes, opened = 0, []
  for i, d in enumerate(docs):
    b, j = raw[d].encode("utf-8"), docs[other[i]]
    start = int(points[d][-1])
    opening = max([int(p) for p in points[j] if p <= start], default=0)
    opened.append(opening)
    target = comp.encode(b[cuts[d] : ends[d]].decode("utf-8"))
    nbytes += ends[d] - cuts[d]
    spliced = raw[j].encode("utf-8")[:opening] + b[start : cuts[d]]
    assert len(spliced) <= cuts[d]
    nll_own += _target_nll64(model, "decoder", comp.encode(b[: cuts[d]].decode("utf-8")), target)
    nll_other += _target_nll64(model, "decoder", comp.encode(spliced.decode("utf-8")), target)
  np.testing.assert_allclose(
    [got["bpb_own"], got["bpb_other"]], np.array([nll_own, nll_other]) / (math.log(2) * nbytes), rtol=2e-5
  )
  assert got["kept_tail_bytes_mean"] == np.mean([cuts[d] - points[d][-1] for d in docs]) >= KEEP
  assert got["other_opening_bytes_mean"] == np.mean(opened) > 0


def test_a_cpu_that_reads_only_the_tail_has_no_gap_beyond_it(docs_of):
  """An encoder-decoder whose cross-attention writes nothing reads the prompt through its 16-byte decoder context
  only: swapping everything before the kept ≥ 16 bytes changes no bit; swapping the whole prompt does."""
  comp, split, raw, cuts, ends, docs = docs_of
  points = prompt_gap.splice_points(raw, [(comp, split)], {d: cuts[d] for d in docs}, KEEP)
  docs = [d for d in docs if d in points]
  model = models.create("encoder_decoder", "tiny", comp.vocab_size, seed=4, decoder_context=KEEP)
  for layer in model.decoder.layers:
    layer.cross.out[...] = jnp.zeros_like(layer.cross.out[...])
  run = dict(seed=1, batch_size=4)
  kept = prompt_gap.prompt_gap(model, "encoder_decoder", comp, split, cuts, ends, docs, points=points, **run)
  assert kept["gap"] == 0.0 and kept["head_gap"] == 0.0
  whole = prompt_gap.prompt_gap(model, "encoder_decoder", comp, split, cuts, ends, docs, **run)
  assert abs(whole["gap"]) > 1e-3
