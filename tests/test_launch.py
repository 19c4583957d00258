"""scripts/tpu_vm.py: the gcloud commands it plans (checked against commands written out here), its dry run, its bad
input errors, and a whole launch against a fake ``gcloud`` on a throwaway git checkout (no cloud, no network)."""

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile

import pytest

from llmcpu.errors import UserError
from llmcpu.ops import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "tpu_vm.py")
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
LIBTPU = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
UNPACK = "--command=mkdir -p ~/llmcpu && tar xzf ~/llmcpu.tar.gz -C ~/llmcpu"


def requirements_jax(repo: str = ROOT) -> str:
  (pin,) = re.findall(r"^jax==(\S+)$", open(os.path.join(repo, "requirements.txt")).read(), re.M)
  return pin


def install(pin: str) -> str:
  return (
    "--command=(python3.11 -c 'import ensurepip' 2>/dev/null || (sudo apt-get -qq -o DPkg::Lock::Timeout=600 update "
    "&& sudo DEBIAN_FRONTEND=noninteractive apt-get -qq -y -o DPkg::Lock::Timeout=600 install python3.11 "
    "python3.11-venv)) && cd ~/llmcpu && python3.11 -m venv .venv && .venv/bin/pip install -q -U pip && "
    f".venv/bin/pip install -q -r requirements.txt 'jax[tpu]=={pin}' -f {LIBTPU}"
  )


def v4_32_commands(tarball: str, repo: str, pin: str, fetch_to: str = "runs/exp1-report") -> list[list[str]]:
  """The launch of test_dry_run_v4_32, written out."""
  ssh = [*TPU, "ssh", "exp1", "--worker=all", "--zone=us-central2-b"]
  run = (
    "--command=cd ~/llmcpu && .venv/bin/python scripts/experiment.py --config=configs/experiments/tpu.py "
    "--workdir=gs://bkt/llmcpu/runs/exp1 --distributed --config.data_dir=gs://bkt/tfds --config.steps=20000 "
    "--config.compilers=bpe:8000,byte"
  )
  return [
    ["git", "-C", repo, "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"],
    [*TPU, "create", "exp1", "--zone=us-central2-b", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
    + ["--spot"],
    [*TPU, "scp", tarball, "exp1:~/llmcpu.tar.gz", "--worker=all", "--zone=us-central2-b"],
    [*ssh, UNPACK],
    [*ssh, install(pin)],
    [*ssh, run],
    ["mkdir", "-p", fetch_to],
    ["gcloud", "storage", "cp", "-r", "gs://bkt/llmcpu/runs/exp1/report", fetch_to],
    [*TPU, "delete", "exp1", "--zone=us-central2-b", "--quiet"],
  ]


V4_32_FLAGS = [
  "--name=exp1",
  "--zone=us-central2-b",
  "--accelerator_type=v4-32",
  "--workdir=gs://bkt/llmcpu/runs/exp1",
  "--override=data_dir=gs://bkt/tfds",
  "--override=steps=20000,compilers=bpe:8000,byte",
  "--spot",
]


def script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120, env=env)


def error_line(proc: subprocess.CompletedProcess) -> str:
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  return lines[0]


# ------------------------------------------------------------------------------------------------- planning


def test_dry_run_v4_32():
  proc = script("--dry_run", *V4_32_FLAGS)
  assert proc.returncode == 0, proc.stderr
  printed = [shlex.split(line) for line in proc.stdout.splitlines()]
  tarball = os.path.join(tempfile.gettempdir(), "llmcpu-exp1.tar.gz")
  pin = requirements_jax()
  assert printed == v4_32_commands(tarball, ROOT, pin)
  # The properties the launch depends on, spelled out once more.
  assert f"jax[tpu]=={pin}" in printed[4][-1] and f"jax=={pin}" in open(os.path.join(ROOT, "requirements.txt")).read()
  assert all("--worker=all" in cmd for cmd in printed if cmd[:5] in ([*TPU, "scp"], [*TPU, "ssh"]))
  assert "--distributed" in shlex.split(printed[5][-1].removeprefix("--command="))
  assert printed[-1][:5] == [*TPU, "delete"] and sum(cmd[:5] == [*TPU, "delete"] for cmd in printed) == 1


def test_dry_run_nodelete_runs_nothing(tmp_path):
  """Without --delete there is no delete command; and a dry run runs no gcloud, git or mkdir at all."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "git", "mkdir", "tar"):
    (bin_dir / tool).write_text(f"#!/bin/sh\necho {tool} >> {tmp_path}/ran\n")
    (bin_dir / tool).chmod(0o755)
  env = dict(os.environ, PATH=str(bin_dir), TMPDIR=str(tmp_path))
  proc = script("--dry_run", "--nodelete", f"--fetch_to={tmp_path}/got", *V4_32_FLAGS, env=env)
  assert proc.returncode == 0, proc.stderr
  printed = [shlex.split(line) for line in proc.stdout.splitlines()]
  expected = v4_32_commands(str(tmp_path / "llmcpu-exp1.tar.gz"), ROOT, requirements_jax(), f"{tmp_path}/got")
  assert printed == expected[:-1]
  assert not (tmp_path / "ran").exists() and not (tmp_path / "got").exists()


def test_plan_local_workdir_reuse_project_v5e():
  options = launch.TpuLaunch(
    name="cpu5",
    zone="europe-west4-a",
    workdir="runs/cpu5",
    tarball="/t/x.tar.gz",
    repo="/src",
    jax_version="1.2.3",
    accelerator_type="v5litepod-16",
    project="trc-proj",
    reuse=True,
    delete=True,
    overrides=("report=damage_report",),
    fetch_to="out",
    config="configs/experiments/headline.py",
  )
  where = ["--zone=europe-west4-a", "--project=trc-proj"]
  ssh = [*TPU, "ssh", "cpu5", "--worker=all", *where]
  run = (
    "--command=cd ~/llmcpu && .venv/bin/python scripts/experiment.py --config=configs/experiments/headline.py "
    "--workdir=runs/cpu5 --distributed --config.report=damage_report"
  )
  assert [s.argv for s in launch.plan(options)] == [
    ["git", "-C", "/src", "archive", "--format=tar.gz", "--output=/t/x.tar.gz", "HEAD"],
    [*TPU, "scp", "/t/x.tar.gz", "cpu5:~/llmcpu.tar.gz", "--worker=all", *where],
    [*ssh, UNPACK],
    [*ssh, install("1.2.3")],
    [*ssh, run],
    ["mkdir", "-p", "out"],
    [*TPU, "scp", "--recurse", "cpu5:llmcpu/runs/cpu5/damage_report", "out", "--worker=0", *where],
    [*TPU, "delete", "cpu5", *where, "--quiet"],
  ]
  assert [s.stage for s in launch.plan(options)][-1] == "delete"
  create = launch.plan(launch.TpuLaunch(**{**options.__dict__, "reuse": False, "spot": False}))[1].argv
  assert create == [*TPU, "create", "cpu5", "--zone=europe-west4-a", "--accelerator-type=v5litepod-16"] + [
    "--version=v2-alpha-tpuv5-lite",
    "--project=trc-proj",
  ]


@pytest.mark.parametrize(
  "workdir, remote",
  [("/data/w", "n1:/data/w/report"), ("~/w/", "n1:w/report"), ("w", "n1:llmcpu/w/report")],
)
def test_fetch_from_worker_disk(workdir, remote):
  options = launch.TpuLaunch(name="n1", zone="z", workdir=workdir, tarball="t", repo="r", jax_version="1")
  assert launch.plan(options)[-2].argv == [*TPU, "scp", "--recurse", remote, "runs/n1-report", "--worker=0", "--zone=z"]


def test_runtimes():
  assert launch.default_runtime("v4-8") == "tpu-ubuntu2204-base"
  assert launch.default_runtime("v2-8") == "tpu-ubuntu2204-base"
  assert launch.default_runtime("v5litepod-4") == "v2-alpha-tpuv5-lite"
  assert launch.default_runtime("v5p-8") == "v2-alpha-tpuv5"
  assert launch.default_runtime("v6e-8") == "v2-alpha-tpuv6e"


def test_jax_pin():
  text = "# jax==0.0.1 in a comment\njaxlib==9.9\n  jax == 0.4.30  # pinned\nflax==1\n"
  assert launch.jax_pin(text) == "0.4.30"
  with pytest.raises(UserError, match="no jax==VERSION"):
    launch.jax_pin("jaxlib==1\njax>=0.4\n")


def test_overrides():
  assert launch.parse_overrides(["steps=5", "compilers=bpe:1000,char,config.train.learning_rate=1e-3", "x="]) == [
    ("steps", "5"),
    ("compilers", "bpe:1000,char"),
    ("train.learning_rate", "1e-3"),
    ("x", ""),
  ]
  for bad in ("steps", "=5", "a b=1", ",steps=5", "9x=1"):
    with pytest.raises(UserError, match="is not key=value"):
      launch.parse_overrides([bad])


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
  "flags, words",
  [
    (["--zone=z", "--workdir=gs://b/w"], ["--name"]),
    (["--name=a", "--workdir=gs://b/w"], ["--zone"]),
    (["--name=a", "--zone=z"], ["--workdir"]),
    (["--name=a", "--zone=z", "--workdir="], ["--workdir is empty", "gs://"]),
    (["--name=a", "--zone=z", "--workdir=gs://"], ["names no bucket"]),
    (["--name=", "--zone=z", "--workdir=gs://b/w"], ["--name is empty"]),
    (["--name=My_TPU", "--zone=z", "--workdir=gs://b/w"], ["not a TPU name"]),
    (["--name=a", "--zone=", "--workdir=gs://b/w"], ["--zone is empty"]),
    (["--name=a", "--zone=z", "--workdir=gs://b/w", "--override=steps"], ["--override=steps is not key=value"]),
    (["--name=a", "--zone=z", "--workdir=gs://b/w", "--config=configs/nope.py"], ["--config", "no such file"]),
  ],
)
def test_bad_input_is_one_line(flags, words):
  proc = script("--dry_run", *flags)
  assert proc.returncode != 0 and proc.stdout == ""
  line = error_line(proc)
  assert all(w in line for w in words), line


# ------------------------------------------------------------------------------------------------- a whole launch

FAKE_GCLOUD = """\
import json, os, shutil, sys
args = sys.argv[1:]
log = os.environ["FAKE_GCLOUD_LOG"]
with open(log, "a") as f:
  f.write(json.dumps(args) + "\\n")
if args[3:4] == ["scp"] and os.path.isfile(args[4]):
  shutil.copy(args[4], log + ".tar.gz")
fail = os.environ.get("FAKE_GCLOUD_FAIL")
sys.exit(3 if fail and fail in " ".join(args) else 0)
"""


@pytest.fixture
def checkout(tmp_path):
  """A tiny git checkout (pinning jax 9.8.7) and a fake gcloud that logs its arguments."""
  repo = tmp_path / "repo"
  for path, text in {
    "requirements.txt": "jaxlib==9.8.7\njax==9.8.7\n",
    "configs/experiments/tpu.py": "X = 1\n",
    "scripts/experiment.py": "print()\n",
  }.items():
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(text)
  git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
  for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
    subprocess.run(git + args, check=True, capture_output=True)
  (repo / "untracked.txt").write_text("not copied\n")
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(f"#!{sys.executable}\n{FAKE_GCLOUD}")
  (bin_dir / "gcloud").chmod(0o755)
  (tmp_path / "tmp").mkdir()
  env = dict(
    os.environ,
    PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    TMPDIR=str(tmp_path / "tmp"),
    FAKE_GCLOUD_LOG=str(tmp_path / "gcloud.log"),
  )
  return repo, env, tmp_path


def gcloud_calls(tmp_path) -> list[list[str]]:
  log = tmp_path / "gcloud.log"
  return [["gcloud", *json.loads(line)] for line in log.read_text().splitlines()] if log.exists() else []


def copied_files(tmp_path) -> dict[str, bytes]:
  with tarfile.open(tmp_path / "gcloud.log.tar.gz") as tar:
    return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_launch_with_fake_gcloud(checkout):
  repo, env, tmp_path = checkout
  flags = [f"--repo={repo}", f"--fetch_to={tmp_path}/got", *V4_32_FLAGS]
  proc = script(*flags, env=env)
  assert proc.returncode == 0, proc.stderr
  expected = v4_32_commands(str(tmp_path / "tmp" / "llmcpu-exp1.tar.gz"), str(repo), "9.8.7", f"{tmp_path}/got")
  assert gcloud_calls(tmp_path) == [cmd for cmd in expected if cmd[0] == "gcloud"]
  assert copied_files(tmp_path) == {
    "requirements.txt": b"jaxlib==9.8.7\njax==9.8.7\n",
    "configs/experiments/tpu.py": b"X = 1\n",
    "scripts/experiment.py": b"print()\n",
  }
  assert (tmp_path / "got").is_dir() and os.listdir(tmp_path / "tmp") == []  # fetched into; tarball removed
  assert proc.stdout.rstrip().endswith(f"Report: {tmp_path}/got/report (summary.md per corpus)")


def test_dirty_checkout(checkout):
  repo, env, tmp_path = checkout
  (repo / "configs/experiments/tpu.py").write_text("X = 2\n")
  flags = [f"--repo={repo}", *V4_32_FLAGS]
  proc = script(*flags, env=env)
  assert proc.returncode == 1 and "uncommitted changes (configs/experiments/tpu.py)" in error_line(proc)
  assert "--allow_dirty" in error_line(proc) and gcloud_calls(tmp_path) == []
  proc = script("--allow_dirty", "--nodelete", f"--fetch_to={tmp_path}/got", *flags, env=env)
  assert proc.returncode == 0, proc.stderr
  assert copied_files(tmp_path)["configs/experiments/tpu.py"] == b"X = 2\n"
  verbs = [c[4] if c[1] == "compute" else c[1] for c in gcloud_calls(tmp_path)]
  assert verbs == ["create", "scp", "ssh", "ssh", "ssh", "storage"]  # --nodelete: no delete
  status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True).stdout
  stashes = subprocess.run(["git", "-C", str(repo), "stash", "list"], capture_output=True, text=True).stdout
  assert status == " M configs/experiments/tpu.py\n?? untracked.txt\n" and stashes == ""  # left as it was


@pytest.mark.parametrize(
  "fail, workdir, stage, deleted",
  [
    ("tpu-vm create", "gs://b/w", "create", False),  # the name may be someone's running VM: never delete it
    ("pip install", "gs://b/w", "install", True),
    ("scripts/experiment.py", "gs://b/w", "run", True),  # progress is in the bucket
    ("scripts/experiment.py", "runs/w", "run", False),  # progress is only on the VM
    ("storage cp", "gs://b/w", "fetch", False),  # the report may exist only there
  ],
)
def test_failed_step(checkout, fail, workdir, stage, deleted):
  repo, env, tmp_path = checkout
  flags = [f"--repo={repo}", "--name=exp1", "--zone=z", f"--workdir={workdir}", f"--fetch_to={tmp_path}/got"]
  proc = script(*flags, env=dict(env, FAKE_GCLOUD_FAIL=fail))
  assert proc.returncode == 1
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(f"error: {stage} step failed (exit status 3)"), proc.stderr
  calls = gcloud_calls(tmp_path)
  assert fail in " ".join(calls[-1 - deleted])  # nothing ran after the failed step but the delete
  assert (calls[-1] == [*TPU, "delete", "exp1", "--zone=z", "--quiet"]) == deleted
  if not deleted:
    assert "gcloud compute tpus tpu-vm delete exp1 --zone=z --quiet" in proc.stderr  # how to delete it by hand
  assert os.listdir(tmp_path / "tmp") == []


def test_failed_delete_is_an_error():
  calls = []

  def call(argv):
    calls.append(argv)
    return 5 if "delete" in argv else 0

  steps = [launch.Step("run", ["a"]), launch.Step("delete", ["gcloud", "delete"])]
  with pytest.raises(UserError, match="deleting the TPU VM failed .* by hand: gcloud delete"):
    launch.execute(steps, call=call, log=lambda _: None)
  assert calls == [["a"], ["gcloud", "delete"]]
