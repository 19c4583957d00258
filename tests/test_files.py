"""Your own files as a corpus (text:, jsonl:, csv:, tsv:): lossless documents, splits by file or region with the test
split's share of bytes, enough prompts, and one-line errors naming file and line."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest

from llmcpu.crosseval.capacity import min_doc_bytes
from llmcpu.crosseval.evaluate import CrossEvalOptions
from llmcpu.data import load_corpus
from llmcpu.data.files import UNITS, cut_documents
from llmcpu.errors import UserError

_DEFAULTS = CrossEvalOptions()
# What a held-out document needs to give a prompt with the default prompt_bytes and judged length.
PROMPT_DOC_BYTES = min_doc_bytes(_DEFAULTS.prompt_bytes, _DEFAULTS.new_bytes)


def prose(n_bytes: int, seed: int) -> str:
  """Deterministic English-like text: sentences of words drawn from a seeded list, paragraphs at blank lines."""
  rng = random.Random(seed)
  words = ["".join(rng.choice("etaoinshrdlucmfwyp") for _ in range(rng.randint(1, 9))) for _ in range(3000)]
  out, size = [], 0
  while size < n_bytes:
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 18))).capitalize() + "." for _ in range(6)]
    para = " ".join(sentences) + "\n\n"
    out.append(para)
    size += len(para)
  return "".join(out)


def by_split(corpus) -> dict[str, list[str]]:
  return {s: [d["text"] for d in corpus.documents(s)] for s in corpus.splits}


def check_regions(texts: list[str], split_of: dict[str, str]) -> None:
  """Every file's documents cover it exactly, and splits come in contiguous runs (regions), never document by
  document: every run but a file's last holds at least a third of 1/UNITS of the corpus."""
  total = sum(len(t.encode()) for t in texts)
  for text in texts:
    docs = cut_documents(text)
    assert "".join(docs) == text
    runs: list[list] = []
    for d in docs:
      if runs and runs[-1][0] == split_of[d]:
        runs[-1][1] += len(d.encode())
      else:
        runs.append([split_of[d], len(d.encode())])
    assert all(size >= total / UNITS / 3 for _, size in runs[:-1]), runs


def check_shares_and_prompts(corpus, texts: list[str], min_prompts: int) -> dict[str, list[str]]:
  splits = by_split(corpus)
  everything = sorted(d for docs in splits.values() for d in docs)
  assert everything == sorted(d for t in texts for d in cut_documents(t)), "every document once, nothing else"
  total = sum(len(t.encode()) for t in texts)
  test_bytes = sum(len(d.encode()) for d in splits["test"])
  assert 0.20 * total <= test_bytes <= 0.26 * total
  assert sum(len(d.encode()) for d in splits["validation"]) >= 0.05 * total and splits["train"]
  prompts = sum(len(d.encode()) >= PROMPT_DOC_BYTES for d in splits["test"])
  assert prompts >= min_prompts
  assert corpus.info["num_bytes"]["test"] == test_bytes and corpus.info["num_docs"]["test"] == len(splits["test"])
  return splits


def test_three_files_of_100kb(tmp_path):
  texts = [prose(100_000, seed) for seed in range(3)]
  for i, t in enumerate(texts):
    (tmp_path / f"part{i}.txt").write_text(t)
  corpus = load_corpus(f"text:{tmp_path}/*.txt")
  splits = check_shares_and_prompts(corpus, texts, 64)
  check_regions(texts, {d: s for s, docs in splits.items() for d in docs})
  where = {d: s for s, docs in splits.items() for d in docs}
  files = {s: sum(any(where[d] == s for d in cut_documents(t)) for t in texts) for s in splits}
  assert corpus.info["files_per_split"] == files and files["test"] == 3  # the test split has regions of each file
  again = load_corpus(f"text:{tmp_path}/*.txt")  # same files → same documents in the same splits
  assert again.fingerprint == corpus.fingerprint and by_split(again) == splits


def test_one_file_of_300kb(tmp_path):
  text = prose(300_000, 7)
  (tmp_path / "book.txt").write_text(text)
  corpus = load_corpus(f"text:{tmp_path}/book.txt")
  splits = check_shares_and_prompts(corpus, [text], 64)
  check_regions([text], {d: s for s, docs in splits.items() for d in docs})


def test_many_small_files_are_split_whole(tmp_path):
  texts = [prose(4_000, 100 + i) for i in range(80)]
  for i, t in enumerate(texts):
    (tmp_path / f"note{i:02d}.txt").write_text(t)
  splits = check_shares_and_prompts(load_corpus(f"text:{tmp_path}/*.txt"), texts, 40)
  where = {d: s for s, docs in splits.items() for d in docs}
  for t in texts:  # a file's documents all in one split
    assert len({where[d] for d in cut_documents(t)}) == 1


def test_cut_documents_is_lossless_and_cuts_coarsest_first():
  para = "Alpha beta gamma. " * 20 + "\n\n"  # 362 bytes
  text = "\n\n \n" + para * 9 + "x" * 3000 + " é" * 700 + "\nlast line"
  docs = cut_documents(text, 1024)
  assert "".join(docs) == text
  assert all(0 < len(d.encode()) <= 1024 and d.strip() for d in docs)
  # Paragraphs that fit are never cut: the first documents end at blank lines and hold whole paragraphs.
  assert docs[0] == "\n\n \n" + para * 2 and docs[1] == para * 2
  assert "".join(docs[5:]).startswith("x" * 3000)  # a word longer than a document is cut between characters
  assert cut_documents(" \n\n\t") == [] and cut_documents("short") == ["short"]


def test_jsonl_round_trip(tmp_path):
  records = [{"id": i, "body": prose(800, i)[: 200 + 10 * i].strip() + " \u2028é"} for i in range(60)]
  lines = [json.dumps(r, ensure_ascii=i % 2 == 0) for i, r in enumerate(records)]
  (tmp_path / "a.jsonl").write_text("\n".join(lines[:30]) + "\n\n")
  (tmp_path / "b.jsonl").write_text("\ufeff" + "\n".join(lines[30:]))
  corpus = load_corpus(f"jsonl:{tmp_path}/*.jsonl:body")
  docs = [d for s in corpus.splits for d in by_split(corpus)[s]]
  assert sorted(docs) == sorted(r["body"] for r in records)  # one document per record, its field as is
  assert all(by_split(corpus).values())
  short = [f"record {i}: " + "word " * 30 for i in range(9)]
  (tmp_path / "t.jsonl").write_text(json.dumps({"text": "xy " * 900}))  # 2700 bytes: cut in three
  (tmp_path / "t2.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in short))
  default = [d for docs in by_split(load_corpus(f"jsonl:{tmp_path}/t*.jsonl")).values() for d in docs]  # field text
  long = [d for d in default if d not in short]
  assert sorted(set(default) - set(long)) == sorted(short) and len(default) == len(short) + len(long) == 12
  assert all(set(d) == set("xy ") and len(d) <= 1024 for d in long) and sum(map(len, long)) == 2700


@pytest.mark.parametrize("kind,delimiter", [("csv", ","), ("tsv", "\t")])
def test_table_round_trip(tmp_path, kind, delimiter):
  rows = [{"title": f"t{i}", "body": f'Line one, "quoted" {i}.\nLine two\t{prose(200, i)}'} for i in range(40)]
  buf = io.StringIO()
  writer = csv.DictWriter(buf, ["title", "body"], delimiter=delimiter)
  writer.writeheader()
  writer.writerows(rows)
  (tmp_path / f"data.{kind}").write_text(buf.getvalue())
  corpus = load_corpus(f"{kind}:{tmp_path}/data.{kind}:body")
  docs = [d for docs in by_split(corpus).values() for d in docs]
  assert sorted(docs) == sorted(r["body"] for r in rows)
  titles = load_corpus(f"{kind}:{tmp_path}/data.{kind}:title")
  assert sorted(d for docs in by_split(titles).values() for d in docs) == sorted(r["title"] for r in rows)


def bad_input_error(tmp_path, name: str, content: bytes, spec: str) -> str:
  good = "\n".join(json.dumps({"text": f"fine {i}"}) for i in range(5)) + "\n"
  (tmp_path / "a_good.jsonl").write_text(good)
  (tmp_path / name).write_bytes(content)
  with pytest.raises(UserError) as e:
    load_corpus(spec.format(dir=tmp_path))
  (tmp_path / name).unlink()
  assert "\n" not in str(e.value)
  return str(e.value)


def test_bad_lines_name_file_and_line(tmp_path):
  ok = json.dumps({"text": "fine"}).encode()
  msg = bad_input_error(tmp_path, "b.jsonl", ok + b"\n\n" + ok + b"\n{not json}\n", "jsonl:{dir}/*.jsonl")
  assert msg.startswith(f"{tmp_path}/b.jsonl:4: not a JSON line (Expecting property name")
  msg = bad_input_error(tmp_path, "b.jsonl", ok + b'\n{"body": "x", "id": 2}\n', "jsonl:{dir}/*.jsonl")
  assert msg == f"{tmp_path}/b.jsonl:2: no field 'text' (fields: body, id); name it: jsonl:GLOB:FIELD"
  msg = bad_input_error(tmp_path, "b.jsonl", b'{"text": 3}\n', "jsonl:{dir}/*.jsonl")
  assert msg.startswith(f"{tmp_path}/b.jsonl:1: field 'text' is int, not a string")
  msg = bad_input_error(tmp_path, "b.jsonl", b"[1, 2]\n", "jsonl:{dir}/*.jsonl")
  assert msg.startswith(f"{tmp_path}/b.jsonl:1: a JSON object expected, got list")
  msg = bad_input_error(tmp_path, "b.jsonl", ok + b"\n" + ok + b'\n{"text": "caf\xe9"}\n', "jsonl:{dir}/*.jsonl")
  assert msg.startswith(f"{tmp_path}/b.jsonl:3: not UTF-8 (bad byte at offset")
  msg = bad_input_error(tmp_path, "c.csv", b"title,text\na,b\n", "csv:{dir}/c.csv:body")
  assert msg == f"{tmp_path}/c.csv:1: no column 'body' (columns: title, text); name it: csv:GLOB:COLUMN"
  msg = bad_input_error(tmp_path, "c.csv", b'title,body\na,"multi\nline"\nb,x\nonly\n', "csv:{dir}/c.csv:body")
  assert msg.startswith(f"{tmp_path}/c.csv:5: 1 cells, but column 'body' is cell 2")
  msg = bad_input_error(tmp_path, "c.tsv", b'title\tbody\na\t"open\n', "tsv:{dir}/c.tsv:body")
  assert msg.startswith(f"{tmp_path}/c.tsv:") and "not tsv" in msg


def test_bad_specs(tmp_path):
  with pytest.raises(UserError, match="empty field name"):
    load_corpus(f"jsonl:{tmp_path}/x.jsonl:")
  with pytest.raises(UserError, match="no files match"):
    load_corpus(f"csv:{tmp_path}/none.csv:body")
  (tmp_path / "a.txt").write_text(prose(5_000, 1))
  with pytest.raises(UserError, match="doc_bytes=10 is too small"):
    load_corpus(f"text:{tmp_path}/a.txt", doc_bytes=10)
