"""A matrix that survives being stopped: finished cells kept on disk (``CellStore``), and SIGTERM (a preemption)
turned into a stop that drops only the cell in progress (``Sigterm``).

``evaluate(..., cells=DIR)`` uses both: every finished cell is written to DIR at once, a rerun of the same matrix
takes it from there instead of computing it again, and a SIGTERM raises ``Stopped`` (scripts exit 0 and say how
many cells are done). A rerun gives the rows an uninterrupted run gives: each cell's computation depends only on its
checkpoint, its ISA, the matrix's other ISAs (shapes are fitted over all of them) and the options, all in its key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import threading
from collections.abc import Iterator

import numpy as np

from llmcpu import fs
from llmcpu.training import checkpoints

FORMAT = 1  # bump when a row's meaning changes: older cell files are then not used


class CellStore:
  """One JSON file per finished cell under ``directory``, written atomically (``fs.write_text``) and named by a hash
  of its key: what the cell's figures depend on. A file whose key is not the current one, or that cannot be read,
  is ignored (the cell is computed again and the file replaced)."""

  def __init__(self, directory: str):
    self.directory = directory

  @staticmethod
  def key(checkpoint: str, stamp: tuple | None, eval_label: str, eval_fingerprint: str, **matrix) -> dict | None:
    """A cell's key; None when the checkpoint cannot be identified on disk (``stamp``: see ``checkpoint_stamp``)."""
    if stamp is None:
      return None
    cell = {"checkpoint": checkpoint, "stamp": list(stamp), "eval_isa": eval_label, "eval": eval_fingerprint}
    return {"format": FORMAT, **cell, **matrix}

  def _path(self, key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return fs.join(self.directory, f"{digest}.json")

  def load(self, key: dict | None) -> dict | None:
    if key is None or not fs.exists(self._path(key)):
      return None
    try:
      stored = json.loads(fs.read_text(self._path(key)), object_hook=_decode)
    except (ValueError, UnicodeDecodeError):  # damaged: computed again
      return None
    return stored["row"] if isinstance(stored, dict) and stored.get("key") == key else None

  def save(self, key: dict | None, row: dict) -> None:
    if key is None:
      return
    fs.makedirs(self.directory)
    fs.write_text(self._path(key), json.dumps({"key": key, "row": row}, default=_encode))

  def clear(self) -> None:
    fs.rmtree(self.directory)


def checkpoint_stamp(path: str) -> tuple | None:
  """(step, when it was saved in ns) of the newest checkpoint at ``path``; None if there is none to read."""
  try:
    return checkpoints.find(path)[1], checkpoints.saved_ns(path)
  except Exception:  # noqa: BLE001 - a missing or unreadable checkpoint: its cells fail and are not kept
    return None


def _encode(o):
  """JSON for what rows hold besides JSON types: numpy arrays (per-document sums) exactly, numpy scalars."""
  if isinstance(o, np.ndarray):
    return {"__ndarray__": o.tolist(), "dtype": str(o.dtype)}
  if isinstance(o, np.generic):
    return o.item()
  raise TypeError(f"cannot store a {type(o).__name__} in a cell file")


def _decode(d: dict):
  return np.asarray(d["__ndarray__"], dtype=d["dtype"]) if "__ndarray__" in d else d


class Dropped(BaseException):
  """A SIGTERM arrived: the cell in progress is abandoned (a BaseException, so no ``except Exception`` records it as
  a failed cell)."""


class Sigterm:
  """SIGTERM while a matrix runs. Inside ``interruptible()`` (a cell being computed, a model being loaded) it raises
  ``Dropped`` at once; elsewhere (a finished cell being stored) it is remembered and the next ``interruptible()``
  raises it. Installed only when ``enabled`` and in the main thread; the previous handler comes back on exit."""

  def __init__(self, enabled: bool = True):
    self.enabled, self.requested, self._busy, self._old = enabled, False, False, None

  def __enter__(self) -> Sigterm:
    if self.enabled and threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
      self._old = None

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.requested = True
    if self._busy:
      self._busy = False
      raise Dropped

  @contextlib.contextmanager
  def interruptible(self) -> Iterator[None]:
    if self.requested:
      raise Dropped
    self._busy = True
    try:
      yield
    finally:
      self._busy = False
