"""The training config as data (``llmcpu.training.run_config``): ``base_config`` per architecture and preset, every
numeric range refused in one line just outside its bound and accepted on it, and a checkpoint's config carried onto
today's keys."""

import dataclasses
import math

import pytest

from llmcpu.errors import UserError
from llmcpu.models.config import ARCHS, ModelConfig
from llmcpu.training import run_config

# By hand, from the meaning of each key: (key, the last value that means something, the first one that does not).
BOUNDS = [
  ("seed", 0, -1),
  ("data.length", 2, 1),
  ("data.input_length", 2, 1),
  ("data.target_length", 2, 1),
  ("data.pairs_per_row", 1, 0),
  ("data.head_weight", 0.5, 0.0),
  ("data.head_bytes", 1, 0),
  ("data.curriculum_steps", 0, -1),  # 0 = no curriculum
  ("data.curriculum_bytes", 1, 0),
  ("data.tail_weight", 0.0, -0.5),
  ("data.tail_dropout", 1.0, 1.5),
  ("data.tail_dropout", 0.0, -0.1),
  ("train.steps", 0, -1),
  ("train.batch_size", 1, 0),
  ("train.learning_rate", 1e-9, 0.0),
  ("train.learning_rate", 1e-3, -1e-3),
  ("train.learning_rate", 1e-3, math.inf),
  ("train.learning_rate", 1e-3, math.nan),
  ("train.warmup_steps", 0, -1),
  ("train.min_lr_ratio", 0.0, -0.1),
  ("train.min_lr_ratio", 1.0, 1.1),
  ("train.decay_fraction", 1.0, 0.0),  # (0, 1]: a decay of no steps is no decay
  ("train.decay_fraction", 0.2, 1.5),
  ("train.weight_decay", 0.0, -0.1),
  ("train.b1", 0.0, -0.1),
  ("train.b1", 0.999, 1.0),
  ("train.b2", 0.999, 1.0),
  ("train.grad_clip", 1e-6, 0.0),
  ("train.grad_accum", 1, 0),
  ("train.log_every", 1, 0),
  ("train.eval_every", 0, -1),
  ("train.eval_batches", 0, -1),
  ("train.peak_tflops", 0.0, -1.0),
  ("train.profile_start", 0, -1),
  ("train.profile_steps", 0, -1),
  ("train.memory_limit_gb", 0.0, -1.0),
  ("checkpoint.every", 1, 0),
  ("checkpoint.keep", 0, -1),
]


def with_value(key: str, value):
  c = run_config.base_config("decoder", "tiny")
  block, _, name = key.rpartition(".")
  target = c[block] if block else c
  with target.ignore_type():  # a float where the default is an int (and back): the check, not ml_collections, decides
    target[name] = value
  return c


def test_every_range_key_has_a_hand_written_bound():
  assert {key for key, _, _ in BOUNDS} == set(run_config.RANGES)


@pytest.mark.parametrize(("key", "good", "bad"), BOUNDS)
def test_check_ranges_accepts_the_bound_and_refuses_past_it_in_one_line(key, good, bad):
  run_config.check_ranges(with_value(key, good))
  with pytest.raises(UserError) as e:
    run_config.check_ranges(with_value(key, bad))
  assert str(e.value).startswith(f"--config.{key}={bad!r} must be ") and "\n" not in str(e.value)


def test_check_ranges_refuses_what_is_not_a_number():
  for value in ("3", True, None):
    with pytest.raises(UserError, match=r"^--config\.train\.steps=.* must be at least 0$"):
      run_config.check_ranges(with_value("train.steps", value))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_base_config_per_arch_and_preset(arch, preset):
  c = run_config.base_config(arch, preset)
  run_config.check_ranges(c)  # every preset's defaults are in range
  assert set(c.model) == {f.name for f in dataclasses.fields(ModelConfig)} | {"preset"}
  assert (c.model.arch, c.model.preset, c.model.vocab_size, c.model.num_decoder_layers) == (arch, preset, 0, 0)
  layers = {"tiny": 2, "small": 4, "base": 12}[preset]
  # An encoder-decoder's two stacks share a preset's depth (at least 2 each): comparable parameter counts.
  assert c.model.num_layers == (max(2, layers // 2) if arch == "encoder_decoder" else layers)
  steps = {"tiny": 200, "small": 2000, "base": 100_000}[preset]
  assert (c.train.steps, c.train.warmup_steps, c.checkpoint.every) == (steps, steps // 20, steps // 4)


def test_base_config_refuses_an_unknown_preset():
  with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of tiny, small, base"):
    run_config.base_config("decoder", "huge")
  assert run_config.base_config("decoder", "").model.preset == "tiny"


def test_checkpoint_config_overlays_old_values_on_todays_keys():
  old = run_config.base_config("encoder", "small").to_dict()
  old["train"]["steps"], old["data"]["corpus"], old["seed"] = 7, "programs", 3
  del old["train"]["profile_steps"]  # a key added after the checkpoint was written: today's default
  old["train"]["retired_key"] = 1  # a key since removed: dropped
  c = run_config.checkpoint_config(old)
  assert (c.model.arch, c.model.preset, c.train.steps, c.data.corpus, c.seed) == ("encoder", "small", 7, "programs", 3)
  assert c.train.profile_steps == 0 and "retired_key" not in c.train
