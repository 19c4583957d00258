"""Files: every path llmcpu reads or writes goes through here, so a path may be local or a bucket URI (``gs://``).

Local paths use ``os`` (no TensorFlow import for a laptop run); URIs (``scheme://…``) use ``tf.io.gfile``, which
speaks ``gs://`` on TPU VMs and ``ram://`` (in memory) in the tests. Orbax and TFDS take the same URIs themselves.

Writes never leave a half-written file looking valid: a local file is written beside its target and renamed; an
object store makes an object visible only when its upload closes. A directory of files (a compiler, a compiled
split) is committed by ``staged``: locally a temporary directory renamed into place; in a bucket, where directories
cannot be renamed, the files are written in place with the directory's *marker* file last, after the old marker is
removed, so a reader that requires the marker never takes a half-written directory for a finished one.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np


def is_uri(path: str) -> bool:
  """``gs://bucket/x``, ``ram://x``: anything with a scheme goes through tf.io.gfile."""
  return "://" in str(path)


def _gfile():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  import tensorflow as tf

  try:  # the accelerator belongs to JAX
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices
    pass
  return tf.io.gfile


def join(path: str, *parts: str) -> str:
  return posixpath.join(path, *parts) if is_uri(path) else os.path.join(path, *parts)


def abspath(path: str) -> str:
  """Absolute local path (``~`` expanded); URIs unchanged."""
  return str(path) if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def dirname(path: str) -> str:
  return posixpath.dirname(path.rstrip("/")) if is_uri(path) else os.path.dirname(path)


def basename(path: str) -> str:
  return posixpath.basename(path.rstrip("/")) if is_uri(path) else os.path.basename(path)


def exists(path: str) -> bool:
  return _gfile().exists(path) if is_uri(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _gfile().isdir(path) if is_uri(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return exists(path) and not isdir(path)


def makedirs(path: str) -> None:
  if is_uri(path):
    _gfile().makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
  """Names in a directory (none if it does not exist), sorted."""
  if not isdir(path):
    return []
  names = _gfile().listdir(path) if is_uri(path) else os.listdir(path)
  return sorted(n.rstrip("/") for n in names)


def glob(pattern: str) -> list[str]:
  if is_uri(pattern):
    return sorted(_gfile().glob(pattern))
  import glob as _glob

  return sorted(_glob.glob(pattern, recursive=True))


def remove(path: str) -> None:
  """Removes a file if it exists."""
  if is_uri(path):
    if _gfile().exists(path):
      _gfile().remove(path)
  else:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def rmtree(path: str) -> None:
  """Removes a directory tree if it exists."""
  if is_uri(path):
    if _gfile().exists(path):
      _gfile().rmtree(path)
  else:
    shutil.rmtree(path, ignore_errors=True)


def stat(path: str) -> tuple[int, int]:
  """(size in bytes, modification time in ns); an object store reports its object's upload time."""
  if is_uri(path):
    s = _gfile().stat(path)
    return int(s.length), int(s.mtime_nsec)
  s = os.stat(path)
  return s.st_size, s.st_mtime_ns


def open(path: str, mode: str = "r") -> IO[Any]:  # noqa: A001  (the module's open, like tf.io.gfile's)
  return _gfile().GFile(path, mode) if is_uri(path) else builtins.open(path, mode)  # noqa: SIM115


def read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically: readers see the old file or the new one, never a part."""
  if is_uri(path):
    with open(path, "wb") as f:  # the object appears when the upload closes
      f.write(data)
    return
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def npy_bytes(array: np.ndarray) -> bytes:
  """``array`` in the .npy format, as the bytes a file of it holds."""
  buf = io.BytesIO()
  np.save(buf, array)
  return buf.getvalue()


def save_npy(path: str, array: np.ndarray) -> None:
  write_bytes(path, npy_bytes(array))


def load_npy(path: str, mmap: bool = False) -> np.ndarray:
  """An .npy array; ``mmap`` maps a local file (read-only) instead of reading it, a bucket object is read whole."""
  if is_uri(path):
    return np.load(io.BytesIO(read_bytes(path)))
  return np.load(path, mmap_mode="r" if mmap else None)


@contextlib.contextmanager
def staged(path: str, marker: str) -> Iterator[str]:
  """A directory to fill, committed as ``path`` when the block ends without error; the caller writes ``marker``
  (the file whose presence says the directory is complete) last. On error nothing at ``path`` looks complete."""
  if is_uri(path):
    remove(join(path, marker))  # from here on the old contents are not valid
    makedirs(path)
    yield path
    return
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
  try:
    yield tmp
    if os.path.exists(path):
      shutil.rmtree(path)
    os.replace(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
