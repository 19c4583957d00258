"""What every corpus source shares: split names and assignment, fingerprints, and lazy TensorFlow (Datasets).

A leaf module: ``corpora`` and the embedded builders (``programs``, ``python_docs``) import it, it imports none
of them, so the builders no longer import ``corpora`` back. TensorFlow and TFDS are imported only inside the
functions here, so importing any of ``llmcpu.data`` stays cheap.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from collections.abc import Callable
from typing import Any

SPLITS = ("train", "validation", "test")
# (train, validation, test) percent: programs operands and text: documents. Fixed: changing it moves documents
# (and held-out operands) between splits; a corpus that needs other shares passes its own to split_for.
SPLIT_PERCENTS = (90, 5, 5)


def split_for(key: str | bytes, percents: tuple[int, int, int] = SPLIT_PERCENTS) -> str:
  """The split of a document from a stable key alone; ``percents`` = (train, validation, test), summing to 100.

  The key's sha256 picks a bucket 0..99: validation takes the lowest buckets, test the next, train the rest. So
  growing only the test share moves keys from train to test and never out of test or validation.
  """
  train, validation, test = percents
  if min(percents) < 0 or train + validation + test != 100:
    raise ValueError(f"split percents must be >= 0 and sum to 100, got {percents}")
  data = key.encode("utf-8") if isinstance(key, str) else key
  bucket = int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % 100
  return "validation" if bucket < validation else "test" if bucket < validation + test else "train"


def digest(obj: Any) -> str:
  """sha256 of a JSON-able object (sorted keys), for fingerprints."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def import_tfds():
  """Imports tensorflow_datasets quietly; TF's C++ info logs are noise here."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()
  return tfds


def tf_cpu_only() -> None:
  """Keeps TensorFlow off any GPU: the accelerator belongs to JAX."""
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices; nothing more to do
    pass


def defined_once(define: Callable[[], type]) -> Callable[[], type]:
  """``define`` (which builds a TFDS builder class) run on the first call only, under a lock: the class's base needs
  TensorFlow Datasets, so importing the module that holds it must stay cheap; and TFDS refuses a builder name that
  is registered twice, as two threads defining it at once would."""
  lock, defined = threading.Lock(), []

  @functools.wraps(define)
  def get() -> type:
    with lock:
      if not defined:
        defined.append(define())
      return defined[0]

  return get
