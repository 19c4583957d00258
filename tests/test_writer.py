"""The training figures' writer (``llmcpu.training.writer``): metrics.jsonl rows, TensorBoard scalars read back, and
the console line's ETA on a controlled clock."""

import json

import numpy as np
import pytest

from llmcpu.training import writer


def rows(path) -> list[dict]:
  return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_rows_are_plain_json_with_the_prefix_and_appended_across_writers(tmp_path):
  w = writer.MetricWriter(str(tmp_path), tensorboard=False)
  w.write(3, {"loss": np.float32(1.5), "tokens": np.int64(7), "note": "x"})
  w.write(4, {"bits_per_byte": 0.25}, prefix="eval/")
  w.close()
  again = writer.MetricWriter(str(tmp_path), tensorboard=False)  # a resumed run appends, never truncates
  again.write(5, {"loss": 1.0})
  again.close()
  assert rows(tmp_path) == [
    {"step": 3, "loss": 1.5, "tokens": 7.0, "note": "x"},
    {"step": 4, "eval/bits_per_byte": 0.25},
    {"step": 5, "loss": 1.0},
  ]
  assert type(rows(tmp_path)[0]["tokens"]) is float  # numpy scalars are written as JSON numbers


def test_a_disabled_writer_writes_nothing(tmp_path):
  w = writer.MetricWriter(str(tmp_path), enabled=False)  # not process 0
  w.write(1, {"loss": 2.0})
  w.close()
  assert list(tmp_path.iterdir()) == []


def test_tensorboard_events_hold_the_scalars(tmp_path):
  tf = pytest.importorskip("tensorflow")
  w = writer.MetricWriter(str(tmp_path))
  w.write(2, {"loss": 0.5}, prefix="train/")
  w.write(6, {"loss": 0.125}, prefix="train/")
  w.close()
  found = []
  for path in sorted((tmp_path / "tensorboard").iterdir()):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        found.append((event.step, value.tag, float(tf.make_ndarray(value.tensor))))
  assert found == [(2, "train/loss", 0.5), (6, "train/loss", 0.125)]


@pytest.fixture
def clock(monkeypatch):
  now = [1000.0]
  monkeypatch.setattr(writer.time, "time", lambda: now[0])
  return now


def test_eta_is_time_per_step_since_the_start_times_steps_left(clock):
  p = writer.Progress(total_steps=100, start_step=10)  # resumed at step 10: earlier steps took no time here
  clock[0] += 30.0
  assert p.eta(20) == pytest.approx(30.0 / 10 * 80)
  assert p.eta(10) == pytest.approx(30.0 * 90)  # no step done yet: one step's worth of time each
  line = p.line(20, {"loss": 1.23456, "bits_per_byte": 0.5, "tokens_per_s": 12345.6, "mfu": 0.123})
  assert line == "step 20/100 | loss 1.235 | bpb 0.500 | 12,346 tok/s | MFU 12.3% | ETA 4m00s"


def test_eta_formats_hours_and_never_goes_negative(clock):
  p = writer.Progress(total_steps=10_000)
  clock[0] += 3.0
  assert p.line(8, {}) == "step 8/10000 | ETA 1h02m"  # 3 s / 8 steps × 9992 steps = 3747 s
  assert p.line(10_001, {}).endswith("ETA 0m00s")


def test_mfu_never_reads_above_the_best_rate_the_machine_has_shown(monkeypatch):
  """A peak measured while the machine was busy: a faster window raises it (and says so), never MFU > 1."""
  from llmcpu.training import trainer

  clock = iter([0.0, 1.0, 1.0, 3.0, 3.0])  # start; window 1 ends at 1 s; window 2 takes 2 s
  monkeypatch.setattr(trainer.time, "time", lambda: next(clock))
  meter = trainer._Meter(tokens_per_step=10, flops_per_step=100.0, peak=50.0)
  figures = {"nll": 1.0, "weight": 1.0, "bpb_nll": 1.0, "bytes": 1.0, "correct": 0.0, "grad_norm": 1.0}
  window = [figures | {"learning_rate": 0.1}] * 2  # 2 steps
  first = meter.window(window)  # 2 steps in 1 s: 200 FLOP/s against a 50 FLOP/s peak
  assert first["mfu"] == 1.0 and meter.raised == (50.0, 200.0) and meter.peak == 200.0
  note = meter.take_note()
  assert "2e-10 TFLOP/s" in note and "(5e-11;" in note and meter.take_note() is None  # said once
  second = meter.window(window)  # 2 steps in 2 s: 100 FLOP/s, half the best rate seen
  assert second["mfu"] == 0.5 and meter.raised is None and second["tokens_per_s"] == 10.0
