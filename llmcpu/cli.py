"""Shared plumbing for the absl entry points in scripts/."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from llmcpu.errors import UserError

# TensorFlow is only a data library here: keep its C++ logging quiet (must be set before it is imported).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def user_errors(main: Callable) -> Callable:
  """Wraps an absl ``main``: a UserError becomes one ``error:`` line on stderr and exit status 1."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)

  return wrapped


def workdir_path(path: str) -> str:
  """Absolute, user-expanded workdir (orbax rejects relative paths); checks it can be written."""
  if not path:
    raise UserError("--workdir is required, e.g. --workdir=runs/quickstart")
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create workdir {path} ({e.strerror}); choose a writable --workdir") from e
  if not os.access(path, os.W_OK):
    raise UserError(f"workdir {path} is not writable; choose a writable --workdir")
  return path


def log(message: str) -> None:
  print(message, flush=True)
