"""What every experiment shares (llmcpu/experiments/base.py, tables.py): the registry that scripts/experiment.py
dispatches by, the stage runner, the report writer and the figures' formatting. No training: seconds."""

import dataclasses
import importlib.util
import json
import pathlib

import ml_collections
import pytest

from llmcpu import experiments
from llmcpu.errors import Stopped, UserError
from llmcpu.experiments import base, tables

CONFIGS = sorted((pathlib.Path(__file__).resolve().parent.parent / "configs" / "experiments").glob("*.py"))
# What each config asks for, read from its keys (not its kind): the experiment that must run it.
BY_KEYS = [
  ("models", "LLMs"),  # first: the llms experiment may port its LLMs too (it has the porting keys)
  ("ports", "Porting"),
  ("variants", "Swapping"),
  ("readout", "Languages"),
  ("points", "Sweep"),
]


def load(path: pathlib.Path) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_names_the_experiment_its_keys_ask_for(path):
  c = load(path)
  want = next((name for key, name in BY_KEYS if key in c), "Matrix")
  assert experiments.lookup(c).__name__ == want, c.kind


def test_damage_config_is_the_matrix_with_damage_curves():
  (damage,) = [p for p in CONFIGS if p.stem == "damage"]
  c = load(damage)
  assert c.kind == "damage" and experiments.lookup(c) is experiments.matrix.Matrix
  assert c.train_compilers == "bpe:1000" and c.compilers.count("+perm:1:") == 6


def test_a_missing_or_unknown_kind_is_one_line():
  with pytest.raises(UserError, match=r"^the experiment config sets no kind; set c.kind .* one of damage, languages"):
    experiments.lookup(ml_collections.ConfigDict({"corpus": "x"}))
  with pytest.raises(UserError, match=r"^unknown experiment kind 'swop' \(--config.kind\); choose one of damage,"):
    experiments.lookup(ml_collections.ConfigDict({"kind": "swop"}))


def test_a_kind_registered_twice_is_refused():
  with pytest.raises(ValueError, match="registered twice"):
    base.register("matrix")(type("Other", (base.Experiment,), {}))
  assert experiments.REGISTRY["matrix"] is experiments.matrix.Matrix


@dataclasses.dataclass
class Result:
  step: int
  stopped: str = "done"


def test_stages_skip_what_is_finished_and_stop_on_a_stopped_run(tmp_path, monkeypatch):
  at = {str(tmp_path / "a"): 5, str(tmp_path / "b"): 2}  # a: at its final step; b: part-way; c: never started

  def find(path):
    if path not in at:
      raise UserError(f"no checkpoint under {path}")
    return path, at[path]

  monkeypatch.setattr(base.checkpoints, "find", find)
  trained, logs = [], []

  def stage(name, result):
    return base.Stage(str(tmp_path / name), 5, f"cpu {name}", lambda: (trained.append(name), result)[1])

  stages = [stage("a", Result(5)), stage("b", Result(5)), stage("c", Result(5))]
  base.run_stages("train", stages, logs.append)
  assert trained == ["b", "c"] and all((tmp_path / n).is_dir() for n in "bc")
  assert logs[0] == "== train [1/3] cpu a: done"
  assert logs[1].startswith("== train [2/3] cpu b (elapsed ") and "left" not in logs[1]
  assert logs[2].startswith("== train [3/3] cpu c (elapsed ") and logs[2].endswith("s left)")  # an ETA once one ran
  trained.clear()
  stages = [stage("b", Result(3, "preempted")), stage("c", Result(5))]
  with pytest.raises(Stopped, match=r"^stopped at step 3 of \[1/2\] cpu b \(preempted\); rerun the same command"):
    base.run_stages("swap", stages, logs.append)
  assert trained == ["b"]  # nothing after a stopped run starts


def test_a_finished_run_trained_otherwise_is_kept_and_said(tmp_path, monkeypatch):
  """A run at its final step is not retrained, but a design its config predates (seq2seq packing: absent = one pair
  per row) or a key that differs is named on its 'done' line; where it lives (compile_dir) is not a difference."""
  from llmcpu.training.run_config import base_config

  today = base_config("encoder_decoder", "tiny")
  old = today.to_dict()
  del old["data"]["pack_pairs"], old["data"]["pack_windows"]  # a run trained before packing existed
  old["data"]["compile_dir"] = "/elsewhere"
  monkeypatch.setattr(base.checkpoints, "find", lambda path: (path, 5))
  monkeypatch.setattr(base.checkpoints, "load_meta", lambda path: {"config": old})
  logs = []
  stages = [base.Stage(str(tmp_path / "a"), 5, "cpu a", lambda: None, config=today, objective="seq2seq")]
  base.run_stages("train", stages, logs.append)
  assert logs[0].startswith("== train [1/1] cpu a: done, but trained otherwise than this config says (")
  assert f"seq2seq pack_tokens: run 0, config {today.data.length}" in logs[0] and "compile_dir" not in logs[0]
  # The same keys read otherwise by another objective, and a model key that differs.
  assert base.config_drift(old, today, "prefix_lm") == ["prefix_lm pack_windows: run False, config True"]
  assert base.config_drift(old, today, "lm") == []
  changed = today.copy_and_resolve_references()
  changed.model.d_model, changed.data.pairs_per_row, changed.data.pack_windows = 32, 4, False
  assert base.config_drift(old, changed, "prefix_lm") == [
    "data.pairs_per_row: run 1, config 4",
    "model.d_model: run 64, config 32",
    "prefix_lm pairs_per_row: run 1, config 4",
  ]
  assert base.config_drift(today.to_dict(), today, "seq2seq") == []


def test_report_is_committed_last(tmp_path, monkeypatch):
  written = []
  real = base.fs.write_text
  monkeypatch.setattr(base.fs, "write_text", lambda p, t: (written.append(pathlib.Path(p).name), real(p, t)))
  (tmp_path / "results.jsonl").write_text("stale\n")
  config = ml_collections.ConfigDict({"kind": "x", "n": 1})

  def figures():
    assert not (tmp_path / "results.jsonl").exists()  # the old marker is gone before anything is rewritten
    (tmp_path / "f.png").write_bytes(b"png")

  rows = [{"a": 1, "b": (0.5, 0.75)}, {"a": 2, "b": None}]
  base.write_report(str(tmp_path), rows, config, 12.6, texts={"x.md": "table\n"}, figures=figures)
  assert written == ["x.md", "experiment.json", "results.jsonl"]
  assert json.loads((tmp_path / "experiment.json").read_text()) == {"config": {"kind": "x", "n": 1}, "seconds": 13}
  lines = (tmp_path / "results.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [{"a": 1, "b": [0.5, 0.75]}, {"a": 2, "b": None}]


def test_lists_are_checked_with_one_line():
  assert base.split_list(" a, b ,,c ", "archs") == ["a", "b", "c"]
  assert base.seed_list("2,0") == [2, 0] and base.step_list("30, 0,10,10") == [0, 10, 30]
  with pytest.raises(UserError, match="experiment archs is empty"):
    base.split_list(" , ", "archs")
  with pytest.raises(UserError, match="distinct non-negative"):
    base.seed_list("0,0")
  with pytest.raises(UserError, match=r"^--config.budgets='0,x' must be comma-separated step counts"):
    base.step_list("0,x")
  with pytest.raises(UserError, match=r"must be steps ≥ 0"):
    base.step_list("-1,3")


def test_figures_by_hand():
  assert tables.fmt(0.12345) == "0.123" and tables.fmt(None) == "—" and tables.fmt(None, missing="n/a") == "n/a"
  assert tables.fmt(1.0, std=0.25, ci=(0.0, 2.0)) == "1.000 ± 0.250"  # a spread over seeds wins over an interval
  assert tables.fmt(1.0, ci=(0.5, 1.5), digits=1) == "1.0 (0.5–1.5)"
  assert tables.fmt_key({"em": 0.5, "em_ci": [0.25, 0.75]}, "em") == "0.500 (0.250–0.750)"
  assert tables.fmt_key({"em": 0.5, "em_ci": None}, "em") == "0.500"
  assert tables.fmt_key(None, "em") == "—" and tables.fmt_key({"em": None}, "em") == "—"
  assert tables.row(["a", "b"]) == "| a | b |"
  assert tables.rule(1, 2) == "|---|---:|---:|" and tables.rule(2, 0) == "|---|---|"
