"""Where training figures go: ``metrics.jsonl``, TensorBoard event files and a console line with an ETA."""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np

from llmcpu import fs


class MetricWriter:
  """Appends one JSON row per report to ``<workdir>/metrics.jsonl`` and scalars to TensorBoard events.

  Only process 0 writes. TensorFlow is imported lazily (it is a data library here) and never sees a GPU.
  ``start_step`` (the trainer's): the step the run starts (or resumes) from. Figures of later steps already on disk
  were written by an interrupted run after its last checkpoint; the resumed run writes them again, so they are
  dropped first (``dropped`` counts them: rows of metrics.jsonl, TensorBoard events), and every step keeps one row.
  None: rows are appended to whatever is there.
  """

  def __init__(
    self, workdir: str, *, enabled: bool = True, tensorboard: bool = True, start_step: int | None = None
  ) -> None:
    self.enabled = enabled
    self.dropped = (0, 0)
    if enabled and start_step is not None:
      events = drop_events_after(fs.join(workdir, "tensorboard"), start_step) if tensorboard else 0
      self.dropped = (drop_rows_after(fs.join(workdir, "metrics.jsonl"), start_step), events)
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


def drop_rows_after(path: str, step: int) -> int:
  """Removes the rows of steps after ``step`` from a metrics.jsonl, and a last line cut short (a process killed
  mid-write); rewritten atomically (``fs.write_text``), and only when there is something to drop. Returns how many
  rows it dropped. A complete line that is not a JSON row with a step is kept: it is not ours to judge."""
  if not fs.exists(path):
    return 0
  text = fs.read_text(path)
  lines = text.splitlines(keepends=True)
  keep = [line for line in lines if line.endswith("\n") and not _after(line, step)]
  if len(keep) < len(lines):
    fs.write_text(path, "".join(keep))
  return len(lines) - len(keep)


def _after(line: str, step: int) -> bool:
  try:
    row = json.loads(line)
  except ValueError:
    return False
  return isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step


def drop_events_after(logdir: str, step: int) -> int:
  """Removes TensorBoard events of steps after ``step`` from the event files in ``logdir``, as TensorBoard's own
  purge on a restart would (it only purges files of the old TF1 writer or on an explicit SessionLog.START, which
  tf.summary's writer cannot write). An event file is a TFRecord file of ``Event`` protos: each file holding such
  events is rewritten without them, atomically (``fs.write_bytes``); a record cut short at the end is dropped too.
  Returns how many events it dropped."""
  paths = [p for p in fs.glob(fs.join(logdir, "events.out.tfevents.*")) if not fs.basename(p).startswith(".")]
  if not paths:
    return 0
  import tensorflow as tf
  from tensorflow.core.util import event_pb2

  tf.config.set_visible_devices([], "GPU")
  dropped = 0
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, "events")
    for path in paths:
      with open(local, "wb") as f:  # read through llmcpu.fs (a bucket too), parsed by TensorFlow's reader
        f.write(fs.read_bytes(path))
      records, complete = [], True
      try:
        records.extend(tf.data.TFRecordDataset(local).as_numpy_iterator())
      except tf.errors.DataLossError:  # a record cut short by a killed process: the records before it are good
        complete = False
      keep = [r for r in records if event_pb2.Event.FromString(r).step <= step]
      if len(keep) == len(records) and complete:
        continue
      dropped += len(records) - len(keep)
      with tf.io.TFRecordWriter(local) as w:
        for r in keep:
          w.write(r)
      with open(local, "rb") as f:
        fs.write_bytes(path, f.read())
  return dropped


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
