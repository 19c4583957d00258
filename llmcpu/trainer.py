"""One trainer for all three CPUs: compiled data → objective → jitted step over a mesh (or pmap) → checkpoints.

``train(config, workdir)`` runs (or resumes) a run described by a config from ``llmcpu.config``. The step is a
pure function of ``(state, batch)`` where ``state = {params, opt_state, rest, step}`` holds NNX ``State``s; the
model's graph definition is split off once. Step n+1 is dispatched before step n's metrics are read, so the host
(data, logging) overlaps the device. SIGTERM/SIGINT (or a caller's ``should_stop``) save a checkpoint and return;
rerunning resumes with the data position restored, giving the same bits as an uninterrupted run. With several
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

from llmcpu import cache, checkpoints, compilers, fs, loss, metrics, models, parallel
from llmcpu.config import check_ranges
from llmcpu.data import objectives as obj
from llmcpu.data.pipeline import Pipeline
from llmcpu.errors import UserError
from llmcpu.optim import make_optimizer

# ------------------------------------------------------------------------------------------------- configuration


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> models.ModelConfig:
  """The CPU's config: the ``model`` block with the ISA's vocabulary size (a different explicit size is an error)."""
  block = config.model.to_dict()
  if block.get("vocab_size") and block["vocab_size"] != vocab_size:
    raise UserError(
      f"model.vocab_size={block['vocab_size']} disagrees with ISA {config.data.isa} ({vocab_size} ids); "
      "leave it 0 to take the ISA's size"
    )
  block["vocab_size"] = vocab_size
  block["num_decoder_layers"] = block.get("num_decoder_layers") or None
  return models.ModelConfig.from_config(block)


# ------------------------------------------------------------------------------------------------- the step


def make_steps(graphdef, tx, schedule, grad_accum: int, axis_name: str | None = None):
  """(train_step, eval_step) as pure functions; ``axis_name`` set → sums are reduced across pmap devices."""

  def reduce(x):
    return jax.lax.psum(x, axis_name) if axis_name else x

  def loss_fn(params, rest, batch, total_weight):
    model = nnx.merge(graphdef, params, rest, copy=True)
    sums = loss.batch_sums(model, batch)
    new_rest = nnx.state(model, nnx.Not(nnx.Param))
    # Normalised by the whole global batch's weight: micro-batches and devices then add up to one big batch.
    return sums["nll"] / total_weight, (sums, new_rest)

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def train_step(state, batch):
    batch = dict(batch)
    stop = batch.pop("stop", None)  # [rows, 1]: 1.0 where the row's process was asked to stop (see train)
    weights = batch["decoder_weights"] if "decoder_weights" in batch else batch["weights"]
    total_weight = jnp.maximum(reduce(jnp.sum(weights.astype(jnp.float32))), 1.0)
    if grad_accum == 1:
      grads, (sums, rest) = grad_fn(state["params"], state["rest"], batch, total_weight)
    else:
      # Interleaved micro-batches (row i goes to micro-batch i % A) keep every device busy in each of them.
      micro = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1), batch
      )

      def body(carry, mb):
        g_acc, s_acc, rest = carry
        g, (s, rest) = grad_fn(state["params"], rest, mb, total_weight)
        return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, s_acc, s), rest), None

      zeros = jax.tree.map(jnp.zeros_like, state["params"])
      sums0 = {k: jnp.zeros((), jnp.float32) for k in loss.SUM_KEYS}
      (grads, sums, rest), _ = jax.lax.scan(body, (zeros, sums0, state["rest"]), micro)
    if axis_name:
      grads = reduce(grads)
      sums = reduce(sums)
      rest = jax.tree.map(lambda new, old: old + reduce(new - old), rest, state["rest"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {
      "params": optax.apply_updates(state["params"], updates),
      "opt_state": opt_state,
      "rest": rest,
      "step": state["step"] + 1,
    }
    # One flag for "the new parameters are all finite": a non-finite state is never checkpointed.
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_state["params"])]))
    figures = dict(sums, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state["step"]), finite=finite)
    if stop is not None:
      # How many rows ask to stop, as an f32 sum: XLA folds it into the gradients' all-reduce (a max or an int
      # would be a collective of its own, ~1 ms per step across CPU processes).
      figures["stop"] = reduce(jnp.sum(stop))
    return new_state, figures

  def eval_step(state, batch):
    model = nnx.merge(graphdef, state["params"], state["rest"], copy=True)
    return reduce(loss.batch_sums(model, batch))

  return train_step, eval_step


# ------------------------------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Run:
  """What one training run is made of, resolved from its config."""

  config: ml_collections.ConfigDict
  workdir: str
  compiler: compilers.Compiler
  model_config: models.ModelConfig
  objective: str
  train_data: Pipeline
  eval_data: Pipeline | None
  mesh: jax.sharding.Mesh

  @property
  def tokens_per_step(self) -> int:
    return self.config.train.batch_size * obj.tokens_per_row(self.config, self.objective)


def resolve(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Checks the config against the compiled data and the devices; every problem is one UserError."""
  d, t = config.data, config.train
  if config.parallelism not in ("jit", "pmap"):
    raise UserError(f"parallelism={config.parallelism!r} is not one of jit, pmap")
  check_ranges(config)
  compile_dir = fs.abspath(d.compile_dir)
  spec = compilers.parse(d.isa)
  compile_cmd = f"python scripts/compile.py --corpus={d.corpus} --compilers={spec} --workdir={compile_dir}"
  compiler_path = cache.compiler_dir(compile_dir, spec.name)
  if not fs.exists(fs.join(compiler_path, "isa.json")):
    raise UserError(f"no compiler {spec} under {compile_dir}; build it with: {compile_cmd}")
  compiler = compilers.load(compiler_path)
  corpus_name = cache.find_corpus_name(compile_dir, d.corpus, compiler, compile_cmd)
  train_split = cache.load_split(compile_dir, corpus_name, compiler, d.train_split)
  eval_split = None
  if t.eval_every and t.eval_batches:
    eval_split = cache.load_split(compile_dir, corpus_name, compiler, d.eval_split)
  objective = obj.objective_for(config, train_split.kind)
  mc = model_config(config, compiler.vocab_size)
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
      **({"truncate": d.truncate} if objective == "seq2seq" else {}),
    )

  return Run(
    config=config,
    workdir=workdir,
    compiler=compiler,
    model_config=mc,
    objective=objective,
    train_data=pipeline(train_split),
    eval_data=pipeline(eval_split, shuffle=False) if eval_split is not None else None,
    mesh=mesh,
  )


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


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  should_stop: Callable[[int], bool] | None = None,
  log: Callable[[str], None] = print,
) -> dict:
  """Trains (or resumes) to ``config.train.steps``; returns the last train and eval figures and the stop reason.

  ``should_stop(step)`` returning True (on any one process) stops the run like SIGTERM: a checkpoint, then return.
  One trainer per workdir (``workdir_lock``).
  """
  workdir = fs.abspath(workdir)
  with workdir_lock(workdir):
    return _train(config, workdir, should_stop=should_stop, log=log)


def _train(
  config: ml_collections.ConfigDict, workdir: str, *, should_stop: Callable[[int], bool] | None, log: Callable
) -> dict:
  run = resolve(config, workdir)
  t = config.train
  lead = jax.process_index() == 0
  model = models.create_from_config(run.model_config, seed=config.seed)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx, schedule = make_optimizer(t)
  train_step, eval_step = make_steps(
    graphdef, tx, schedule, t.grad_accum, "batch" if config.parallelism == "pmap" else None
  )

  # Lay the state out on the mesh: parameters by their logical axes, optimizer moments like their parameters.
  mesh = run.mesh
  rules = models.logical_axis_rules(fsdp=config.mesh.fsdp > 1)
  repl = parallel.replicated(mesh)
  if config.parallelism == "jit":
    p_sh = models.param_shardings(params, mesh, rules)
    params = jax.device_put(params, p_sh)
    opt_shape = jax.eval_shape(tx.init, params)
    o_sh = optax.tree_map_params(tx, lambda _, s: s, opt_shape, p_sh, transform_non_params=lambda _: repl)
    opt_state = jax.jit(tx.init, out_shardings=o_sh)(params)
    rest = jax.device_put(rest, repl)
  else:
    opt_state = tx.init(params)
  state = {"params": params, "opt_state": opt_state, "rest": rest, "step": jnp.zeros((), jnp.int32)}
  if config.parallelism == "jit":
    state["step"] = jax.device_put(state["step"], repl)

  mngr = checkpoints.manager(
    fs.join(workdir, "checkpoints"), keep=config.checkpoint.keep, async_save=config.checkpoint.async_save
  )
  start = mngr.latest_step() or 0
  if start:
    meta = checkpoints.load_meta(workdir)
    if meta["arch"] != run.model_config.arch or meta["isa_fingerprint"] != run.compiler.fingerprint:
      raise UserError(
        f"{workdir} holds a checkpoint of arch {meta['arch']} on ISA {meta['isa_name']} "
        f"({meta['isa_fingerprint']}), not of {run.model_config.arch} on {run.compiler.name} "
        f"({run.compiler.fingerprint}); use another --workdir"
      )
    state, meta = checkpoints.restore(mngr, start, checkpoints.abstract(state))
    log(f"resumed from step {start} ({meta['tokens_seen']:,} tokens seen)")

  if config.parallelism == "jit":
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    batch_sh = models.batch_sharding(mesh, rules)
    p_train = jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl), donate_argnums=0)
    p_eval = jax.jit(eval_step, in_shardings=(state_sh, batch_sh), out_shardings=repl)

    def device_batch(local):
      return parallel.global_batch(local, batch_sh)

    def host_state(s):
      return s

  else:
    p_train = jax.pmap(train_step, axis_name="batch", donate_argnums=0)
    p_eval = jax.pmap(eval_step, axis_name="batch")
    state = parallel.replicate(state)
    device_batch = parallel.pmap_batch

    def host_state(s):
      return parallel.unreplicate(s)

  def first(m):  # pmap returns one copy of the (already reduced) metrics per device
    return jax.tree.map(lambda x: x[0], m) if config.parallelism == "pmap" else m

  writer = metrics.MetricWriter(workdir, enabled=lead)
  peak = t.peak_tflops * 1e12 or parallel.measure_matmul_peak(run.model_config.compute_dtype) * len(jax.devices())
  flops_per_step = _flops_per_step(run)
  stop = _Stop()
  single = jax.process_count() == 1
  # Each process's stop request as one value per row of its batch, built once: asking costs no transfer.
  stop_rows = {
    a: device_batch({"stop": np.full((run.train_data.local_batch, 1), a, np.float32)})["stop"] for a in (0, 1)
  }
  saved = [mngr.latest_step()]  # the step on disk (or being written): saving it again would raise

  def save(step: int, s) -> None:
    if step == saved[0]:  # a stop right after a checkpoint step (or right after resuming) has nothing new to save
      return
    meta = checkpoints.make_meta(
      config=config.to_dict(),
      model_config=run.model_config,
      compiler=run.compiler,
      step=step,
      tokens_seen=step * run.tokens_per_step,
      data_step=step,
    )
    checkpoints.save(mngr, step, host_state(s), meta, force=True)
    saved[0] = step

  def evaluate(s) -> dict:
    sums = None
    for i, local in enumerate(run.eval_data.eval_batches()):
      if i >= t.eval_batches:
        break
      out = jax.device_get(first(p_eval(s, device_batch(local))))
      sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
    return loss.finalize(sums)

  result: dict = {"stopped": "done"}
  agreed = [False]  # some process asked to stop: read from a step's figures, hence the same on every process
  window: list[dict] = []
  pending = None  # (step, device metrics) of the step whose figures are not read yet
  step = start
  t_window = time.time()
  progress = metrics.Progress(t.steps, start)
  if lead:
    log(
      f"training {run.model_config.arch} ({models.param_count(model):,} params) on {run.compiler.name} "
      f"[{run.objective}], steps {start}→{t.steps}, batch {t.batch_size}, devices {len(jax.devices())} "
      f"({config.parallelism}{_mesh_shape(mesh) if config.parallelism == 'jit' else ''}), "
      f"processes {jax.process_count()}"
    )

  def read(pending) -> None:
    """Pulls one step's figures to the host; stops the run on a non-finite loss or gradient."""
    s, m = pending
    m = jax.device_get(first(m))
    if not (math.isfinite(float(m["nll"])) and math.isfinite(float(m["grad_norm"])) and bool(m["finite"])):
      checkpoints.finish(mngr)
      raise UserError(
        f"loss, gradient or parameters not finite at step {s} (loss sum {float(m['nll'])}, grad norm "
        f"{float(m['grad_norm'])}); stopped. "
        f"The last good checkpoint is step {mngr.latest_step() or 'none'} in {workdir}/checkpoints"
      )
    agreed[0] = agreed[0] or float(m.get("stop", 0.0)) > 0
    window.append(m)

  stop.install()
  try:
    while step < t.steps:
      # JAX's preemption sync point must see every step on every process; it is only ever reached where _Stop
      # could not replace JAX's SIGTERM notifier. Cost: a mutex, under a microsecond.
      preempted = mngr.reached_preemption(step)
      asked = bool(should_stop and should_stop(step)) or stop.requested  # the flag last: a signal meanwhile counts
      # One process stops at once; several carry the request into the step and stop once its figures are read
      # (one or two steps on), all at the same step, because they read figures at the same steps.
      if preempted or agreed[0] or (asked and single):
        if pending:
          read(pending)
          pending = None
        save(step, state)
        result["stopped"] = "preempted"
        log(f"stopped at step {step}; checkpoint saved. Rerun the same command to resume.")
        break
      batch = device_batch(run.train_data.batch(step))
      batch["stop"] = stop_rows[int(asked)]
      state, m = p_train(state, batch)
      step += 1
      if pending:
        read(pending)
      pending = (step, m)
      boundary_log = step % t.log_every == 0 or step == t.steps
      boundary_ckpt = step % config.checkpoint.every == 0 or step == t.steps
      boundary_eval = run.eval_data is not None and (step % t.eval_every == 0 or step == t.steps)
      if boundary_log or boundary_ckpt or boundary_eval:
        read(pending)
        pending = None
      if boundary_log and window:
        scalars = _window_scalars(window, time.time() - t_window, run.tokens_per_step, flops_per_step, peak)
        writer.write(step, scalars, "train/")
        if lead:
          log(progress.line(step, scalars))
        result["train"] = scalars
        window, t_window = [], time.time()
      if boundary_ckpt:
        save(step, state)
      if boundary_eval:
        ev = evaluate(state)
        writer.write(step, ev, "eval/")
        result["eval"] = ev
        if lead:
          log(f"eval at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()))
        t_window = time.time()
  finally:
    stop.restore()
    writer.close()
    checkpoints.close(mngr)
  result["step"] = step
  result["state"] = host_state(state)
  result["illegal_opcodes"] = int(sum(int(np.sum(x)) for x in jax.tree.leaves(host_state(state)["rest"])))
  return result


def _mesh_shape(mesh: jax.sharding.Mesh) -> str:
  return ", mesh " + " × ".join(f"{name} {size}" for name, size in mesh.shape.items())


def _flops_per_step(run: Run) -> float:
  c, cfg = run.model_config, run.config
  if run.objective in obj.SEQ2SEQ:
    # models.flops_per_token counts one source and one target token together.
    seq = (cfg.data.input_length + cfg.data.target_length) / 2
    return models.flops_per_token(c, int(seq)) * cfg.train.batch_size * seq
  return models.flops_per_token(c, cfg.data.length) * cfg.train.batch_size * cfg.data.length


def _window_scalars(window: list[dict], seconds: float, tokens_per_step: int, flops_per_step: float, peak: float):
  """A logging window's figures: loss/bpb/accuracy from summed statistics, throughput and MFU from wall time."""
  sums = {k: sum(float(m[k]) for m in window) for k in loss.SUM_KEYS}
  steps_per_s = len(window) / max(seconds, 1e-9)
  return loss.finalize(sums) | {
    "grad_norm": float(np.mean([float(m["grad_norm"]) for m in window])),
    "learning_rate": float(window[-1]["learning_rate"]),
    "tokens_per_s": steps_per_s * tokens_per_step,
    "mfu": steps_per_s * flops_per_step / peak,
  }
