"""Input pipeline: packing never mixes documents, every token is a target once per epoch, determinism, resume,
multi-process shards, MLM rates, span-corruption round trip, seq2seq padding and truncation.

Test corpora give every token of the corpus a unique id, so a token alone says which document (and where in it)
it came from: the checks recompute everything from the documents, not from the pipeline's own bookkeeping. Each id
names a piece of 1–4 bytes, and a document's raw byte count is the sum over its ids (compilers are lossless).
"""

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcpu.data import objectives
from llmcpu.data.compiled import CompiledField, CompiledSplit
from llmcpu.data.objectives import NAMES as OBJECTIVES
from llmcpu.data.objectives import PAIRS_ONLY
from llmcpu.data.pipeline import Pipeline, bytes_per_token
from llmcpu.errors import UserError
from llmcpu.specials import (
  BOS_ID,
  EOS_ID,
  FIRST_REGULAR_ID,
  FIRST_SENTINEL_ID,
  MASK_ID,
  NUM_SENTINELS,
  PAD_ID,
  UNK_ID,
)


class Corpus:
  """Documents of unique ids; ``where[id]`` = (field, doc, index) of a regular id; ``piece_bytes[id]`` its bytes."""

  def __init__(self, lengths_by_field: dict[str, list[int]], seed: int = 0):
    rng = np.random.default_rng(seed)
    total = sum(sum(v) for v in lengths_by_field.values())
    ids = FIRST_REGULAR_ID + rng.permutation(total)
    vocab_size = FIRST_REGULAR_ID + total + 1
    self.piece_bytes = np.zeros(vocab_size, np.int64)
    self.piece_bytes[FIRST_REGULAR_ID:] = rng.integers(1, 5, vocab_size - FIRST_REGULAR_ID)
    self.where: dict[int, tuple[str, int, int]] = {}
    self.docs: dict[str, list[np.ndarray]] = {}
    fields, start = {}, 0
    for name, lengths in lengths_by_field.items():
      docs = []
      for d, n in enumerate(lengths):
        docs.append(ids[start : start + n])
        self.where.update({int(t): (name, d, j) for j, t in enumerate(docs[-1])})
        start += n
      nbytes = [int(self.piece_bytes[d].sum()) for d in docs]
      fields[name] = CompiledField.from_docs(docs, nbytes)
      self.docs[name] = docs
    manifest = {"vocab_size": vocab_size}
    self.split = CompiledSplit(fields=fields, labels={}, manifest=manifest, piece_bytes=self.piece_bytes)
    # Packed objectives see document d as the stream [BOS] + fields… + [EOS]; ``at[id]`` = (d, index in it).
    self.streams = [
      [BOS_ID] + [int(t) for f in fields for t in self.docs[f][d]] + [EOS_ID] for d in range(self.split.num_docs)
    ]
    self.at = {
      t: (d, j) for d, stream in enumerate(self.streams) for j, t in enumerate(stream) if t >= FIRST_REGULAR_ID
    }

  def nbytes(self, field: str) -> int:
    return int(self.split.fields[field].nbytes.sum())


def prose(lengths, seed=0) -> Corpus:
  return Corpus({"text": list(lengths)}, seed)


def programs(input_lengths, target_lengths, seed=0) -> Corpus:
  return Corpus({"input": list(input_lengths), "target": list(target_lengths)}, seed)


def epoch_rows(p: Pipeline, epoch: int = 0) -> dict[str, np.ndarray]:
  """All rows of one epoch, through the public ``batch``."""
  R, B = p.rows_per_epoch, p.global_batch
  first, last = epoch * R, (epoch + 1) * R
  steps = range(first // B, (last - 1) // B + 1)
  batches = [p.batch(s) for s in steps]
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  return {k: v[first - steps[0] * B : last - steps[0] * B] for k, v in rows.items()}


def check_packing(corpus: Corpus, tokens_RxL: np.ndarray, seg_RxL: np.ndarray, pos_RxL: np.ndarray) -> None:
  """Each segment is one piece of one document in order: [BOS] only first, [EOS] only last, consecutive ids."""
  for tokens, seg, pos in zip(tokens_RxL, seg_RxL, pos_RxL, strict=True):
    real = seg > 0
    assert not np.any(real[np.argmin(real) :]) or real.all(), "padding only at the end of a row"
    assert np.all(tokens[~real] == PAD_ID) and np.all(pos[~real] == 0)
    ids = np.unique(seg[real])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1)) and np.all(np.diff(seg[real]) >= 0)
    for s in ids:
      piece, where = tokens[seg == s], pos[seg == s]
      assert np.array_equal(where, np.arange(len(piece))), "positions restart at each segment"
      assert BOS_ID not in piece[1:] and EOS_ID not in piece[:-1]
      regular = [corpus.at[int(t)] for t in piece if t >= FIRST_REGULAR_ID]
      assert len(regular) + np.sum(piece == BOS_ID) + np.sum(piece == EOS_ID) == len(piece)
      if not regular:
        continue
      assert len({d for d, _ in regular}) == 1, "one segment, one document"
      (d, first), last = regular[0], regular[-1][1]
      assert [j for _, j in regular] == list(range(first, last + 1)), "the document's tokens, in order"
      assert piece[0] != BOS_ID or first == 1
      assert piece[-1] != EOS_ID or last == len(corpus.streams[d]) - 2


def check_lm_epoch(corpus: Corpus, rows: dict[str, np.ndarray], weighted_fields=("text",)) -> None:
  """Weighted targets: every token of the weighted fields and every EOS exactly once; bytes sum to the corpus."""
  check_packing(corpus, rows["inputs"], rows["segment_ids"], rows["positions"])
  w = rows["weights"] > 0
  targets, inputs = rows["targets"], rows["inputs"]
  assert not np.any(targets[w] == BOS_ID) and not np.any(targets[w] == PAD_ID)
  # An unweighted real target is the next document's BOS (or, with weighted_fields, a token of another field).
  other = (~w) & (targets != PAD_ID)
  allowed = [BOS_ID] + [t for t, (f, _, _) in corpus.where.items() if f not in weighted_fields]
  assert np.all(np.isin(targets[other], allowed))
  got = sorted(int(t) for t in targets[w] if t != EOS_ID)
  want = sorted(int(t) for f in weighted_fields for doc in corpus.docs[f] for t in doc)
  assert got == want
  assert int(np.sum(targets[w] == EOS_ID)) == corpus.split.num_docs
  # Each weighted target follows its predecessor in its document's stream.
  last = {stream[-2] for stream in corpus.streams}
  for t, i in zip(targets[w], inputs[w], strict=True):
    if t == EOS_ID:
      assert int(i) in last
    else:
      d, j = corpus.at[int(t)]
      assert corpus.streams[d][j - 1] == i
  nbytes = sum(corpus.nbytes(f) for f in weighted_fields)
  assert rows["target_bytes"].sum(dtype=np.float64) == nbytes
  content = w & (targets != EOS_ID)
  assert np.array_equal(rows["target_bytes"], np.where(content, corpus.piece_bytes[targets], 0))


doc_lengths = st.lists(st.integers(0, 40), min_size=1, max_size=25)


@settings(max_examples=100, deadline=None)
@given(doc_lengths, st.integers(1, 24), st.integers(1, 5), st.integers(0, 3))
def test_lm_packing_never_mixes_documents_and_targets_every_token_once(lengths, length, batch, seed):
  corpus = prose(lengths, seed)
  p = Pipeline(corpus.split, objective="lm", global_batch=batch, seed=seed, length=length)
  stream = sum(lengths) + 2 * len(lengths)
  assert p.rows_per_epoch == -(-(stream - 1) // length)
  for epoch in (0, 1):
    check_lm_epoch(corpus, epoch_rows(p, epoch))


@settings(max_examples=50, deadline=None)
@given(doc_lengths, doc_lengths, st.integers(1, 24))
def test_lm_targets_weights_only_targets_and_eos(in_lengths, tg_lengths, length):
  n = min(len(in_lengths), len(tg_lengths))
  corpus = programs(in_lengths[:n], tg_lengths[:n])
  p = Pipeline(corpus.split, objective="lm_targets", global_batch=3, seed=1, length=length)
  rows = epoch_rows(p)
  check_lm_epoch(corpus, rows, weighted_fields=("target",))
  w = rows["weights"] > 0
  assert all(corpus.where[int(t)][0] == "target" for t in rows["targets"][w] if t != EOS_ID)


def test_lm_on_programs_is_input_then_target():
  corpus = programs([3, 0, 5], [2, 4, 1])
  p = Pipeline(corpus.split, objective="lm", global_batch=2, seed=0, length=7, shuffle=False)
  check_lm_epoch(corpus, epoch_rows(p), weighted_fields=("input", "target"))


def test_lm_bos_eos_layout_without_shuffle():
  corpus = prose([2, 0, 1])
  p = Pipeline(corpus.split, objective="lm", global_batch=1, seed=0, length=9, shuffle=False)
  a, b = corpus.docs["text"][0], corpus.docs["text"][2]
  stream = [BOS_ID, *a, EOS_ID, BOS_ID, EOS_ID, BOS_ID, *b, EOS_ID]  # 9 tokens: 8 targets fit one row of 9
  assert p.rows_per_epoch == 1
  row = p.batch(0)
  assert row["inputs"][0].tolist() == stream
  assert row["targets"][0].tolist() == stream[1:] + [PAD_ID]
  assert row["segment_ids"][0].tolist() == [1, 1, 1, 1, 2, 2, 3, 3, 3]
  assert row["positions"][0].tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2]
  assert row["weights"][0].tolist() == [1, 1, 1, 0, 1, 0, 1, 1, 0]
  pb = corpus.piece_bytes
  assert row["target_bytes"][0].tolist() == [pb[a[0]], pb[a[1]], 0, 0, 0, 0, pb[b[0]], 0, 0]
  assert "target_docs" not in row
  p = Pipeline(corpus.split, objective="lm", global_batch=1, seed=0, length=9, shuffle=False, document_ids=True)
  docs = p.batch(0)
  assert docs["target_docs"][0].tolist() == [0, 0, -1, -1, -1, -1, 2, -1, -1]


def test_summary_and_bytes_per_token():
  corpus = prose([4, 6])
  p = Pipeline(corpus.split, objective="lm", global_batch=2, seed=0, length=4)
  s = p.summary()
  assert (
    s["docs"] == 2 and s["fields"]["text"]["tokens"] == 10 and s["fields"]["text"]["bytes"] == corpus.nbytes("text")
  )
  assert s["rows_per_epoch"] == p.rows_per_epoch == 4 and s["steps_per_epoch"] == 2 and 0 < s["fill"] <= 1
  assert bytes_per_token(corpus.split) == corpus.nbytes("text") / 10


def make(objective: str, seed: int = 0, **kw) -> Pipeline:
  if objective in PAIRS_ONLY:
    rng = np.random.default_rng(5)
    corpus = programs(rng.integers(0, 9, 40), rng.integers(0, 6, 40))
  else:
    corpus = prose(np.random.default_rng(5).integers(0, 60, 40))
  lengths = dict(length=16) if objective in ("lm", "lm_targets", "mlm") else dict(input_length=24, target_length=10)
  return Pipeline(corpus.split, objective=objective, seed=seed, **{"global_batch": 4, **lengths, **kw})


def same(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_deterministic_resumable_and_sharded(objective):
  p = make(objective)
  steps = [0, 1, p.steps_per_epoch - 1, p.steps_per_epoch, 3 * p.steps_per_epoch + 2]
  from_start = list(itertools.islice(p.iterate(0), steps[-1] + 1))
  for s in steps:
    fresh = make(objective)  # a resumed run: nothing of the earlier steps
    assert same(fresh.batch(s), from_start[s])
    assert same(next(fresh.iterate(s)), from_start[s])
    shards = [make(objective, process_index=i, process_count=2).batch(s) for i in range(2)]
    assert all(len(v) == 2 for v in shards[0].values())
    assert same({k: np.concatenate([x[k] for x in shards]) for k in shards[0]}, from_start[s])
  assert not same(make(objective, seed=1).batch(0), from_start[0])
  assert not same(from_start[0], from_start[p.steps_per_epoch + 1])
  for k, v in from_start[0].items():
    assert v.dtype == (np.float32 if "weights" in k or k in ("target_bytes", "content") else np.int32), k


def test_epochs_reshuffle_and_shuffle_off_keeps_corpus_order():
  corpus = prose([5] * 30)
  p = Pipeline(corpus.split, objective="lm", global_batch=7, seed=0, length=7)
  assert not np.array_equal(epoch_rows(p, 0)["inputs"], epoch_rows(p, 1)["inputs"])
  q = Pipeline(corpus.split, objective="lm", global_batch=7, seed=0, length=7, shuffle=False)
  assert np.array_equal(epoch_rows(q, 0)["inputs"], epoch_rows(q, 2)["inputs"])
  first = [corpus.where[int(t)][1] for t in epoch_rows(q)["inputs"].ravel() if t >= FIRST_REGULAR_ID]
  assert first == sorted(first)


@pytest.mark.parametrize("objective", ["lm", "seq2seq", "span_corruption"])
def test_eval_batches_one_padded_pass(objective):
  for procs in (1, 2):
    parts = [list(make(objective, process_index=i, process_count=procs).eval_batches()) for i in range(procs)]
    assert len({len(x) for x in parts}) == 1
    p = make(objective)
    n_rows = p.eval_steps * p.global_batch
    rows = {k: np.concatenate([b[k] for step in zip(*parts, strict=True) for b in step]) for k in parts[0][0]}
    ordered = {k: v[: p.rows_per_epoch] for k, v in rows.items()}
    q = make(objective, shuffle=False)
    assert same(ordered, epoch_rows(q))
    assert all(len(v) == n_rows and not v[p.rows_per_epoch :].any() for v in rows.values())
  if objective == "lm":
    assert np.isclose(rows["target_bytes"].sum(), p.split.fields["text"].nbytes.sum())


def test_mlm_rates_and_specials():
  corpus = prose(np.random.default_rng(0).integers(0, 300, 200))
  p = Pipeline(corpus.split, objective="mlm", global_batch=8, seed=3, length=128)
  rows = epoch_rows(p)
  check_packing(corpus, rows["targets"], rows["segment_ids"], rows["positions"])
  inputs, targets, chosen = rows["inputs"], rows["targets"], rows["weights"] > 0
  regular = targets >= FIRST_REGULAR_ID
  assert not np.any(chosen & ~regular), "specials and padding are never chosen"
  assert np.array_equal(inputs[~chosen], targets[~chosen])
  # Chosen per document (a hand-made split has no spaces: every token is its own word), exactly round(15%).
  per_doc = np.bincount([corpus.at[int(t)][0] for t in targets[chosen]], minlength=corpus.split.num_docs)
  lengths = corpus.split.fields["text"].lengths
  assert np.array_equal(per_doc, np.where(lengths > 0, np.maximum(np.rint(0.15 * lengths), 1), 0))
  assert np.array_equal(epoch_rows(p)["weights"], rows["weights"])  # the same epoch: the same choice
  again = epoch_rows(p, 1)  # another epoch (ids are unique: a chosen id names its word): as many words, others
  chosen_again = set(again["targets"][again["weights"] > 0].tolist())
  assert len(chosen_again) == chosen.sum() and chosen_again != set(targets[chosen].tolist())
  masked = np.mean(inputs[chosen] == MASK_ID)
  kept = np.mean(inputs[chosen] == targets[chosen])
  randomized = np.mean((inputs[chosen] != MASK_ID) & (inputs[chosen] != targets[chosen]))
  assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.02 and abs(randomized - 0.1) < 0.02
  assert np.all((inputs[chosen] == MASK_ID) | (inputs[chosen] >= FIRST_REGULAR_ID))
  assert np.all(inputs[chosen] < corpus.split.vocab_size)
  assert np.array_equal(rows["target_bytes"], np.where(chosen, corpus.piece_bytes[targets], 0))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_target_docs_and_bytes_of_every_objective(objective):
  """Content targets (here exactly those with bytes: every piece has 1–4) carry their own piece's bytes and name
  their own document; everything else says 0 bytes and document −1, also the padding rows of an eval pass."""
  assert "target_docs" not in make(objective).batch(0), "training batches carry no document ids"
  rng = np.random.default_rng(5)
  if objective in PAIRS_ONLY:
    corpus = programs(rng.integers(0, 9, 40), rng.integers(0, 6, 40))
  else:
    corpus = prose(rng.integers(0, 60, 40))
  lengths = dict(length=16) if objective in ("lm", "lm_targets", "mlm") else dict(input_length=24, target_length=10)
  p = Pipeline(corpus.split, objective=objective, global_batch=7, seed=0, document_ids=True, **lengths)
  batches = list(p.eval_batches()) + [p.batch(s) for s in range(3)]  # corpus order, then shuffled epochs
  rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  targets, docs = rows.get("targets", rows.get("decoder_targets")), rows["target_docs"]
  assert docs.dtype == np.int32 and docs.shape == targets.shape
  content = docs >= 0
  assert np.array_equal(content, rows["target_bytes"] > 0)
  assert np.array_equal(rows["target_bytes"], np.where(content, corpus.piece_bytes[targets], 0))
  assert [corpus.where[int(t)][1] for t in targets[content]] == docs[content].tolist()
  assert np.all(docs[p.rows_per_epoch : p.eval_steps * p.global_batch] == -1)


def test_unk_is_scored_content_with_no_bytes():
  corpus = prose([3, 4])
  texts = [d.tolist() for d in corpus.docs["text"]]
  replaced, texts[1][2] = texts[1][2], UNK_ID
  field = CompiledField.from_docs(texts, [int(corpus.piece_bytes[d].sum()) for d in texts])
  split = dataclasses.replace(corpus.split, fields={"text": field})
  b = Pipeline(split, objective="lm", global_batch=1, seed=0, length=16, shuffle=False, document_ids=True).batch(0)
  unk = b["targets"] == UNK_ID
  assert unk.sum() == 1 and b["weights"][unk] == 1 and b["target_bytes"][unk] == 0 and b["target_docs"][unk] == 1
  assert b["target_bytes"].sum() == field.nbytes.sum() == corpus.nbytes("text") - corpus.piece_bytes[replaced]


@pytest.mark.parametrize("piece_bytes,match", [(None, "load_split"), (np.ones(5), "piece_bytes")])
def test_split_without_piece_bytes_is_one_clear_error(piece_bytes, match):
  for objective, corpus, lengths in [
    ("lm", prose([3, 4]), dict(length=8)),
    ("mlm", prose([3, 4]), dict(length=8)),
    ("span_corruption", prose([3, 4]), dict(input_length=16, target_length=8)),
    ("seq2seq", programs([3], [2]), dict(input_length=8, target_length=8)),
  ]:
    split = dataclasses.replace(corpus.split, piece_bytes=piece_bytes)
    with pytest.raises(UserError, match=match) as e:
      Pipeline(split, objective=objective, global_batch=1, seed=0, **lengths)
    assert "\n" not in str(e.value)


def reconstruct(enc: np.ndarray, tgt: np.ndarray) -> list[int]:
  """Fill each sentinel of the encoder input with the tokens after the same sentinel in the target."""
  spans, current = {}, None
  for t in tgt:
    if t == EOS_ID:
      break
    if FIRST_SENTINEL_ID <= t < FIRST_REGULAR_ID:
      current = int(t)
      spans[current] = []
    else:
      spans[current].append(int(t))
  out = []
  for t in enc:
    if t == EOS_ID:
      break
    out.extend(spans.pop(int(t)) if FIRST_SENTINEL_ID <= t < FIRST_REGULAR_ID else [int(t)])
  assert not spans, "every target span has its sentinel in the input"
  return out


def check_windows(corpus: Corpus, p: Pipeline, example) -> None:
  """Every row of an epoch of an encoder-decoder objective on prose: well-formed (EOS-terminated, decoder inputs =
  BOS + shifted targets), one window of one document whose ids ``example(enc, tgt, n_enc, n_tgt)`` recovers
  (it checks the row's own layout and returns the window and its content mask); the windows of each document, in
  order, are the document once."""
  rows = epoch_rows(p)
  pieces: dict[int, list[int]] = {}
  for i in range(p.rows_per_epoch):
    enc, tgt = rows["encoder_inputs"][i], rows["decoder_targets"][i]
    n_enc, n_tgt = rows["encoder_segment_ids"][i].sum(), rows["decoder_segment_ids"][i].sum()
    assert enc[n_enc - 1] == EOS_ID and tgt[n_tgt - 1] == EOS_ID and not enc[n_enc:].any() and not tgt[n_tgt:].any()
    assert np.array_equal(rows["decoder_inputs"][i][:n_tgt], np.concatenate([[BOS_ID], tgt[: n_tgt - 1]]))
    assert np.array_equal(rows["decoder_positions"][i][:n_tgt], np.arange(n_tgt))
    window, content = example(enc, tgt, n_enc, n_tgt)
    assert 0 < len(window) <= p.objective.window
    docs = {corpus.where[t][1] for t in window}
    assert len(docs) == 1, "a window never crosses documents"
    pieces.setdefault(docs.pop(), []).extend(window)
    assert np.all((rows["target_bytes"][i] > 0) == content)
  for d, doc in enumerate(corpus.docs["text"]):
    assert pieces.get(d, []) == doc.tolist(), "each window of each document once per epoch, in order"


@settings(max_examples=50, deadline=None)
@given(doc_lengths, st.integers(8, 80), st.integers(6, 30), st.sampled_from([0.15, 0.3, 0.5]), st.integers(0, 2))
def test_span_corruption_reconstructs_every_window(lengths, input_length, target_length, density, seed):
  corpus = prose(lengths, seed)
  kw = dict(global_batch=3, seed=seed, input_length=input_length, target_length=target_length)
  try:
    p = Pipeline(corpus.split, objective="span_corruption", noise_density=density, **kw)
  except UserError as e:
    assert "fit no noised window" in str(e) or "no tokens" in str(e)
    return

  def example(enc, tgt, n_enc, n_tgt):
    sentinels = enc[(enc >= FIRST_SENTINEL_ID) & (enc < FIRST_REGULAR_ID)]
    assert np.array_equal(sentinels, FIRST_SENTINEL_ID + np.arange(len(sentinels))) and len(sentinels) <= NUM_SENTINELS
    return reconstruct(enc, tgt), (tgt >= FIRST_REGULAR_ID) & (np.arange(len(tgt)) < n_tgt)

  check_windows(corpus, p, example)


@settings(max_examples=50, deadline=None)
@given(doc_lengths, st.integers(2, 40), st.integers(2, 20), st.integers(0, 2))
def test_prefix_lm_cuts_windows_of_whole_words_within_byte_budgets(lengths, input_length, target_length, seed):
  """Every row: a prefix and its continuation, consecutive in one document, within input_length − 1 and
  target_length − 1 *bytes* (so they fit in any ISA); windows in document order, never overlapping; the bytes no
  window holds are the ones ``stats()`` says were skipped, and each skipped run had a reason."""
  corpus = prose(lengths, seed)
  kw = dict(global_batch=3, seed=seed, input_length=input_length, target_length=target_length)
  try:
    p = Pipeline(corpus.split, objective="prefix_lm", **kw)
  except UserError as e:
    assert "no tokens" in str(e)
    return
  rows, pb = epoch_rows(p), corpus.piece_bytes
  covered: dict[int, list[int]] = {}
  for i in range(p.rows_per_epoch):
    enc, tgt = rows["encoder_inputs"][i], rows["decoder_targets"][i]
    n_enc, n_tgt = rows["encoder_segment_ids"][i].sum(), rows["decoder_segment_ids"][i].sum()
    assert enc[n_enc - 1] == EOS_ID and tgt[n_tgt - 1] == EOS_ID and not enc[n_enc:].any() and not tgt[n_tgt:].any()
    assert np.array_equal(rows["decoder_inputs"][i][:n_tgt], np.concatenate([[BOS_ID], tgt[: n_tgt - 1]]))
    prefix, rest = enc[: n_enc - 1].tolist(), tgt[: n_tgt - 1].tolist()
    assert prefix and rest and pb[prefix].sum() <= input_length - 1 and pb[rest].sum() <= target_length - 1
    at = [corpus.where[t][1:] for t in prefix + rest]
    (doc,) = {d for d, _ in at}
    assert [j for _, j in at] == list(range(at[0][1], at[0][1] + len(at))), "one run of consecutive ids"
    assert not covered.get(doc) or covered[doc][-1] < at[0][1], "windows in order, never overlapping"
    covered.setdefault(doc, []).extend(j for _, j in at)
    assert np.array_equal(rows["target_bytes"][i][: n_tgt - 1], pb[rest]) and rows["target_bytes"][i][n_tgt - 1] == 0
  skipped = 0
  for d, doc in enumerate(corpus.docs["text"]):
    kept = set(covered.get(d, []))
    gap = [j for j in range(len(doc)) if j not in kept]
    skipped += int(pb[doc[gap]].sum())
    for j in gap:  # a token left out was too long for a prefix, or sat where no continuation could follow it
      assert pb[doc[j]] > input_length - 1 or pb[doc[j]] > target_length - 1 or j + 1 in gap or j + 1 == len(doc) or \
        pb[doc[j + 1]] > target_length - 1  # fmt: skip
  total = corpus.split.fields["text"].nbytes.sum()
  assert p.summary()["skipped_bytes_share"] == pytest.approx(skipped / total if total else 0.0)


@settings(max_examples=40, deadline=None)
@given(doc_lengths, st.integers(2, 30), st.integers(2, 12), st.integers(2, 4), st.integers(1, 4), st.integers(0, 2))
def test_packed_prefix_lm_holds_the_unpacked_windows_in_order(lengths, input_length, target_length, k, batch, seed):
  """pairs_per_row = k: row r's pair i is, column for column, window r·k + i of the same epoch with one pair per
  row (so the bytes read and scored are those of k = 1, which the ISA test pins), its segment ids × (i + 1);
  past the last window a pair is all padding, never scored."""
  corpus = prose(lengths, seed)
  kw = dict(objective="prefix_lm", global_batch=batch, seed=seed, input_length=input_length)
  try:
    one = Pipeline(corpus.split, target_length=target_length, **kw)
  except UserError as e:
    assert "no tokens" in str(e)
    return
  packed = Pipeline(corpus.split, target_length=target_length, pairs_per_row=k, **kw)
  assert packed.rows_per_epoch == -(-one.rows_per_epoch // k)
  for epoch in (0, 1):
    singles, rows = epoch_rows(one, epoch), epoch_rows(packed, epoch)
    for key, value in rows.items():
      width = input_length if key.startswith("encoder_") else target_length
      assert value.shape == (packed.rows_per_epoch, k * width), key
      for r, i in itertools.product(range(packed.rows_per_epoch), range(k)):
        got, e = value[r, i * width : (i + 1) * width], r * k + i
        if e >= one.rows_per_epoch:
          assert (got == (-1 if key == "target_docs" else 0)).all(), (key, r, i)
          continue
        want = singles[key][e] * (i + 1 if key.endswith("segment_ids") else 1)
        assert np.array_equal(got, want), (key, r, i)
  assert objectives.pairs_per_row({"pairs_per_row": k}, "prefix_lm") == k
  assert objectives.pairs_per_row({"pairs_per_row": k}, "span_corruption") == 1


def segments_of(rows: dict[str, np.ndarray], r: int) -> list[dict[str, np.ndarray]]:
  """The pairs packed in row r, each key cut to its segment's columns (encoder keys by the encoder's segment ids,
  the rest by the decoder's), segment ids set back to 1."""
  out = []
  for s in range(1, int(rows["encoder_segment_ids"][r].max()) + 1):
    pair = {}
    for key, value in rows.items():
      at = rows["encoder_segment_ids" if key.startswith("encoder_") else "decoder_segment_ids"][r] == s
      pair[key] = value[r][at] // s if key.endswith("segment_ids") else value[r][at]
    out.append(pair)
  return out


@settings(max_examples=40, deadline=None)
@given(doc_lengths, st.integers(2, 30), st.integers(2, 12), st.integers(0, 6), st.integers(1, 4), st.integers(0, 2))
def test_prefix_lm_pack_windows_packs_every_window_once_by_its_ids(
  lengths, input_length, target_length, context, batch, seed
):
  """data.pack_windows: each epoch's packed rows hold every window of the one-pair-per-row epoch exactly once, each
  pair (its ids, positions, weights, bytes, documents, decoder context) as it is alone, in its own segment, ids
  after ids within the one-pair widths, padding after them; a document's windows in order within a row; the same
  rows in every epoch; and a row is closed only when the next window of the packing order would not fit it."""
  corpus = prose(lengths, seed)
  kw = dict(objective="prefix_lm", seed=seed, input_length=input_length, target_length=target_length)
  kw.update(context_bytes=context, tail_weight=2.0 if context else 0.0, head_weight=3.0, document_ids=True)
  try:
    single = epoch_rows(Pipeline(corpus.split, global_batch=1, **kw))
  except UserError as e:
    assert "no tokens" in str(e)
    return
  packed = Pipeline(corpus.split, global_batch=batch, pack_windows=True, **kw)
  alone = {int(single["encoder_inputs"][i][0]): i for i in range(len(single["encoder_inputs"]))}  # ids are unique
  assert len(alone) == len(single["encoder_inputs"])
  n_src = (single["encoder_segment_ids"] > 0).sum(axis=1)
  n_dec = (single["decoder_segment_ids"] > 0).sum(axis=1)
  groups = []
  for epoch in (0, 1):
    rows, seen = epoch_rows(packed, epoch), []
    for r in range(packed.rows_per_epoch):
      pairs = segments_of(rows, r)
      seen.append(tuple(alone[int(pair["encoder_inputs"][0])] for pair in pairs))
      assert (
        pairs and n_src[list(seen[-1])].sum() <= input_length and n_dec[list(seen[-1])].sum() <= target_length + context
      )
      for i, pair in zip(seen[-1], pairs, strict=True):
        for key, value in pair.items():
          seg = single["encoder_segment_ids" if key.startswith("encoder_") else "decoder_segment_ids"][i] > 0
          assert np.array_equal(value, single[key][i][seg]), key
      for key, value in rows.items():
        seg = rows["encoder_segment_ids" if key.startswith("encoder_") else "decoder_segment_ids"][r]
        real = seg > 0
        assert real[: real.sum()].all() and np.all(np.diff(seg[real]) >= 0), "pairs first, in segment order"
        assert np.all(value[r][~real] == (-1 if key == "target_docs" else 0)), key
    flat = [i for row in seen for i in row]
    assert sorted(flat) == list(range(len(alone))), "every window once per epoch"
    for row in seen:  # windows in a row are consecutive in the packing order, so a document's are in its order
      doc_of = [int(single["target_docs"][i][single["target_docs"][i] >= 0][0]) for i in row]
      for d in set(doc_of):
        mine = [i for i, e in zip(row, doc_of, strict=True) if e == d]
        assert mine == sorted(mine)
    groups.append(sorted(seen))
  assert groups[0] == groups[1], "which windows share a row is drawn once"
  order = packed.objective.rows_win  # the packing order: a row closes only when the next window does not fit it
  windows = packed.objective.windows
  need = np.stack([windows[:, 2] - windows[:, 1] + 1, packed.objective.tail_W + windows[:, 3] - windows[:, 2] + 1], 1)
  for row, nxt in zip(order[:-1], order[1:, 0], strict=True):
    used = need[row[row >= 0]].sum(axis=0) + need[nxt]
    assert used[0] > input_length or used[1] > target_length + context


def test_prefix_lm_pack_windows_options():
  """pack_windows is a training option a config turns on (configs from before it: off), the training log's
  'pairs a row' counts its windows, and packing by ids and k a row at once is refused in one line."""
  corpus = prose([30, 12, 25], 0)
  kw = dict(objective="prefix_lm", global_batch=2, seed=0, input_length=20, target_length=8)
  p = Pipeline(corpus.split, pack_windows=True, **kw)
  assert p.summary()["pairs_per_row"] == pytest.approx(p.summary()["windows"] / p.rows_per_epoch)
  assert p.summary()["pairs_per_row"] > 1
  assert objectives.prefix_lm_training({"pack_windows": True})["pack_windows"] is True
  assert objectives.prefix_lm_training({})["pack_windows"] is False
  with pytest.raises(UserError, match="not both"):
    Pipeline(corpus.split, pack_windows=True, pairs_per_row=2, **kw)
  assert objectives.greedy_rows([], np.zeros((0, 2), np.int64), (3, 3)).shape[0] == 0  # no windows, no rows
  with pytest.raises(UserError, match="no tokens"):  # every unit too long for a 1-byte prefix: refused as unpacked
    Pipeline(prose([2], 0).split, pack_windows=True, **dict(kw, input_length=2, target_length=2))


@settings(max_examples=30, deadline=None)
@given(doc_lengths, st.integers(2, 30), st.integers(2, 12), st.integers(1, 6), st.integers(0, 2))
def test_prefix_lm_head_weight_weighs_the_first_bytes_of_each_continuation(
  lengths, input_length, target_length, hb, seed
):
  """head_weight = 3: a continuation token weighs 3 when the bytes before it in its continuation are fewer than
  head_bytes (counted token by token here), 1 otherwise (EOS too); every other key is the unweighted row's."""
  corpus = prose(lengths, seed)
  kw = dict(objective="prefix_lm", global_batch=3, seed=seed, input_length=input_length, target_length=target_length)
  try:
    plain = epoch_rows(Pipeline(corpus.split, **kw))
  except UserError as e:
    assert "no tokens" in str(e)
    return
  rows = epoch_rows(Pipeline(corpus.split, head_weight=3.0, head_bytes=hb, **kw))
  pb = corpus.piece_bytes
  for i in range(len(rows["decoder_weights"])):
    n = int(plain["decoder_segment_ids"][i].sum())
    want, seen = np.zeros(target_length), 0
    for j in range(n):
      want[j] = 3.0 if j < n - 1 and seen < hb else 1.0
      seen += pb[rows["decoder_targets"][i][j]] if j < n - 1 else 0
    np.testing.assert_array_equal(rows["decoder_weights"][i], want)
  for key in plain:
    if key != "decoder_weights":
      assert np.array_equal(rows[key], plain[key]), key


@settings(max_examples=30, deadline=None)
@given(doc_lengths, st.integers(2, 30), st.integers(2, 12), st.integers(1, 6), st.integers(1, 4), st.integers(0, 2))
def test_prefix_lm_curriculum_scores_only_a_growing_head_of_each_continuation(
  lengths, input_length, target_length, start, steps, seed
):
  """curriculum_steps = S: in global row g < S · batch a continuation token keeps its weight only when the bytes
  before it in its continuation (counted token by token here) are fewer than start + (T − 1 − start) · g / (S ·
  batch); from row S · batch on, and in every other key, the row is the plain one."""
  corpus = prose(lengths, seed)
  kw = dict(objective="prefix_lm", global_batch=3, seed=seed, input_length=input_length, target_length=target_length)
  try:
    plain_pipe = Pipeline(corpus.split, **kw)
  except UserError as e:
    assert "no tokens" in str(e)
    return
  curr = Pipeline(corpus.split, curriculum_steps=steps, curriculum_bytes=start, **kw)
  n_rows, full, pb = steps * 3, target_length - 1, corpus.piece_bytes
  begin = min(start, full)
  for epoch in range(-(-n_rows // plain_pipe.rows_per_epoch) + 1):  # through the curriculum and one epoch past it
    plain, rows = epoch_rows(plain_pipe, epoch), epoch_rows(curr, epoch)
    for i in range(len(rows["decoder_weights"])):
      g = epoch * plain_pipe.rows_per_epoch + i
      want, seen = plain["decoder_weights"][i].copy(), 0.0
      if g < n_rows:
        limit = begin + (full - begin) * g / n_rows
        for j in range(target_length):
          if seen >= limit:
            want[j] = 0.0
          seen += pb[plain["decoder_targets"][i][j]] if plain["decoder_weights"][i][j] else 0
      np.testing.assert_array_equal(rows["decoder_weights"][i], want, err_msg=f"row {g}")
    for key in plain:
      if key != "decoder_weights":
        assert np.array_equal(rows[key], plain[key]), key


@settings(max_examples=40, deadline=None)
@given(doc_lengths, st.integers(2, 30), st.integers(2, 12), st.integers(1, 9), st.integers(1, 3), st.integers(0, 2))
def test_prefix_lm_decoder_context_reads_the_prefix_end_and_scores_the_same_bytes(
  lengths, input_length, target_length, context, k, seed
):
  """context_bytes = c (``ModelConfig.decoder_context``): each pair's decoder reads [BOS] + the prefix's last ids of
  at most c bytes (counted id by id from the end here, 0-byte ids as 1) + the continuation; the tail weighs 0 and has
  no bytes or documents, and the scored targets, their bytes, weights and documents, and the encoder side are
  the plain rows', in order; packed, each pair in its own segment. tail_weight changes only the tail's weights."""
  corpus = prose(lengths, seed)
  kw = dict(objective="prefix_lm", global_batch=3, seed=seed, input_length=input_length, target_length=target_length)
  kw["document_ids"] = True
  try:
    plain = epoch_rows(Pipeline(corpus.split, pairs_per_row=k, **kw))
  except UserError as e:
    assert "no tokens" in str(e)
    return
  rows = epoch_rows(Pipeline(corpus.split, pairs_per_row=k, context_bytes=context, **kw))
  weighted = epoch_rows(Pipeline(corpus.split, pairs_per_row=k, context_bytes=context, tail_weight=2.0, **kw))
  pb, wide = corpus.piece_bytes, target_length + context
  for key in plain:
    if key.startswith("encoder_"):
      assert np.array_equal(rows[key], plain[key]), key
  for r, i in itertools.product(range(len(rows["decoder_targets"])), range(k)):
    got = {key: v[r, i * wide : (i + 1) * wide] for key, v in rows.items() if not key.startswith("encoder_")}
    was = {key: v[r, i * target_length : (i + 1) * target_length] for key, v in plain.items()}
    src = plain["encoder_inputs"][r, i * input_length : (i + 1) * input_length]
    n_src = int((plain["encoder_segment_ids"][r, i * input_length : (i + 1) * input_length] > 0).sum())
    n = int((was["decoder_segment_ids"] > 0).sum())
    if not n:  # past the last window: all padding
      assert not got["decoder_segment_ids"].any() and (got["target_docs"] == -1).all()
      continue
    prefix, tail, used = src[: n_src - 1].tolist(), [], 0
    for t in reversed(prefix):
      used += max(int(pb[t]), 1)
      if used > context:
        break
      tail.insert(0, t)
    m = len(tail)
    assert got["decoder_targets"][:m].tolist() == tail
    assert got["decoder_inputs"][: m + 1].tolist() == [BOS_ID, *tail]
    assert not got["decoder_weights"][:m].any() and not got["target_bytes"][:m].any()
    assert (got["target_docs"][:m] == -1).all()
    for key in ("decoder_targets", "decoder_weights", "target_bytes", "target_docs"):
      assert np.array_equal(got[key][m : m + n], was[key][:n]), key
    assert np.array_equal(got["decoder_inputs"][m + 1 : m + n], was["decoder_inputs"][1:n])
    assert (got["decoder_segment_ids"][: m + n] == i + 1).all() and not got["decoder_segment_ids"][m + n :].any()
    assert got["decoder_positions"][: m + n].tolist() == list(range(m + n))
    # tail_weight = 2 (training only): the tail weighs 2, and the content mask keeps it out of bits per byte
    w = {key: v[r, i * wide : (i + 1) * wide] for key, v in weighted.items()}
    assert (w["decoder_weights"][:m] == 2.0).all() and np.array_equal(
      w["decoder_weights"][m:], got["decoder_weights"][m:]
    )
    assert w["content"].tolist() == [0.0] * m + [1.0] * (n - 1) + [0.0] * (wide - m - n + 1)
  for key in rows:
    if key != "decoder_weights":
      assert np.array_equal(weighted[key], rows[key]), key


@pytest.mark.parametrize("dropout", [0.0, 0.5, 1.0])
def test_prefix_lm_tail_dropout_drops_whole_tails_of_seeded_rows(dropout):
  """tail_dropout = p: each training row is either the decoder-context row (its tail kept) or, with probability p,
  the plain row's decoder side (no tail: [BOS] + continuation) padded to the same width; the encoder side and the
  scored targets never change, and the same seed drops the same rows."""
  corpus = prose([40, 70, 55, 90, 33, 61, 80, 47] * 6, seed=1)
  kw = dict(objective="prefix_lm", global_batch=4, seed=3, input_length=20, target_length=8)
  plain = epoch_rows(Pipeline(corpus.split, **kw))
  ctx = epoch_rows(Pipeline(corpus.split, context_bytes=6, **kw))
  got = epoch_rows(Pipeline(corpus.split, context_bytes=6, tail_dropout=dropout, **kw))
  again = epoch_rows(Pipeline(corpus.split, context_bytes=6, tail_dropout=dropout, **kw))
  assert all(np.array_equal(got[k], again[k]) for k in got)
  dropped, tails = 0, 0
  for r in range(len(got["decoder_targets"])):
    n = int((plain["decoder_segment_ids"][r] > 0).sum())
    if not n or not ctx["decoder_weights"][r, 0] == 0:  # padding rows, and rows whose prefix end gave no tail
      continue
    tails += 1
    if np.array_equal(got["decoder_inputs"][r], ctx["decoder_inputs"][r]):
      continue
    dropped += 1
    for key in ("decoder_inputs", "decoder_targets", "decoder_weights", "target_bytes"):
      assert np.array_equal(got[key][r, :n], plain[key][r, :n]) and not got[key][r, n:].any(), key
  assert all(np.array_equal(got[k], ctx[k]) for k in got if k.startswith("encoder_"))
  assert tails > 40
  assert dropped == {0.0: 0, 1.0: tails}.get(dropout, dropped) and (dropout != 0.5 or 0.3 < dropped / tails < 0.7)


def test_prefix_lm_tail_dropout_drops_the_same_global_rows_whatever_the_batch():
  """The rows drawn depend on (seed, global row) alone: a global batch of 4 or of 3 drops the same rows."""
  corpus = prose([40, 70, 55, 90, 33, 61, 80, 47] * 6, seed=1)
  kw = dict(objective="prefix_lm", input_length=20, target_length=8, context_bytes=6, tail_dropout=0.5)
  four = epoch_rows(Pipeline(corpus.split, global_batch=4, seed=3, **kw))
  three = epoch_rows(Pipeline(corpus.split, global_batch=3, seed=3, **kw))
  assert all(np.array_equal(four[k], three[k]) for k in four)


def test_prefix_lm_refuses_bad_training_options():
  corpus = prose([12, 30])
  kw = dict(objective="prefix_lm", global_batch=2, seed=0, input_length=8, target_length=4)
  with pytest.raises(UserError, match="pairs_per_row >= 1"):
    Pipeline(corpus.split, pairs_per_row=0, **kw)
  with pytest.raises(UserError, match="head_weight > 0"):
    Pipeline(corpus.split, head_weight=0.0, **kw)
  with pytest.raises(UserError, match="curriculum_bytes >= 1"):
    Pipeline(corpus.split, curriculum_steps=3, curriculum_bytes=0, **kw)
  with pytest.raises(UserError, match="context_bytes >= 0 and tail_weight >= 0"):
    Pipeline(corpus.split, context_bytes=-1, **kw)
  with pytest.raises(UserError, match="context_bytes >= 0 and tail_weight >= 0"):
    Pipeline(corpus.split, context_bytes=4, tail_weight=float("nan"), **kw)
  with pytest.raises(UserError, match="0 <= tail_dropout <= 1"):
    Pipeline(corpus.split, context_bytes=4, tail_dropout=1.5, **kw)


@pytest.mark.parametrize("input_length,target_length", [(8, 4), (64, 16), (114, 30), (512, 114), (4096, 2048)])
def test_raw_window_is_the_largest_that_fits(input_length, target_length):
  w = objectives.raw_window(input_length, target_length, 0.15, 3.0)

  def lengths(n):
    noise, spans = objectives.span_counts(n, 0.15, 3.0)
    return n - noise + spans + 1, noise + spans + 1, round(noise / 3.0)

  assert all(e <= input_length and t <= target_length for e, t, _ in map(lengths, range(1, w + 1)))
  e, t, s = lengths(w + 1)
  assert e > input_length or t > target_length or s > NUM_SENTINELS
  if input_length == 512:
    assert 560 <= w <= 570  # T5: 512 input tokens ≈ 568 raw tokens at density 0.15, mean span 3


def test_noise_mask_exact_counts():
  rng = np.random.default_rng(0)
  for n in range(0, 200, 7):
    mask = objectives.noise_mask(n, rng, 0.15, 3.0)
    noise, spans = objectives.span_counts(n, 0.15, 3.0)
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    assert mask.sum() == noise and starts.sum() == spans and (n < 2 or not mask[0])


pair_lengths = st.lists(st.tuples(st.integers(1, 12), st.integers(0, 9)), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None)
@given(pair_lengths, st.integers(2, 10), st.integers(2, 8), st.integers(1, 30), st.integers(1, 4), st.integers(0, 2))
def test_packed_seq2seq_rows_hold_whole_pairs_each_once_within_the_budget(
  lengths, input_length, target_length, budget, batch, seed
):
  """data.pack_pairs: every pair of the split exactly once per epoch, whole, in its own segment on both sides
  (``input+EOS`` → ``target+EOS``, ``BOS+target`` fed, positions restarting), its ids in all within the budget
  unless it is alone in its row, truncation as one pair per row. Recomputed from the corpus' unique ids."""
  corpus = programs([a for a, _ in lengths], [b for _, b in lengths], seed)
  kw = dict(objective="seq2seq", global_batch=batch, seed=seed, input_length=input_length, truncate=True)
  p = Pipeline(corpus.split, target_length=target_length, pack_tokens=budget, **kw)
  inp, tgt, pb = corpus.docs["input"], corpus.docs["target"], corpus.piece_bytes
  assert p.summary()["pairs_per_row"] == pytest.approx(len(lengths) / p.rows_per_epoch)
  for epoch in (0, 1):
    rows = epoch_rows(p, epoch)
    seen = []
    for r in range(p.rows_per_epoch):
      enc_seg, dec_seg = rows["encoder_segment_ids"][r], rows["decoder_segment_ids"][r]
      pairs = int(enc_seg.max())
      assert pairs >= 1 and int(dec_seg.max()) == pairs
      for s in range(1, pairs + 1):
        src = rows["encoder_inputs"][r][enc_seg == s]
        d = corpus.where[int(src[0])][1]  # inputs are never empty here, and every id is unique
        seen.append(d)
        assert src.tolist() == [*inp[d][: input_length - 1], EOS_ID]
        assert rows["encoder_positions"][r][enc_seg == s].tolist() == list(range(len(src)))
        want = [*tgt[d][: target_length - 1], EOS_ID]
        at = dec_seg == s
        assert rows["decoder_targets"][r][at].tolist() == want
        assert rows["decoder_inputs"][r][at].tolist() == [BOS_ID, *want[:-1]]
        assert rows["decoder_positions"][r][at].tolist() == list(range(len(want)))
        assert rows["decoder_weights"][r][at].tolist() == [1.0] * len(want)
        assert rows["target_bytes"][r][at].tolist() == [*pb[want[:-1]], 0]
        if pairs > 1:
          assert len(src) + len(want) <= budget
      assert (rows["encoder_inputs"][r][enc_seg == 0] == PAD_ID).all()
      assert (rows["decoder_weights"][r][dec_seg == 0] == 0).all()
      assert np.all(np.diff(enc_seg[enc_seg > 0]) >= 0) and np.all(np.diff(dec_seg[dec_seg > 0]) >= 0)
      if pairs > 1:
        assert (enc_seg > 0).sum() + (dec_seg > 0).sum() <= budget
    assert sorted(seen) == list(range(len(lengths))), "each pair once per epoch"
  assert objectives.seq2seq_training({"pack_pairs": True}, 128) == {"pack_tokens": 128}
  assert objectives.seq2seq_training({}, 128) == {"pack_tokens": 0}  # configs from before: one pair per row


def test_packed_seq2seq_gathers_pairs_that_fit_and_orders_rows_by_epoch():
  """Ten pairs of 2 + 2 ids under a budget of 8 ids: two pairs a row, five rows; two epochs visit them in two
  orders, each row's pairs unchanged (which pairs share a row is drawn once)."""
  corpus = programs([1] * 10, [1] * 10)
  kw = dict(objective="seq2seq", global_batch=5, seed=0, input_length=4, target_length=4)
  p = Pipeline(corpus.split, pack_tokens=8, **kw)
  assert p.rows_per_epoch == 5
  groups = []
  for epoch in (0, 1):
    rows = epoch_rows(p, epoch)
    ids = rows["encoder_inputs"]
    groups.append([tuple(corpus.where[int(t)][1] for t in row if t >= FIRST_REGULAR_ID) for row in ids])
  assert all(len(g) == 2 for g in groups[0]) and sorted(groups[0]) == sorted(groups[1]) and groups[0] != groups[1]
  with pytest.raises(UserError, match="pack_tokens >= 0"):
    Pipeline(corpus.split, pack_tokens=-1, **kw)


def test_seq2seq_layout_and_truncation():
  corpus = programs([3, 7, 0], [2, 1, 9])
  with pytest.raises(UserError, match="truncate=True"):
    Pipeline(corpus.split, objective="seq2seq", global_batch=3, seed=0, input_length=6, target_length=5)
  p = Pipeline(
    corpus.split,
    objective="seq2seq",
    global_batch=3,
    seed=0,
    input_length=6,
    target_length=5,
    shuffle=False,
    truncate=True,
  )
  s = p.summary()
  assert (s["truncated_inputs"], s["truncated_targets"], s["truncated_examples"]) == (1, 1, 2)
  b = p.batch(0)
  inp, tgt = corpus.docs["input"], corpus.docs["target"]
  assert b["encoder_inputs"].tolist() == [
    [*inp[0], EOS_ID, 0, 0],
    [*inp[1][:5], EOS_ID],
    [EOS_ID, 0, 0, 0, 0, 0],
  ]
  assert b["decoder_targets"].tolist() == [[*tgt[0], EOS_ID, 0, 0], [*tgt[1], EOS_ID, 0, 0, 0], [*tgt[2][:4], EOS_ID]]
  assert b["decoder_inputs"].tolist() == [[BOS_ID, *tgt[0], 0, 0], [BOS_ID, *tgt[1], 0, 0, 0], [BOS_ID, *tgt[2][:4]]]
  assert b["encoder_segment_ids"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]]
  assert b["decoder_weights"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1] * 5]
  assert b["encoder_positions"][0].tolist() == [0, 1, 2, 3, 0, 0] and b["decoder_positions"][2].tolist() == [
    0,
    1,
    2,
    3,
    4,
  ]
  pb = corpus.piece_bytes
  nbytes = corpus.split.fields["target"].nbytes
  assert b["target_bytes"].tolist() == [
    [*pb[tgt[0]], 0, 0, 0],
    [*pb[tgt[1]], 0, 0, 0, 0],
    [*pb[tgt[2][:4]], 0],
  ]
  assert b["target_bytes"].sum(1).tolist() == [nbytes[0], nbytes[1], pb[tgt[2][:4]].sum()] and pb[tgt[2]].sum() > 0


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(objective="lm", global_batch=3, process_count=2, length=8), "multiple of process_count"),
    (dict(objective="lm", global_batch=4, process_count=2, process_index=2, length=8), "process_index"),
    (dict(objective="gpt", global_batch=4, length=8), "unknown objective"),
    (dict(objective="seq2seq", global_batch=4, input_length=8, target_length=8), "input/target split"),
    (dict(objective="lm_targets", global_batch=4, length=8), "input/target split"),
    (dict(objective="lm", global_batch=4), "need length >= 1"),
    (dict(objective="lm", global_batch=4, length=8, mask_rate=0.2), "no option mask_rate"),
    (dict(objective="mlm", global_batch=4, length=8, mask_rate=1.5), "mask_rate"),
    (dict(objective="span_corruption", global_batch=4, input_length=2, target_length=2), "fit no noised window"),
    (dict(objective="lm", global_batch=4, length=8, seed=-1), "seed"),
  ],
)
def test_bad_input_is_a_user_error(kwargs, match):
  with pytest.raises(UserError, match=match):
    Pipeline(prose([5, 6]).split, **{"seed": 0, **kwargs})


def test_incompatible_split_kinds():
  with pytest.raises(UserError, match="prose split"):
    Pipeline(
      programs([3], [2]).split, objective="span_corruption", global_batch=1, seed=0, input_length=8, target_length=8
    )
  with pytest.raises(UserError, match="no documents"):
    Pipeline(prose([]).split, objective="lm", global_batch=1, seed=0, length=8)
  with pytest.raises(UserError, match="no tokens"):
    Pipeline(prose([0, 0]).split, objective="span_corruption", global_batch=1, seed=0, input_length=8, target_length=8)
  with pytest.raises(UserError, match="step"):
    make("lm").batch(-1)


@pytest.mark.parametrize("context,tail_weight,k", [(0, 0.0, 1), (0, 1.0, 1), (12, 0.0, 1), (12, 1.0, 2)])
def test_memory_batch_spec_is_the_prefix_lm_batch(context, tail_weight, k):
  """The abstract batch the memory estimate compiles (``memory.batch_spec``) has the pipeline's keys and shapes,
  the decoder context's wider decoder side and the weighted tail's content mask included."""
  import ml_collections

  from llmcpu.training import memory

  corpus = prose([40, 90, 60, 120], 1)
  data = ml_collections.ConfigDict(dict(input_length=30, target_length=10, pairs_per_row=k, tail_weight=tail_weight))
  p = Pipeline(
    corpus.split, objective="prefix_lm", global_batch=2, seed=0, input_length=30, target_length=10,
    pairs_per_row=k, context_bytes=context, tail_weight=tail_weight,
  )  # fmt: skip
  batch = p.batch(0)
  spec = memory.batch_spec("prefix_lm", 2, data, context)
  assert {key: tuple(v.shape) for key, v in spec.items()} == {key: v.shape for key, v in batch.items()}
