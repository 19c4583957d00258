"""The sweep experiment (configs/experiments/sweep.py): points parse into matrix configs, bad points are refused in
one line, and the whole sweep trains, evaluates and re-evaluates into a fresh report without retraining."""

import importlib.util
import json
import os

import pytest
from conftest import write_docs

from llmcpu import experiments, models
from llmcpu.errors import UserError
from llmcpu.experiments import matrix, sweep
from llmcpu.training import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep_file_config():
  spec = importlib.util.spec_from_file_location("sweep_config", os.path.join(ROOT, "configs/experiments/sweep.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_the_config_plans_every_point():
  c = sweep_file_config()
  assert c.kind == "sweep" and experiments.lookup(c) is sweep.Sweep
  got = {name: p for name, p in sweep.points(c)}
  assert list(got) == ["tiny", "wide128", "wide256", "deep6", "long256", "tiny-s2000", "tiny-s4000", "wide128-s2000"]
  # (d_model, d_ff, layers, length) of each point: the base's (64, 256, 2, 128) with only the named keys changed
  want = {
    "tiny": (64, 256, 2, 128),
    "wide128": (128, 512, 2, 128),
    "wide256": (256, 1024, 2, 128),
    "deep6": (64, 256, 6, 128),
    "long256": (64, 256, 2, 256),
    "tiny-s2000": (64, 256, 2, 128),
    "tiny-s4000": (64, 256, 2, 128),
    "wide128-s2000": (128, 512, 2, 128),
  }
  for name, p in got.items():
    assert (p.model.d_model, p.model.d_ff, p.model.num_layers, p.data.length) == want[name], name
    steps = {"tiny-s2000": 2000, "tiny-s4000": 4000, "wide128-s2000": 2000}.get(name, 500)
    assert p.kind == "matrix" and "points" not in p and p.steps == steps and p.crosseval.prompts == 128
    assert p.compilers == "char,bpe:1000" and p.train_compilers == "char"
  assert c.model.d_model == 64  # the sweep's own config is left as it was


@pytest.mark.parametrize(
  "points, message",
  [
    ("a; b: model.d_modle=128", r"^sweep point 'b': unknown config key 'model.d_modle'$"),
    ("a: model.d_model=wide", r"^sweep point key model.d_model='wide': expected a int$"),
    ("a: train.learning_rate=fast", r"^sweep point key train.learning_rate='fast': expected a float$"),
    ("a; a: steps=2", r"^sweep point 'a' is named twice"),
    ("report", r"^sweep point 'report' is named twice \(or like the report directory\)"),
    ("a: kind=damage", r"^sweep point 'a': 'kind=damage' must be KEY=VALUE"),
    ("a: steps", r"^sweep point 'a': 'steps' must be KEY=VALUE"),
    ("../x", r"^sweep point name '../x' must be letters"),
    (" ; ", r"^experiment points is empty"),
  ],
)
def test_bad_points_refused_in_one_line(points, message):
  c = sweep.sweep_config("tiny")
  c.points = points
  with pytest.raises(UserError, match=message):
    sweep.points(c)


def test_param_count_is_the_built_models():
  """The table's parameter count against the parameters of the model the training run builds, counted leaf by leaf."""
  c = sweep_file_config()
  for name, p in sweep.points(c):
    if name in ("wide256",):  # the largest: building it adds nothing the others do not check
      continue
    built = models.create_from_config(
      trainer.model_config_for(matrix.cpu_config(p, p.corpus, "decoder", "char", ""), 383)
    )
    assert sweep.param_count(p, "decoder", 383) == models.param_count(built), name


@pytest.mark.slow  # trains 2 CPUs and cross-evaluates them twice: ~1 min on a quiet core
def test_sweep_trains_then_reevaluates_without_training(tmp_path):
  c = sweep.sweep_config("tiny")
  c.corpus = "text:" + write_docs(tmp_path)
  c.compilers, c.train_compilers, c.archs, c.steps = "char,char+perm:1", "char", "decoder", 3
  c.train.batch_size, c.data.length, c.train.log_every = 8, 64, 3
  c.model.d_model, c.model.num_heads, c.model.d_ff = 32, 2, 64
  c.crosseval.prompts, c.crosseval.new_tokens, c.crosseval.prompt_bytes, c.crosseval.new_bytes = 12, 8, 32, 32
  c.crosseval.shuffled_prompts = False
  c.points = "small32; deeper: model.num_layers=3 steps=4"
  workdir = str(tmp_path / "sweep")
  reports = experiments.run(c, workdir, log=lambda m: None)
  assert [k.split("/")[0] for k in reports] == ["small32", "deeper"]  # point/corpus → that point's report
  lines = [json.loads(x) for x in open(os.path.join(workdir, "report", "sweep.jsonl"))]
  assert [(p["point"], p["layers"], p["steps"], p["tokens"]) for p in lines] == [
    ("small32", 2, 3, 3 * 8 * 64),
    ("deeper", 3, 4, 4 * 8 * 64),
  ]
  for p, out in zip(lines, reports.values(), strict=True):
    assert out.startswith(os.path.join(workdir, p["point"], "report") + os.sep)
    results = [json.loads(x) for x in open(os.path.join(out, "results.jsonl"))]
    native = next(r for r in results if r["native"])
    assert p["native"]["bits_per_byte"] == native["bits_per_byte"]
    assert p["native"]["relevance_beyond_tail"] == native["relevance_beyond_tail"]
    assert p["foreign"]["char-perm1"]["relevance"] == next(r for r in results if not r["native"])["relevance"]
    assert p["train_seconds"] > 0 and p["report_seconds"] > 0
    assert set(p["baselines"]) == set(sweep._baseline_names())
  table = open(os.path.join(workdir, "report", "sweep.md")).read()
  assert table.count("\n| small32 | 32 × 2 | 64 |") == 1 and "| deeper | 32 × 3 | 64 |" in table

  # A fresh report: every point cross-evaluated again into NAME/, nothing retrained.
  ckpts = {p["point"]: os.path.join(workdir, p["point"], "runs") for p in lines}
  mtimes = {
    k: sorted(os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(v) for f in fs) for k, v in ckpts.items()
  }
  c.report = "again"
  logs: list[str] = []
  experiments.run(c, workdir, log=logs.append)
  assert sum(line.startswith("== train") and line.endswith(": done") for line in logs) == 2, logs
  assert sum(line.startswith("== cross-eval") and not line.endswith(": done") for line in logs) == 2, logs
  again = [json.loads(x) for x in open(os.path.join(workdir, "again", "sweep.jsonl"))]
  assert [p["native"]["bits_per_byte"] for p in again] == [p["native"]["bits_per_byte"] for p in lines]
  assert [p["train_seconds"] for p in again] == [p["train_seconds"] for p in lines]
  after = {
    k: sorted(os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(v) for f in fs) for k, v in ckpts.items()
  }
  assert after == mtimes
  # The first report again: up to date, so nothing is re-evaluated, and its cross-evaluation seconds are kept.
  c.report = "report"
  experiments.run(c, workdir, log=lambda m: None)
  kept = [json.loads(x) for x in open(os.path.join(workdir, "report", "sweep.jsonl"))]
  assert [p["report_seconds"] for p in kept] == [p["report_seconds"] for p in lines]
