"""Grouped training: CPUs of one shape trained as one stacked model under one jit.

Members differ only in their seed and their ISA (ISAs of equal vocabulary size); every other config value is the
same. Their parameters, optimizer states, counters and batches are stacked along a leading CPU axis and the
single-CPU step (``trainer.make_steps``) runs under ``jax.vmap``, so one dispatch trains them all: what helps an
accelerator that one tiny CPU leaves idle. Each member keeps its own workdir, data order (its seed's pipeline),
metrics.jsonl and checkpoints, written exactly as ``trainer.train`` writes them: a member loads, evaluates and
resumes alone like a CPU trained alone. The step draws no random keys (no dropout); a member's seed sets its
initial parameters and data order.

Placement: ``jit`` over the mesh's data axis (every member's rows sharded over the devices, parameters replicated);
one process. SIGTERM/SIGINT save every member at the same step and return; rerunning resumes bit-identically.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from llmcpu import fs, models
from llmcpu.errors import UserError
from llmcpu.ops import host_malloc
from llmcpu.training import checkpoints, memory, parallel, placement, trainer, writer
from llmcpu.training.optim import make_optimizer

PER_MEMBER = ("seed", "data.isa")  # the config values members may differ in


@dataclasses.dataclass
class GroupResult:
  """How a group's run ended: the step and stop reason every member shares, and each member's own result."""

  step: int
  stopped: str  # "done" | "preempted"
  members: list[trainer.TrainResult]


def _flat(config: ml_collections.ConfigDict) -> dict:
  out = {}
  for key, value in config.to_dict().items():
    for k, v in value.items() if isinstance(value, dict) else [(None, value)]:
      out[f"{key}.{k}" if k else key] = v
  return out


def check_group(setups: Sequence[trainer.Setup]) -> None:
  """Refuses members of different shapes, and what a group does not do (one UserError naming the fix)."""
  first = setups[0]
  want = {k: v for k, v in _flat(first.config).items() if k not in PER_MEMBER}
  for s in setups[1:]:
    have = {k: v for k, v in _flat(s.config).items() if k not in PER_MEMBER}
    diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if diff:
      raise UserError(
        f"{s.workdir} cannot train in a group with {first.workdir}: config {diff[0]} differs "
        f"({have.get(diff[0])!r} vs {want.get(diff[0])!r}); members may differ only in {', '.join(PER_MEMBER)}"
      )
    if s.model_config != first.model_config:
      raise UserError(
        f"{s.workdir} ({s.compiler.name}, {s.compiler.vocab_size} ids) cannot train in a group with "
        f"{first.workdir} ({first.compiler.name}, {first.compiler.vocab_size} ids): group ISAs of equal vocabulary"
      )
  c = first.config
  refusals = [
    (c.parallelism != "jit", "parallelism=pmap: a group is jit over the data axis; set parallelism=jit"),
    (c.mesh.fsdp != 1 or c.mesh.tensor != 1, "a group is data parallel only; set mesh.fsdp=1 and mesh.tensor=1"),
    (jax.process_count() > 1, "a group runs in one process; train its members alone on several processes"),
    (bool(c.train.eval_every and c.train.eval_batches), "a group does not evaluate; set train.eval_every=0"),
    (bool(c.train.init_from), "a group starts from random init; train members with train.init_from alone"),
    (first.input_compiler is not None, "a stitched encoder (data.input_isa) trains alone, not in a group"),
  ]
  for refused, why in refusals:
    if refused:
      raise UserError(f"grouped training of {len(setups)} CPUs: {why}")


def train_group(
  configs: Sequence[ml_collections.ConfigDict],
  workdirs: Sequence[str],
  *,
  should_stop: Callable[[int], bool] | None = None,
  log: Callable[[str], None] = print,
) -> GroupResult:
  """Trains (or resumes) every member to ``train.steps`` as one stacked model; members already there are left out.

  ``should_stop(step)`` returning True stops the group like SIGTERM: every member saves that step, then return."""
  if len(configs) != len(workdirs) or not configs:
    raise UserError(f"a group needs one workdir per config (got {len(configs)} configs, {len(workdirs)} workdirs)")
  workdirs = [fs.abspath(w) for w in workdirs]
  host_malloc.keep_step_buffers()  # as trainer.train
  if len(set(workdirs)) != len(workdirs):
    raise UserError("two members of a group share a workdir; give every CPU its own")
  with contextlib.ExitStack() as locks:
    for w in workdirs:
      locks.enter_context(trainer.workdir_lock(w))
    setups = [trainer.resolve(c, w) for c, w in zip(configs, workdirs, strict=True)]
    check_group(setups)
    todo = [s for s in setups if (_latest(s) or 0) < s.config.train.steps]
    if not todo:
      return GroupResult(setups[0].config.train.steps, "done", [])
    preflight(todo, log)
    group = GroupTrainer(todo, log=log)
    try:
      return group.run(should_stop)
    finally:
      group.close()


def preflight(setups: Sequence[trainer.Setup], log: Callable[[str], None]) -> memory.Estimate:
  """Refuses a group whose stacked state and step would not fit a device: ``memory.estimate_for`` of one member
  (analytic) times the members, since vmap stacks every buffer; the budget is ``memory.preflight``'s."""
  first, n = setups[0], len(setups)
  c = first.config
  one = memory.estimate_for(c, first.model_config, first.objective, jax.device_count())
  on_host = jax.default_backend() == "cpu"
  need = memory.Estimate(one.state * n, one.step * n + (memory.RUNTIME_BYTES if on_host else 0), one.how)
  limit = int(c.train.get("memory_limit_gb", 0.0) * memory.GIB) or memory.device_bytes() or memory.available_bytes()
  log(f"memory: a group of {n} needs ~{need.describe()} per device; the budget is {limit / memory.GIB:.2f} GiB")
  if limit and need.total > limit:
    raise UserError(
      f"a group of {n} CPUs needs ~{need.describe()} per device but has {limit / memory.GIB:.2f} GiB; train fewer "
      f"at once (--config.group_max={max(1, n * limit // need.total)} in an experiment) or set --config.group=off"
    )
  return need


def _latest(setup: trainer.Setup) -> int | None:
  try:
    return checkpoints.find(setup.workdir)[1]
  except UserError:
    return None


@dataclasses.dataclass
class _Member:
  """One CPU of a group: its run, checkpoints, metrics and throughput window."""

  setup: trainer.Setup
  mngr: object
  writer: writer.MetricWriter
  meter: trainer._Meter
  saved: int | None
  window: list = dataclasses.field(default_factory=list)
  last: dict = dataclasses.field(default_factory=dict)


def stack(trees: Sequence) -> object:
  """Trees of equal structure → one tree with a leading member axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, i: int) -> object:
  """Member ``i``'s slice of a stacked tree."""
  return jax.tree.map(lambda x: x[i], tree)


class GroupTrainer:
  """The stacked state, the vmapped and jitted step, and every member's checkpoints and metrics; ``run`` loops."""

  def __init__(self, setups: Sequence[trainer.Setup], *, log: Callable[[str], None] = print):
    self.log, first = log, setups[0]
    t = first.config.train
    self.tx, schedule = make_optimizer(t)
    mngrs = [
      checkpoints.manager(
        fs.join(s.workdir, "checkpoints"), keep=s.config.checkpoint.keep, async_save=s.config.checkpoint.async_save
      )
      for s in setups
    ]
    self.start = min(m.latest_step() or 0 for m in mngrs)
    states = [self._member_state(s, m) for s, m in zip(setups, mngrs, strict=True)]
    self.graphdef, self.num_params = states[0][0], states[0][2]
    train_step, _ = trainer.make_steps(self.graphdef, self.tx, schedule, t.grad_accum)
    mesh = first.mesh
    batch_axes = models.batch_sharding(mesh).spec[0]
    self.batch_sharding = NamedSharding(mesh, PartitionSpec(None, batch_axes))
    replicated = parallel.replicated(mesh)
    self.state = jax.device_put(stack([s[1] for s in states]), replicated)
    state_sh = jax.tree.map(lambda x: x.sharding, self.state)
    self._step = jax.jit(
      jax.vmap(train_step),
      in_shardings=(state_sh, self.batch_sharding),
      out_shardings=(state_sh, replicated),
      donate_argnums=0,
    )
    peak = t.peak_tflops * 1e12 or parallel.measure_matmul_peak(first.model_config.compute_dtype) * len(jax.devices())
    flops = trainer._flops_per_step(first)
    self.members = [
      _Member(
        s,
        m,
        writer.MetricWriter(s.workdir, start_step=self.start),
        trainer._Meter(s.tokens_per_step, flops, peak),
        saved=m.latest_step(),
      )
      for s, m in zip(setups, mngrs, strict=True)
    ]
    self.progress = writer.Progress(t.steps, self.start)

  def _member_state(self, setup: trainer.Setup, mngr) -> tuple:
    """(graphdef, the member's state at the group's start step, parameter count): restored, or fresh at step 0."""
    model = models.create_from_config(setup.model_config, seed=setup.config.seed)
    count = models.param_count(model)
    graphdef, params, frozen, rest = models.split_trainable(model, setup.config.train.trainable)
    state = placement.host_state(params, frozen, rest, self.tx)
    latest = mngr.latest_step() or 0
    if self.start == 0:
      if latest:
        self.log(f"{setup.workdir}: retrained from step 0 with its group (its checkpoint is at step {latest})")
      return graphdef, state, count
    if self.start not in mngr.all_steps():
      raise UserError(
        f"{setup.workdir} has no checkpoint at step {self.start}, where its group resumes (it has "
        f"{sorted(mngr.all_steps())}); train it alone, or delete its checkpoints to retrain it with the group"
      )
    trainer.check_resumable(setup)
    state, _ = checkpoints.restore(mngr, self.start, checkpoints.abstract(state))
    return graphdef, state, count

  # ------------------------------------------------------------------------------------------- step, read, save

  def step(self, step: int) -> dict:
    """Dispatches one step of every member; returns the stacked figures, still on the device."""
    local = [m.setup.train_data.batch(step) for m in self.members]
    batch = {k: np.stack([b[k] for b in local]) for k in local[0]}
    batch = jax.device_put(batch, self.batch_sharding)  # no "stop" rows: one process reads its own signal
    self.state, figures = self._step(self.state, batch)
    return figures

  def read(self, step: int, figures: dict) -> None:
    """Pulls one step's figures to the host; a member's non-finite loss or gradient stops the group."""
    stacked = jax.device_get(figures)
    for i, m in enumerate(self.members):
      f = member(stacked, i)
      if not (np.isfinite(f["nll"]) and np.isfinite(f["grad_norm"]) and bool(f["finite"])):
        for other in self.members:
          checkpoints.finish(other.mngr)
        raise UserError(
          f"loss, gradient or parameters not finite at step {step} in {m.setup.workdir} (loss sum "
          f"{float(f['nll'])}, grad norm {float(f['grad_norm'])}); stopped the group. Its last good checkpoint "
          f"is step {m.mngr.latest_step() or 'none'}"
        )
      m.window.append(f)

  def save(self, step: int) -> None:
    """Every member as an ordinary checkpoint (the trainer's metadata and checksums) in its own workdir."""
    for i, m in enumerate(self.members):
      if step == m.saved or step in m.mngr.all_steps():
        continue
      meta = trainer.step_meta(m.setup, step, {"group": [o.setup.workdir for o in self.members]})
      checkpoints.save(m.mngr, step, member(self.state, i), meta, force=True)
      m.saved = step

  def log_window(self, step: int) -> None:
    for m in self.members:
      m.meter.t0 = self.members[0].meter.t0  # one clock: every member's window is the same wall time
    for m in self.members:
      m.last = m.meter.window(m.window)
      m.window = []
      m.writer.write(step, m.last, "train/")
    notes = {m.meter.take_note() for m in self.members} - {None}  # one clock and one step: the same note for all
    for note in sorted(notes):
      self.log(note)
    mean_loss = float(np.mean([m.last["loss"] for m in self.members]))
    per_cpu = self.members[0].last["tokens_per_s"]
    self.log(
      f"group of {len(self.members)}: "
      + self.progress.line(step, {"loss": mean_loss, "tokens_per_s": per_cpu * len(self.members)})
    )

  def close(self) -> None:
    for m in self.members:
      m.writer.close()
      checkpoints.close(m.mngr)

  # ------------------------------------------------------------------------------------------- the loop

  def run(self, should_stop: Callable[[int], bool] | None = None) -> GroupResult:
    """The trainer's loop for one process: step n+1 is dispatched before step n's figures are read; a stop request
    saves every member at the step it was seen and returns."""
    first = self.members[0].setup
    t, stop, stopped = first.config.train, trainer._Stop(), "done"
    pending, step = None, self.start
    self.log(
      f"training a group of {len(self.members)} {first.model_config.arch}s ({self.num_params:,} params each) on "
      f"{', '.join(sorted({m.setup.compiler.name for m in self.members}))}, steps {self.start}→{t.steps}, batch "
      f"{t.batch_size} each, devices {len(jax.devices())}"
    )
    for m in self.members:
      m.meter.restart()
    stop.install()
    try:
      if step in first.save_at:
        self.save(step)
      while step < t.steps:
        if bool(should_stop and should_stop(step)) or stop.requested:
          if pending:
            self.read(*pending)
            pending = None
          self.save(step)
          stopped = "preempted"
          self.log(f"stopped the group at step {step}; checkpoints saved. Rerun the same command to resume.")
          break
        figures = self.step(step)
        step += 1
        if pending:
          self.read(*pending)
        pending = (step, figures)
        at_log = step % t.log_every == 0 or step == t.steps
        at_save = step % first.config.checkpoint.every == 0 or step == t.steps or step in first.save_at
        if at_log or at_save:
          self.read(*pending)
          pending = None
        if at_log and self.members[0].window:
          self.log_window(step)
        if at_save:
          self.save(step)
    finally:
      stop.restore()
    return GroupResult(step, stopped, self._results(step, stopped))

  def _results(self, step: int, stopped: str) -> list[trainer.TrainResult]:
    out = []
    for i, m in enumerate(self.members):
      state = member(self.state, i)
      illegal = int(sum(int(np.sum(x)) for x in jax.tree.leaves(state["rest"])))
      out.append(trainer.TrainResult(step, stopped, m.last, {}, state, illegal))
    return out
