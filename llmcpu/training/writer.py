"""Where training figures go: ``metrics.jsonl``, TensorBoard event files and a console line with an ETA."""

from __future__ import annotations

import json
import time

import numpy as np

from llmcpu import fs


class MetricWriter:
  """Appends one JSON row per report to ``<workdir>/metrics.jsonl`` and scalars to TensorBoard events.

  Only process 0 writes. TensorFlow is imported lazily (it is a data library here) and never sees a GPU.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl = fs.open(fs.join(workdir, "metrics.jsonl"), "a") if enabled else None
    # A bucket object is re-uploaded whole on each flush: flush it once a minute (and on close), a local file always.
    self._flush_every = 60.0 if fs.is_uri(workdir) else 0.0
    self._flushed = time.time()
    self._tb = None
    if enabled and tensorboard:
      import tensorflow as tf

      tf.config.set_visible_devices([], "GPU")
      self._tf = tf
      self._tb = tf.summary.create_file_writer(fs.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float], prefix: str = "") -> None:
    if not self.enabled:
      return
    row = {"step": step, **{prefix + k: _plain(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    if time.time() - self._flushed >= self._flush_every:
      self._jsonl.flush()
      self._flushed = time.time()
    if self._tb is not None:
      with self._tb.as_default():
        for k, v in scalars.items():
          # tf.summary.write is core TF (tf.summary.scalar needs the tensorboard package).
          self._tf.summary.write(prefix + k, self._tf.constant(float(v)), step=step)
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _plain(v):
  return float(v) if isinstance(v, (np.floating, np.integer, float, int)) else v


class Progress:
  """Console progress: step, figures, tokens/s and time left."""

  def __init__(self, total_steps: int, start_step: int = 0):
    self.total = total_steps
    self.start_step = start_step
    self.t0 = time.time()

  def eta(self, step: int) -> float:
    done = step - self.start_step
    return (time.time() - self.t0) / max(done, 1) * (self.total - step)

  def line(self, step: int, scalars: dict[str, float]) -> str:
    parts = [f"step {step}/{self.total}"]
    fmt = {
      "loss": "loss {:.3f}",
      "bits_per_byte": "bpb {:.3f}",
      "accuracy": "acc {:.3f}",
      "learning_rate": "lr {:.2e}",
      "grad_norm": "|g| {:.2f}",
      "tokens_per_s": "{:,.0f} tok/s",
      "mfu": "MFU {:.1%}",
    }
    parts += [f.format(scalars[k]) for k, f in fmt.items() if k in scalars]
    parts.append(f"ETA {_duration(self.eta(step))}")
    return " | ".join(parts)


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
