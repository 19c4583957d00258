"""The compile cache: byte counts, reuse, staleness, atomicity, and refusing data built by another ISA."""

import os
import pydoc_data.topics

import numpy as np
import pytest
from conftest import InMemoryCorpus

from llmcpu import compilers, toolchain
from llmcpu.data import compiled
from llmcpu.errors import UserError

DOCS = sorted(pydoc_data.topics.topics.values())[:30] + ["", "😀 \u2581 tail  "]


def FakeCorpus(docs: tuple[str, ...]) -> InMemoryCorpus:  # noqa: N802 - reads like the class it builds
  """Train = every document, test = every third."""
  texts = tuple({"text": d} for d in docs)
  return InMemoryCorpus("fake", {"train": texts, "test": texts[::3]})


def _build(workdir, corpus, specs="bpe:500,byte,bpe:500+perm:1", log=None):
  logs = []
  built = toolchain.build_compilers(compilers.parse_list(specs), [corpus], str(workdir), log=logs.append)
  stats = toolchain.compile_corpora([corpus], built, str(workdir), log=logs.append)
  return built, stats, logs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cache")
  return workdir, *_build(workdir, FakeCorpus(tuple(DOCS)))


def test_every_split_compiled_with_exact_bytes(built):
  workdir, comps, stats, _ = built
  for c in comps:
    split = toolchain.load_split(str(workdir), "fake", c, "train")
    field = split.fields["text"]
    assert split.num_docs == len(DOCS)
    assert field.nbytes.tolist() == [len(d.encode("utf-8")) for d in DOCS]
    for i, d in enumerate(DOCS):
      assert c.decode(field.doc(i)) == d
  rows = {s.compiler: s for s in stats}
  assert rows["byte"].bytes_per_token == 1.0
  assert rows["bpe500"].tokens == rows["bpe500-perm1"].tokens  # same segmentation, other opcodes
  assert rows["bpe500"].unk_rate == 0.0


def test_rerun_reuses_everything(built):
  workdir, comps, _, _ = built
  before = {
    p: os.stat(os.path.join(p, "manifest.json")).st_mtime_ns
    for p in (toolchain.split_dir(str(workdir), "fake", c.name, "train") for c in comps)
  }
  _, _, logs = _build(workdir, FakeCorpus(tuple(DOCS)))
  assert all("cached" in line for line in logs), logs
  after = {p: os.stat(os.path.join(p, "manifest.json")).st_mtime_ns for p in before}
  assert before == after


def test_changed_corpus_rebuilds(tmp_path):
  _build(tmp_path, FakeCorpus(tuple(DOCS)), specs="byte")
  _, stats, logs = _build(tmp_path, FakeCorpus(tuple(DOCS[:5])), specs="byte")
  assert any("test" in line and "cached" not in line for line in logs)
  assert stats[0].docs == 5 + len(DOCS[:5][::3])


def test_interrupted_build_leaves_nothing_valid(tmp_path):
  c = compilers.train("byte")

  def exploding():
    yield {"text": "fine"}
    raise KeyboardInterrupt

  path = str(tmp_path / "split")
  with pytest.raises(KeyboardInterrupt):
    toolchain.compile_split(c, exploding(), ["text"], [], path, {})
  assert compiled.read_manifest(path) is None
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_split_is_compiled_again_not_reused(tmp_path, damage):
  corpus = FakeCorpus(tuple(DOCS))
  built, _, _ = _build(tmp_path, corpus, specs="byte")
  path = toolchain.split_dir(str(tmp_path), "fake", "byte", "train")
  tokens = os.path.join(path, "text.tokens.npy")
  data = bytearray(open(tokens, "rb").read())
  if damage == "truncate":
    data = data[: len(data) // 2]
  else:
    data[-5] ^= 0x01  # one bit of one id: sizes agree, the ids do not
  with open(tokens, "wb") as f:
    f.write(data)
  if damage == "truncate":  # refused when loaded, too (sizes are checked on every load; contents on reuse)
    with pytest.raises(UserError, match="corrupt compiled data.*bytes, not"):
      compiled.load(path)
  _, _, logs = _build(tmp_path, corpus, specs="byte")
  assert any("damaged (text.tokens.npy" in line for line in logs), logs
  assert {line.split(":")[0] for line in logs if "cached" not in line and "damaged" not in line} == {
    "[1/2] fake/byte/train"
  }  # only the damaged split is compiled again
  split = toolchain.load_split(str(tmp_path), "fake", built[0], "train")
  assert [built[0].decode(split.fields["text"].doc(i)) for i in range(split.num_docs)] == DOCS


def test_data_from_another_isa_refused(built):
  workdir, comps, _, _ = built
  by_name = {c.name: c for c in comps}
  path = toolchain.split_dir(str(workdir), "fake", "bpe500", "train")
  with pytest.raises(UserError, match="built by ISA"):
    compiled.load(path, expect_fingerprint=by_name["bpe500-perm1"].fingerprint)
  with pytest.raises(UserError, match="scripts/compile.py"):
    toolchain.load_split(str(workdir), "fake", compilers.train("char", DOCS), "train")


def test_corrupt_manifest_is_one_clear_error(tmp_path):
  c = compilers.train("byte")
  path = str(tmp_path / "split")
  toolchain.compile_split(c, iter([{"text": "abc"}]), ["text"], [], path, {})
  with open(os.path.join(path, "manifest.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(UserError, match="corrupt"):
    compiled.load(path)


def test_overlap_and_isa_tables(built):
  _, comps, stats, _ = built
  table = toolchain.format_isa_table(stats)
  assert "bpe500-perm1" in table and "bytes/token" in table
  matrix = toolchain.format_overlap_matrix(comps)
  assert "| bpe500 | 1.00 |" in matrix
  ids = np.asarray(toolchain.load_split(str(built[0]), "fake", comps[0], "test").fields["text"].tokens)
  assert ids.dtype == np.int32


# ------------------------------------------------------------------------------------------------- Toolchain


def test_toolchain_reads_an_isa_by_spec_or_saved_name(built):
  workdir, comps, _, _ = built
  tools = toolchain.Toolchain(str(workdir))
  assert tools.names() == ["bpe500", "bpe500-perm1", "byte"]
  perm = compilers.parse("bpe:500+perm:1")
  assert tools.resolve("bpe500-perm1") == perm and tools.resolve(" bpe:500+perm:1 ") == perm
  assert tools.resolve(perm) is perm
  by_name = {c.name: c.fingerprint for c in comps}
  for isa in ("bpe500-perm1", "bpe:500+perm:1", perm):
    assert tools.compiler(isa).fingerprint == by_name["bpe500-perm1"]
  assert tools.corpus_name("fake", comps[0]) == "fake"
  split = tools.split("fake", comps[0], "test")
  assert [comps[0].decode(split.fields["text"].doc(i)) for i in range(split.num_docs)] == list(DOCS[::3])


def test_every_missing_piece_ends_in_the_one_compile_hint(built):
  workdir, comps, _, _ = built
  tools = toolchain.Toolchain(str(workdir))
  hint = (
    f"build it with: python scripts/compile.py --config.corpus=prose --config.compilers=bpe:700 --workdir={workdir}"
  )
  assert toolchain.compile_hint(str(workdir), "prose", compilers.parse("bpe:700")) == hint
  have = "(have: bpe500, bpe500-perm1, byte)"
  with pytest.raises(UserError) as e:
    tools.compiler("bpe:700", corpus="prose", role="data.input_isa")
  assert str(e.value) == f"no compiler bpe:700 (data.input_isa) under {workdir} {have}; {hint}"
  with pytest.raises(UserError, match=r"; saved ISAs in \S+: bpe500, bpe500-perm1, byte$"):
    tools.compiler("bpe9999")  # neither a spec nor a saved name
  with pytest.raises(UserError) as e:
    tools.corpus_name("other", comps[0])
  assert str(e.value).endswith(
    f"build it with: python scripts/compile.py --config.corpus=other --config.compilers=bpe:500 --workdir={workdir}"
  )
