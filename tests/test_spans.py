"""Span corruption done on text (spans:CORPUS): sentinel marks compile to the same sentinel ids in every ISA, every
example holds every byte of its window, and two ISAs' compiles pair up for a swap."""

import pydoc_data.topics

import numpy as np
import pytest
from conftest import write_docs

from llmcpu import compilers, specials, toolchain
from llmcpu.data import compiled, corpora, spans
from llmcpu.data.objectives import Seq2Seq
from llmcpu.errors import UserError

M0, M1 = specials.sentinel_mark(0), specials.sentinel_mark(1)


def fill(example: dict) -> str:
  """The window back from an example: each mark of the input replaced by its span in the target."""
  runs, ids = specials.split_marks(example["target"])
  span = dict(zip(ids, runs[1:], strict=True))
  text_runs, marks = specials.split_marks(example["input"])
  return text_runs[0] + "".join(span[m] + r for m, r in zip(marks, text_runs[1:], strict=True))


@pytest.fixture(scope="module")
def isas(compile_dir):
  return [compilers.load(toolchain.compiler_dir(compile_dir, name)) for name in ("bpe600", "byte")]


def test_marks_compile_to_sentinels_between_runs_encoded_alone(isas):
  for k in isas:
    texts = [f"The quick {M0}over the {M1}", "plain text", "", M0]
    flat, lengths = k.encode_marked(texts)
    docs = np.split(flat, np.cumsum(lengths)[:-1])
    want = k.encode("The quick ") + [specials.sentinel_id(0)] + k.encode("over the ") + [specials.sentinel_id(1)]
    assert docs[0].tolist() == want
    assert docs[1].tolist() == k.encode("plain text") and docs[2].tolist() == [] and docs[3].tolist() == [5]
    for t, d in zip(texts, docs, strict=True):  # lossless without the marks; sentinels are 0 bytes
      assert k.decode(d) == specials.strip_marks(t)
      assert int(k.piece_bytes[d].sum()) == len(specials.strip_marks(t).encode("utf-8"))


def test_words_keep_their_whitespace_and_long_ones_are_cut_at_characters():
  text = "  lead " + "é" * 100 + " tail\n\n"  # a 200-byte word: cut into pieces of ≤ 128 bytes, whole characters
  units = spans.words(text)
  assert "".join(units) == text and units[0] == "  lead "
  assert max(len(u.encode("utf-8")) for u in units) <= spans.WINDOW_BYTES and len(units) == 4
  assert spans.words("   ") == ["   "] and spans.words("") == []


def test_every_example_holds_every_byte_of_its_window():
  text = "\n".join(sorted(pydoc_data.topics.topics.values())[:40])
  windows = spans.windows(text)
  assert "".join(w for units in windows for w in units) == text
  assert max(len("".join(units).encode("utf-8")) for units in windows) <= spans.WINDOW_BYTES
  examples = list(spans.examples(text))
  assert len(examples) >= len(windows) - 1  # only a one-word last window has no noise
  at_end, noise, total = 0, 0, 0
  for units, ex in zip(windows, examples, strict=False):
    assert fill(ex) == "".join(units)
    n = len(units)
    noise += len(spans.words(specials.strip_marks(ex["target"])))
    total += n
    at_end += ex["input"].endswith(M0)
  assert 0.12 < noise / total < 0.19  # T5's density 0.15 over words
  assert at_end < 0.3 * len(examples)  # rolled: a window's one span is not always its end
  assert list(spans.examples(text)) == examples  # the same text, the same corruption


def test_a_spans_corpus_compiles_to_pairs_that_score_only_the_spans(tmp_path, isas):
  corpus = corpora.load_corpus(f"spans:text:{write_docs(tmp_path)}")
  assert corpus.fields == ("input", "target") and corpus.marked
  workdir = str(tmp_path / "compiled")
  toolchain.compile_corpora([corpus], isas, workdir, log=lambda _: None)
  a, b = (toolchain.load_split(workdir, corpus.name, k, "test") for k in isas)
  paired = compiled.pair(a, b)  # the same documents in both ISAs: B's input under A's target
  assert paired.num_docs == a.num_docs > 0
  # Each window is labelled with the document it was cut from (its cluster for intervals): recount them here.
  inner = corpora.load_corpus(f"text:{write_docs(tmp_path / 'again')}")
  want = [f"doc:{i}" for i, d in enumerate(inner.documents("test")) for _ in spans.examples(d["text"])]
  assert a.labels["source"] == b.labels["source"] == want and len(set(want)) < len(want)
  for f in ("input", "target"):
    assert np.array_equal(a.fields[f].nbytes, b.fields[f].nbytes)
  batch = Seq2Seq(b, 160, 160).rows(np.arange(b.num_docs), np.arange(8), np.arange(8))
  targets = batch["decoder_targets"]
  sentinel = (targets >= specials.FIRST_SENTINEL_ID) & (targets < specials.FIRST_REGULAR_ID)
  assert sentinel.any() and np.all(batch["target_bytes"][sentinel] == 0) and np.all(batch["target_docs"][sentinel] < 0)
  assert np.array_equal(batch["target_bytes"].sum(1), b.fields["target"].nbytes[:8])  # byte ISA: 1 id = 1 byte


def test_spans_of_a_corpus_that_is_not_prose_is_one_line(tmp_path):
  glob = write_docs(tmp_path)
  with pytest.raises(UserError, match="corrupts the text of a prose corpus"):
    corpora.load_corpus(f"spans:spans:text:{glob}")
