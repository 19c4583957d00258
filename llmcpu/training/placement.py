"""Where a training run's state, batches and step live: ``jit`` over a device mesh, or ``pmap``, behind one interface,
so the training loop has no parallelism branches.

``MeshPlacement``: parameters (trainable and frozen) laid out by the models' logical axes, optimizer moments like their
parameters, counters replicated; batches sharded over (data, fsdp); one jitted step with the state donated.
``PmapPlacement``: the same step under ``jax.pmap``, the state replicated per local device, batches split per
device; the state is saved and returned as one copy.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from llmcpu import models
from llmcpu.training import parallel


class Placement:
  """The interface; see ``MeshPlacement`` and ``PmapPlacement``."""

  axis_name: str | None = None  # the step's collective axis (pmap), None where XLA inserts the collectives (jit)

  def init(self, params, frozen, rest, tx: optax.GradientTransformation) -> dict:
    """The initial state ``{params[, frozen], opt_state, rest, step}`` laid out as it is saved and restored."""
    raise NotImplementedError

  def to_devices(self, state: dict) -> dict:
    """The state as the step takes it (pmap: one copy per device)."""
    return state

  def host(self, state: dict) -> dict:
    """One copy of the state: what is saved and returned."""
    return state

  def compile(self, train_step: Callable, eval_step: Callable, state: dict) -> tuple[Callable, Callable]:
    raise NotImplementedError

  def batch(self, local: dict[str, np.ndarray]) -> dict:
    """This process's rows → what the step takes."""
    raise NotImplementedError

  def figures(self, m: dict) -> dict:
    """One copy of a step's (already reduced) figures."""
    return m

  def describe(self) -> str:
    raise NotImplementedError


def _state(params, frozen, rest, opt_state, step) -> dict:
  state = {"params": params, "opt_state": opt_state, "rest": rest, "step": step}
  if frozen is not None:  # absent when everything trains: checkpoints keep the layout they always had
    state["frozen"] = frozen
  return state


def host_state(params, frozen, rest, tx: optax.GradientTransformation) -> dict:
  """The state on the default device, unsharded: pmap's layout, and the skeleton a checkpoint is read into."""
  return _state(params, frozen, rest, tx.init(params), jnp.zeros((), jnp.int32))


class MeshPlacement(Placement):
  def __init__(self, mesh: Mesh, *, fsdp: bool):
    self.mesh = mesh
    self.rules = models.logical_axis_rules(fsdp=fsdp)
    self.replicated = parallel.replicated(mesh)
    self.batch_sharding = models.batch_sharding(mesh, self.rules)

  def init(self, params, frozen, rest, tx):
    p_sh = models.param_shardings(params, self.mesh, self.rules)
    params = jax.device_put(params, p_sh)
    if frozen is not None:
      frozen = jax.device_put(frozen, models.param_shardings(frozen, self.mesh, self.rules))
    opt_shape = jax.eval_shape(tx.init, params)
    o_sh = optax.tree_map_params(tx, lambda _, s: s, opt_shape, p_sh, transform_non_params=lambda _: self.replicated)
    opt_state = jax.jit(tx.init, out_shardings=o_sh)(params)  # moments born sharded, never whole on one device
    step = jax.device_put(jnp.zeros((), jnp.int32), self.replicated)
    return _state(params, frozen, jax.device_put(rest, self.replicated), opt_state, step)

  def compile(self, train_step, eval_step, state):
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    train = jax.jit(
      train_step,
      in_shardings=(state_sh, self.batch_sharding),
      out_shardings=(state_sh, self.replicated),
      donate_argnums=0,
    )
    evaluate = jax.jit(eval_step, in_shardings=(state_sh, self.batch_sharding), out_shardings=self.replicated)
    return train, evaluate

  def batch(self, local):
    return parallel.global_batch(local, self.batch_sharding)

  def describe(self) -> str:
    return "jit, mesh " + " × ".join(f"{name} {size}" for name, size in self.mesh.shape.items())


class PmapPlacement(Placement):
  axis_name = "batch"

  def init(self, params, frozen, rest, tx):
    return host_state(params, frozen, rest, tx)

  def to_devices(self, state):
    return parallel.replicate(state)

  def host(self, state):
    return parallel.unreplicate(state)

  def compile(self, train_step, eval_step, state):
    del state
    return jax.pmap(train_step, axis_name=self.axis_name, donate_argnums=0), jax.pmap(eval_step, self.axis_name)

  def batch(self, local):
    return parallel.pmap_batch(local)

  def figures(self, m):
    return jax.tree.map(lambda x: x[0], m)

  def describe(self) -> str:
    return "pmap"


def create(parallelism: str, mesh: Mesh, *, fsdp: bool) -> Placement:
  return MeshPlacement(mesh, fsdp=fsdp) if parallelism == "jit" else PmapPlacement()
