"""The `tpu` experiment's training step compiled for real TPUs at its real shapes, on this CPU host.

jax compiles ahead of time for a TPU topology it does not have (``jax.experimental.topologies``) when libtpu is
importable. libtpu is kept out of the project's venv (installed there it would make every process look for a TPU):
``pip install --no-deps --target DIR libtpu==0.0.42.1`` (the version jax 0.10.2's ``[tpu]`` extra pins) and
``LLMCPU_LIBTPU=DIR``; not in .ci/run, where ~4 min of compile per target on 2 cores would double the slow pass.
The child process compiles the per-device step (``configs/experiments/tpu.py``'s
model, attention kernel, remat and dtype; its global batch split over the slice's devices, pure data parallel; the
Pallas kernel compiled by Mosaic) on abstract inputs and reads XLA:TPU's buffer assignment. What it catches: a step
that would not fit a chip's HBM with 20% headroom, the analytic estimate drifting from XLA:TPU's figure, the Pallas
kernel failing to compile at the real shapes. What it cannot: the collectives' buffers across chips (one device is
compiled), runtime fragmentation, and whether the step runs or how fast.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# (topology for jax.experimental.topologies, JAX devices of the slice, HBM kind in memory.ACCELERATORS). v4-32 is
# left out: the same chip as the v4-8 with a quarter of the rows, so it fits if the v4-8 does.
TARGETS = {"v4-8": ("v4:2x2x1", 4, "v4"), "v4-32": ("v4:2x2x4", 16, "v4"), "v5e-8": ("v5e:2x4", 8, "v5e")}


def per_device(topology: str, devices: int) -> dict:
  """Compiled and analytic bytes per device of the tpu experiment's decoder step on ``topology``'s first device."""
  from jax.experimental import topologies
  from test_memory import tpu_config

  from llmcpu.models import flash_tpu
  from llmcpu.training import memory, run_config, trainer

  kwargs = {"chip_config_name": "megacore"} if topology.startswith("v4") else {}  # one JAX device per v4 chip
  device = topologies.get_topology_desc(topology, "tpu", **kwargs).devices[0]
  c = tpu_config()
  run = run_config.base_config("decoder", "base")
  run.train.batch_size = c.train.batch_size // devices
  for key in ("remat", "attention_impl", "dtype"):
    run.model[key] = c.model[key]
  mc = trainer.model_config_for(run, 32000)
  with flash_tpu.compiling_for_tpu():
    compiled = memory.compiled_estimate(run, mc, "lm", trainer.make_steps, device=device)
  analytic = memory.analytic_estimate(mc, run.train.batch_size, run.data.length)
  return {"kind": device.device_kind, "compiled": compiled.total, "analytic": analytic.total}


@pytest.mark.slow  # ~4 minutes per target on the 2-core host
@pytest.mark.parametrize("slice_name", sorted(TARGETS))
def test_tpu_step_compiles_and_fits(slice_name):
  libtpu = os.environ.get("LLMCPU_LIBTPU")
  if not libtpu:
    pytest.skip(
      "set LLMCPU_LIBTPU to a directory with libtpu installed (pip install --no-deps --target DIR libtpu==0.0.42.1)"
    )
  from llmcpu.training import memory

  topology, devices, kind = TARGETS[slice_name]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), libtpu]))
  env |= {"TPU_ACCELERATOR_TYPE": "v4-8", "TPU_WORKER_HOSTNAMES": "localhost"}  # quiet libtpu's host probing
  args = [sys.executable, __file__, topology, str(devices)]
  out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1200, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["kind"].startswith("TPU"), got
  assert got["compiled"] <= 0.8 * memory.ACCELERATORS[kind], (slice_name, got)
  assert abs(got["analytic"] / got["compiled"] - 1) < 0.2, (slice_name, got)
  print(slice_name, got)  # the figures, for the README (pytest -s)


if __name__ == "__main__":  # the child: argv = topology, devices
  print(json.dumps(per_device(sys.argv[1], int(sys.argv[2]))))
