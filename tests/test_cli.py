"""What every script shares (``llmcpu.ops.cli``): a failure is one ``error:`` line on stderr with its exit status,
and ``workdir_path`` gives an absolute, writable directory or says why not. (Bucket workdirs and a preempted run's
exit 0: tests/test_experiment.py.)"""

import errno
import os
import subprocess
import sys
import textwrap

import pytest
from absl import logging

from llmcpu.errors import UserError
from llmcpu.ops import cli


@pytest.fixture
def wrapped(monkeypatch):
  """``cli.user_errors(main)``, with the process-wide hooks it installs put back after the test."""
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
  verbosity, handler = logging.get_verbosity(), logging.get_absl_handler()
  filters = list(handler.filters)
  yield cli.user_errors
  logging.set_verbosity(verbosity)
  handler.filters[:] = filters


def fails(wrapped, capsys, error: BaseException) -> tuple[int, str]:
  """(exit status, stderr) of a main that raises ``error``."""

  def main(argv):
    raise error

  with pytest.raises(SystemExit) as e:
    wrapped(main)([])
  return e.value.code, capsys.readouterr().err


def test_user_error_is_one_line_and_status_1(wrapped, capsys):
  assert fails(wrapped, capsys, UserError("no such corpus 'x'; pass --config.corpus")) == (
    1,
    "error: no such corpus 'x'; pass --config.corpus\n",
  )


def test_disk_full_and_interrupt_and_bad_config_file(wrapped, capsys):
  full = OSError(errno.ENOSPC, "No space left on device", "/runs/a/metrics.jsonl")
  status, err = fails(wrapped, capsys, full)
  assert status == 1 and err == (
    "error: disk full writing /runs/a/metrics.jsonl; free space and rerun the same command (finished work is kept)\n"
  )
  status, err = fails(wrapped, capsys, KeyboardInterrupt())
  assert status == 130 and err.startswith("error: interrupted;") and err.count("\n") == 1
  status, err = fails(wrapped, capsys, OSError("Failed loading config file configs/nope.py\nNo such file: nope.py"))
  assert (status, err) == (1, "error: cannot load the --config file (No such file: nope.py); check its path\n")


def test_other_errors_and_return_values_pass_through(wrapped):
  def broken(argv):
    raise OSError(errno.EACCES, "Permission denied")

  with pytest.raises(PermissionError):  # a bug or a real I/O failure keeps its traceback
    wrapped(broken)([])
  assert wrapped(lambda argv: ("ran", argv))(["x"]) == ("ran", ["x"])


SCRIPT = """
from absl import flags
from llmcpu.errors import UserError
from llmcpu.ops import cli

_CONFIG = cli.define_config(CONFIG_PATH, "a config")


def main(argv):
  if _CONFIG.value.steps < 0:
    raise UserError(f"train.steps={_CONFIG.value.steps} is negative; pass a count of steps")
  print("steps", _CONFIG.value.steps)


if __name__ == "__main__":
  cli.run_script(main)
"""


def run_script(tmp_path, *args: str) -> subprocess.CompletedProcess:
  (tmp_path / "cfg.py").write_text(
    "import ml_collections\n\ndef get_config():\n  return ml_collections.ConfigDict({'steps': 3})\n"
  )
  (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT).replace("CONFIG_PATH", repr(str(tmp_path / "cfg.py"))))
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  return subprocess.run(
    [sys.executable, str(tmp_path / "script.py"), *args], capture_output=True, text=True, env=env, timeout=120
  )


def test_a_script_exits_0_1_or_2_with_one_line(tmp_path):
  ok = run_script(tmp_path, "--config.steps=5")
  assert (ok.returncode, ok.stdout, ok.stderr) == (0, "steps 5\n", "")
  bad = run_script(tmp_path, "--config.steps=-1")
  assert (bad.returncode, bad.stderr) == (1, "error: train.steps=-1 is negative; pass a count of steps\n")
  typo = run_script(tmp_path, "--config.stpes=5")
  assert typo.returncode == 2 and typo.stderr.count("\n") == 1 and typo.stderr.startswith("error: ")
  assert "stpes" in typo.stderr and "Traceback" not in typo.stderr
  unknown = run_script(tmp_path, "--nope")
  assert unknown.returncode == 2 and unknown.stderr.startswith("error: ") and unknown.stderr.count("\n") == 1


def test_workdir_path_is_absolute_created_and_expanded(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.workdir_path("runs/a") == str(tmp_path / "runs" / "a") and (tmp_path / "runs" / "a").is_dir()
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cli.workdir_path("~/b") == str(tmp_path / "home" / "b") and (tmp_path / "home" / "b").is_dir()


def test_workdir_path_refuses_with_one_line(tmp_path, monkeypatch):
  with pytest.raises(UserError, match=r"^--workdir is required, e.g. --workdir=runs/quickstart$"):
    cli.workdir_path("")
  (tmp_path / "file").write_text("in the way")
  with pytest.raises(UserError, match=r"^cannot create workdir .*/file/run \(Not a directory\); choose a writable"):
    cli.workdir_path(str(tmp_path / "file" / "run"))
  monkeypatch.setattr(cli.os, "access", lambda path, mode: False)  # root writes anywhere: the refusal, simulated
  with pytest.raises(UserError, match=r"^workdir .*/ro is not writable; choose a writable --workdir$"):
    cli.workdir_path(str(tmp_path / "ro"))
