"""llmcpu/training/parallel.py: the (data, fsdp, tensor) mesh and the batch-size checks, on this process' CPU
device(s) and, for real multi-device meshes, in one subprocess with 4 forced host devices
(the device count is fixed when jax starts).
"""

import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import pytest

from llmcpu.errors import UserError
from llmcpu.training import parallel

ROOT = pathlib.Path(__file__).resolve().parent.parent


def fake_mesh(data: int, fsdp: int, tensor: int):
  """check_batch reads only ``mesh.shape``: any data × fsdp × tensor without that many devices."""
  return types.SimpleNamespace(shape={"data": data, "fsdp": fsdp, "tensor": tensor})


# --- make_mesh on this process' devices -------------------------------------------------------------------------------


def test_make_mesh_puts_every_device_on_the_data_axis_by_default():
  devices = jax.devices()
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": len(devices), "fsdp": 1, "tensor": 1}
  assert list(mesh.devices.flat) == devices


@pytest.mark.parametrize("fsdp,tensor", [(0, 1), (1, 0), (-1, -1), (1, -2), ("n+1", 1), (1, "n+1")])
def test_make_mesh_refuses_shapes_that_do_not_divide_the_devices(fsdp, tensor):
  n = len(jax.devices())
  fsdp, tensor = (n + 1 if v == "n+1" else v for v in (fsdp, tensor))  # n + 1 never divides n
  with pytest.raises(UserError, match=rf"^mesh\.fsdp={fsdp} × mesh\.tensor={tensor} does not divide the {n} devices$"):
    parallel.make_mesh(fsdp, tensor)


# --- check_batch ----------------------------------------------------------------------------------------------------

# (data, fsdp, tensor, processes, batch, grad_accum) that fit: rows split evenly over the data × fsdp devices (tensor
# devices share rows), over processes, and into grad_accum micro-batches that each split over data × fsdp.
FITS = [
  (1, 1, 1, 1, 1, 1),
  (1, 1, 1, 1, 7, 7),
  (2, 2, 1, 1, 8, 1),
  (2, 2, 2, 1, 12, 1),  # 8 devices, but only 4 batch-parallel: 12 rows are fine
  (1, 2, 4, 1, 2, 1),
  (2, 2, 1, 2, 8, 2),  # 2 micro-batches of 4 rows, one per device
  (1, 1, 1, 3, 6, 2),
  (4, 1, 1, 2, 32, 8),
]


@pytest.mark.parametrize("data,fsdp,tensor,procs,batch,accum", FITS)
def test_check_batch_accepts_batches_that_split_evenly(monkeypatch, data, fsdp, tensor, procs, batch, accum):
  monkeypatch.setattr(jax, "process_count", lambda: procs)
  parallel.check_batch(batch, fake_mesh(data, fsdp, tensor), accum)


# The same, but each does not fit; the message that explains why (hand-written).
MISFITS = [
  (
    (2, 2, 1, 1, 6, 1),
    "train.batch_size=6 is not divisible by the 4 batch-parallel devices (data × fsdp); pick a multiple of 4",
  ),
  (
    (1, 3, 2, 1, 4, 1),
    "train.batch_size=4 is not divisible by the 3 batch-parallel devices (data × fsdp); pick a multiple of 3",
  ),
  ((1, 1, 1, 3, 4, 1), "train.batch_size=4 is not divisible by the 3 processes; pick a multiple of 3"),
  ((2, 1, 1, 4, 6, 1), "train.batch_size=6 is not divisible by the 4 processes; pick a multiple of 4"),
  # 12 splits over 2 devices and over 4 micro-batches, but a micro-batch of 3 rows does not split over 2 devices.
  (
    (2, 1, 1, 1, 12, 4),
    "train.batch_size=12 must divide into train.grad_accum=4 micro-batches of a multiple of 2 rows",
  ),
  ((1, 1, 1, 1, 8, 3), "train.batch_size=8 must divide into train.grad_accum=3 micro-batches of a multiple of 1 rows"),
  ((1, 1, 1, 1, 8, 0), "train.batch_size=8 must divide into train.grad_accum=0 micro-batches of a multiple of 1 rows"),
  (
    (1, 1, 1, 1, 8, -2),
    "train.batch_size=8 must divide into train.grad_accum=-2 micro-batches of a multiple of 1 rows",
  ),
]


@pytest.mark.parametrize("case,message", MISFITS)
def test_check_batch_refuses_uneven_batches_with_one_line(monkeypatch, case, message):
  data, fsdp, tensor, procs, batch, accum = case
  monkeypatch.setattr(jax, "process_count", lambda: procs)
  with pytest.raises(UserError) as e:
    parallel.check_batch(batch, fake_mesh(data, fsdp, tensor), accum)
  assert str(e.value) == message


def test_check_batch_on_this_process_mesh():
  n = len(jax.devices())
  mesh = parallel.make_mesh()
  parallel.check_batch(4 * n, mesh, 4)
  with pytest.raises(UserError, match="micro-batches"):
    parallel.check_batch(4 * n, mesh, 3)


# --- 4 host devices, in a subprocess ----------------------------------------------------------------------------------

SCRIPT = """
import json
import jax
from llmcpu.training import parallel
from llmcpu.errors import UserError

out = {"devices": [d.id for d in jax.devices()], "meshes": {}, "errors": {}, "batches": {}}
for fsdp, tensor in [(1, 1), (2, 1), (1, 2), (4, 1), (1, 4), (2, 2), (3, 1), (1, 3), (2, 4), (8, 1)]:
  try:
    mesh = parallel.make_mesh(fsdp, tensor)
    out["meshes"][f"{fsdp},{tensor}"] = {
      "axes": list(mesh.axis_names), "shape": list(mesh.devices.shape), "ids": mesh.device_ids.tolist()
    }
  except UserError as e:
    out["errors"][f"{fsdp},{tensor}"] = str(e)
for fsdp, tensor, batch in [(1, 1, 6), (1, 1, 8), (2, 2, 6), (2, 2, 3), (1, 4, 3)]:
  try:
    parallel.check_batch(batch, parallel.make_mesh(fsdp, tensor), 1)
    out["batches"][f"{fsdp},{tensor},{batch}"] = "ok"
  except UserError as e:
    out["batches"][f"{fsdp},{tensor},{batch}"] = str(e)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def four_devices():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_make_mesh_on_4_devices_lays_devices_out_data_major(four_devices):
  assert four_devices["devices"] == [0, 1, 2, 3]
  for key, (data, fsdp, tensor) in {
    "1,1": (4, 1, 1),
    "2,1": (2, 2, 1),
    "1,2": (2, 1, 2),
    "4,1": (1, 4, 1),
    "1,4": (1, 1, 4),
    "2,2": (1, 2, 2),
  }.items():
    mesh = four_devices["meshes"][key]
    assert mesh["axes"] == ["data", "fsdp", "tensor"] and mesh["shape"] == [data, fsdp, tensor], key
    # Row-major: tensor neighbours are consecutive devices, then fsdp, then data.
    ids = [[[(d * fsdp + f) * tensor + t for t in range(tensor)] for f in range(fsdp)] for d in range(data)]
    assert mesh["ids"] == ids, key


def test_make_mesh_on_4_devices_refuses_what_does_not_divide_4(four_devices):
  assert four_devices["errors"] == {
    "3,1": "mesh.fsdp=3 × mesh.tensor=1 does not divide the 4 devices",
    "1,3": "mesh.fsdp=1 × mesh.tensor=3 does not divide the 4 devices",
    "2,4": "mesh.fsdp=2 × mesh.tensor=4 does not divide the 4 devices",
    "8,1": "mesh.fsdp=8 × mesh.tensor=1 does not divide the 4 devices",
  }


def test_check_batch_on_4_devices_counts_data_and_fsdp_not_tensor(four_devices):
  assert four_devices["batches"] == {
    "1,1,6": "train.batch_size=6 is not divisible by the 4 batch-parallel devices (data × fsdp); pick a multiple of 4",
    "1,1,8": "ok",
    "2,2,6": "ok",  # data 1 × fsdp 2: 2 batch-parallel devices
    "2,2,3": "train.batch_size=3 is not divisible by the 2 batch-parallel devices (data × fsdp); pick a multiple of 2",
    "1,4,3": "ok",  # all 4 devices on tensor: every one sees all rows
  }
