"""Grouped training: a CPU trained in a group equals the same CPU trained alone; its checkpoint is an ordinary one; a
data-parallel group on 8 forced host devices resumes bit-identically after SIGTERM; the experiment runner groups CPUs
when asked and skips a finished group; groups of other shapes are refused."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import prose_corpus, tiny_config, write_docs

from llmcpu import compilers, experiments, toolchain
from llmcpu.errors import UserError
from llmcpu.experiments import base, matrix
from llmcpu.training import checkpoints, group, trainer

WORKER = os.path.join(os.path.dirname(__file__), "group_worker.py")
STEPS = 20
# Members and lone runs compute the same sums in another order (XLA batches the vmapped matmuls), so they agree to
# float32 rounding, not bit for bit: measured 2e-7 after 20 steps. A wrong member, data order or slicing moves
# parameters by about one Adam step (learning rate 1e-2), 500× this tolerance.
ATOL = 2e-5
QUIET = dict(log=lambda _: None)


def leaves(state) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def saved_params(workdir: str) -> list[np.ndarray]:
  from flax import nnx

  model, _, _ = checkpoints.load_model(workdir)
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.fixture(scope="module")
def isas_dir(tmp_path_factory) -> str:
  """The prose corpus compiled by bpe:600, a permuted copy (equal vocabulary) and byte (another vocabulary)."""
  workdir = str(tmp_path_factory.mktemp("group_compiled"))
  specs = compilers.parse_list("bpe:600,bpe:600+perm:1,byte")
  built = toolchain.build_compilers(specs, [prose_corpus()], workdir, log=lambda _: None)
  toolchain.compile_corpora([prose_corpus()], built, workdir, log=lambda _: None)
  return workdir


def config(compile_dir: str, **overrides):
  return tiny_config("decoder", compile_dir, **{"train__steps": STEPS, "checkpoint__every": STEPS, **overrides})


@pytest.fixture(scope="module")
def alone(isas_dir, tmp_path_factory) -> dict:
  """Seed 0 on bpe:600 and on its permuted copy, each trained alone on one device: what members must equal."""
  root = tmp_path_factory.mktemp("alone")
  return {
    isa: trainer.train(config(isas_dir, data__isa=isa), str(root / isa), **QUIET)
    for isa in ("bpe:600", "bpe:600+perm:1")
  }


def test_members_equal_cpus_trained_alone(isas_dir, alone, tmp_path):
  """Seeds 0 and 1 of bpe:600 and seed 0 of its permuted copy in one group: after 20 steps each member's parameters
  equal the lone run's (ATOL), its checkpoint holds exactly the returned parameters, and seed 1 is another CPU."""
  members = [config(isas_dir, seed=0), config(isas_dir, seed=1), config(isas_dir, data__isa="bpe:600+perm:1")]
  paths = [str(tmp_path / f"m{i}") for i in range(3)]
  result = group.train_group(members, paths, **QUIET)
  assert result.stopped == "done" and result.step == STEPS and len(result.members) == 3
  for i, isa in ((0, "bpe:600"), (2, "bpe:600+perm:1")):
    ours, theirs = leaves(result.members[i].state), leaves(alone[isa].state)
    for a, b in zip(ours, theirs, strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
    for a, b in zip(saved_params(paths[i]), ours, strict=True):  # an ordinary checkpoint, loaded as one
      np.testing.assert_array_equal(a, b)
    meta = checkpoints.load_meta(paths[i])
    assert meta["step"] == STEPS and meta["isa_name"] == compilers.parse(isa).name
  other = zip(leaves(result.members[1].state), leaves(alone["bpe:600"].state), strict=True)
  far = max(np.max(np.abs(a - b)) for a, b in other)
  assert far > 100 * ATOL  # another seed is another CPU: the tolerance tells them apart
  again = group.train_group(members, paths, **QUIET)  # every member finished: nothing trains
  assert again.stopped == "done" and again.members == []


def test_a_group_resumes_cpus_stopped_alone_at_different_steps(isas_dir, alone, tmp_path):
  """bpe:600 stopped alone at step 8 (checkpoints 4 and 8) and its permuted copy at step 4: the group resumes both
  from step 4 and ends where each trained alone ends (ATOL); a member without the group's step is refused."""
  members = [config(isas_dir, checkpoint__every=4), config(isas_dir, data__isa="bpe:600+perm:1", checkpoint__every=4)]
  paths = [str(tmp_path / "m0"), str(tmp_path / "m1")]
  for c, path, at in zip(members, paths, (8, 4), strict=True):
    assert trainer.train(c, path, should_stop=lambda step, at=at: step == at, **QUIET).step == at
  logs: list[str] = []
  result = group.train_group(members, paths, log=logs.append)
  assert result.step == STEPS and "steps 4→20" in logs[1]
  for out, isa in zip(result.members, ("bpe:600", "bpe:600+perm:1"), strict=True):
    for a, b in zip(leaves(out.state), leaves(alone[isa].state), strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
  early, late = str(tmp_path / "early"), str(tmp_path / "late")
  trainer.train(members[0], early, should_stop=lambda step: step == 4, **QUIET)
  seed1 = config(isas_dir, seed=1, checkpoint__every=4)
  trainer.train(seed1, late, should_stop=lambda step: step == 13, **QUIET)  # keeps steps 12 and 13
  with pytest.raises(
    UserError, match=r"late has no checkpoint at step 4, where its group resumes \(it has \[12, 13\]\)"
  ):
    group.train_group([members[0], seed1], [early, late], **QUIET)


def test_other_shapes_are_refused(isas_dir, tmp_path):
  base_config = config(isas_dir)
  byte = config(isas_dir, data__isa="byte")
  with pytest.raises(UserError, match=r"group ISAs of equal vocabulary$"):
    group.train_group([base_config, byte], [str(tmp_path / "a"), str(tmp_path / "b")], **QUIET)
  faster = config(isas_dir, seed=1, train__learning_rate=2e-2)
  with pytest.raises(UserError, match=r"config train.learning_rate differs \(0.02 vs 0.01\)"):
    group.train_group([base_config, faster], [str(tmp_path / "a"), str(tmp_path / "b")], **QUIET)
  with pytest.raises(UserError, match="share a workdir"):
    group.train_group([base_config, base_config], [str(tmp_path / "a")] * 2, **QUIET)
  assert not (tmp_path / "a" / "checkpoints").exists()


def run_worker(compile_dir: str, root: str, members: list[dict], *extra: str) -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  args = [sys.executable, WORKER, compile_dir, root, json.dumps(members), *extra]
  proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # three fresh processes on 8 forced host devices: 38 s at load 4, 80 s at load 9
def test_data_parallel_group_on_8_devices_resumes_bit_identically(isas_dir, alone, tmp_path):
  """8 forced host devices, every member's 8 rows split over them: SIGTERM before step 7 saves every member at
  step 7 and exits 0; the rerun ends on the uninterrupted group's bits; a member equals its CPU trained alone."""
  members = [{"seed": 0}, {"seed": 1}]
  whole = run_worker(isas_dir, str(tmp_path / "whole"), members)
  assert whole == {"stopped": "done", "step": STEPS, "devices": 8}
  killed = run_worker(isas_dir, str(tmp_path / "cut"), members, "7")
  assert killed == {"stopped": "preempted", "step": 7, "devices": 8}
  for i in range(2):
    assert checkpoints.find(str(tmp_path / "cut" / f"m{i}"))[1] == 7
  resumed = run_worker(isas_dir, str(tmp_path / "cut"), members)
  assert resumed == {"stopped": "done", "step": STEPS, "devices": 8}
  for i in range(2):
    cut, whole = saved_params(str(tmp_path / "cut" / f"m{i}")), saved_params(str(tmp_path / "whole" / f"m{i}"))
    for a, b in zip(cut, whole, strict=True):
      np.testing.assert_array_equal(a, b)
  for a, b in zip(saved_params(str(tmp_path / "whole" / "m0")), leaves(alone["bpe:600"].state), strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)


def test_runner_groups_cpus_and_skips_a_finished_group(tmp_path):
  """group=on: two seeds × two ISAs of equal vocabulary are one stage of four CPUs; once trained, every member is
  skipped like a finished single run. group=auto on the host, and off: one stage per CPU."""
  c = experiments.matrix.experiment_config("tiny")
  c.corpus, c.compilers, c.seeds, c.steps = "text:" + write_docs(tmp_path), "char,char+perm:1", "0,1", 3
  c.train.batch_size, c.data.length, c.model.d_model, c.model.num_heads, c.model.d_ff = 4, 32, 32, 2, 64
  workdir = str(tmp_path / "exp")
  plan = matrix._plan(c, workdir)
  built = toolchain.build_compilers(plan.specs, plan.sources, plan.compile_dir, log=lambda _: None)
  toolchain.compile_corpora(plan.corpora, built, plan.compile_dir, log=lambda _: None)
  for knob in ("auto", "off"):
    c.group = knob
    assert [len(s.paths) for s in matrix._cpu_stages(c, plan, workdir, print)] == [1] * 4
  c.group = "on"
  (stage,) = matrix._cpu_stages(c, plan, workdir, print)
  assert sorted(stage.paths) == sorted(plan.cpus(workdir, plan.corpora[0].name))
  logs: list[str] = []
  base.run_stages("train", [stage], logs.append)
  assert all(checkpoints.find(p)[1] == 3 for p in stage.paths)
  logs.clear()
  stages = matrix._cpu_stages(c, plan, workdir, print)
  assert len(stages) == 4 and all(len(s.paths) == 1 for s in stages)
  base.run_stages("train", stages, logs.append)
  assert sum(line.endswith(": done") for line in logs) == 4, logs
  c.group = "sometimes"
  with pytest.raises(UserError, match=r"^--config.group='sometimes' must be auto, on or off$"):
    matrix.grouping(c)


def test_a_group_that_cannot_fit_is_refused_before_training(isas_dir, tmp_path):
  members = [config(isas_dir, seed=s, train__memory_limit_gb=0.001) for s in (0, 1)]
  with pytest.raises(UserError, match=r"^a group of 2 CPUs needs ~.* but has 0.00 GiB; train fewer at once"):
    group.train_group(members, [str(tmp_path / "a"), str(tmp_path / "b")], **QUIET)
  assert not (tmp_path / "a" / "checkpoints").exists()


def test_a_non_finite_member_stops_the_group_naming_it(isas_dir, tmp_path):
  # A learning rate that overflows float32: the first update makes every member's parameters infinite.
  members = [config(isas_dir, seed=s, train__learning_rate=1e39, checkpoint__every=1) for s in (0, 1)]
  with pytest.raises(UserError, match=r"not finite at step 1 in \S+/m0 .*last good checkpoint is step none"):
    group.train_group(members, [str(tmp_path / "m0"), str(tmp_path / "m1")], **QUIET)
  assert not [p for p in (tmp_path / "m0" / "checkpoints").iterdir() if p.name.isdigit()]
