"""Shared plumbing for the absl entry points in scripts/."""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from llmcpu import fs
from llmcpu.errors import Stopped, UserError
from llmcpu.ops import host_malloc

# TensorFlow is only a data library here: keep its C++ logging quiet (must be set before it is imported).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its start-up notice is printed before any log level applies


CHECK = flags.DEFINE_bool(
  "check",
  False,
  "Check the command and run nothing: load the config with its overrides, resolve the paths it would read and "
  "write, print one line each (mode, kind, path, detail, whether it is there) and exit 0.",
)


def user_errors(main: Callable) -> Callable:
  """Wraps an absl ``main``: a UserError (or a full disk) becomes one ``error:`` line on stderr and exit status 1;
  Ctrl-C outside training one line and 130; a ``Stopped`` (preempted after saving) its message and exit status 0,
  like scripts/train.py."""

  @functools.wraps(main)
  def wrapped(argv):
    if not flags.FLAGS["verbosity"].present:  # TFDS/orbax INFO lines would drown the progress output
      logging.set_verbosity(logging.WARNING)
      # orbax logs a failed background save with a traceback per thread before raising it where we turn it into
      # one line; --verbosity=0 shows them.
      logging.get_absl_handler().addFilter(_quiet_orbax_errors)
    sys.unraisablehook = _quiet_closed_loop
    # ... and the reads that never started warn at exit.
    warnings.filterwarnings("ignore", r"coroutine '_read_array\w*' was never awaited", RuntimeWarning)
    try:
      return main(argv)
    except UserError as e:
      _fail(str(e))
    except OSError as e:
      if e.errno in (errno.ENOSPC, errno.EDQUOT):  # every write is staged: what it wrote does not look finished
        where = f" writing {e.filename}" if e.filename else ""
        _fail(f"disk full{where}; free space and rerun the same command (finished work is kept)")
      if "Failed loading config file" not in str(e):  # config_flags defers a --config file it could not load
        raise
      _fail(f"cannot load the --config file ({_last_line(str(e))}); check its path")
    except KeyboardInterrupt:  # training saves and stops on SIGINT itself; anything else stops here
      _fail("interrupted; finished work is kept and nothing half-written counts: rerun the same command", 130)
    except Stopped as e:
      print(str(e), flush=True)
      sys.exit(0)

  return wrapped


def _fail(message: str, status: int = 1) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _quiet_orbax_errors(record) -> bool:
  if record.levelno < logging.converter.STANDARD_ERROR:
    return True
  if "/orbax/" in record.pathname:
    return False
  # orbax's gathered writes that failed after the first failure was raised
  return not (record.name == "asyncio" and "exception was never retrieved" in record.getMessage())


def _quiet_closed_loop(unraisable) -> None:
  """After a restore fails (a damaged checkpoint), orbax's reads still in flight end in its closed event loop: a
  traceback each, after the one-line error. Those alone are dropped."""
  e = unraisable.exc_value
  if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
    return
  frames = traceback.extract_tb(e.__traceback__) if e is not None else []
  if any("/orbax/" in frame.filename for frame in frames):
    return
  sys.__unraisablehook__(unraisable)


def resolve_workdir(path: str) -> str:
  """The absolute, user-expanded workdir (or gs:// URI) ``workdir_path`` would create; creates nothing."""
  if not path:
    raise UserError("--workdir is required, e.g. --workdir=runs/quickstart")
  return path if fs.is_uri(path) else os.path.abspath(os.path.expanduser(path))


def workdir_path(path: str) -> str:
  """Absolute, user-expanded workdir (orbax rejects relative paths) or a bucket URI (gs://); checks it can be
  written."""
  path = resolve_workdir(path)
  if fs.is_uri(path):
    try:
      fs.makedirs(path)
      fs.write_text(fs.join(path, ".llmcpu-write-check"), "ok")
      fs.remove(fs.join(path, ".llmcpu-write-check"))
    except Exception as e:  # tf.errors.OpError: no bucket, no credentials, no permission
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise UserError(f"cannot write to workdir {path} ({first}); check the bucket name and your credentials") from e
    return path
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create workdir {path} ({e.strerror}); choose a writable --workdir") from e
  if not os.access(path, os.W_OK):
    raise UserError(f"workdir {path} is not writable; choose a writable --workdir")
  return path


@dataclasses.dataclass(frozen=True)
class Access:
  """One path a command would read or write, as ``--check`` prints it.

  Kinds: ``dir`` (any directory), ``file``, ``run`` (a training workdir: ``detail`` is the compile dir it trains on,
  when known), ``runs`` (a directory or glob with runs at any depth below it, as scripts/cross_eval.py reads them),
  ``isa`` (a compiler directory ``<compile dir>/compilers/<name>``) and ``isa_of_run`` (the ISA named ``detail`` in
  the compile dir of the run at ``path``, known only once that run exists).
  """

  mode: str  # read | write
  kind: str
  path: str
  detail: str = ""

  def line(self) -> str:
    return "\t".join([self.mode, self.kind, self.path, self.detail or "-", self._state()])

  def _state(self) -> str:
    if self.mode != "read":
      return "-"
    if self.kind == "runs" and any(ch in self.path for ch in "*?["):
      return f"{len(fs.glob(self.path))} matches"
    if self.kind == "isa":
      return "found" if fs.exists(fs.join(self.path, "isa.json")) else "missing"
    if self.kind == "isa_of_run":
      return "unknown"
    return "found" if fs.exists(self.path) else "missing"


def read(kind: str, path: str, detail: str = "") -> Access:
  return Access("read", kind, path, detail)


def write(kind: str, path: str, detail: str = "") -> Access:
  return Access("write", kind, path, detail)


def check(accesses: Sequence[Access]) -> None:
  """``--check``: the command parsed; print what it would read and write, one tab-separated line each."""
  print("check: the flags and config parse; the command would (mode, kind, path, detail, state):", flush=True)
  for access in accesses:
    print(access.line(), flush=True)


def log(message: str) -> None:
  print(message, flush=True)


def _last_line(text: str) -> str:
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else text


def define_config(default: str, help_string: str) -> flags.FlagHolder:
  """``config_flags.DEFINE_config_file("config", default)``: ``--config`` may be left out.

  config_flags loads a default file, and defines its ``--config.key`` overrides, as the flag is defined (on import,
  before ``run_script``): a bad override there is the same one ``error:`` line and exit status 2 as in ``parse_flags``.
  """
  try:
    return config_flags.DEFINE_config_file("config", default, help_string)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    _bad_flags(e)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag or config override (``--config.nope=1``) is one ``error:`` line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    _bad_flags(e)


def _bad_flags(e: Exception) -> NoReturn:
  message = str(e)
  if isinstance(e, flags.Error):
    if "Traceback" in message:  # the config file's get_config raised: its last line says why
      message = f"{message.split(': Error whilst', 1)[0]}: {_last_line(message)}"
    print(f"error: {message}; see --helpfull", file=sys.stderr, flush=True)
  else:  # ml_collections' override errors
    detail = message.strip("\"'")
    print(f"error: bad --config override ({detail}): no such key or wrong type; see the config file", file=sys.stderr)
  sys.exit(2)


def run_script(main: Callable) -> None:
  """``app.run`` with one-line errors for bad flags and UserErrors, glibc keeping XLA:CPU's step buffers and CPU
  steps run inline (``host_malloc``: before any JAX computation, so before ``main``)."""
  host_malloc.keep_step_buffers()
  app.run(user_errors(main), flags_parser=parse_flags)
