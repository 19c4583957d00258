"""Shared plumbing for the absl entry points in scripts/."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from absl import app, flags, logging

from llmcpu import fs
from llmcpu.errors import Stopped, UserError

# TensorFlow is only a data library here: keep its C++ logging quiet (must be set before it is imported).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its start-up notice is printed before any log level applies


def user_errors(main: Callable) -> Callable:
  """Wraps an absl ``main``: a UserError becomes one ``error:`` line on stderr and exit status 1; a ``Stopped``
  (preempted after saving) its message and exit status 0, like scripts/train.py."""

  @functools.wraps(main)
  def wrapped(argv):
    if not flags.FLAGS["verbosity"].present:  # TFDS/orbax INFO lines would drown the progress output
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)
    except OSError as e:  # config_flags defers a --config file it could not load to the first read of the config
      if "Failed loading config file" not in str(e):
        raise
      print(f"error: cannot load the --config file ({_last_line(str(e))}); check its path", file=sys.stderr, flush=True)
      sys.exit(1)
    except Stopped as e:
      print(str(e), flush=True)
      sys.exit(0)

  return wrapped


def workdir_path(path: str) -> str:
  """Absolute, user-expanded workdir (orbax rejects relative paths) or a bucket URI (gs://); checks it can be
  written."""
  if not path:
    raise UserError("--workdir is required, e.g. --workdir=runs/quickstart")
  if fs.is_uri(path):
    try:
      fs.makedirs(path)
      fs.write_text(fs.join(path, ".llmcpu-write-check"), "ok")
      fs.remove(fs.join(path, ".llmcpu-write-check"))
    except Exception as e:  # tf.errors.OpError: no bucket, no credentials, no permission
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise UserError(f"cannot write to workdir {path} ({first}); check the bucket name and your credentials") from e
    return path
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


def _last_line(text: str) -> str:
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else text


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag or config override (``--config.nope=1``) is one ``error:`` line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if "Traceback" in message:  # the config file's get_config raised: its last line says why
      message = f"{message.split(': Error whilst', 1)[0]}: {_last_line(message)}"
    print(f"error: {message}; see --helpfull", file=sys.stderr, flush=True)
  except (AttributeError, KeyError, ValueError, TypeError) as e:  # ml_collections' override errors
    detail = str(e).strip("\"'")
    print(f"error: bad --config override ({detail}): no such key or wrong type; see the config file", file=sys.stderr)
  sys.exit(2)


def run(main: Callable) -> None:
  """``app.run`` with one-line errors for bad flags and UserErrors."""
  app.run(user_errors(main), flags_parser=parse_flags)
