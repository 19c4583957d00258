"""Encoders and encoder-decoders score the same bytes in every column: masked LM masks the same words and prefix LM
cuts at the same places in every ISA of the quickstart, so the bytes scored per document (and what is hidden or
shown) are identical whatever the compiler. Byte offsets here come from each ISA's own decoding of its ids, not
from the objectives' unit bookkeeping."""

import re

import numpy as np
import pytest
from conftest import prose_corpus

from llmcpu import compilers, specials, toolchain
from llmcpu.data import units
from llmcpu.data.pipeline import Pipeline

QUICKSTART = "configs/experiments/quickstart.py"


def quickstart_isas() -> list[str]:
  import importlib.util
  import os

  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), QUICKSTART)
  spec = importlib.util.spec_from_file_location("quickstart", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().compilers.split(",")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("quickstart_isas"))
  corpus = prose_corpus()
  specs = compilers.parse_list(",".join(quickstart_isas()))
  built = toolchain.build_compilers(specs, [corpus], workdir, log=lambda _: None)
  toolchain.compile_corpora([corpus], built, workdir, log=lambda _: None)
  return {c.name: (c, toolchain.load_split(workdir, corpus.name, c, "validation")) for c in built}


def byte_offsets(compiler, ids: np.ndarray) -> np.ndarray:
  """Each token's first byte in its document: 1 byte for a byte piece, else what the id decodes to on its own (not
  the objectives' piece_bytes); they must add up to the document's decoded bytes."""
  size = {}
  for t in set(ids.tolist()):
    size[t] = 1 if re.fullmatch(r"<0x[0-9A-F]{2}>", compiler.pieces[t]) else len(compiler.decode([t]).encode("utf-8"))
  text = [size[t] for t in ids.tolist()]
  assert sum(text) == len(compiler.decode(ids.tolist()).encode("utf-8"))
  return np.concatenate([[0], np.cumsum(text)]).astype(np.int64)


def byte_set(offsets: np.ndarray, tokens: np.ndarray) -> frozenset:
  return frozenset(b for t in tokens for b in range(offsets[t], offsets[t + 1]))


def mlm_bytes(compiler, split) -> list[tuple[frozenset, frozenset]]:
  """Per document: (bytes scored, bytes replaced by MASK) over one evaluation pass."""
  p = Pipeline(split, objective="mlm", global_batch=8, seed=0, length=64, shuffle=False, document_ids=True)
  batches = list(p.eval_batches())
  stream = {k: np.concatenate([b[k] for b in batches]).reshape(-1) for k in ("inputs", "targets", "weights")}
  text = split.fields["text"]
  out, start = [], 0  # the packed stream in corpus order: [BOS] + ids + [EOS] per document
  for d in range(split.num_docs):
    ids = np.asarray(text.doc(d))
    at = start + 1 + np.arange(len(ids))
    assert np.array_equal(stream["targets"][at], ids)
    offsets = byte_offsets(compiler, ids)
    scored = np.flatnonzero(stream["weights"][at] > 0)
    masked = np.flatnonzero(stream["inputs"][at] == specials.MASK_ID)
    out.append((byte_set(offsets, scored), byte_set(offsets, masked)))
    start += len(ids) + 2
  return out


def prefix_lm_bytes(compiler, split) -> list[list[tuple[int, int, int]]]:
  """Per document: each row's (first prefix byte, cut, last scored byte + 1), read from the rows' own ids."""
  p = Pipeline(
    split, objective="prefix_lm", global_batch=8, seed=0, input_length=128, target_length=64, shuffle=False,
    document_ids=True,
  )  # fmt: skip
  text = split.fields["text"]
  found: dict[int, list] = {}
  docs = [np.asarray(text.doc(d)) for d in range(split.num_docs)]
  offsets = [byte_offsets(compiler, ids) for ids in docs]
  cursor = dict.fromkeys(range(split.num_docs), 0)
  for b in p.eval_batches():
    for i in range(len(b["encoder_inputs"])):
      n_enc, n_tgt = int(b["encoder_segment_ids"][i].sum()), int(b["decoder_segment_ids"][i].sum())
      if not n_tgt:
        continue  # padding past the end of the pass
      doc = int(b["target_docs"][i][0])
      window = np.concatenate([b["encoder_inputs"][i][: n_enc - 1], b["decoder_targets"][i][: n_tgt - 1]])
      ids = docs[doc]
      start = next(s for s in range(cursor[doc], len(ids)) if np.array_equal(ids[s : s + len(window)], window))
      cut, end = start + n_enc - 1, start + len(window)
      cursor[doc] = end
      assert b["target_bytes"][i][: n_tgt - 1].sum() == offsets[doc][end] - offsets[doc][cut]
      found.setdefault(doc, []).append((int(offsets[doc][start]), int(offsets[doc][cut]), int(offsets[doc][end])))
  return [found.get(d, []) for d in range(split.num_docs)]


def test_every_quickstart_isa_finds_the_same_words(splits):
  assert len(splits) == 4
  for c, _ in splits.values():  # no piece would hide a word start inside it
    flags = c.piece_spaces
    assert not np.any(flags & compilers.compiler.SPACE_INSIDE)
    ends_in_space = [c.pieces[i] for i in np.flatnonzero(flags & compilers.compiler.SPACE_LAST)]
    assert all(p == "<0x20>" or set(p) == {"\u2581"} for p in ends_in_space)  # only pieces that are all spaces


def test_masked_lm_scores_and_hides_the_same_bytes_in_every_isa(splits):
  per_isa = {name: mlm_bytes(c, s) for name, (c, s) in splits.items()}
  first = next(iter(per_isa.values()))
  assert all(scored and masked <= scored for scored, masked in first)
  for name, docs in per_isa.items():
    assert docs == first, f"{name} scores other bytes than {next(iter(per_isa))}"
  # and they are whole words: a scored run starts at a space after a non-space (or the document's start).
  c, s = next(iter(splits.values()))
  raw = c.decode(np.asarray(s.fields["text"].doc(0)).tolist()).encode("utf-8")
  scored = sorted(first[0][0])
  runs = [b for b in scored if b - 1 not in first[0][0]]
  assert all(b == 0 or (raw[b] == 0x20 and raw[b - 1] != 0x20) for b in runs)


def test_prefix_lm_cuts_at_the_same_bytes_in_every_isa(splits):
  per_isa = {name: prefix_lm_bytes(c, s) for name, (c, s) in splits.items()}
  first = next(iter(per_isa.values()))
  assert all(first) and sum(len(w) for w in first) > len(first)  # several windows per document
  for name, docs in per_isa.items():
    assert docs == first, f"{name} reads or scores other bytes than {next(iter(per_isa))}"
  for windows in first:
    for lo, cut, hi in windows:
      assert 0 < cut - lo <= 127 and 0 < hi - cut <= 63


def test_units_of_a_hand_made_field():
  spaces = np.zeros(50, np.int8)
  spaces[40], spaces[41] = compilers.compiler.SPACE_FIRST | 2, compilers.compiler.SPACE_FIRST  # "▁" and "▁b"
  tokens = np.array([45, 40, 41, 42, 40, 40, 45])  # a ▁ ▁b c ▁ ▁ a | two documents: [0, 4), [4, 7)
  starts = units.unit_starts(tokens, np.array([0, 4, 7]), spaces)
  assert starts.tolist() == [True, True, False, False, True, False, False]
  index, per_doc = units.unit_index(starts, np.array([0, 4, 7]))
  assert index.tolist() == [0, 1, 1, 1, 0, 0, 0] and per_doc.tolist() == [2, 1]
