"""Derived runs (llmcpu/training/derived.py): the config a port or a swap continues from its source, and the
provenance it records. Their training is tested through ports (tests/test_porting.py) and swaps
(tests/test_stitching.py); here no training: milliseconds."""

import os

import ml_collections
import pytest

from llmcpu.errors import UserError
from llmcpu.training import derived
from llmcpu.training.run_config import base_config


def source_meta(**train) -> dict:
  c = base_config("encoder_decoder", "tiny")
  c.train.update({"warmup_steps": 100, "learning_rate": 3e-3, "eval_every": 50, "init_from": "elsewhere", **train})
  c.checkpoint.update(every=500, keep=3)
  c.data.compile_dir = "/runs/x/compiled"
  c.seed = 7
  return {"config": c.to_dict(), "isa_name": "bpe1000", "isa_fingerprint": "f00d", "step": 1000, "arch": "decoder"}


def test_a_continued_config_keeps_the_source_and_sets_the_run():
  meta = source_meta()
  run = ml_collections.ConfigDict(dict(steps=300, seed=1, learning_rate=0.0, save_at="0,30,300", compile_dir=""))
  c = derived.continued_config(meta, run, trained=True)
  assert c.model.to_dict() == meta["config"]["model"] and c.data.to_dict() == meta["config"]["data"]
  assert c.train.learning_rate == 3e-3 and c.train.batch_size == meta["config"]["train"]["batch_size"]
  assert (c.seed, c.train.steps, c.train.warmup_steps, c.train.eval_every, c.train.init_from) == (1, 300, 15, 0, "")
  assert (c.checkpoint.at, c.checkpoint.every, c.checkpoint.keep) == ("0,30,300", 300, 0)  # every saved step kept
  run.update(seed=0, learning_rate=1e-4, compile_dir="/elsewhere")
  c = derived.continued_config(meta, run, trained=False)  # its initial state only, whatever run.steps says
  assert (c.train.steps, c.train.warmup_steps, c.train.learning_rate) == (0, 1, 1e-4)
  assert (c.checkpoint.at, c.checkpoint.every, c.checkpoint.keep) == ("", 1, 3) and c.data.compile_dir == "/elsewhere"
  short = derived.continued_config(source_meta(warmup_steps=5), run, trained=True)
  assert short.train.warmup_steps == 5  # never more warmup than the source had


def test_a_source_records_its_fields_in_order(tmp_path):
  source = derived.Source(str(tmp_path / "run"), source_meta())
  assert source.corpus == source_meta()["config"]["data"]["corpus"]
  record = source.record("arch", "isa", "isa_fingerprint", "step")
  assert list(record.items()) == [
    ("checkpoint", os.path.join(str(tmp_path), "run")),
    ("arch", "decoder"),
    ("isa", "bpe1000"),
    ("isa_fingerprint", "f00d"),
    ("step", 1000),
  ]
  assert list(source.record("step", "isa")) == ["checkpoint", "step", "isa"]


def test_a_path_without_a_checkpoint_is_one_line(tmp_path):
  with pytest.raises(UserError, match="no checkpoint under"):
    derived.Source.load(str(tmp_path / "nothing"))
