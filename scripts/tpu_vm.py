"""Run an experiment on a Cloud TPU VM or pod slice (TPU Research Cloud): create → copy the checkout → install →
run on every worker (output streams here) → fetch the report → delete.

  gcloud auth login && gcloud config set project PROJECT   # once; TRC grants quota in a zone, e.g. us-central2-b
  python scripts/tpu_vm.py --name=llmcpu-v4 --zone=us-central2-b --accelerator_type=v4-32 \
      --workdir=gs://BUCKET/llmcpu/runs/llmcpu-v4 --override=data_dir=gs://BUCKET/tfds [--override=steps=20000] \
      [--spot] [--dry_run]

The VM gets the git-tracked files at HEAD (commit first, or --allow_dirty). --dry_run prints the commands and runs
nothing. After a failure the VM is deleted (unless it may hold the only copy of the results); --nodelete keeps it,
and --reuse runs on a VM that exists: the experiment continues where it stopped.

lm1b has to be prepared where there is network, once, into the bucket:

  python -c "import tensorflow_datasets as tfds; tfds.builder('lm1b', data_dir='gs://BUCKET/tfds').download_and_prepare()"

then pass --override=data_dir=gs://BUCKET/tfds (the experiment config's data_dir).

A gs:// --workdir is shared by every worker: process 0 compiles the corpora into it while the others wait for each
compiled item to be committed, checkpoints and reports are written there, and `fetch` copies the report back. A
path on the workers works too (each worker keeps its own copy; the report is fetched from worker 0).
"""

import dataclasses
import os
import shlex
import shutil
import subprocess
import tempfile

from absl import app, flags

from llmcpu.errors import UserError
from llmcpu.ops import cli, launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_NAME = flags.DEFINE_string("name", None, "TPU VM name (lowercase letters, digits, hyphens), e.g. llmcpu-v4.")
_ZONE = flags.DEFINE_string("zone", None, "Zone with TPU quota, e.g. us-central2-b (v4) or europe-west4-a (v5e).")
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Experiment workdir: gs://BUCKET/llmcpu/runs/NAME (shared by every worker), or a path on each worker "
  "(relative = under ~/llmcpu; the report is fetched from worker 0).",
)
_ACCELERATOR = flags.DEFINE_string("accelerator_type", "v4-8", "TPU type: v4-8, v4-32, v5litepod-8, v6e-8, ...")
_RUNTIME = flags.DEFINE_string(
  "runtime",
  "",
  f"TPU software version ('' = the JAX one of the accelerator's generation: {launch.DEFAULT_RUNTIME} for v4 and "
  "older, v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e).",
)
_PROJECT = flags.DEFINE_string("project", "", "Google Cloud project ('' = gcloud's configured project).")
_SPOT = flags.DEFINE_bool("spot", False, "Create a spot VM (cheaper or more available; may be preempted).")
_REUSE = flags.DEFINE_bool("reuse", False, "The VM exists already: skip creating it.")
_DELETE = flags.DEFINE_bool(
  "delete",
  True,
  "Delete the VM at the end, also after a failed copy, install or run (not when it may hold the only copy of the "
  "results: a failed fetch, or a failed run with a workdir on the VM); --nodelete keeps it.",
)
_CONFIG = flags.DEFINE_string("config", "configs/experiments/tpu.py", "Experiment config, relative to the checkout.")
_OVERRIDE = flags.DEFINE_multi_string(
  "override",
  [],
  "Experiment config override key=value, passed on as --config.key=value; repeatable, or comma-separated "
  "(compilers=bpe:8000,byte,steps=100 is two).",
)
_FETCH_TO = flags.DEFINE_string("fetch_to", "", "Local directory the report is copied into ('' = runs/<name>-report).")
_PYTHON = flags.DEFINE_string("python", "python3.11", "Python on the workers (installed with apt if missing).")
_ALLOW_DIRTY = flags.DEFINE_bool("allow_dirty", False, "Copy uncommitted changes of tracked files too.")
_DRY_RUN = flags.DEFINE_bool(
  "dry_run",
  False,
  "Print the commands, one per line, and run nothing (with "
  "--allow_dirty a real run archives a snapshot of the working tree, not HEAD).",
)
_REPO = flags.DEFINE_string("repo", ROOT, "The git checkout the VM gets (its tracked files).")
flags.mark_flags_as_required(["name", "zone", "workdir"])


def _git(repo: str, *args: str) -> str:
  try:
    out = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=False)
  except FileNotFoundError as e:
    raise UserError("git not found; the VM gets the checkout's tracked files, which needs git") from e
  if out.returncode != 0:
    detail = (out.stderr.strip().splitlines() or ["?"])[-1]
    raise UserError(f"git failed in {repo}: {detail}")
  return out.stdout


def _source_tree(repo: str, config: str) -> str:
  """HEAD, or with --allow_dirty a snapshot commit of the tracked files as they are (``git stash create``: no ref,
  the working tree and index untouched)."""
  try:
    _git(repo, "ls-files", "--error-unmatch", config)
  except UserError as e:
    raise UserError(f"--config={config} is not tracked by git, so the VM would not get it; git add it") from e
  changed = _git(repo, "status", "--porcelain", "--untracked-files=no").splitlines()
  if not changed:
    return "HEAD"
  if not _ALLOW_DIRTY.value:
    files = ", ".join(line[3:] for line in changed[:3]) + (", ..." if len(changed) > 3 else "")
    raise UserError(f"uncommitted changes ({files}); commit them (the VM gets HEAD) or pass --allow_dirty")
  ident = ["-c", "user.name=llmcpu", "-c", "user.email=llmcpu@localhost"]  # the snapshot needs an author
  return _git(repo, *ident, "stash", "create").strip() or "HEAD"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value.split(":")[0]  # config_flags' path[:argument]
  repo = os.path.abspath(_REPO.value)
  if config and not os.path.isfile(os.path.join(repo, config)):
    raise UserError(f"--config={_CONFIG.value}: no such file in {repo}; e.g. configs/experiments/tpu.py")
  try:
    with open(os.path.join(repo, "requirements.txt")) as f:
      jax_version = launch.jax_pin(f.read())
  except OSError as e:
    raise UserError(f"cannot read {repo}/requirements.txt ({e.strerror}); --repo must be an llmcpu checkout") from e
  options = launch.TpuLaunch(
    name=_NAME.value,
    zone=_ZONE.value,
    workdir=_WORKDIR.value,
    tarball=os.path.join(tempfile.gettempdir(), f"llmcpu-{_NAME.value}.tar.gz"),
    repo=repo,
    jax_version=jax_version,
    config=_CONFIG.value,
    accelerator_type=_ACCELERATOR.value,
    runtime=_RUNTIME.value,
    project=_PROJECT.value,
    spot=_SPOT.value,
    reuse=_REUSE.value,
    delete=_DELETE.value,
    overrides=tuple(_OVERRIDE.value),
    fetch_to=_FETCH_TO.value,
    python=_PYTHON.value,
  )
  steps = launch.plan(options)
  if cli.CHECK.value:
    return cli.check([cli.read("file", os.path.join(repo, config)), cli.write("dir", _WORKDIR.value)])
  if _DRY_RUN.value:
    for step in steps:
      print(shlex.join(step.argv))
    return
  if not shutil.which("gcloud"):
    raise UserError("gcloud not found; install the Google Cloud CLI (cloud.google.com/sdk/docs/install)")
  tree = _source_tree(repo, config)
  if tree != "HEAD":
    cli.log(f"copying the working tree's tracked files (snapshot {tree[:12]})")
  options = dataclasses.replace(options, tree=tree)
  try:
    launch.execute(launch.plan(options), launch.keeps_vm(options), log=cli.log)
  finally:
    if os.path.exists(options.tarball):
      os.remove(options.tarball)
  fetched = os.path.join(launch.fetch_dir(options), os.path.basename(launch.report_dir(options)))
  cli.log(f"\nReport: {fetched} (summary.md per corpus)")


if __name__ == "__main__":
  cli.run_script(main)
