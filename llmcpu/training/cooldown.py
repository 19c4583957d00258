"""Cooldown branches of a warmup-stable-decay run: the run annealed for a budget, started from a longer run's
stable-phase checkpoint instead of from step 0.

With ``train.schedule=wsd`` the learning rate up to a run's decay start does not depend on its length, so the run
annealed for ``budget`` steps equals, step for step, a longer run's stable phase up to ``branch_step(budget)`` and then
its own decay. ``start_branch`` copies that checkpoint into a new workdir; ``trainer.train`` with
``train.steps = budget`` then resumes it (data position restored) and decays over the remaining steps.
"""

from __future__ import annotations

import ml_collections

from llmcpu import fs
from llmcpu.errors import UserError
from llmcpu.training.optim import wsd_decay_start


def _warmup(t: ml_collections.ConfigDict, steps: int) -> int:
  return min(t.warmup_steps, max(steps - 1, 1))  # as optim.make_schedule clamps it


def branch_step(t: ml_collections.ConfigDict, budget: int) -> int:
  """The stable-phase step a run annealed for ``budget`` steps branches from (``t``: the train config)."""
  return wsd_decay_start(budget, _warmup(t, budget), t.decay_fraction)


def start_branch(
  stable: str, config: ml_collections.ConfigDict, budget: int, workdir: str
) -> ml_collections.ConfigDict:
  """Copies the checkpoint of the WSD run at ``stable`` (trained with ``config``) that the ``budget``-step branch starts
  from into ``workdir``; returns the branch's config (``train.steps = budget``). One line if it cannot branch."""
  t = config.train
  if t.get("schedule", "cosine") != "wsd":
    raise UserError(f"a cooldown branch needs --config.train.schedule=wsd, not {t.get('schedule')!r}")
  step = branch_step(t, budget)
  stable_end = wsd_decay_start(t.steps, _warmup(t, t.steps), t.decay_fraction)
  if not 0 < budget <= t.steps or step > stable_end or _warmup(t, budget) != _warmup(t, t.steps):
    raise UserError(
      f"budget {budget} cannot branch from the {t.steps}-step run at {stable}: its decay would start at step {step}, "
      f"after that run's stable phase ends ({stable_end}), or their warmups differ; use budgets ≤ {stable_end}"
    )
  source = fs.join(stable, "checkpoints", str(step))
  if not fs.isdir(source):
    raise UserError(f"{stable} has no checkpoint at step {step}: train it with --config.checkpoint.at={step}")
  target = fs.join(workdir, "checkpoints")
  if fs.exists(target) and fs.listdir(target):
    raise UserError(f"{workdir} already holds checkpoints: a branch starts in an empty workdir")
  _copy_tree(source, fs.join(target, str(step)))
  branch = ml_collections.ConfigDict(config.to_dict())
  branch.train.steps = budget
  return branch


def _copy_tree(source: str, target: str) -> None:
  fs.makedirs(target)
  for name in fs.listdir(source):
    name = name.rstrip("/")
    src, dst = fs.join(source, name), fs.join(target, name)
    if fs.isdir(src):
      _copy_tree(src, dst)
    else:
      fs.write_bytes(dst, fs.read_bytes(src))
