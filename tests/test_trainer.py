"""The trainer: learning, device/process/pmap equivalence, preemption and bitwise resume, metadata, bad input."""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import tiny_config

from llmcpu import checkpoints, trainer
from llmcpu.errors import UserError

WORKER = os.path.join(os.path.dirname(__file__), "train_worker.py")


def losses(workdir: str) -> list[float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [row["train/loss"] for row in map(json.loads, f) if "train/loss" in row]


def params_of(result_or_workdir) -> list[np.ndarray]:
  if isinstance(result_or_workdir, str):
    model, _, _ = checkpoints.load_model(result_or_workdir)
    from flax import nnx

    state = nnx.state(model, nnx.Param)
  else:
    state = result_or_workdir["state"]["params"]
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def run_worker(arch, compile_dir, workdir, overrides, *, devices=1, distributed=None, wait=True):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  args = [sys.executable, WORKER, arch, compile_dir, workdir, json.dumps(overrides), *(distributed or [])]
  proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if not wait:
    return proc
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  return out


@pytest.fixture(scope="module")
def reference(compile_dir, tmp_path_factory):
  """An uninterrupted single-device decoder run: the trajectory and parameters the other runs must reproduce."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  result = trainer.train(tiny_config("decoder", compile_dir), workdir, log=lambda _: None)
  return workdir, result


@pytest.mark.parametrize("arch", ["decoder", "encoder", "encoder_decoder"])
def test_loss_falls(compile_dir, tmp_path, arch, reference):
  if arch == "decoder":
    workdir = reference[0]
  else:
    workdir = str(tmp_path)
    trainer.train(tiny_config(arch, compile_dir, train__steps=24), workdir, log=lambda _: None)
  trajectory = losses(workdir)
  assert np.mean(trajectory[-3:]) < np.mean(trajectory[:3]) - 0.3, trajectory


def test_devices_fsdp_and_pmap_match_one_device(compile_dir, tmp_path, reference):
  """4 forced host devices (data parallel, FSDP, pmap) follow the 1-device loss trajectory."""
  ref = losses(reference[0])
  variants = {
    "jit4": {},
    "fsdp": {"mesh__fsdp": 2},
    "pmap": {"parallelism": "pmap"},
  }
  for name, overrides in variants.items():
    workdir = str(tmp_path / name)
    run_worker("decoder", compile_dir, workdir, overrides, devices=4)
    np.testing.assert_allclose(losses(workdir), ref, rtol=1e-4, err_msg=name)


def test_gradient_accumulation_matches_full_batch(compile_dir, tmp_path, reference):
  workdir = str(tmp_path)
  trainer.train(tiny_config("decoder", compile_dir, train__grad_accum=4), workdir, log=lambda _: None)
  np.testing.assert_allclose(losses(workdir), losses(reference[0]), rtol=1e-4)


def test_stop_and_resume_is_bit_identical(compile_dir, tmp_path, reference):
  workdir = str(tmp_path)
  config = tiny_config("decoder", compile_dir)
  first = trainer.train(config, workdir, should_stop=lambda step: step == 5, log=lambda _: None)
  assert first["stopped"] == "preempted" and first["step"] == 5
  resumed = trainer.train(config, workdir, log=lambda _: None)
  assert resumed["stopped"] == "done" and resumed["step"] == config.train.steps
  for a, b in zip(params_of(resumed), params_of(reference[1]), strict=True):
    np.testing.assert_array_equal(a, b)


def test_sigterm_saves_and_exits_zero_then_resumes(compile_dir, tmp_path):
  overrides = {"train__steps": 300, "checkpoint__every": 1000, "train__log_every": 1}
  workdir = str(tmp_path / "killed")
  proc = run_worker("decoder", compile_dir, workdir, overrides, wait=False)
  for line in proc.stdout:  # wait until training has really started
    if line.startswith("step "):
      break
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out
  status = json.loads(out.strip().splitlines()[-1])
  assert status["stopped"] == "preempted", out
  assert checkpoints.find(workdir)[1] == status["step"] < 300
  config = tiny_config("decoder", compile_dir, **overrides)
  resumed = trainer.train(config, workdir, log=lambda _: None)
  uninterrupted = trainer.train(config, str(tmp_path / "whole"), log=lambda _: None)
  for a, b in zip(params_of(resumed), params_of(uninterrupted), strict=True):
    np.testing.assert_array_equal(a, b)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(compile_dir, tmp_path, reference):
  """jax.distributed on 127.0.0.1 with CPU collectives: 2 processes × 1 device = 1 process on the same batch."""
  coordinator = f"127.0.0.1:{_free_port()}"
  workdir = str(tmp_path)
  procs = [
    run_worker("decoder", compile_dir, workdir, {}, distributed=[coordinator, "2", str(i)], wait=False) for i in (0, 1)
  ]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  np.testing.assert_allclose(losses(workdir), losses(reference[0]), rtol=1e-4)
  for a, b in zip(params_of(workdir), params_of(reference[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_checkpoint_metadata_names_the_isa(compile_dir, reference):
  meta = checkpoints.load_meta(reference[0])
  assert meta["arch"] == "decoder" and meta["isa_name"] == "bpe600" and meta["step"] == 12
  assert meta["config"]["data"]["isa"] == "bpe:600"
  compiler = checkpoints.load_compiler(meta)
  assert compiler.fingerprint == meta["isa_fingerprint"] == meta["isa"]["fingerprint"]
  assert compiler.decode(compiler.encode("round trip")) == "round trip"
  model, _, _ = checkpoints.load_model(reference[0])
  assert model.config.vocab_size == compiler.vocab_size


def test_non_finite_loss_stops_with_step(compile_dir, tmp_path):
  config = tiny_config("decoder", compile_dir, train__learning_rate=float("nan"), checkpoint__every=1)
  with pytest.raises(UserError, match=r"not finite at step 1\b.*last good checkpoint is step none"):
    trainer.train(config, str(tmp_path), log=lambda _: None)


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"model__vocab_size": 123}, "disagrees with ISA"),
    ({"data__isa": "char"}, "scripts/compile.py --corpus=prose --compilers=char"),
    ({"data__corpus": "elsewhere"}, "no data compiled from corpus 'elsewhere'"),
    ({"train__batch_size": 6, "train__grad_accum": 4}, "must divide into"),
    ({"parallelism": "threads"}, "not one of jit, pmap"),
  ],
)
def test_bad_config(compile_dir, tmp_path, overrides, match):
  with pytest.raises(UserError, match=match):
    trainer.train(tiny_config("decoder", compile_dir, **overrides), str(tmp_path), log=lambda _: None)


def test_checkpoint_of_another_arch_refused(compile_dir, reference):
  with pytest.raises(UserError, match="use another --workdir"):
    trainer.train(tiny_config("encoder", compile_dir), reference[0], log=lambda _: None)


def test_script_bad_flags_one_line(tmp_path):
  script = os.path.join(os.path.dirname(__file__), "..", "scripts", "train.py")
  config = os.path.join(os.path.dirname(__file__), "..", "configs", "decoder.py")
  for extra, match in [
    ("--config.train.nope=1", "bad --config override"),
    ("--config.train.steps=abc", "flag --config.train.steps"),
  ]:
    out = subprocess.run(
      [sys.executable, script, f"--config={config}", f"--workdir={tmp_path}", extra], capture_output=True, text=True
    )
    assert out.returncode != 0 and match in out.stderr and "Traceback" not in out.stderr, out.stderr
