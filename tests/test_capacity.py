"""What a corpus can measure, said before training: refused below 16 prompts, a warning below the prompts asked for;
and a calibration that could not run is "not measured", never "DOES NOT HOLD"."""

from __future__ import annotations

import json
import re

import pytest

from llmcpu import experiments
from llmcpu.crosseval import summary
from llmcpu.data import load_corpus
from llmcpu.errors import UserError
from llmcpu.experiments import matrix

NEED = 64 + 96  # a prose prompt at the default prompt_bytes, and the default judged length (new_bytes)


class TrainingStarted(Exception):
  pass


def words_text(n_bytes: int, seed: int) -> str:
  """Deterministic prose-like text, paragraphs of ~300 bytes."""
  import random

  rng = random.Random(seed)
  words = ["".join(rng.choice("etaoinshrdlu") for _ in range(rng.randint(2, 8))) for _ in range(500)]
  out, size = [], 0
  while size < n_bytes:
    para = " ".join(rng.choice(words) for _ in range(50)) + ".\n\n"
    out.append(para)
    size += len(para)
  return "".join(out)


def held_out_prompts(spec: str) -> tuple[int, int]:
  """(test documents able to give a prompt at the default 64 prompt bytes + 96 judged bytes, test bytes), counted
  from the corpus' own documents."""
  docs = [d["text"].encode() for d in load_corpus(spec).documents("test")]
  return sum(len(d) >= NEED for d in docs), sum(map(len, docs))


def config(spec: str):
  c = matrix.experiment_config("tiny")
  c.corpus, c.compilers, c.steps = spec, "char", 2
  return c


@pytest.fixture
def no_training(monkeypatch):
  from llmcpu.training import trainer

  def started(config, workdir, log):
    raise TrainingStarted(workdir)

  monkeypatch.setattr(trainer, "train", started)


def test_too_small_corpus_refused_before_training(tmp_path, no_training):
  for i in range(3):
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / f"{i}.txt").write_text(words_text(3_000, i))
  spec = f"text:{tmp_path}/docs/*.txt"
  prompts, test_bytes = held_out_prompts(spec)
  assert 0 < prompts < 16
  with pytest.raises(UserError) as e:
    experiments.run(config(spec), str(tmp_path / "exp"), log=lambda m: None)
  msg = str(e.value)
  assert "\n" not in msg and not (tmp_path / "exp" / "runs").exists()  # no CPU was started
  assert f"supports {prompts} prompts of ≥ {NEED} bytes, 64 asked for" in msg, msg
  assert f"{test_bytes / 1000:.1f} KB" in msg and "asked for, and coherence needs at least 16; " in msg
  assert re.search(r"; give more text \(about \d+ KB more\),? .*or turn coherence off", msg)
  assert "ask for fewer" not in msg  # fewer than 16 is no way out
  off = config(spec)
  off.crosseval.coherence = False  # nothing to generate: bits per byte alone needs no prompts
  with pytest.raises(TrainingStarted):
    experiments.run(off, str(tmp_path / "exp"), log=lambda m: None)


def test_fewer_prompts_than_asked_is_a_warning(tmp_path, no_training):
  (tmp_path / "book.txt").write_text(words_text(120_000, 3))
  spec = f"text:{tmp_path}/book.txt"
  prompts, _ = held_out_prompts(spec)
  assert 16 <= prompts < 64
  logs: list[str] = []
  with pytest.raises(TrainingStarted):
    experiments.run(config(spec), str(tmp_path / "exp"), log=logs.append)
  (warning,) = [line for line in logs if line.startswith("warning:")]
  assert (
    f"supports {prompts} prompts of ≥ {NEED} bytes, 64 asked for" in warning and f"going on with {prompts}" in warning
  )
  assert f"ask for fewer (--config.crosseval.prompts={prompts})" in warning
  (stats,) = [line for line in logs if line.startswith(f"corpus {spec}: train 1 file, ")]
  assert f"{prompts} test prompts available, {prompts} used" in stats


def calibration_row(prompts: int, relevance: float) -> dict:
  return {"corpus": "c", "reference": "true continuation", "prompts": prompts, "fluency": 0.5, "relevance": relevance}


def test_calibration_with_too_few_prompts_is_not_measured():
  lines = "\n".join(summary.calibration_table([calibration_row(3, 0.2)], []))
  assert "not measured: 3 prompts (needs ≥ 16)" in lines and "DOES NOT HOLD" not in lines
  lines = "\n".join(summary.calibration_table([calibration_row(40, 0.2)], []))  # enough prompts, a wrong figure
  assert "DOES NOT HOLD" in lines and "not measured" not in lines
  lines = "\n".join(
    summary.calibration_table([calibration_row(40, 1.0) | {"fluency": 0.99, "relevance_beyond_tail": 1.0}], [])
  )
  assert "| holds |" in lines


def test_bad_line_refused_before_anything_is_written(tmp_path):
  (tmp_path / "data.jsonl").write_text(json.dumps({"text": words_text(2_000, 1)}) + "\n{oops\n")
  with pytest.raises(UserError, match=rf"^{tmp_path}/data.jsonl:2: not a JSON line \(.*\); fix or remove it$"):
    experiments.run(config(f"jsonl:{tmp_path}/data.jsonl"), str(tmp_path / "exp"), log=lambda m: None)
  assert not (tmp_path / "exp").exists()
