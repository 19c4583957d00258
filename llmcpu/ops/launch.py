"""Planning an experiment on a Cloud TPU VM (or pod slice): the commands scripts/tpu_vm.py runs, built without
running anything, and the loop that runs them.

``plan`` turns a ``TpuLaunch`` into ``Step``s, each one argv (``gcloud …``, or a local ``git``/``mkdir``):

  archive   git archive of the checkout (the tracked files at HEAD, or a ``git stash create`` snapshot)
  create    gcloud compute tpus tpu-vm create (skipped with ``reuse``)
  copy      scp the tarball to every worker, unpack it
  install   a Python 3.11 virtual environment: requirements.txt plus jax[tpu] at requirements.txt's jax pin
  run       scripts/experiment.py --distributed on every worker at once (its output streams back over ssh)
  fetch     the report: ``gcloud storage cp`` from a gs:// workdir, else scp from worker 0
  delete    gcloud compute tpus tpu-vm delete (with ``delete``); ``execute`` runs it even after a failure, unless
            the VM is not known to be ours or may hold the only copy of the results (see ``keeps_vm``)
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from llmcpu.errors import UserError

REMOTE_DIR = "~/llmcpu"
REMOTE_TARBALL = "~/llmcpu.tar.gz"
LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"

_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_JAX_PIN = re.compile(r"\s*jax\s*==\s*([^\s;#]+)")
# TPU software versions for JAX (cloud.google.com/tpu/docs/runtimes): one per generation; v4 and older share one.
_RUNTIMES = (("v6e", "v2-alpha-tpuv6e"), ("v5p", "v2-alpha-tpuv5"), ("v5litepod", "v2-alpha-tpuv5-lite"))
DEFAULT_RUNTIME = "tpu-ubuntu2204-base"


class Step(NamedTuple):
  stage: str  # archive, create, copy, install, run, fetch, delete
  argv: list[str]


@dataclasses.dataclass(frozen=True)
class TpuLaunch:
  name: str
  zone: str
  workdir: str  # gs://BUCKET/... (shared by every worker), or a path on each worker (relative: under ~/llmcpu)
  tarball: str  # local path the git archive is written to
  repo: str  # local checkout (git -C)
  jax_version: str  # requirements.txt's jax pin
  config: str = "configs/experiments/tpu.py"  # relative to the checkout
  accelerator_type: str = "v4-8"
  runtime: str = ""  # '' = the JAX runtime of the accelerator's generation
  project: str = ""
  spot: bool = False
  reuse: bool = False
  delete: bool = True
  overrides: tuple[str, ...] = ()  # key=value of the experiment config (comma lists allowed, see parse_overrides)
  fetch_to: str = ""  # '' = runs/<name>-report
  python: str = "python3.11"
  tree: str = "HEAD"  # what git archive packs


def jax_pin(requirements: str) -> str:
  """The version in requirements.txt's ``jax==X`` line (not jaxlib's)."""
  for line in requirements.splitlines():
    m = _JAX_PIN.match(line)
    if m:
      return m.group(1)
  raise UserError("requirements.txt has no jax==VERSION line; pin jax there so the TPU VM installs the same jax")


def default_runtime(accelerator_type: str) -> str:
  for prefix, runtime in _RUNTIMES:
    if accelerator_type.startswith(prefix):
      return runtime
  return DEFAULT_RUNTIME


def parse_overrides(values: Sequence[str]) -> list[tuple[str, str]]:
  """``key=value`` experiment-config overrides; one value may hold several, comma-separated.

  A comma starts a new override only where ``key=`` follows it, so ``compilers=bpe:1000,char,steps=500`` is two
  overrides (compilers = "bpe:1000,char", steps = "500"). A leading ``config.`` is optional.
  """
  items: list[list[str]] = []
  for value in values:
    first = True
    for piece in value.split(","):
      key, eq, rest = piece.partition("=")
      key = key.strip().removeprefix("config.")
      if eq and _KEY.fullmatch(key):
        items.append([key, rest])
      elif not first:
        items[-1][1] += "," + piece
      else:
        raise UserError(f"--override={value} is not key=value, e.g. --override=steps=1000 (a key of the config)")
      first = False
  return [(k, v) for k, v in items]


def is_bucket(path: str) -> bool:
  return path.startswith("gs://")


def check(launch: TpuLaunch) -> None:
  """One-line errors for options gcloud would reject only after minutes (or that lose the results)."""
  if not launch.name:
    raise UserError("--name is empty; name the TPU VM, e.g. --name=llmcpu-v4")
  if not _NAME.fullmatch(launch.name):
    raise UserError(
      f"--name={launch.name} is not a TPU name: lowercase letters, digits and hyphens, starting with a letter, "
      "at most 63 characters"
    )
  for flag, value in (("zone", launch.zone), ("accelerator_type", launch.accelerator_type), ("config", launch.config)):
    if not value.strip():
      raise UserError(f"--{flag} is empty; see --help")
  if not launch.workdir.strip():
    raise UserError("--workdir is empty; give a bucket path every worker can write, e.g. gs://BUCKET/llmcpu/runs/NAME")
  if launch.workdir == "gs://" or launch.workdir.startswith("gs:///"):
    raise UserError(f"--workdir={launch.workdir} names no bucket; e.g. gs://BUCKET/llmcpu/runs/{launch.name}")
  if launch.config.startswith(("/", "~")):
    raise UserError(f"--config={launch.config} must be a path inside the checkout, e.g. configs/experiments/tpu.py")


def report_dir(launch: TpuLaunch) -> str:
  """The report directory the experiment writes under its workdir (the ``report`` override, default 'report')."""
  name = "report"
  for key, value in parse_overrides(launch.overrides):
    if key == "report":
      name = value or "report"
  return f"{launch.workdir.rstrip('/')}/{name}"


def fetch_dir(launch: TpuLaunch) -> str:
  return launch.fetch_to or f"runs/{launch.name}-report"


def _remote_path(path: str) -> str:
  """A worker path as scp reads it (relative to the home directory); the experiment ran in ~/llmcpu."""
  if path.startswith("/"):
    return path
  if path == "~" or path.startswith("~/"):
    return path[2:] or "."
  return f"llmcpu/{path}"


def experiment_command(launch: TpuLaunch) -> str:
  args = [".venv/bin/python", "scripts/experiment.py", f"--config={launch.config}", f"--workdir={launch.workdir}"]
  args.append("--distributed")
  args += [f"--config.{key}={value}" for key, value in parse_overrides(launch.overrides)]
  return f"cd {REMOTE_DIR} && {shlex.join(args)}"


def install_command(launch: TpuLaunch) -> str:
  py = launch.python
  # TPU runtimes are Ubuntu 22.04 (python3.10); the pins need 3.11, which Ubuntu ships as python3.11(-venv).
  apt = (
    "sudo apt-get -qq -o DPkg::Lock::Timeout=600 update && sudo DEBIAN_FRONTEND=noninteractive apt-get -qq -y "
    f"-o DPkg::Lock::Timeout=600 install {py} {py}-venv"
  )
  pip = shlex.join([".venv/bin/pip", "install", "-q", "-r", "requirements.txt", f"jax[tpu]=={launch.jax_version}"])
  return (
    f"({py} -c 'import ensurepip' 2>/dev/null || ({apt})) && cd {REMOTE_DIR} && {py} -m venv .venv && "
    f".venv/bin/pip install -q -U pip && {pip} -f {LIBTPU_RELEASES}"
  )


def plan(launch: TpuLaunch) -> list[Step]:
  """Every command of the launch, in order; runs nothing."""
  check(launch)
  project = [f"--project={launch.project}"] if launch.project else []
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = [f"--zone={launch.zone}", *project]
  every = ["--worker=all", *where]

  def ssh(command: str) -> list[str]:
    return [*tpu, "ssh", launch.name, *every, f"--command={command}"]

  archive = ["git", "-C", launch.repo, "archive", "--format=tar.gz", f"--output={launch.tarball}", launch.tree]
  steps = [Step("archive", archive)]
  if not launch.reuse:
    create = [*tpu, "create", launch.name, f"--zone={launch.zone}", f"--accelerator-type={launch.accelerator_type}"]
    create += [f"--version={launch.runtime or default_runtime(launch.accelerator_type)}"]
    create += ["--spot"] if launch.spot else []
    steps.append(Step("create", create + project))
  steps.append(Step("copy", [*tpu, "scp", launch.tarball, f"{launch.name}:{REMOTE_TARBALL}", *every]))
  steps.append(Step("copy", ssh(f"mkdir -p {REMOTE_DIR} && tar xzf {REMOTE_TARBALL} -C {REMOTE_DIR}")))
  steps.append(Step("install", ssh(install_command(launch))))
  steps.append(Step("run", ssh(experiment_command(launch))))
  fetch_to = fetch_dir(launch)
  steps.append(Step("fetch", ["mkdir", "-p", fetch_to]))
  report = report_dir(launch)
  if is_bucket(launch.workdir):
    steps.append(Step("fetch", ["gcloud", "storage", "cp", "-r", report, fetch_to, *project]))
  else:
    remote = f"{launch.name}:{_remote_path(report)}"
    steps.append(Step("fetch", [*tpu, "scp", "--recurse", remote, fetch_to, "--worker=0", *where]))
  if launch.delete:
    steps.append(Step("delete", [*tpu, "delete", launch.name, *where, "--quiet"]))
  return steps


_HINTS = {
  "archive": "is this a git checkout?",
  "create": "check the zone, the accelerator type and your TRC quota; --reuse if the VM already exists",
  "copy": "can gcloud ssh to the VM? (gcloud compute tpus tpu-vm ssh NAME --zone=ZONE)",
  "install": "see the pip output above",
  "run": "see the experiment's output above; rerun (--reuse if the VM is kept) to continue where it stopped",
  "fetch": "fetch the report by hand",
}


def keeps_vm(launch: TpuLaunch) -> tuple[str, ...]:
  """Stages whose failure leaves the VM standing despite ``delete``: before the VM is ours (a failed create may
  mean the name is someone's running VM), and where it may hold the only copy of the results."""
  return ("archive", "create", "fetch") + (() if is_bucket(launch.workdir) else ("run",))


def execute(
  steps: Sequence[Step],
  keep_after: Sequence[str] = ("archive", "create", "fetch"),
  call: Callable[[list[str]], int] = subprocess.call,
  log: Callable[[str], None] = print,
) -> None:
  """Runs the steps in order, their output streaming; a failure is a UserError naming the stage.

  The delete steps run at the end even after a failure (or Ctrl-C), unless the failed stage is in ``keep_after``:
  then the delete command is printed instead. A failed delete is an error too.
  """
  body = [s for s in steps if s.stage != "delete"]
  cleanup = [s for s in steps if s.stage == "delete"]
  failed = None
  undeleted = None
  try:
    for step in body:
      failed = step.stage
      log(f"$ {shlex.join(step.argv)}")
      try:
        status = call(step.argv)
      except FileNotFoundError as e:
        raise UserError(f"{step.argv[0]} not found; install it (gcloud: cloud.google.com/sdk/docs/install)") from e
      if status != 0:
        raise UserError(f"{step.stage} step failed (exit status {status}): {_HINTS[step.stage]}")
    failed = None
  finally:
    for step in cleanup:
      if failed in keep_after:
        print(f"kept the TPU VM (the {failed} step failed); to delete it: {shlex.join(step.argv)}", file=sys.stderr)
        continue
      log(f"$ {shlex.join(step.argv)}")
      try:
        status = call(step.argv)
      except FileNotFoundError:
        status = 127
      if status != 0:
        undeleted = f"deleting the TPU VM failed (exit status {status}); delete it by hand: {shlex.join(step.argv)}"
        if failed is not None:  # the step's own error follows
          print(f"error: {undeleted}", file=sys.stderr, flush=True)
  if undeleted:
    raise UserError(undeleted)
