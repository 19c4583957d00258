"""Corpora: the TFDS builders prepare offline and load back through TFDS; every bad input is one clear error."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import platform
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from llmcpu.data import Corpus, load_corpus
from llmcpu.data.corpora import import_tfds
from llmcpu.data.files import DOC_BYTES, cut_documents
from llmcpu.data.sources import split_for
from llmcpu.errors import UserError


@contextlib.contextmanager
def no_network():
  """Any Python-level connection attempt fails loudly: preparation must not need the network."""

  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "getaddrinfo", refuse)
    yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("tfds_data"))


@pytest.fixture(scope="session")
def docs(data_dir) -> Corpus:
  with no_network():
    return load_corpus("python_docs", data_dir=data_dir)


@pytest.fixture(scope="session")
def progs(data_dir) -> Corpus:
  with no_network():
    return load_corpus("programs:small", data_dir=data_dir)


def all_docs(corpus: Corpus) -> dict[str, list[dict[str, str]]]:
  return {s: list(corpus.documents(s)) for s in corpus.splits}


# --- python_docs --------------------------------------------------------------------------------------------------


def test_import_is_cheap():
  code = "import sys, llmcpu.data; assert 'tensorflow_datasets' not in sys.modules and 'tensorflow' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)


def python_docs_rows(data_dir) -> dict[str, list[tuple[str, str]]]:
  """``{split: [(id, text)]}`` of the prepared python_docs, straight from TFDS."""
  tfds = import_tfds()
  builder = tfds.builder("python_docs", data_dir=data_dir)  # registered by llmcpu.data.python_docs
  assert builder.is_prepared()
  assert builder.builder_config.name == f"py{sys.version_info.major}.{sys.version_info.minor}"
  return {
    split: [
      (r["id"].decode(), r["text"].decode()) for r in tfds.as_numpy(builder.as_dataset(split, shuffle_files=False))
    ]
    for split in ("train", "validation", "test")
  }


def test_python_docs_prepared_offline_and_read_through_tfds(docs, data_dir):
  from llmcpu.data.python_docs import source_of

  ids = {}
  for split, rows in python_docs_rows(data_dir).items():
    assert len(rows) == docs.info["num_docs"][split] > 0
    for doc_id, text in rows:
      assert doc_id not in ids, f"duplicate id {doc_id}"
      ids[doc_id] = split
      assert text.strip()
  # The split of a document is a function of its source's id alone, not of the other documents.
  assert all(split_for(source_of(doc_id), (75, 5, 20)) == split for doc_id, split in ids.items())
  from pydoc_data.topics import topics

  assert {source_of(i) for i in ids if i.startswith("topic:")} == {f"topic:{t}" for t in topics}
  modules = list(dict.fromkeys(source_of(i).removeprefix("module:") for i in ids if i.startswith("module:")))
  assert "json" in modules and "json.decoder" in modules
  for name in modules:
    parts = name.split(".")
    assert not {"test", "tests", "idle_test", "site-packages"} & set(parts), name
    assert not parts[-1].startswith("test_"), name
  assert not any(m.split(".")[0] in ("numpy", "pytest", "tensorflow", "llmcpu") for m in modules)


def test_python_docs_metadata_and_determinism(docs, data_dir):
  assert docs.name == f"python_docs-py{sys.version_info.major}.{sys.version_info.minor}"
  assert docs.info["python_version"] == platform.python_version()
  assert docs.fields == ("text",) and docs.label_fields == () and docs.splits == ("train", "validation", "test")
  again = load_corpus("python_docs", data_dir=data_dir)  # reuses the prepared data
  assert again.fingerprint == docs.fingerprint
  assert list(again.documents("test")) == list(docs.documents("test"))
  first = list(docs.documents("train", limit=3))
  assert len(first) == 3 and all(set(d) == {"text"} and isinstance(d["text"], str) for d in first)
  assert list(docs.documents("train", limit=0)) == []


@pytest.mark.parametrize("key, value", [("python_version", "3.0.0"), ("section_bytes", 4096)])
def test_python_docs_regenerated_when_stale(docs, data_dir, tmp_path, key, value):
  # Stale: prepared by another micro version of this Python (the docstrings may differ), or by code that cut
  # documents differently under the same VERSION.
  other = tmp_path / "data"
  shutil.copytree(data_dir, other, ignore=shutil.ignore_patterns("programs"))
  [meta_path] = (other / "python_docs").glob("*/*/metadata.json")
  meta = json.loads(meta_path.read_text())
  meta[key] = value
  meta_path.write_text(json.dumps(meta))
  corpus = load_corpus("python_docs", data_dir=str(other))
  assert corpus.info["python_version"] == platform.python_version() and corpus.info["section_bytes"] == 2048
  assert corpus.fingerprint == docs.fingerprint


def test_python_docs_test_split_is_big_enough(docs, data_dir):
  # Enough held-out prose for bootstrap intervals over documents, with margin (336 documents, 576 KB on 3.11.7).
  rows = python_docs_rows(data_dir)
  assert docs.info["num_docs"] == {s: len(r) for s, r in rows.items()}
  assert docs.info["num_bytes"] == {s: sum(len(t.encode()) for _, t in r) for s, r in rows.items()}
  assert len(rows["test"]) >= 200 and docs.info["num_bytes"]["test"] >= 250_000
  assert docs.info["split_percents"] == {"train": 75, "validation": 5, "test": 20}
  # The fingerprint (what compiled caches are keyed by) covers the builder version and how documents are cut.
  assert docs.info["tfds_name"].endswith("/1.1.0") and docs.info["section_bytes"] == 2048


def test_python_docs_parts_are_whole_sections_and_sources_do_not_leak(docs, data_dir):
  from llmcpu.data import python_docs

  rows = python_docs_rows(data_dir)
  split_of = {i: s for s, r in rows.items() for i, _ in r}
  texts = {i: t for r in rows.values() for i, t in r}
  sources, _ = python_docs.collect_sources()
  expected_ids = []
  for source, sections in sources:
    n = len(python_docs.split_sections(sections))
    ids = [f"{source}#{k}" for k in range(1, n + 1)]
    expected_ids += ids
    # Every part of a source is in the same split: no module's or topic's text on both sides.
    assert len({split_of[i] for i in ids}) == 1, source
    check_parts(sections, [texts[i] for i in ids])
  # Ids are unique, and stable: source order (topics by name, modules by path), parts in order.
  assert sorted(texts) == sorted(expected_ids)
  for split, r in rows.items():
    assert [i for i, _ in r] == [i for i in expected_ids if split_of[i] == split]
  assert {"module:json.decoder#1", "topic:assignment#1", "topic:assignment#2"} <= set(texts)
  assert texts["module:json.decoder#1"].startswith("module json.decoder\n\n")
  assert texts["topic:assignment#2"].startswith("Assignment statements\n\n")


def check_parts(sections: list[str], parts: list[str], target: int = 2048) -> None:
  """``parts`` are runs of whole ``sections`` (a huge one may be cut at blank lines) that rejoin to the source."""
  from llmcpu.data.python_docs import HUGE_SECTION

  text = "\n\n".join(sections)
  header = text.split("\n", 1)[0]
  bodies = [parts[0]]
  for part in parts[1:]:
    assert part.startswith(header + "\n\n"), part[:80]  # every part says what it documents
    bodies.append(part.removeprefix(header + "\n\n"))
  assert "\n\n".join(bodies) == text  # nothing lost, repeated or reordered
  # Where a part may start: at a section, or at a paragraph of a huge section; never at the second section (the
  # header line or a topic's title would be a document alone).
  allowed, offset = set(), 0
  for k, section in enumerate(sections):
    if k >= 2:
      allowed.add(offset)
    if len(section.encode()) > HUGE_SECTION * target:
      allowed.update(offset + m.end() for m in re.finditer("\n\n", section))
    offset += len(section) + 2
  starts = [sum(len(b) + 2 for b in bodies[:k]) for k in range(1, len(bodies))]
  assert set(starts) <= allowed, (header, sorted(set(starts) - allowed))
  assert all(b.strip() for b in bodies)


def test_split_sections_groups_whole_sections():
  from llmcpu.data.python_docs import paragraphs, split_sections

  para = "word " * 60  # 300 bytes
  huge = "\n\n".join(f"huge {k} {para}" for k in range(40))  # ~12 KB: over 2 x target, cut at paragraphs
  sections = ["module pkg.mod", "Module doc.", *[f"def f{k}()\n{para}\n\n{para}" for k in range(12)], huge]
  parts = split_sections(sections, target=2048)
  check_parts(sections, parts, target=2048)
  assert len(parts) > 5 and all(len(p.encode()) < 2 * 2048 for p in parts)
  assert all(sum(sections[k] in p for p in parts) == 1 for k in range(2, 14))  # each def whole, in one part
  assert split_sections(sections, target=2048) == parts  # deterministic
  # Small documents stay whole; a lone title never becomes a part.
  assert split_sections(["module tiny", "Doc."]) == ["module tiny\n\nDoc."]
  assert split_sections(["Title\n*****", "x" * 5000]) == ["Title\n*****\n\n" + "x" * 5000]
  # Paragraphs rejoin exactly, runs of blank lines included, and none is blank.
  for text in ["a\n\nb", "a\n\n\nb", "a\n\n\n\nb\n\n\n\n\nc", "one"]:
    assert "\n\n".join(paragraphs(text)) == text and all(p.strip() for p in paragraphs(text))


def test_split_for_percents_and_unchanged_default():
  # programs' held-out operands and text: splits rely on the default never moving.
  import hashlib

  for k in range(20_000):
    key = f"str:{k}"
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    legacy = "validation" if bucket < 5 else "test" if bucket < 10 else "train"
    assert split_for(key) == split_for(key, (90, 5, 5)) == legacy
    wider = split_for(key, (75, 5, 20))
    assert wider == legacy or (legacy, wider) == ("train", "test")  # a wider test split only takes from train
  with pytest.raises(ValueError, match="sum to 100"):
    split_for("x", (90, 5, 10))


def test_stdlib_walk_skips_site_packages_and_tests(tmp_path):
  from llmcpu.data.python_docs import stdlib_sources

  for rel in [
    "json/__init__.py",
    "json/decoder.py",
    "abc.py",
    "test_thing.py",
    "test/support.py",
    "tests/x.py",
    "idlelib/idle_test/y.py",
    "site-packages/numpy/__init__.py",
    "dist-packages/z.py",
    "__pycache__/abc.py",
    "lib-dynload/q.py",
  ]:
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('"""Doc."""\n')
  assert [name for name, _ in stdlib_sources(str(tmp_path))] == ["abc", "json", "json.decoder"]


def test_module_document_reads_docstrings_without_importing():
  from llmcpu.data.python_docs import module_document

  source = b'''"""Module doc."""
raise SystemExit("imported!")
def f(a, b=2):
    """  First line.

    Indented more.
    """
class C:
    """Class doc."""
    def m(self):
        """Method doc."""
    def quiet(self):
        pass
async def g(): """Async doc."""
'''
  assert module_document("pkg.mod", source) == (
    "module pkg.mod\n\nModule doc.\n\ndef f(a, b=2)\nFirst line.\n\nIndented more.\n\nclass C\nClass doc.\n\n"
    "def C.m(self)\nMethod doc.\n\nasync def g()\nAsync doc."
  )
  assert module_document("empty", b"x = 1\n") == ""


# --- programs -----------------------------------------------------------------------------------------------------

_SMALL = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()
_SMALL += "sixteen seventeen eighteen nineteen".split()
_TENS = dict(zip(range(2, 10), "twenty thirty forty fifty sixty seventy eighty ninety".split(), strict=True))


def words(n: int) -> str:
  """An independent number speller (groups, then join) to check the corpus against."""
  if n == 0:
    return "zero"
  out = []
  thousands, rest = divmod(n, 1000)
  hundreds, below = divmod(rest, 100)
  if thousands:
    out.append(words(thousands) + " thousand")
  if hundreds:
    out.append(_SMALL[hundreds] + " hundred")
  if below:
    tens, ones = divmod(below, 10)
    out.append(_SMALL[below] if below < 20 else _TENS[tens] + (f"-{_SMALL[ones]}" if ones else ""))
  return " ".join(out)


KNOWN = {
  0: "zero",
  7: "seven",
  13: "thirteen",
  21: "twenty-one",
  40: "forty",
  105: "one hundred five",
  110: "one hundred ten",
  1000: "one thousand",
  2005: "two thousand five",
  9999: "nine thousand nine hundred ninety-nine",
}


def test_number_words_known_cases_and_round_trip():
  from llmcpu.data.programs import num2words, words2num

  for n, text in KNOWN.items():
    assert words(n) == text and num2words(n) == text
  for n in range(10_000):
    assert words2num(num2words(n)) == n
  with pytest.raises(ValueError):
    words2num("one zillion")


def check(ex: dict[str, str]) -> tuple[str, object]:
  """Verifies one example from scratch; returns its operand (kind, value) set key."""
  task, inp, target = ex["task"], ex["input"], ex["target"]
  assert inp.startswith(task + " ") and inp.endswith(" =")
  if m := re.fullmatch(r"(add|sub|mul) (\d+) (\d+) =", inp):
    a, b = int(m[2]), int(m[3])
    assert target == str({"add": a + b, "sub": a - b, "mul": a * b}[task])
    return [("num", a), ("num", b)]
  if m := re.fullmatch(r"(copy|reverse|sort) ([a-z]+) =", inp):
    s = m[2]
    assert target == {"copy": s, "reverse": s[::-1], "sort": "".join(sorted(s))}[task]
    return [("str", s)]
  if m := re.fullmatch(r"count ([a-z]) in ([a-z]+) =", inp):
    assert target == str(m[2].count(m[1]))
    return [("str", m[2])]
  if m := re.fullmatch(r"num2words (\d+) =", inp):
    assert target == words(int(m[1]))
    return [("num", int(m[1]))]
  if m := re.fullmatch(r"words2num ([a-z -]+) =", inp):
    assert words(int(target)) == m[1]
    return [("num", int(target))]
  raise AssertionError(f"unexpected example {ex}")


def test_programs_ground_truth_and_held_out_operands(progs):
  assert progs.fields == ("input", "target") and progs.label_fields == ("task",)
  data = all_docs(progs)
  assert {s: len(d) for s, d in data.items()} == {"train": 2000, "validation": 200, "test": 200}
  operands = {}
  for split, examples in data.items():
    assert {ex["task"] for ex in examples} == set(progs.info["tasks"])
    operands[split] = {op for ex in examples for op in check(ex)}
  assert not operands["train"] & operands["test"]
  assert not operands["train"] & operands["validation"]
  assert not operands["validation"] & operands["test"]


def test_programs_prepared_offline_deterministic_and_seeded(progs, data_dir):
  from llmcpu.data import programs

  tfds = import_tfds()
  builder = tfds.builder("programs/small", data_dir=data_dir)
  assert builder.is_prepared()
  rows = list(tfds.as_numpy(builder.as_dataset(split="test", shuffle_files=False)))
  from_tfds = [{k: v.decode() for k, v in row.items()} for row in rows]
  assert from_tfds == programs.generate("test", 200, seed=0) == list(progs.documents("test"))
  again = pickle.loads(pickle.dumps(load_corpus("programs:small", data_dir=data_dir)))
  assert again.fingerprint == progs.fingerprint and list(again.documents("validation")) == list(
    progs.documents("validation")
  )
  assert programs.generate("train", 300, seed=1) == programs.generate("train", 300, seed=1)
  assert programs.generate("train", 300, seed=1) != programs.generate("train", 300, seed=0)


# --- tfds:NAME[:TEXT_KEY] -----------------------------------------------------------------------------------------


def test_tfds_prepared_dataset_via_mock_data(tmp_path):
  tfds = import_tfds()
  builder = tfds.builder("tiny_shakespeare", data_dir=str(tmp_path))
  # What a real preparation leaves behind, minus the records: mock_data(USE_FILES) reads split names from it.
  splits = [tfds.core.SplitInfo(name=s, shard_lengths=[1], num_bytes=100) for s in ("train", "validation", "test")]
  builder.info.set_splits(tfds.core.SplitDict(splits))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)
  with (
    no_network(),
    tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path)),
  ):
    corpus = load_corpus("tfds:tiny_shakespeare", data_dir=str(tmp_path))
    texts = [d["text"] for d in corpus.documents("validation")]
  assert corpus.name == "tfds-tiny_shakespeare-text" and corpus.splits == ("train", "validation", "test")
  assert corpus.info["data_dir"] == str(tmp_path)
  assert len(texts) == 4 and all(isinstance(t, str) for t in texts)


def test_tfds_reads_our_prepared_builders_like_any_dataset(docs, progs, data_dir):
  corpus = load_corpus("tfds:programs/small:target", data_dir=data_dir)
  assert [d["text"] for d in corpus.documents("test", limit=5)] == [
    d["target"] for d in progs.documents("test", limit=5)
  ]
  with pytest.raises(UserError, match="no feature 'nope'; available: input, target, task"):
    load_corpus("tfds:programs/small:nope", data_dir=data_dir)


def test_tfds_long_records_cut_into_documents(docs, data_dir):
  """A tfds: record over doc_bytes becomes documents of at most that many bytes that concatenate back to it."""
  records = [d["text"] for d in docs.documents("test", limit=12)]
  corpus = load_corpus("tfds:python_docs", data_dir=data_dir, doc_bytes=256)
  cut = [d["text"] for d in corpus.documents("test", limit=400)]
  assert all(0 < len(t.encode()) <= 256 for t in cut) and len(cut) == 400
  joined, i = "".join(cut), 0
  for record in records:  # the documents, read in order, are the records' bytes in order
    assert joined.startswith(record, i)
    i += len(record)
  assert corpus.fingerprint != load_corpus("tfds:python_docs", data_dir=data_dir).fingerprint


def test_tfds_unprepared_fails_fast_naming_data_dir(tmp_path):
  start = time.monotonic()
  with no_network(), pytest.raises(UserError, match=f"not prepared under data_dir={tmp_path}.*--data_dir"):
    load_corpus("tfds:tiny_shakespeare", data_dir=str(tmp_path))
  assert time.monotonic() - start < 10


@pytest.mark.parametrize(
  "spec, message",
  [
    ("tfds:no_such_dataset_xyz", "unknown TFDS dataset 'no_such_dataset_xyz'"),
    ("tfds:a:b:c", "write tfds:NAME or tfds:NAME:TEXT_KEY"),
    ("foo", r"unknown corpus 'foo'; use one of: python_docs, programs.*text:GLOB"),
    ("", "unknown corpus ''"),
    ("programs:huge", "unknown corpus 'programs:huge'"),
  ],
)
def test_bad_corpus_strings(spec, message, tmp_path):
  with pytest.raises(UserError, match=message):
    load_corpus(spec, data_dir=str(tmp_path))


# --- text:GLOB ----------------------------------------------------------------------------------------------------


def write(path, content: str | bytes):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


def test_text_glob(tmp_path):
  big = "".join(f"Paragraph {i}: " + "lorem ipsum dolor " * 40 + "\n\n" for i in range(200))
  assert len(big.encode()) > 100 * DOC_BYTES
  write(tmp_path / "a.txt", "first file\n")
  write(tmp_path / "sub" / "b.txt", "second file, été\n")
  write(tmp_path / "big.txt", big)
  write(tmp_path / "skip.md", "not matched\n")
  corpus = load_corpus(f"text:{tmp_path}/**/*.txt")
  data = all_docs(corpus)
  assert all(data.values()), "every split has a document"
  texts = [d["text"] for split in data.values() for d in split]
  assert "first file\n" in texts and "second file, été\n" in texts and "not matched\n" not in texts
  chunks = cut_documents(big)
  assert "".join(chunks) == big and len(chunks) > 100
  assert all(len(c.encode()) <= DOC_BYTES and c.endswith("\n\n") for c in chunks)  # whole paragraphs
  assert sorted(texts) == sorted(["first file\n", "second file, été\n", *chunks])
  assert corpus.name.startswith("text-") and re.fullmatch(r"text-[0-9a-f]{8}", corpus.name)
  assert sum(corpus.info["num_bytes"].values()) == sum(len(t.encode()) for t in texts)
  same = pickle.loads(pickle.dumps(load_corpus(f"text:{tmp_path}/**/*.txt")))  # e.g. handed to a worker process
  assert same.fingerprint == corpus.fingerprint and all_docs(same) == data
  write(tmp_path / "a.txt", "first file, edited\n")
  assert load_corpus(f"text:{tmp_path}/**/*.txt").fingerprint != corpus.fingerprint
  with pytest.raises(UserError, match="changed after"):
    list(corpus.documents("train"))


def test_text_errors(tmp_path):
  with pytest.raises(UserError, match="no files match 'text:.*nothing"):
    load_corpus(f"text:{tmp_path}/nothing*.txt")
  write(tmp_path / "lit" / "notes[1].txt", "a literal bracket in a file name\n")
  with pytest.raises(UserError, match=r"write \[\[\] for a literal '\['"):
    load_corpus(f"text:{tmp_path}/lit/notes[1].txt")
  write(tmp_path / "bad" / "a.txt", "fine\n")
  write(tmp_path / "bad" / "b.txt", b"caf\xe9\n")
  with pytest.raises(UserError, match=r"b\.txt:1: not UTF-8 \(bad byte at offset 3\)"):
    load_corpus(f"text:{tmp_path}/bad/*.txt")
  write(tmp_path / "empty" / "a.txt", "")
  write(tmp_path / "empty" / "b.txt", " \n\n")
  with pytest.raises(UserError, match="is empty"):
    load_corpus(f"text:{tmp_path}/empty/*")
  write(tmp_path / "two" / "a.txt", "one\n")
  write(tmp_path / "two" / "b.txt", "two\n")
  with pytest.raises(UserError, match="is too small: 2 document"):
    load_corpus(f"text:{tmp_path}/two/*")


def test_bad_split_and_limit(progs):
  with pytest.raises(UserError, match="has no split 'dev'; use one of: train, validation, test"):
    progs.documents("dev")
  with pytest.raises(UserError, match="limit"):
    progs.documents("train", limit=-1)
  assert os.path.isdir(progs.info["data_dir"])
