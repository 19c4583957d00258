"""Where a run's state and step live (``llmcpu.training.placement``): jit over a mesh and pmap give the update a
float64 numpy recompute gives, the mesh lays parameters and their optimizer moments out by logical axes, and the
state keeps the layout checkpoints read. Multi-device cases run in one subprocess with 4 forced host devices (the
device count is fixed when jax starts)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from llmcpu.training import parallel, placement

ROOT = pathlib.Path(__file__).resolve().parent.parent
LR, MOMENTUM, STEPS = 0.05, 0.9, 3


class Toy(nnx.Module):
  """y ≈ x @ kernel + offset: ``kernel`` [4, 8] trains (logical axes embed × mlp), ``offset`` stays frozen."""

  def __init__(self):
    k = np.arange(32, dtype=np.float32).reshape(4, 8) / 32
    self.kernel = nnx.Param(jnp.asarray(k), out_sharding=("embed", "mlp"), eager_sharding=False)
    self.offset = nnx.Param(jnp.full((8,), 0.5, jnp.float32), out_sharding=("mlp",), eager_sharding=False)
    self.calls = nnx.Variable(jnp.zeros((), jnp.int32))  # non-parameter state: passed through


def split(model):
  return nnx.split(model, nnx.PathContains("kernel"), nnx.Param, ...)


def make_step(graphdef, tx, axis_name, rows: int):
  """A step as the trainer writes one: mean squared error over the global batch, sums reduced over ``axis_name``."""

  def loss_fn(params, frozen, rest, batch):
    model = nnx.merge(graphdef, params, frozen, rest, copy=True)
    err = batch["x"] @ model.kernel[...] + model.offset[...][None, :] - batch["y"]
    return jnp.sum(err**2) / rows

  def step(state, batch):
    grads = jax.grad(loss_fn)(state["params"], state["frozen"], state["rest"], batch)
    if axis_name:
      grads = jax.lax.psum(grads, axis_name)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return dict(state, params=params, opt_state=opt_state, step=state["step"] + 1), {"rows": jnp.float32(rows)}

  return step


def data(rows: int = 8):
  rng = np.random.default_rng(0)
  return {"x": rng.normal(size=(rows, 4)).astype(np.float32), "y": rng.normal(size=(rows, 8)).astype(np.float32)}


def reference(batch) -> np.ndarray:
  """The kernel after STEPS of SGD with momentum on the whole batch, in float64 numpy (no JAX, no optax)."""
  x, y = batch["x"].astype(np.float64), batch["y"].astype(np.float64)
  w, trace = np.arange(32, dtype=np.float64).reshape(4, 8) / 32, np.zeros((4, 8))
  for _ in range(STEPS):
    grad = 2.0 * x.T @ (x @ w + 0.5 - y) / len(x)
    trace = grad + MOMENTUM * trace
    w = w - LR * trace
  return w


def train(place: placement.Placement, batch) -> dict:
  graphdef, params, frozen, rest = split(Toy())
  tx = optax.sgd(LR, momentum=MOMENTUM)
  state = place.to_devices(place.init(params, frozen, rest, tx))
  step = make_step(graphdef, tx, place.axis_name, len(batch["x"]))
  train_step, _ = place.compile(step, lambda s, b: {}, state)
  for _ in range(STEPS):
    state, figures = train_step(state, place.batch(batch))
  assert float(place.figures(figures)["rows"]) == len(batch["x"])
  return place.host(state)


def test_both_placements_on_one_device_give_the_numpy_update():
  batch, want = data(), reference(data())
  for place in (placement.create("jit", parallel.make_mesh(), fsdp=False), placement.create("pmap", None, fsdp=False)):
    state = train(place, batch)
    np.testing.assert_allclose(np.asarray(state["params"]["kernel"][...]), want, rtol=1e-5, atol=1e-6)
    assert int(state["step"]) == STEPS
    np.testing.assert_array_equal(np.asarray(state["frozen"]["offset"][...]), np.full(8, 0.5, np.float32))


def test_state_layout_is_what_checkpoints_read():
  graphdef, params, frozen, rest = split(Toy())
  tx = optax.sgd(LR, momentum=MOMENTUM)
  assert set(placement.host_state(params, frozen, rest, tx)) == {"params", "frozen", "opt_state", "rest", "step"}
  # Everything trains: no "frozen" key, so a run without a trainable pattern keeps the layout it always had.
  assert set(placement.host_state(params, None, rest, tx)) == {"params", "opt_state", "rest", "step"}
  mesh_state = placement.MeshPlacement(parallel.make_mesh(), fsdp=False).init(params, frozen, rest, tx)
  host = placement.host_state(params, frozen, rest, tx)
  assert jax.tree.structure(mesh_state) == jax.tree.structure(host)
  assert mesh_state["step"].dtype == jnp.int32 and int(mesh_state["step"]) == 0


def test_create_and_describe():
  mesh = parallel.make_mesh()
  jit = placement.create("jit", mesh, fsdp=False)
  assert isinstance(jit, placement.MeshPlacement) and jit.axis_name is None
  assert jit.describe() == f"jit, mesh data {jax.device_count()} × fsdp 1 × tensor 1"
  pmap = placement.create("pmap", mesh, fsdp=False)
  assert isinstance(pmap, placement.PmapPlacement) and pmap.axis_name == "batch" and pmap.describe() == "pmap"


SCRIPT = """
import json, sys
import jax, numpy as np, optax
sys.path.insert(0, "tests")
import test_placement as t
from llmcpu.training import parallel, placement

batch = t.data(8)
out = {"want": t.reference(batch).tolist()}
mesh = parallel.make_mesh(fsdp=2, tensor=2)
place = placement.create("jit", mesh, fsdp=True)
graphdef, params, frozen, rest = t.split(t.Toy())
state = place.init(params, frozen, rest, optax.sgd(t.LR, momentum=t.MOMENTUM))
out["kernel_spec"] = list(state["params"]["kernel"].sharding.spec)
out["trace_spec"] = list(state["opt_state"][0].trace["kernel"].sharding.spec)
out["offset_spec"] = list(state["frozen"]["offset"].sharding.spec)
out["step_spec"] = list(state["step"].sharding.spec)
out["batch_spec"] = list(place.batch(batch)["x"].sharding.spec)
out["jit"] = np.asarray(t.train(place, batch)["params"]["kernel"][...]).tolist()
out["pmap"] = np.asarray(t.train(placement.create("pmap", mesh, fsdp=False), batch)["params"]["kernel"][...]).tolist()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def four_devices():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=ROOT)
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mesh_lays_parameters_and_moments_out_by_logical_axes(four_devices):
  # fsdp 2 × tensor 2: embed → fsdp, mlp → tensor; the momentum lives where its parameter lives; the counter and
  # the batch rows (data × fsdp) as the rules say.
  assert four_devices["kernel_spec"] == ["fsdp", "tensor"]
  assert four_devices["trace_spec"] == ["fsdp", "tensor"]
  assert four_devices["offset_spec"] == ["tensor"]
  assert four_devices["step_spec"] == []
  assert four_devices["batch_spec"] == [["data", "fsdp"], None]


def test_jit_and_pmap_over_4_devices_give_the_numpy_update(four_devices):
  for how in ("jit", "pmap"):
    np.testing.assert_allclose(np.array(four_devices[how]), np.array(four_devices["want"]), rtol=1e-5, atol=1e-6)
