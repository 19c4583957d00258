"""llmcpu/training/cooldown.py: a cooldown branch of a warmup-stable-decay run equals the run annealed for that budget
trained from step 0 (one tiny decoder, a few dozen steps), and a branch that cannot be taken is refused in one line."""

import jax
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

from llmcpu.errors import UserError
from llmcpu.training import checkpoints, cooldown, trainer
from llmcpu.training.optim import make_schedule

QUIET = {"log": lambda _: None}


def wsd(compile_dir, steps, **overrides):
  c = tiny_config("decoder", compile_dir, train__steps=steps, **overrides)
  c.train.update(schedule="wsd", decay_fraction=0.25, warmup_steps=2)
  c.checkpoint.update(every=steps, keep=0)
  return c


def test_branch_step_is_where_the_budget_leaves_its_stable_phase():
  t = wsd("unused", 24).train
  # 24 steps: the last round(0.25 × 24) = 6 decay, so the stable phase ends at 18; a 12-step budget branches at 9.
  assert cooldown.branch_step(t, 24) == 18 and cooldown.branch_step(t, 12) == 9
  short, long = make_schedule(wsd("unused", 12).train), make_schedule(t)
  assert [float(short(s)) for s in range(10)] == [float(long(s)) for s in range(10)]  # identical until step 9
  assert float(short(10)) < float(long(10))  # then the branch decays while the long run stays flat


def test_cooldown_branch_agrees_with_an_independent_run_annealed_for_that_budget(compile_dir, tmp_path):
  # A 24-step WSD run saved at step 9 (its stable phase); the 12-step budget branches there and decays over 3 steps.
  long = wsd(compile_dir, 24, checkpoint__at="9")
  trainer.train(long, str(tmp_path / "long"), **QUIET)
  branch = cooldown.start_branch(str(tmp_path / "long"), long, 12, str(tmp_path / "branch"))
  assert branch.train.steps == 12 and long.train.steps == 24
  trainer.train(branch, str(tmp_path / "branch"), **QUIET)
  trainer.train(wsd(compile_dir, 12), str(tmp_path / "alone"), **QUIET)  # the independent run, from step 0
  (a, meta_a), (b, meta_b), (at9, _) = (params(tmp_path / d) for d in ("branch", "alone", "long/checkpoints/9"))
  assert meta_a["step"] == meta_b["step"] == 12 and meta_a["tokens_seen"] == meta_b["tokens_seen"]
  # Stated tolerance: the same bits up to float reassociation, max |Δ parameter| ≤ 1e-5. The 3 decay steps move the
  # parameters by far more than that, so a branch that skipped, repeated or re-fed a step would fail.
  assert np.abs(a - b).max() <= 1e-5
  assert np.abs(b - at9).max() > 1e-3


def params(path) -> tuple[np.ndarray, dict]:
  """Every parameter of the checkpoint at ``path``, flattened into one float64 vector, and its metadata."""
  model, meta, _ = checkpoints.load_model(str(path))
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves]), meta


def test_branches_that_cannot_be_taken_are_one_line(compile_dir, tmp_path):
  long = wsd(compile_dir, 24)
  with pytest.raises(UserError, match="past|after that run's stable phase"):
    cooldown.start_branch(str(tmp_path), long, 24 + 4, str(tmp_path / "b"))
  with pytest.raises(UserError, match="no checkpoint at step 9"):
    cooldown.start_branch(str(tmp_path), long, 12, str(tmp_path / "b"))
  cosine = tiny_config("decoder", compile_dir, train__steps=24)
  with pytest.raises(UserError, match="schedule=wsd"):
    cooldown.start_branch(str(tmp_path), cosine, 12, str(tmp_path / "b"))
  assert not (tmp_path / "b").exists()
