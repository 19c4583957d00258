"""What notebooks/llmcpu_colab.ipynb does, as plain functions: find the runtime, install for it, run an experiment
sized for it with its progress streaming into the notebook, and list the report to display.

Standard library only (``llmcpu.fs`` aside, and only for a gs:// report): the notebook imports this module before
the packages are installed, and never imports jax itself (the experiment runs in a subprocess), so the jax wheel
for the runtime can be installed into the running kernel without restarting it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from llmcpu.ops.launch import LIBTPU_RELEASES, jax_pin

RUNTIMES = ("cpu", "gpu", "tpu")
# The experiment each runtime runs when the notebook names none: the quickstart takes ~4 min on 2 host cores (a Colab
# CPU runtime); colab_accel is the same question at the `small` size for one T4 or TPU v2-8.
CONFIGS = {
  "cpu": "configs/experiments/quickstart.py",
  "gpu": "configs/experiments/colab_accel.py",
  "tpu": "configs/experiments/colab_accel.py",
}
# Kept as the notebook's host installed them (see install_command).
KERNEL_PACKAGES = ("ipykernel", "nbclient", "nbformat")
# Environment variables that name a TPU where they are set (COLAB_TPU_ADDR: Colab's older TPU runtimes).
_TPU_ENV = ("TPU_ACCELERATOR_TYPE", "TPU_NAME", "COLAB_TPU_ADDR")
# TPU chips on the PCI bus: Google's vendor id and TPU device ids, as jax/_src/hardware_utils.py lists them (Google's
# vendor id alone also names its network card, gVNIC, on every Compute Engine VM).
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")
# The heatmaps shown inline, in this order (the report draws one per metric; these answer the question).
HEATMAPS = ("bits_per_byte", "normalized_score", "relevance", "fluency", "coherence", "exact_match", "damage_curves")


def detect_runtime(
  environ: Mapping[str, str] | None = None,
  dev: str = "/dev",
  which: Callable[[str], str | None] = shutil.which,
  run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
  pci: str = "/sys/bus/pci/devices",
) -> str:
  """'tpu', 'gpu' or 'cpu', without importing jax (which would pick its backend before the right wheel is in).

  TPU: an environment variable naming one, its chips as /dev/accel* (v2–v4) or /dev/vfio/<n> (v5e and later), or a
  TPU on the PCI bus. GPU: ``nvidia-smi -L`` lists one (the binary alone proves nothing: some CPU images ship it
  without a driver).
  """
  environ = os.environ if environ is None else environ
  if any(environ.get(k) for k in _TPU_ENV) or _tpu_devices(dev) or _tpu_on_pci(pci):
    return "tpu"
  smi = which("nvidia-smi")
  if smi:
    try:
      out = run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
      return "cpu"
    if out.returncode == 0 and "GPU" in out.stdout:
      return "gpu"
  return "cpu"


def _tpu_devices(dev: str) -> bool:
  vfio = os.path.join(dev, "vfio")
  accel = os.path.isdir(dev) and any(re.fullmatch(r"accel\d+", n) for n in os.listdir(dev))
  return accel or (os.path.isdir(vfio) and any(n.isdigit() for n in os.listdir(vfio)))


def _tpu_on_pci(pci: str) -> bool:
  for name in os.listdir(pci) if os.path.isdir(pci) else []:
    try:
      with open(os.path.join(pci, name, "vendor")) as v, open(os.path.join(pci, name, "device")) as d:
        if v.read().strip() == _GOOGLE_PCI_VENDOR and d.read().strip() in _TPU_PCI_DEVICES:
          return True
    except OSError:
      continue
  return False


def check_runtime(runtime: str) -> str:
  """``runtime`` ('auto' detects it) as one of RUNTIMES; anything else is a ValueError naming the choices."""
  runtime = runtime.strip().lower()
  if runtime == "auto":
    return detect_runtime()
  if runtime not in RUNTIMES:
    raise ValueError(f"RUNTIME={runtime!r}; choose auto, {', '.join(RUNTIMES)}")
  return runtime


def install_command(runtime: str, repo: str = ".", python: str = sys.executable) -> list[str]:
  """One pip command: requirements.txt's pins plus the jax wheel of the runtime at its jax pin (one resolver run, so
  pip cannot pick a jaxlib the pins disagree with). Run it in ``repo`` (``-e .`` is relative).

  The notebook's own kernel packages (KERNEL_PACKAGES: pinned there for the tests) are left as the host has them:
  Colab pins its own ipykernel, and replacing it under a running kernel risks the kernel's next start.
  """
  with open(os.path.join(repo, "requirements.txt")) as f:
    text = f.read()
  version = jax_pin(text)
  argv = [python, "-m", "pip", "install", "-q"]
  for line in text.splitlines():
    line = line.split(" #")[0].strip()
    if not line or line.startswith("#"):
      continue
    name = re.match(r"[A-Za-z0-9_.-]*", line).group(0).lower().replace("_", "-")
    if name not in KERNEL_PACKAGES:
      argv += line.split(maxsplit=1) if line.startswith("-") else [line]
  if runtime == "gpu":
    argv.append(f"jax[cuda12]=={version}")
  elif runtime == "tpu":
    argv += [f"jax[tpu]=={version}", "-f", LIBTPU_RELEASES]
  elif runtime != "cpu":
    raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
  return argv


def experiment_command(
  runtime: str, workdir: str, overrides: str | Sequence[str] = (), config: str = "", python: str = sys.executable
) -> list[str]:
  """scripts/experiment.py with the config sized for ``runtime`` (or ``config``) and ``--config.key=value``
  overrides (a string is split like a shell line; a leading ``--config.`` may be left out)."""
  if isinstance(overrides, str):
    overrides = shlex.split(overrides)
  flags = [o if o.startswith("--") else f"--config.{o.removeprefix('config.')}" for o in overrides]
  config = config or CONFIGS[runtime]
  return [python, "scripts/experiment.py", f"--config={config}", f"--workdir={workdir}", *flags]


def stream(
  argv: Sequence[str], cwd: str | None = None, env: Mapping[str, str] | None = None, out: IO[str] | None = None
) -> None:
  """Runs ``argv``, copying its output (stderr included) line by line as it comes; a non-zero exit raises
  CalledProcessError. Interrupting (the notebook's stop button) passes SIGINT on, so a training run saves a
  checkpoint first: running the cell again continues it."""
  out = out or sys.stdout
  env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
  print("$ " + shlex.join(argv), file=out, flush=True)
  proc = subprocess.Popen(
    list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
  )
  try:
    assert proc.stdout is not None
    for line in proc.stdout:
      out.write(line)
      out.flush()
    status = proc.wait()
  except KeyboardInterrupt:
    proc.send_signal(signal.SIGINT)
    proc.wait()
    raise
  if status != 0:
    raise subprocess.CalledProcessError(status, list(argv))


def report_files(workdir: str, report: str = "report") -> list[tuple[str, str, list[str]]]:
  """(corpus, summary.md, heatmaps in HEATMAPS order) per finished report under ``workdir``, local or gs://."""
  from llmcpu import fs

  root = fs.join(fs.abspath(workdir), report)
  found = []
  for corpus in fs.listdir(root):  # none yet: []
    summary = fs.join(root, corpus, "summary.md")
    if not fs.exists(fs.join(root, corpus, "results.jsonl")) or not fs.exists(summary):
      continue  # not a report directory, or one cut short (results.jsonl is written last)
    pngs = [fs.join(root, corpus, "heatmaps", f"{name}.png") for name in HEATMAPS]
    found.append((corpus, summary, [p for p in pngs if fs.exists(p)]))
  return found


def mount_storage(workdir: str) -> None:
  """In Colab: mount Google Drive for a /content/drive workdir, sign in for a gs:// one; elsewhere nothing (a
  Jupyter server or TPU VM has its own credentials)."""
  try:
    import google.colab  # noqa: F401  (only in Colab)
  except ImportError:
    return
  if workdir.startswith("/content/drive"):
    from google.colab import drive

    drive.mount("/content/drive")
  elif workdir.startswith("gs://"):
    from google.colab import auth

    auth.authenticate_user()
