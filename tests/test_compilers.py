"""Compilers: lossless for any Unicode, fixed special ids, bijective ISA permutations, stable fingerprints."""

import os
import pydoc_data.topics
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcpu import compilers, specials
from llmcpu.compilers import isa
from llmcpu.errors import UserError

TEXTS = sorted(pydoc_data.topics.topics.values())[:40]
SPECS = ["unigram:1000", "bpe:1000", "char", "word:1000", "byte", "bpe:1000+perm:7", "unigram:1000+perm:3:0.25"]
HARD = [
  "",
  " ",
  "   leading and trailing   ",
  "\t\ttabs\tand\nnew\nlines\n\n",
  "emoji 😀🧪👩‍🔬 and CJK 日本語の文章 한국어",
  "combining e\u0301 a\u0308 \u0301 alone",
  "control \x00\x01\x07\x1b\x7f\r\n",
  "the literal marker \u2581 and \u2581\u2581 twice \u2581",
  "\u2581leading marker",
  "digits 1234567890 and 3.14159",
  "\ufeffBOM and \u200bzero width",
]


@pytest.fixture(scope="module")
def zoo() -> dict[str, compilers.Compiler]:
  bases: dict = {}
  out = {}
  for s in SPECS:
    spec = compilers.parse(s)
    base = bases.get(spec.base) or compilers.train(spec.base, TEXTS)
    bases[spec.base] = base
    out[s] = compilers.train(spec, base=base)
  return out


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_hard_cases(zoo, spec):
  c = zoo[spec]
  for text in HARD:
    assert c.decode(c.encode(text)) == text, (spec, text)
  # the batch path agrees with the one-text path
  assert c.encode_batch(HARD) == [c.encode(t) for t in HARD]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=0, max_size=60))
def test_round_trip_any_unicode(zoo, text):
  for spec, c in zoo.items():
    ids = c.encode(text)
    assert c.decode(ids) == text, spec
    assert all(specials.FIRST_REGULAR_ID <= i < c.vocab_size for i in ids), spec


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
  words=st.lists(st.sampled_from(["the", "a", "\u2581", " ", "  ", "\n", "zq", "日本", "😀", "x\u2581y"]), max_size=12)
)
def test_round_trip_space_marker_mixtures(zoo, words):
  text = "".join(words)
  for spec, c in zoo.items():
    assert c.decode(c.encode(text)) == text, spec


def test_special_ids_fixed(zoo):
  for spec, c in zoo.items():
    assert c.pieces[: specials.FIRST_REGULAR_ID] == list(specials.SPECIAL_PIECES), spec
    assert c.pieces[specials.FIRST_REGULAR_ID] == "<0x00>" or c.spec.permuted, spec


def test_learned_compilers_compress(zoo):
  text = TEXTS[5]
  assert len(zoo["bpe:1000"].encode(text)) < len(zoo["char"].encode(text)) <= len(zoo["byte"].encode(text))
  assert len(zoo["byte"].encode(text)) == len(text.encode())


BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


@pytest.mark.parametrize("spec", SPECS)
def test_piece_bytes_of_a_document_sum_to_its_raw_bytes(zoo, spec):
  """Bits per byte per target rests on this: Σ piece_bytes[ids] == len(text.encode()), for every family."""
  c = zoo[spec]
  pb = c.piece_bytes
  assert pb.dtype == np.int64 and pb.shape == (c.vocab_size,) and not pb.flags.writeable
  docs = HARD + TEXTS + ["".join(HARD), "\u2581" + TEXTS[0] + "\u2581", "naïve café — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ▁▁x"]
  for text in docs:
    ids = c.encode(text)
    assert specials.UNK_ID not in ids
    assert int(pb[ids].sum()) == len(text.encode("utf-8")), (spec, text[:40])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=0, max_size=60))
def test_piece_bytes_sum_to_raw_bytes_for_any_unicode(zoo, text):
  for spec, c in zoo.items():
    assert int(c.piece_bytes[c.encode(text)].sum()) == len(text.encode("utf-8")), spec


def test_piece_bytes_table(zoo):
  """Specials 0, byte pieces 1, other pieces the bytes they decode to alone; permuted ISAs carry their base's."""
  for spec, c in zoo.items():
    pb = c.piece_bytes
    assert not pb[: specials.FIRST_REGULAR_ID].any(), spec
    for i in range(specials.FIRST_REGULAR_ID, c.vocab_size):
      if BYTE_PIECE.fullmatch(c.id_to_piece(i)):
        assert pb[i] == 1, (spec, i)
      else:
        assert pb[i] == len(c.decode([i]).encode("utf-8")) > 0, (spec, i, c.id_to_piece(i))
    if c.spec.permuted:
      base = zoo[str(c.spec.base)]
      np.testing.assert_array_equal(pb[c.perm], base.piece_bytes)
  assert zoo["byte"].piece_bytes.sum() == 256


@settings(max_examples=30, deadline=None)
@given(vocab=st.integers(40, 3000), seed=st.integers(0, 2**31), fraction=st.floats(0.01, 1.0))
def test_permutation_bijective_and_exact(vocab, seed, fraction):
  perm = isa.permutation(vocab, seed, fraction)
  assert sorted(perm.tolist()) == list(range(vocab))
  np.testing.assert_array_equal(perm[: specials.FIRST_REGULAR_ID], np.arange(specials.FIRST_REGULAR_ID))
  inv = isa.inverse(perm)
  np.testing.assert_array_equal(inv[perm], np.arange(vocab))
  moved = int((perm != np.arange(vocab)).sum())
  expected = round(fraction * (vocab - specials.FIRST_REGULAR_ID))
  assert moved == (expected if expected >= 2 else 0)


def test_permuted_isa_same_segmentation_other_opcodes(zoo):
  base, perm = zoo["bpe:1000"], zoo["bpe:1000+perm:7"]
  text = TEXTS[3]
  a, b = base.encode(text), perm.encode(text)
  assert len(a) == len(b) and a != b
  assert [base.id_to_piece(i) for i in a] == [perm.id_to_piece(i) for i in b]
  assert compilers.isa_overlap(base, perm) == 0.0
  assert compilers.isa_overlap(base, base) == 1.0
  partial = zoo["unigram:1000+perm:3:0.25"]
  assert compilers.isa_overlap(zoo["unigram:1000"], partial) == pytest.approx(0.75, abs=1e-3)
  assert base.fingerprint != perm.fingerprint


def test_overlap_counts_identical_pieces_independently(zoo):
  a, b = zoo["bpe:1000"], zoo["unigram:1000"]
  same = sum(a.id_to_piece(i) == b.id_to_piece(i) for i in range(specials.FIRST_REGULAR_ID, 1000))
  assert compilers.isa_overlap(a, b) == pytest.approx(same / (1000 - specials.FIRST_REGULAR_ID))
  # BPE merges are learned in the same order and characters come first: a small BPE is an exact prefix of a larger
  # one, and the char ISA a prefix of both.
  big = compilers.train("bpe:2000", TEXTS)
  assert big.pieces[:1000] == a.pieces
  assert a.pieces[: zoo["char"].vocab_size] == zoo["char"].pieces
  assert compilers.isa_overlap(a, big) == pytest.approx((1000 - 37) / (2000 - 37))
  assert compilers.isa_overlap(a, zoo["word:1000"]) < compilers.isa_overlap(a, big)


def test_fingerprint_stable_and_save_load(zoo, tmp_path):
  again = compilers.train("unigram:1000", TEXTS)
  assert again.fingerprint == zoo["unigram:1000"].fingerprint
  for c in zoo.values():
    path = tmp_path / c.name
    c.save(str(path))
    loaded = compilers.load(str(path))
    assert loaded.fingerprint == c.fingerprint and loaded.vocab_size == c.vocab_size
    assert loaded.encode(TEXTS[0]) == c.encode(TEXTS[0])
    assert loaded.manifest["spec"] == str(c.spec)


@pytest.mark.parametrize(
  "spec, match",
  [
    ("bpe:4000:x", "malformed"),
    ("gpt:100", "unknown compiler family"),
    ("byte:300", "fixed vocabulary"),
    ("bpe:1000+perm:1:1.5", "fraction"),
    ("bpe+perm", "malformed"),
  ],
)
def test_bad_specs(spec, match):
  with pytest.raises(UserError, match=match):
    compilers.parse(spec)


def test_duplicate_specs():
  with pytest.raises(UserError, match="twice"):
    compilers.parse_list("bpe:1000,bpe:1000")


@pytest.mark.parametrize(
  "spec, match", [("bpe:300", "too small.*allowed range"), ("unigram:100000", r"too large.*allowed range: up to \d+")]
)
def test_vocab_out_of_range(spec, match):
  with pytest.raises(UserError, match=match):
    compilers.train(spec, TEXTS)


def test_empty_corpus():
  with pytest.raises(UserError, match="empty corpus"):
    compilers.train("bpe:1000", ["", ""])


def test_corrupt_files(zoo, tmp_path):
  path = str(tmp_path / "c")
  zoo["bpe:1000+perm:7"].save(path)
  with open(os.path.join(path, "spm.model"), "r+b") as f:
    f.seek(40)
    f.write(b"\xff" * 64)
  with pytest.raises(UserError, match="corrupt|rebuild"):
    compilers.load(path)
  zoo["bpe:1000+perm:7"].save(path)
  np.save(os.path.join(path, "perm.npy"), np.zeros(1000, np.int32))
  with pytest.raises(UserError, match="bijection"):
    compilers.load(path)
  with pytest.raises(UserError, match="no compiler"):
    compilers.load(str(tmp_path / "missing"))


def test_a_flipped_score_is_caught_though_the_piece_table_is_the_same(zoo, tmp_path):
  from sentencepiece import sentencepiece_model_pb2

  path = str(tmp_path / "c")
  zoo["bpe:1000"].save(path)
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(open(os.path.join(path, "spm.model"), "rb").read())
  k = max(range(len(proto.pieces)), key=lambda i: len(proto.pieces[i].piece))
  proto.pieces[k].score = -proto.pieces[k].score  # one sign bit: same pieces and ids, other segmentation
  with open(os.path.join(path, "spm.model"), "wb") as f:
    f.write(proto.SerializeToString())
  with pytest.raises(UserError, match="sha256.*rebuild"):
    compilers.load(path)


def test_decode_rejects_illegal_ids(zoo):
  c = zoo["char"]
  with pytest.raises(ValueError, match="outside ISA"):
    c.decode([c.vocab_size + 5])
  text, dropped = c.decode_foreign(c.encode("abc") + [c.vocab_size + 5])
  assert text == "abc" and dropped == 1


def test_blob_round_trip(zoo):
  for c in zoo.values():
    back = compilers.from_blob(compilers.to_blob(c))
    assert back.fingerprint == c.fingerprint and back.encode(TEXTS[1]) == c.encode(TEXTS[1])


def test_canonical_layout_only_renames(zoo):
  """SentencePiece segments by scores, not ids: shuffling the learned ids leaves every encoding's pieces as they are,
  so the canonical reordering is a pure renaming of opcodes."""
  import random

  import sentencepiece as spm
  from sentencepiece import sentencepiece_model_pb2 as sp_model

  from llmcpu.compilers import backends

  for spec in ("bpe:1000", "unigram:1000", "char", "word:1000"):
    c = zoo[spec]
    model = sp_model.ModelProto()
    model.ParseFromString(c.backend.model_proto())
    pieces = list(model.pieces)
    tail = pieces[specials.FIRST_REGULAR_ID + 256 :]
    random.Random(0).shuffle(tail)
    del model.pieces[:]
    model.pieces.extend(pieces[: specials.FIRST_REGULAR_ID + 256] + tail)
    shuffled = spm.SentencePieceProcessor(model_proto=model.SerializeToString())
    canonical = spm.SentencePieceProcessor(model_proto=c.backend.model_proto())
    for text in TEXTS[:5]:
      assert shuffled.encode(text, out_type=str) == canonical.encode(text, out_type=str), spec
    assert backends.canonical_layout(c.backend.model_proto()) == c.backend.model_proto()  # idempotent


# ---------------------------------------------------------------------------------------------------------------
# SentencePiece trains in a child process: the same bytes as in this process, and Ctrl-C stops it at once.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,vocab", [("bpe", 600), ("unigram", 600), ("word", 400), ("char", None)])
def test_child_process_training_gives_the_in_process_bytes(family, vocab):
  from llmcpu.compilers import backends

  child, used = backends.train_sentencepiece(family, vocab, TEXTS, {})
  here, used_here = backends.train_sentencepiece(family, vocab, TEXTS, {}, in_process=True)
  assert child == here and used == used_here
  assert compilers.train(f"{family}:{vocab}" if vocab else family, TEXTS).backend.model_proto() == here


def test_child_process_training_errors_are_the_in_process_ones():
  from llmcpu.compilers import backends

  for in_process in (False, True):
    with pytest.raises(UserError, match="vocab 50 is too small for bpe on this corpus"):
      backends.train_sentencepiece("bpe", 50, TEXTS, {}, in_process=in_process)
    with pytest.raises(ValueError, match='cannot parse "x" as int'):
      backends.train_sentencepiece("bpe", 600, TEXTS, {"input_sentence_size": "x"}, in_process=in_process)


LONG_TRAINING = """
import random, signal, sys
from llmcpu.compilers import backends

# A process started in the background by a non-interactive shell inherits SIGINT ignored (and Python then installs no
# KeyboardInterrupt handler): restore what a terminal's foreground process has, the case this test is about.
signal.signal(signal.SIGINT, signal.default_int_handler)

rng = random.Random(0)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12))) for _ in range(20000)]
texts = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(60000)]  # unigram:8000 trains for > 10 s
print("training", flush=True)
backends.train_sentencepiece("unigram", 8000, texts, {})
print("finished", flush=True)
"""


def _children(pid: int) -> list[int]:
  with open(f"/proc/{pid}/task/{pid}/children") as f:
    return [int(c) for c in f.read().split()]


def _running(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped; only reaping is left
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads the process tree from Linux's /proc")
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_compiler_training_at_once(signame):
  """SIGINT: KeyboardInterrupt in the parent, which kills the trainer; SIGTERM (default action) kills the parent and
  the kernel the trainer (PR_SET_PDEATHSIG). Either way within ~2 s, while SentencePiece is still training."""
  import signal
  import subprocess
  import sys
  import time

  proc = subprocess.Popen([sys.executable, "-c", LONG_TRAINING], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    assert proc.stdout.readline() == b"training\n"
    deadline = time.monotonic() + 60
    while not _children(proc.pid):
      assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
      time.sleep(0.05)
    (trainer,) = _children(proc.pid)
    time.sleep(1.0)  # the texts are sent (~0.2 s): SentencePiece is in its C++ trainer
    assert _running(trainer)
    t0 = time.monotonic()
    proc.send_signal(getattr(signal, signame))
    proc.wait(timeout=30)
    while _running(trainer) and time.monotonic() - t0 < 30:
      time.sleep(0.02)
    elapsed = time.monotonic() - t0
  finally:
    proc.kill()
    proc.wait()
  out, err = proc.stdout.read(), proc.stderr.read().decode()
  assert b"finished" not in out
  assert proc.returncode == -getattr(signal, signame), err
  if signame == "SIGINT":
    assert "KeyboardInterrupt" in err
  assert not _running(trainer) and elapsed < 3.0, elapsed
