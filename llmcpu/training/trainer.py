"""One trainer for all three CPUs: compiled data → objective → jitted step over a mesh (or pmap) → checkpoints.

``train(config, workdir)`` runs (or resumes) a run described by a config from ``llmcpu.training.run_config``.
The step is a pure function of ``(state, batch)`` where ``state = {params, opt_state, rest, step}`` holds NNX
``State``s; the model's graph definition is split off once. Step n+1 is dispatched before step n's metrics are read, so
the host (data, logging) overlaps the device. SIGTERM/SIGINT (or a caller's ``should_stop``) save a checkpoint and
return; rerunning resumes with the data position restored, giving the same bits as an uninterrupted run. With several
processes a signal may reach only one of them: each process's stop request rides in its rows of the next batch, the
step sums it in the all-reduce it already does for the gradients, and every process reads the answer with that
step's figures, so all save the same step (one or two steps after the request) and return.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from llmcpu import compilers, fs, models, toolchain
from llmcpu.data import compiled
from llmcpu.data import objectives as obj
from llmcpu.data.pipeline import Pipeline
from llmcpu.errors import UserError
from llmcpu.ops import host_malloc
from llmcpu.specials import UNK_ID
from llmcpu.training import checkpoints, loss, memory, parallel, placement, writer
from llmcpu.training.optim import make_optimizer
from llmcpu.training.run_config import check_ranges

# ------------------------------------------------------------------------------------------------- configuration


def model_config_for(
  config: ml_collections.ConfigDict, vocab_size: int, input_vocab_size: int | None = None, unk_id: int = UNK_ID
) -> models.ModelConfig:
  """The CPU's config: the ``model`` block with the ISA's vocabulary size (a different explicit size is an error)
  and its stand-in for ids it does not know (``unk_id``: ``Roles.stand_in``); a stitched encoder's
  (``model.encoder_config``) with the size of the ISA it reads (``data.input_isa``)."""
  block = config.model.to_dict()
  if block.get("vocab_size") and block["vocab_size"] != vocab_size:
    raise UserError(
      f"model.vocab_size={block['vocab_size']} disagrees with ISA {config.data.isa} ({vocab_size} ids); "
      "leave it 0 to take the ISA's size"
    )
  block["vocab_size"], block["unk_id"] = vocab_size, unk_id
  block["num_decoder_layers"] = block.get("num_decoder_layers") or None
  enc = block.get("encoder_config")
  input_isa = config.data.get("input_isa") or config.data.isa
  if input_vocab_size not in (None, vocab_size) and not enc:
    raise UserError(
      f"data.input_isa={input_isa} has {input_vocab_size} ids and data.isa {vocab_size}: one shared table cannot "
      "read both; give the encoder its own (model.encoder_config, see llmcpu.stitching)"
    )
  if enc:
    want = input_vocab_size or vocab_size
    if enc.get("vocab_size") and enc["vocab_size"] != want:
      raise UserError(
        f"the stitched encoder has {enc['vocab_size']} ids but reads ISA {input_isa} ({want} ids); set "
        "data.input_isa to the ISA that encoder was trained on"
      )
    block["encoder_config"] = {**enc, "vocab_size": want}
  return models.ModelConfig.from_config(block)


# ------------------------------------------------------------------------------------------------- the step


def make_steps(graphdef, tx, schedule, grad_accum: int, axis_name: str | None = None):
  """(train_step, eval_step) as pure functions; ``axis_name`` set → sums are reduced across pmap devices."""

  def reduce(x):
    return jax.lax.psum(x, axis_name) if axis_name else x

  def merge(params, frozen, rest):
    return nnx.merge(graphdef, params, *([frozen] if frozen is not None else []), rest, copy=True)

  def loss_fn(params, frozen, rest, batch, total_weight):
    model = merge(params, frozen, rest)
    sums = loss.batch_sums(model, batch)
    new_rest = nnx.state(model, nnx.Not(nnx.Param))
    # Normalised by the whole global batch's weight: micro-batches and devices then add up to one big batch.
    return sums["nll"] / total_weight, (sums, new_rest)

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    batch = dict(batch)
    stop = batch.pop("stop", None)  # [rows, 1]: 1.0 where the row's process was asked to stop (see train)
    frozen = state.get("frozen")  # parameters outside config.train.trainable: no gradient, passed through as is
    weights = batch["decoder_weights"] if "decoder_weights" in batch else batch["weights"]
    total_weight = jnp.maximum(reduce(jnp.sum(weights.astype(jnp.float32))), 1.0)
    if grad_accum == 1:
      grads, (sums, rest) = grad_fn(state["params"], frozen, state["rest"], batch, total_weight)
    else:
      # Interleaved micro-batches (row i goes to micro-batch i % A) keep every device busy in each of them.
      micro = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1), batch
      )

      def body(carry, mb):
        g_acc, s_acc, rest = carry
        g, (s, rest) = grad_fn(state["params"], frozen, rest, mb, total_weight)
        return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, s), rest), None

      zeros = jax.tree.map(jnp.zeros_like, state["params"])
      sums0 = {k: jnp.zeros((), jnp.float32) for k in loss.METRIC_SUM_KEYS}
      (grads, sums, rest), _ = jax.lax.scan(body, (zeros, sums0, state["rest"]), micro)
    if axis_name:
      grads = reduce(grads)
      sums = reduce(sums)
      rest = jax.tree.map(lambda new, old: old + reduce(new - old), rest, state["rest"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = dict(state, params=params, opt_state=opt_state, rest=rest, step=state["step"] + 1)
    # One flag for "the new parameters are all finite": a non-finite state is never checkpointed.
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_state["params"])]))
    figures = dict(sums, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state["step"]), finite=finite)
    if stop is not None:
      # How many rows ask to stop, as an f32 sum: XLA folds it into the gradients' all-reduce (a max or an int
      # would be a collective of its own, ~1 ms per step across XLA:CPU processes).
      figures["stop"] = reduce(jnp.sum(stop))
    return new_state, figures

  def eval_step(state, batch):
    model = merge(state["params"], state.get("frozen"), state["rest"])
    return reduce(loss.batch_sums(model, batch))

  return train_step, eval_step


# ------------------------------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Setup:
  """What one training run is made of, resolved from its config (``resolve``)."""

  config: ml_collections.ConfigDict
  workdir: str
  compiler: compilers.Compiler
  input_compiler: compilers.Compiler | None  # data.input_isa's: what a stitched encoder reads (None: compiler)
  model_config: models.ModelConfig
  objective: str
  train_data: Pipeline
  eval_data: Pipeline | None
  mesh: jax.sharding.Mesh
  save_at: frozenset[int]  # checkpoint.at (and step 0 when there are no steps to train)

  @property
  def tokens_per_step(self) -> int:
    return self.config.train.batch_size * obj.tokens_per_row(self.config, self.objective)


def resolve(config: ml_collections.ConfigDict, workdir: str) -> Setup:
  """Checks the config against the compiled data and the devices; every problem is one UserError."""
  d, t = config.data, config.train
  if config.parallelism not in ("jit", "pmap"):
    raise UserError(f"parallelism={config.parallelism!r} is not one of jit, pmap")
  check_ranges(config)
  tools = toolchain.Toolchain(d.compile_dir)
  compiler = tools.compiler(compilers.parse(d.isa), corpus=d.corpus)
  corpus_name = tools.corpus_name(d.corpus, compiler)
  train_split = tools.split(corpus_name, compiler, d.train_split)
  eval_split = None
  if t.eval_every and t.eval_batches:
    eval_split = tools.split(corpus_name, compiler, d.eval_split)
  input_compiler = None
  if d.get("input_isa"):  # a stitched encoder-decoder: the encoder reads another ISA's compile of the same programs
    input_compiler = tools.compiler(compilers.parse(d.input_isa), corpus=d.corpus, role="data.input_isa")

    def paired(split_name, split):
      return compiled.pair(split, tools.split(corpus_name, input_compiler, split_name))

    train_split = paired(d.train_split, train_split)
    eval_split = paired(d.eval_split, eval_split) if eval_split is not None else None
  objective = obj.objective_for(config, train_split.kind)
  mc = model_config_for(
    config, compiler.vocab_size, input_compiler.vocab_size if input_compiler else None, compiler.roles.stand_in
  )
  if objective not in obj.SEQ2SEQ and d.length > mc.max_len and mc.positions == "learned":
    raise UserError(f"data.length={d.length} exceeds model.max_len={mc.max_len} with learned positions")
  if (objective in obj.SEQ2SEQ) != (mc.arch == "encoder_decoder"):
    raise UserError(f"objective {objective!r} does not fit arch {mc.arch!r}; set data.objective accordingly")
  if config.parallelism == "pmap" and (config.mesh.fsdp != 1 or config.mesh.tensor != 1):
    raise UserError("parallelism=pmap is data parallel only; set mesh.fsdp=1 and mesh.tensor=1 or use jit")
  mesh = parallel.make_mesh(config.mesh.fsdp, config.mesh.tensor)
  parallel.check_batch(t.batch_size, mesh, t.grad_accum)

  def pipeline(split, shuffle=True):
    return Pipeline(
      split,
      objective=objective,
      global_batch=t.batch_size,
      seed=config.seed,
      length=d.length,
      input_length=d.input_length,
      target_length=d.target_length,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      shuffle=shuffle,
      **({"truncate": d.truncate} if objective in ("seq2seq", "reconstruct") else {}),
      **obj.context_options(objective, mc.decoder_context),  # the design's, so training and evaluation alike
      # training options only: evaluation scores the same windows one per row, unweighted (see PrefixLM)
      **(obj.training_options(d, objective, pooled=bool(mc.pool)) if shuffle else {}),
    )

  return Setup(
    config=config,
    workdir=workdir,
    compiler=compiler,
    input_compiler=input_compiler,
    model_config=mc,
    objective=objective,
    train_data=pipeline(train_split),
    eval_data=pipeline(eval_split, shuffle=False) if eval_split is not None else None,
    mesh=mesh,
    save_at=_save_at(config.checkpoint.at, t.steps),
  )


def _save_at(value: str, steps: int) -> frozenset[int]:
  try:
    at = {int(x) for x in str(value).split(",") if x.strip()}
  except ValueError:
    raise UserError(f"--config.checkpoint.at={value!r} must be comma-separated step numbers, e.g. 10,30,100") from None
  bad = sorted(x for x in at if not 0 <= x <= steps)
  if bad:
    raise UserError(f"--config.checkpoint.at={value!r} has step {bad[0]} outside 0…train.steps={steps}")
  return frozenset(at | ({0} if steps == 0 else set()))


class _Stop:
  """SIGTERM/SIGINT seen by this process; ``train`` turns it (and ``should_stop``) into a stop every process agrees on.

  Installed with any number of processes. Under ``jax.distributed`` this replaces JAX's own SIGTERM notifier (the one
  ``reached_preemption`` listens to), which is then only the fallback where no handler can be installed (``train``
  called outside the main thread). ``restore`` puts back the handlers Python knew of; JAX's C-level notifier is not
  one of them, so after ``train`` a SIGTERM has its default effect again.
  """

  def __init__(self):
    self.requested = False
    self._old = {}

  def install(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame) -> None:
    del frame
    where = "this step" if jax.process_count() == 1 else "a step every process agrees on"
    print(f"received {signal.Signals(signum).name}: saving a checkpoint at {where}, then exiting", flush=True)
    self.requested = True

  def restore(self) -> None:
    for sig, handler in self._old.items():
      signal.signal(sig, handler)


LOCK = ".trainer.lock"


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Refuses a second trainer on a workdir in use (two would interleave metrics and fight over checkpoints).

  ``<workdir>/.trainer.lock`` holds ``host pid``, created exclusively; a lock left by a process that is gone (same
  host, pid not alive, or this very process after an error) is taken over. A bucket has no exclusive create: not
  locked there. Only process 0 of a multi-host run locks (the others share its workdir by design)."""
  if fs.is_uri(workdir) or jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path, me = os.path.join(workdir, LOCK), f"{socket.gethostname()} {os.getpid()}"
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(path) as f:
          host, pid = f.read().split()
      except (OSError, ValueError):  # removed meanwhile, or half-written by a dying process: look again
        host, pid = "", "0"
      if host == socket.gethostname() and (int(pid) == os.getpid() or not _alive(int(pid))):
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)  # left behind by a process that is gone
        continue
      raise UserError(
        f"{workdir} is in use by trainer pid {pid} on {host or 'another host'}; wait for it to finish, use another "
        f"--workdir, or delete {path} if that process is gone"
      ) from None
    with os.fdopen(fd, "w") as f:
      f.write(me)
    break
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


@dataclasses.dataclass
class TrainResult:
  """How a run ended and its last figures."""

  step: int  # the last step trained (and saved)
  stopped: str  # "done" | "preempted" (SIGTERM/SIGINT, should_stop, a preemption notice): rerun to continue
  train: dict  # the last logging window's figures (loss, bits_per_byte, accuracy, tokens_per_s, mfu, ...)
  eval: dict  # the last evaluation's figures ({} when none ran)
  state: dict  # {params[, frozen], opt_state, rest, step}: one copy, as saved
  illegal_opcodes: int  # ids the CPU was fed that its ISA does not have (see models.opcodes)


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  should_stop: Callable[[int], bool] | None = None,
  initialize: Callable[[nnx.Module, Setup], None] | None = None,
  provenance: dict | None = None,
  log: Callable[[str], None] = print,
) -> TrainResult:
  """Trains (or resumes) to ``config.train.steps``: every kind of training (from scratch, from a checkpoint,
  porting, stitching) is this loop with another config.

  ``should_stop(step)`` returning True (on any one process) stops the run like SIGTERM: a checkpoint, then return.
  ``initialize(model, setup)`` transforms a fresh model in place before training (after ``train.init_from``), e.g.
  to port parameters from another ISA (``setup``: the resolved run); it is not called when resuming.
  ``provenance`` goes into every checkpoint's metadata. Only parameters matching ``train.trainable`` change. One
  trainer per workdir (``workdir_lock``).
  """
  workdir = fs.abspath(workdir)
  host_malloc.keep_step_buffers()  # each step's scratch reused, not faulted in again (scripts do it too)
  with workdir_lock(workdir):
    setup = resolve(config, workdir)
    memory.preflight(
      config, setup.model_config, setup.objective, make_steps, log=log
    )  # refuse what would be OOM-killed
    trainer = Trainer(setup, initialize=initialize, provenance=provenance, log=log)
    try:
      return trainer.run(should_stop)
    finally:
      trainer.close()


def step_meta(run: Setup, step: int, provenance: dict) -> dict:
  """A checkpoint's metadata at ``step`` of ``run``: what a CPU trained alone and a group member both save."""
  return checkpoints.make_meta(
    config=run.config.to_dict(),
    model_config=run.model_config,
    compiler=run.compiler,
    step=step,
    tokens_seen=step * run.tokens_per_step,
    data_step=step,
    provenance=provenance,
    input_compiler=run.input_compiler,
  )


class Trainer:
  """One run's state, compiled step, evaluation, checkpoints and metrics; ``run`` is the loop."""

  def __init__(self, setup: Setup, *, initialize=None, provenance: dict | None = None, log: Callable = print):
    self.setup, self.log, self.provenance = setup, log, provenance or {}
    config, t = setup.config, setup.config.train
    self.lead = jax.process_index() == 0
    self.mngr = checkpoints.manager(
      fs.join(setup.workdir, "checkpoints"), keep=config.checkpoint.keep, async_save=config.checkpoint.async_save
    )
    self.start = self.mngr.latest_step() or 0
    model = models.create_from_config(setup.model_config, seed=config.seed)
    if not self.start:  # a resumed run's parameters come from its checkpoint
      self._initialize(model, initialize)
    self.num_params = models.param_count(model)
    graphdef, params, frozen, rest = models.split_trainable(model, t.trainable)
    self.tx, schedule = make_optimizer(t)
    self.placement = placement.create(config.parallelism, setup.mesh, fsdp=config.mesh.fsdp > 1)
    train_step, eval_step = make_steps(graphdef, self.tx, schedule, t.grad_accum, self.placement.axis_name)
    state = self.placement.init(params, frozen, rest, self.tx)
    if self.start:
      state = self._restore(state)
    self.state = self.placement.to_devices(state)
    self._train_step, self._eval_step = self.placement.compile(train_step, eval_step, self.state)
    self.saved = self.mngr.latest_step()  # the step on disk (or being written): saving it again would raise
    self.writer = writer.MetricWriter(setup.workdir, enabled=self.lead, start_step=self.start)
    if any(self.writer.dropped):
      rows, events = self.writer.dropped
      self.log(
        f"dropped the figures of steps after {self.start} that the interrupted run wrote ({rows} metrics.jsonl "
        f"rows, {events} TensorBoard events): this run writes them again"
      )
    peak = t.peak_tflops * 1e12 or parallel.measure_matmul_peak(setup.model_config.compute_dtype) * len(jax.devices())
    self.meter = _Meter(setup.tokens_per_step, _flops_per_step(setup), peak)
    self.profile = _Profile(t.profile_start, t.profile_steps, fs.join(setup.workdir, "tensorboard"), self.lead)
    # Each process's stop request as one value per row of its batch, built once: asking costs no transfer.
    rows = setup.train_data.local_batch
    self.stop_rows = {a: self.placement.batch({"stop": np.full((rows, 1), a, np.float32)})["stop"] for a in (0, 1)}
    self.agreed = False  # some process asked to stop: read from a step's figures, hence the same on every process
    self.window: list[dict] = []
    self.progress = writer.Progress(t.steps, self.start)

  # ------------------------------------------------------------------------------------------- state

  def _initialize(self, model: nnx.Module, initialize) -> None:
    """A fresh run's parameters: random init, then ``train.init_from``'s, then the caller's transform."""
    source_path = self.setup.config.train.init_from
    if source_path:
      source, meta, _ = checkpoints.load_model(source_path)
      if meta["model_config"] != dataclasses.asdict(self.setup.model_config):
        raise UserError(
          f"--config.train.init_from={source_path} holds a {meta['arch']} on {meta['isa_name']} of another "
          "shape; start from a checkpoint of the same model config"
        )
      nnx.update(model, nnx.state(source, nnx.Param))
      self.provenance.setdefault("init_from", {"checkpoint": source_path, "step": meta["step"]})
    if initialize is not None:
      initialize(model, self.setup)

  def _restore(self, state: dict) -> dict:
    """The newest checkpoint, if it is of this architecture on this ISA."""
    check_resumable(self.setup)
    state, meta = checkpoints.restore(self.mngr, self.start, checkpoints.abstract(state))
    self.provenance = {**self.provenance, **meta.get("provenance", {})}  # where the run began stays recorded
    self.log(f"resumed from step {self.start} ({meta['tokens_seen']:,} tokens seen)")
    return state

  # ------------------------------------------------------------------------------------------- step, eval, save

  def step(self, step: int, asked: bool) -> dict:
    """Dispatches one training step; returns its figures, still on the device."""
    batch = self.placement.batch(self.setup.train_data.batch(step))
    batch["stop"] = self.stop_rows[int(asked)]
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      self.state, figures = self._train_step(self.state, batch)
    return figures

  def read(self, step: int, figures: dict) -> None:
    """Pulls one step's figures to the host; stops the run on a non-finite loss or gradient."""
    m = jax.device_get(self.placement.figures(figures))
    if not (math.isfinite(float(m["nll"])) and math.isfinite(float(m["grad_norm"])) and bool(m["finite"])):
      checkpoints.finish(self.mngr)
      raise UserError(
        f"loss, gradient or parameters not finite at step {step} (loss sum {float(m['nll'])}, grad norm "
        f"{float(m['grad_norm'])}); stopped. "
        f"The last good checkpoint is step {self.mngr.latest_step() or 'none'} in {self.setup.workdir}/checkpoints"
      )
    self.agreed = self.agreed or float(m.get("stop", 0.0)) > 0
    self.window.append(m)

  def evaluate(self) -> dict:
    """Loss, bits per byte and accuracy over ``train.eval_batches`` batches of the eval split."""
    sums = None
    for i, local in enumerate(self.setup.eval_data.eval_batches()):
      if i >= self.setup.config.train.eval_batches:
        break
      out = jax.device_get(self.placement.figures(self._eval_step(self.state, self.placement.batch(local))))
      sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
    return loss.finalize(sums)

  def save(self, step: int) -> None:
    if step == self.saved:  # a stop right after a checkpoint step (or right after resuming) has nothing new to save
      return
    meta = step_meta(self.setup, step, self.provenance)
    checkpoints.save(self.mngr, step, self.placement.host(self.state), meta, force=True)
    self.saved = step

  def close(self) -> None:
    self.profile.stop()
    self.writer.close()
    checkpoints.close(self.mngr)

  # ------------------------------------------------------------------------------------------- the loop

  def run(self, should_stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Steps to ``train.steps``: step n+1 is dispatched before step n's figures are read (the host overlaps the
    device); figures are read, logged, saved and evaluated at their boundaries; a stop request saves and returns."""
    t, stop, single = self.setup.config.train, _Stop(), jax.process_count() == 1
    result = TrainResult(step=self.start, stopped="done", train={}, eval={}, state={}, illegal_opcodes=0)
    pending, step = None, self.start
    self._banner()
    stop.install()
    try:
      if step in self.setup.save_at:  # step 0: the initial state (e.g. a port before any training)
        self.save(step)
      while step < t.steps:
        # JAX's preemption sync point must see every step on every process; it is only reached where _Stop could
        # not replace JAX's SIGTERM notifier. Cost: a mutex, under a microsecond.
        preempted = self.mngr.reached_preemption(step)
        asked = bool(should_stop and should_stop(step)) or stop.requested  # the flag last: a signal meanwhile counts
        # One process stops at once; several carry the request into the step and stop once its figures are read
        # (one or two steps on), all at the same step, because they read figures at the same steps.
        if preempted or self.agreed or (asked and single):
          if pending:
            self.read(*pending)
            pending = None
          self.save(step)
          result.stopped = "preempted"
          self.log(f"stopped at step {step}; checkpoint saved. Rerun the same command to resume.")
          break
        self.profile.before(step)
        figures = self.step(step, asked)
        step += 1
        self.profile.after(step, figures)
        if pending:
          self.read(*pending)
        pending = (step, figures)
        at_log, at_save, at_eval = self._boundaries(step)
        if at_log or at_save or at_eval:
          self.read(*pending)
          pending = None
        if at_log and self.window:
          result.train = self._log_window(step)
        if at_save:
          self.save(step)
        if at_eval:
          result.eval = self._log_eval(step)
    finally:
      stop.restore()
    result.step = step
    result.state = self.placement.host(self.state)
    result.illegal_opcodes = int(sum(int(np.sum(x)) for x in jax.tree.leaves(result.state["rest"])))
    return result

  def _boundaries(self, step: int) -> tuple[bool, bool, bool]:
    """(log, checkpoint, evaluate) after ``step``."""
    t, last = self.setup.config.train, step == self.setup.config.train.steps
    at_eval = self.setup.eval_data is not None and (step % t.eval_every == 0 or last)
    at_save = step % self.setup.config.checkpoint.every == 0 or last or step in self.setup.save_at
    return step % t.log_every == 0 or last, at_save, at_eval

  def _log_window(self, step: int) -> dict:
    scalars = self.meter.window(self.window)
    self.window = []
    self.writer.write(step, scalars, "train/")
    note = self.meter.take_note()
    if self.lead:
      if note:
        self.log(note)
      self.log(self.progress.line(step, scalars))
    return scalars

  def _log_eval(self, step: int) -> dict:
    figures = self.evaluate()
    self.writer.write(step, figures, "eval/")
    if self.lead:
      self.log(f"eval at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    self.meter.restart()  # evaluation time is not training throughput
    return figures

  def _banner(self) -> None:
    run, t = self.setup, self.setup.config.train
    self.meter.restart()
    frozen = f", trainable {t.trainable!r}" if t.trainable else ""
    pairs = run.train_data.summary().get("pairs_per_row")
    packed = f", {pairs:.2f} pairs a row" if pairs and pairs > 1 else ""  # what a step holds, beside a decoder's
    if self.lead:
      self.log(
        f"training {run.model_config.arch} ({self.num_params:,} params{frozen}) on {run.compiler.name} "
        f"[{run.objective}{packed}], steps {self.start}→{t.steps}, batch {t.batch_size}, devices {len(jax.devices())} "
        f"({self.placement.describe()}), processes {jax.process_count()}"
      )


def check_resumable(run: Setup) -> None:
  """Refuses to resume from a workdir whose newest checkpoint is of another architecture or ISA."""
  meta = checkpoints.load_meta(run.workdir)
  reads = run.input_compiler.fingerprint if run.input_compiler else None
  if (
    meta["arch"] != run.model_config.arch
    or meta["isa_fingerprint"] != run.compiler.fingerprint
    or meta.get("input_isa_fingerprint") != reads
  ):
    raise UserError(
      f"{run.workdir} holds a checkpoint of arch {meta['arch']} on ISA {meta['isa_name']} "
      f"({meta['isa_fingerprint']}), not of {run.model_config.arch} on {run.compiler.name} "
      f"({run.compiler.fingerprint}); use another --workdir"
    )


class _Meter:
  """Throughput of a logging window: tokens/s and MFU from wall time since the window began.

  The peak is measured once, at start; on a machine busier then than later, training can outrun it. A window
  faster than the peak raises the peak to what it reached (``raised`` = (old, new) for the caller to say so), so
  MFU never reads above 100% and every later window is against the best rate this machine has shown."""

  def __init__(self, tokens_per_step: int, flops_per_step: float, peak: float):
    self.tokens_per_step, self.flops_per_step, self.peak = tokens_per_step, flops_per_step, peak
    self.raised: tuple[float, float] | None = None
    self.t0 = time.time()

  def restart(self) -> None:
    self.t0 = time.time()

  def take_note(self) -> str | None:
    """The line saying the peak was raised since the last call (then cleared), or None."""
    if not self.raised:
      return None
    (old, new), self.raised = self.raised, None
    return (
      f"training reached {new / 1e12:.3g} TFLOP/s, above the matmul peak measured at start ({old / 1e12:.3g}; "
      "the machine was busier then): MFU is against that rate from here on"
    )

  def window(self, window: list[dict]) -> dict:
    """A logging window's figures: loss/bpb/accuracy from summed statistics, throughput and MFU from wall time."""
    seconds, self.t0 = time.time() - self.t0, time.time()
    sums = {k: sum(float(m[k]) for m in window) for k in loss.METRIC_SUM_KEYS}
    steps_per_s = len(window) / max(seconds, 1e-9)
    achieved = steps_per_s * self.flops_per_step
    if achieved > self.peak:
      self.raised, self.peak = (self.peak, achieved), achieved
    return loss.finalize(sums) | {
      "grad_norm": float(np.mean([float(m["grad_norm"]) for m in window])),
      "learning_rate": float(window[-1]["learning_rate"]),
      "tokens_per_s": steps_per_s * self.tokens_per_step,
      "mfu": steps_per_s * self.flops_per_step / self.peak,
    }


class _Profile:
  """A ``jax.profiler`` trace of steps [start, start + steps) into the run's TensorBoard directory (process 0;
  open it with TensorBoard's profile plugin or Perfetto). steps = 0: off."""

  def __init__(self, start: int, steps: int, logdir: str, enabled: bool):
    self.start, self.end, self.logdir = start, start + steps, logdir
    self.enabled, self.on = enabled and steps > 0, False

  def before(self, step: int) -> None:
    if self.enabled and not self.on and self.start <= step < self.end:
      jax.profiler.start_trace(self.logdir)
      self.on = True

  def after(self, step: int, figures: dict) -> None:
    if self.on and step >= self.end:
      jax.block_until_ready(figures)  # the traced steps' device work belongs in the trace
      self.stop()

  def stop(self) -> None:
    if self.on:
      jax.profiler.stop_trace()
      self.on = False


def _flops_per_step(run: Setup) -> float:
  c, cfg = run.model_config, run.config
  if run.objective in obj.SEQ2SEQ:
    # models.flops_per_token counts one source and one target token together.
    # packed pairs: k times the row, and attention runs over the whole row (masked), as the hardware computes it
    dec = obj.decoder_width(cfg.data, run.objective, c.decoder_context)
    seq = (cfg.data.input_length + dec) / 2 * obj.pairs_per_row(cfg.data, run.objective)
    return models.flops_per_token(c, int(seq)) * cfg.train.batch_size * seq
  return models.flops_per_token(c, cfg.data.length) * cfg.train.batch_size * cfg.data.length
