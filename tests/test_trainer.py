"""The trainer: learning, device/process/pmap equivalence, preemption (one and two processes) and bitwise resume,
metadata, bad input."""

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from conftest import tiny_config

from llmcpu.errors import UserError
from llmcpu.training import checkpoints, trainer

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
    state = result_or_workdir.state["params"]
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def run_worker(arch, compile_dir, workdir, overrides, *, devices=1, distributed=None, wait=True, env=None):
  # Forced host devices are threads: on a loaded 2-core CI host one can wait past XLA's 40 s collective timeout
  # (seen once: "Expected 4 threads to join the rendezvous, but only 2 of them arrived on time"), so allow 10 min.
  flags = f"--xla_force_host_platform_device_count={devices} --xla_cpu_collective_call_terminate_timeout_seconds=600"
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", **(env or {}))
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
  assert first.stopped == "preempted" and first.step == 5
  resumed = trainer.train(config, workdir, log=lambda _: None)
  assert resumed.stopped == "done" and resumed.step == config.train.steps
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


def test_sigkill_then_resume_keeps_one_metrics_row_per_step(compile_dir, tmp_path, reference):
  """kill -9 at a random step after a checkpoint, a write cut short, rerun: the rows the killed run wrote after its
  checkpoint are dropped (one log line), every step has one row, equal to the uninterrupted run's (log_every=1: every
  logging window coincides; throughput is wall time)."""
  kill_at = int(np.random.default_rng().choice([6, 7, 9, 10, 11]))  # checkpoints at 4 and 8, rows at every step
  workdir = str(tmp_path)
  proc = run_worker("decoder", compile_dir, workdir, {}, wait=False, env={"TRAIN_WORKER_STEP_SECONDS": "1"})
  try:
    for line in proc.stdout:
      if line.strip() == f"at step {kill_at}":
        break
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait(timeout=60)
  saved = checkpoints.find(workdir)[1]
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    killed = [json.loads(line)["step"] for line in f]
  with open(path, "a") as f:
    f.write('{"step": 3, "train/lo')  # a write cut short by the kill
  after = sum(step > saved for step in killed) + 1
  assert saved < kill_at and after > 1, (kill_at, saved, killed)
  logs = []
  trainer.train(tiny_config("decoder", compile_dir), workdir, log=logs.append)
  assert f"dropped the figures of steps after {saved} that the interrupted run wrote ({after} metrics.jsonl" in (
    "\n".join(logs)
  ), (kill_at, logs)
  timing = ("train/tokens_per_s", "train/mfu")
  rows, want = (
    [{k: v for k, v in r.items() if k not in timing} for r in map(json.loads, open(p))]
    for p in (
      path,
      os.path.join(reference[0], "metrics.jsonl"),
    )
  )
  assert [r["step"] for r in rows] == list(range(1, 13)), (kill_at, rows)
  assert rows == want, kill_at


def test_metric_writer_drops_rows_and_events_after_the_start_step(tmp_path):
  """metrics.jsonl and TensorBoard event files (read back with TensorFlow's own reader) keep steps ≤ the start."""
  import tensorflow as tf
  from tensorflow.core.util import event_pb2

  from llmcpu.training import writer

  def steps_on_disk():
    events = [
      (v.tag, e.step)
      for p in tf.io.gfile.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
      for e in map(event_pb2.Event.FromString, tf.data.TFRecordDataset(p).as_numpy_iterator())
      for v in e.summary.value
    ]
    with open(tmp_path / "metrics.jsonl") as f:
      return [json.loads(line)["step"] for line in f], sorted(events)

  first = writer.MetricWriter(str(tmp_path))
  for step in range(1, 7):
    first.write(step, {"loss": float(step)}, "train/")
  first.close()
  (events_file,) = tf.io.gfile.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  os.truncate(events_file, os.path.getsize(events_file) - 5)  # step 6's record cut short by a kill
  again = writer.MetricWriter(str(tmp_path), start_step=3)
  assert again.dropped == (3, 2)  # rows 4-6; events 4 and 5 (the cut record is not an event)
  for step in range(4, 6):
    again.write(step, {"loss": float(step)}, "train/")
  again.close()
  rows, events = steps_on_disk()
  assert rows == [1, 2, 3, 4, 5]
  assert events == [("train/loss", s) for s in range(1, 6)]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Processes:
  """N train_worker processes joined by jax.distributed on 127.0.0.1 (CPU collectives); their output is read by
  threads, so a test can wait for a line without blocking on a hung process. Stragglers are killed on exit."""

  def __init__(self, compile_dir, workdir, overrides, *, n=2, env=None):
    coordinator = f"127.0.0.1:{_free_port()}"
    self.procs = [
      run_worker(
        "decoder", compile_dir, workdir, overrides, distributed=[coordinator, str(n), str(i)], wait=False, env=env
      )
      for i in range(n)
    ]
    self.lines = [[] for _ in self.procs]
    self._new = queue.Queue()
    self._readers = [threading.Thread(target=self._read, args=(i,), daemon=True) for i in range(n)]
    for r in self._readers:
      r.start()

  def _read(self, i):
    for line in self.procs[i].stdout:
      self.lines[i].append(line)
      self._new.put((i, line))

  def wait_for(self, i, prefix, timeout=60.0):
    """Blocks until process i prints a line starting with ``prefix``."""
    deadline = time.monotonic() + timeout
    while not any(line.startswith(prefix) for line in self.lines[i]):
      assert self.procs[i].poll() is None or self._readers[i].is_alive(), self.output()
      try:
        self._new.get(timeout=max(deadline - time.monotonic(), 0.01))
      except queue.Empty:
        raise AssertionError(f"process {i} printed no {prefix!r} in {timeout} s\n{self.output()}") from None

  def finish(self, timeout=120.0) -> list[dict]:
    """Waits for every process; each must exit 0. Returns their final status lines."""
    deadline = time.monotonic() + timeout
    for p in self.procs:
      p.wait(timeout=max(deadline - time.monotonic(), 0.01))
    for r in self._readers:
      r.join(timeout=10)
    assert [p.returncode for p in self.procs] == [0] * len(self.procs), self.output()
    return [json.loads(lines[-1]) for lines in self.lines]

  def output(self) -> str:
    return "\n".join(f"--- process {i}\n" + "".join(lines) for i, lines in enumerate(self.lines))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()


@pytest.fixture(scope="module")
def two_processes(compile_dir, tmp_path_factory):
  """An uninterrupted 2-process run of the reference config: the bits a preempted 2-process run must resume to."""
  workdir = str(tmp_path_factory.mktemp("two_processes"))
  with Processes(compile_dir, workdir, {}) as procs:
    assert [s["stopped"] for s in procs.finish()] == ["done", "done"], procs.output()
  return workdir


def test_two_processes_match_one(two_processes, reference):
  """jax.distributed on 127.0.0.1 with CPU collectives: 2 processes × 1 device = 1 process on the same batch."""
  np.testing.assert_allclose(losses(two_processes), losses(reference[0]), rtol=1e-4)
  for a, b in zip(params_of(two_processes), params_of(reference[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _stopped_together(procs) -> int:
  """Both processes exited 0 after saving one and the same step; returns it."""
  status = procs.finish()
  steps = {s["step"] for s in status}
  assert [s["stopped"] for s in status] == ["preempted"] * 2 and len(steps) == 1, procs.output()
  (step,) = steps
  assert all(f"stopped at step {step};" in "".join(lines) for lines in procs.lines), procs.output()
  return step


def test_sigterm_to_one_of_two_processes_stops_both(compile_dir, tmp_path, two_processes):
  """SIGTERM to process 1 only: both save the same step and exit 0; rerunning resumes to the uninterrupted bits."""
  workdir = str(tmp_path)
  with Processes(compile_dir, workdir, {}, env={"TRAIN_WORKER_STEP_SECONDS": "0.25"}) as procs:
    procs.wait_for(1, "at step 3")  # process 1 is before step 3, so both are past step 2: every step is a collective
    procs.procs[1].send_signal(signal.SIGTERM)
    step = _stopped_together(procs)
  assert 3 < step < 12 and checkpoints.find(workdir)[1] == step
  with Processes(compile_dir, workdir, {}) as again:
    assert again.finish() == [{"stopped": "done", "step": 12}] * 2, again.output()
    assert f"resumed from step {step}" in "".join(again.lines[0]), again.output()
  for a, b in zip(params_of(workdir), params_of(two_processes), strict=True):
    np.testing.assert_array_equal(a, b)


def test_sigint_just_after_an_async_checkpoint(compile_dir, tmp_path, two_processes):
  """The worst moment, with SIGINT to process 0: the agreed stop lands on a checkpoint step whose async save is still
  being written; it is saved once, and holds the uninterrupted run's bits at that step."""
  workdir = str(tmp_path)
  # Every 4 steps a checkpoint, figures read at every step: asked before step 7 → carried by step 7 → read with its
  # figures → both stop at 8, which they have just started saving.
  env = {"TRAIN_WORKER_SIGNAL_AT": "0:7:SIGINT"}
  with Processes(compile_dir, workdir, {"checkpoint__async_save": True}, env=env) as procs:
    assert _stopped_together(procs) == 8
    assert "received SIGINT" in "".join(procs.lines[0]), procs.output()
  step_dir = os.path.join("checkpoints", "8")
  mine, uninterrupted = params_of(os.path.join(workdir, step_dir)), params_of(os.path.join(two_processes, step_dir))
  for a, b in zip(mine, uninterrupted, strict=True):
    np.testing.assert_array_equal(a, b)


def test_stop_right_after_a_checkpoint_resumes(compile_dir, tmp_path, reference):
  """A single process asked to stop at a step it has just saved (async): nothing is saved twice; the resume matches."""
  workdir = str(tmp_path)
  config = tiny_config("decoder", compile_dir, checkpoint__async_save=True)
  first = trainer.train(config, workdir, should_stop=lambda step: step == 4, log=lambda _: None)
  assert first.stopped == "preempted" and first.step == 4 == checkpoints.find(workdir)[1]
  again = trainer.train(config, workdir, should_stop=lambda step: step == 4, log=lambda _: None)  # asked at once
  assert again.stopped == "preempted" and again.step == 4
  resumed = trainer.train(config, workdir, log=lambda _: None)
  for a, b in zip(params_of(resumed), params_of(reference[1]), strict=True):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_metadata_names_the_isa(compile_dir, reference):
  meta = checkpoints.load_meta(reference[0])
  assert meta["arch"] == "decoder" and meta["isa_name"] == "bpe600" and meta["step"] == 12
  assert meta["config"]["data"]["isa"] == "bpe:600"
  compiler = checkpoints.load_compiler(meta)
  assert compiler.fingerprint == meta["isa_fingerprint"] == meta["isa"]["fingerprint"]
  assert compiler.decode(compiler.encode("round trip")) == "round trip"
  model, _, _ = checkpoints.load_model(reference[0])
  assert model.config.vocab_size == compiler.vocab_size


def test_one_trainer_per_workdir(compile_dir, tmp_path):
  config = tiny_config("decoder", compile_dir, train__steps=2)
  lock = tmp_path / trainer.LOCK
  lock.write_text(f"{socket.gethostname()} {os.getppid()}")  # a live process holds it (the one running pytest)
  with pytest.raises(UserError, match=rf"in use by trainer pid {os.getppid()} on .*delete .*\.trainer\.lock"):
    trainer.train(config, str(tmp_path), log=lambda _: None)
  assert not (tmp_path / "checkpoints").exists() and lock.exists()  # nothing touched, the holder's lock kept
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  lock.write_text(f"{socket.gethostname()} {gone.stdout.strip()}")  # left by a process that is gone: taken over
  assert trainer.train(config, str(tmp_path), log=lambda _: None).stopped == "done"
  assert not lock.exists()  # released


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the point of the test
def test_non_finite_loss_stops_with_step(compile_dir, tmp_path):
  # A learning rate that overflows float32: the first update makes the parameters infinite.
  config = tiny_config("decoder", compile_dir, train__learning_rate=1e39, checkpoint__every=1)
  with pytest.raises(UserError, match=r"not finite at step 1\b.*last good checkpoint is step none"):
    trainer.train(config, str(tmp_path), log=lambda _: None)


@pytest.mark.parametrize(
  "overrides, match",
  [
    ({"model__vocab_size": 123}, "disagrees with ISA"),
    ({"data__isa": "char"}, "scripts/compile.py --config.corpus=prose --config.compilers=char"),
    ({"data__corpus": "elsewhere"}, "no data compiled from corpus 'elsewhere'"),
    ({"train__batch_size": 6, "train__grad_accum": 4}, "must divide into"),
    ({"parallelism": "threads"}, "not one of jit, pmap"),
    ({"train__learning_rate": -1.0}, r"^--config.train.learning_rate=-1.0 must be a positive finite number$"),
    ({"train__learning_rate": float("nan")}, "learning_rate=nan must be a positive finite number"),
    ({"train__b2": 1.0}, r"--config.train.b2=1.0 must be in \[0, 1\)"),
    ({"checkpoint__keep": -1}, "--config.checkpoint.keep=-1 must be at least 0"),
    ({"train__steps": -1}, "--config.train.steps=-1 must be at least 0"),
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
    (f"--config={config}:huge", r"--config=\S+decoder.py:huge: ValueError: unknown preset 'huge'; choose one of tiny"),
    (f"--config={config}x", r"cannot load the --config file \(\[Errno 2\] No such file or directory: .*pyx'\)"),
  ]:
    out = subprocess.run(
      [sys.executable, script, f"--config={config}", f"--workdir={tmp_path}", extra], capture_output=True, text=True
    )
    assert out.returncode != 0 and re.search(match, out.stderr) and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_only_trainable_parameters_change_and_carry_optimizer_state(compile_dir, tmp_path):
  from flax import nnx

  from llmcpu import models

  config = tiny_config("decoder", compile_dir, train__trainable="embed", train__steps=6, checkpoint__every=2)
  first = trainer.train(config, str(tmp_path / "a"), should_stop=lambda step: step == 3, log=lambda _: None)
  resumed = trainer.train(config, str(tmp_path / "a"), log=lambda _: None)
  whole = trainer.train(config, str(tmp_path / "b"), log=lambda _: None)
  assert first.stopped == "preempted" and resumed.stopped == "done"
  # An independent initial model: the same config and seed, never trained.
  model = models.create_from_config(trainer.resolve(config, str(tmp_path / "c")).model_config, seed=config.seed)
  before = {
    models.trainable.path_name(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }
  after = {models.trainable.path_name(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(resumed.state["params"])}
  after |= {models.trainable.path_name(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(resumed.state["frozen"])}
  assert set(after) == set(before) and [k for k in before if "embed" in k] == ["embed/table"]
  for name, value in before.items():
    if name == "embed/table":
      assert not np.array_equal(after[name], value)
    else:
      np.testing.assert_array_equal(after[name], value, err_msg=name)  # frozen: bit-identical
  moments = [x for x in jax.tree.leaves(resumed.state["opt_state"]) if np.ndim(x) > 0]
  assert moments and all(x.shape == before["embed/table"].shape for x in moments)  # none for frozen parameters
  for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(whole.state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # stop + resume = one run
  loaded, meta, _ = checkpoints.load_model(str(tmp_path / "a"))
  np.testing.assert_array_equal(np.asarray(loaded.embed.table[...]), after["embed/table"])
  assert meta["config"]["train"]["trainable"] == "embed"


def test_a_trainable_pattern_that_matches_nothing_is_refused(compile_dir, tmp_path):
  config = tiny_config("decoder", compile_dir, train__trainable="nothing_here")
  with pytest.raises(UserError, match=r"trainable='nothing_here' matches no parameter; paths look like: \S+/"):
    trainer.train(config, str(tmp_path), log=lambda _: None)


def test_lr_scale_reaches_the_step_through_the_mesh_placement(compile_dir, tmp_path):
  """train.lr_scale on an encoder-decoder through the trainer (the mesh placement initialises the optimizer through
  optax.tree_map_params): the encoder stack at 1e-6 of the rate barely moves from an independent initial model,
  the decoder stack moves; a rule that matches nothing is refused with the paths."""
  from flax import nnx

  from llmcpu import models

  config = tiny_config("encoder_decoder", compile_dir, train__steps=2, train__warmup_steps=0)
  config.train.lr_scale = "^encoder/=1e-6"
  result = trainer.train(config, str(tmp_path / "a"), log=lambda _: None)
  model = models.create_from_config(trainer.resolve(config, str(tmp_path / "c")).model_config, seed=config.seed)
  before = {
    models.trainable.path_name(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }
  after = {models.trainable.path_name(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(result.state["params"])}
  moved = {name: float(np.max(np.abs(after[name] - before[name]))) for name in before}
  encoder = [n for n in moved if n.startswith("encoder/")]
  decoder = [n for n in moved if n.startswith("decoder/layers/")]
  assert encoder and decoder
  assert max(moved[n] for n in encoder) < 1e-6, {n: moved[n] for n in encoder}
  assert min(moved[n] for n in decoder if n.endswith(("qkv", "kv", "q", "wi", "wo", "out"))) > 1e-4
  config.train.lr_scale = "^nope/=2"
  with pytest.raises(UserError, match=r"'\^nope/' matches no parameter; paths look like: \S+/"):
    trainer.train(config, str(tmp_path / "b"), log=lambda _: None)


def test_init_from_a_checkpoint_then_a_transform(compile_dir, tmp_path, reference):
  from flax import nnx

  seen = []

  def initialize(model, setup):
    seen.append([np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))])
    model.embed.table[...] = model.embed.table[...] * 0  # a transform of the source's parameters

  config = tiny_config("decoder", compile_dir, train__init_from=reference[0], train__steps=1, train__learning_rate=1e-9)
  result = trainer.train(
    config, str(tmp_path), initialize=initialize, provenance={"method": "test"}, log=lambda _: None
  )
  for a, b in zip(seen[0], params_of(reference[0]), strict=True):
    np.testing.assert_array_equal(a, b)  # initialize saw the source checkpoint's parameters
  assert np.abs(np.asarray(result.state["params"]["embed"]["table"][...])).max() < 1e-6  # and its change was kept
  meta = checkpoints.load_meta(str(tmp_path))
  assert meta["provenance"]["method"] == "test" and meta["provenance"]["init_from"]["checkpoint"] == reference[0]
  # Resuming does not start from the source again.
  trainer.train(config, str(tmp_path), initialize=lambda m, s: pytest.fail("called on resume"), log=lambda _: None)


def test_profiler_traces_the_asked_steps(compile_dir, tmp_path):
  config = tiny_config("decoder", compile_dir, train__steps=4, train__profile_start=1, train__profile_steps=2)
  trainer.train(config, str(tmp_path), log=lambda _: None)
  traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_zero_steps_saves_the_initial_state_and_extra_save_steps_are_kept(compile_dir, tmp_path):
  from flax import nnx

  from llmcpu import models

  config = tiny_config("decoder", compile_dir, train__steps=0)
  assert trainer.train(config, str(tmp_path / "zero"), log=lambda _: None).step == 0
  fresh = models.create_from_config(trainer.resolve(config, str(tmp_path / "x")).model_config, seed=config.seed)
  for a, b in zip(params_of(str(tmp_path / "zero")), jax.tree.leaves(nnx.state(fresh, nnx.Param)), strict=True):
    np.testing.assert_array_equal(a, np.asarray(b))
  config = tiny_config("decoder", compile_dir, train__steps=6, checkpoint__at="1,3", checkpoint__keep=0)
  trainer.train(config, str(tmp_path / "curve"), log=lambda _: None)
  assert sorted(int(p.name) for p in (tmp_path / "curve" / "checkpoints").iterdir()) == [1, 3, 4, 6]
  config = tiny_config("decoder", compile_dir, train__steps=6, checkpoint__at="7")
  with pytest.raises(UserError, match=r"checkpoint.at='7' has step 7 outside 0…train.steps=6"):
    trainer.train(config, str(tmp_path / "b"), log=lambda _: None)


def test_seq2seq_training_rows_pack_pairs_except_for_pooled_readouts(compile_dir, tmp_path):
  """data.pack_pairs: training rows hold several whole pairs (within data.length ids in all); off, or with a pooled
  readout (model.pool: one embedding per row's source), one pair per row."""

  def pairs_per_row(**overrides):
    lengths = dict(data__input_length=48, data__target_length=16)  # room for several pairs on either side
    run = trainer.resolve(tiny_config("encoder_decoder", compile_dir, **lengths, **overrides), str(tmp_path))
    batch = run.train_data.batch(0)
    return run.train_data.summary()["pairs_per_row"], int(batch["encoder_segment_ids"].max())

  packed, most = pairs_per_row()
  assert packed > 1.5 and most >= 2
  assert pairs_per_row(data__pack_pairs=False) == (1.0, 1)
  assert pairs_per_row(model__pool=2) == (1.0, 1)


def test_prefix_lm_training_rows_pack_windows_by_ids(compile_dir, tmp_path):
  """data.pack_windows: the same windows (the same bytes) fill a coarse ISA's rows (bpe:600, several a row) and a
  byte ISA's (about one a row: a window's prefix fills its row), so both fill their rows as a decoder of their ISA
  does (the default); off, one window a row."""

  def windows_a_row(isa: str, **overrides) -> tuple[float, int]:
    config = tiny_config(
      "encoder_decoder", compile_dir, data__corpus="prose", data__isa=isa, data__input_length=32, **overrides
    )
    run = trainer.resolve(config, str(tmp_path / isa))
    assert run.objective == "prefix_lm"
    return run.train_data.summary().get("pairs_per_row", 1.0), int(run.train_data.batch(0)["encoder_segment_ids"].max())

  coarse, most = windows_a_row("bpe:600")
  fine, _ = windows_a_row("byte")
  assert coarse > 1.5 and most >= 2 and 1.0 <= fine < coarse
  assert windows_a_row("bpe:600", data__pack_windows=False) == (1.0, 1)
