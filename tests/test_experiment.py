"""The experiment runner end to end on a tiny text corpus: seeds, train-only-some ISAs, calibration, resumption."""

import json
import os

import numpy as np
import pytest
from conftest import write_docs

from llmcpu import experiments, fs
from llmcpu.crosseval import report
from llmcpu.errors import UserError
from llmcpu.ops import cli


def test_seeds_calibration_and_resume_in_a_bucket(tmp_path, fake_gcs):
  """The whole experiment with a gs:// workdir (compile cache, runs, checkpoints, metrics, reports)."""
  c = experiments.matrix.experiment_config("tiny")
  c.corpus = "text:" + write_docs(tmp_path)
  c.compilers = "char,char+perm:1"
  c.train_compilers = "char"  # the permuted ISA is only read (a damage point), never trained on
  c.archs = "decoder,encoder_decoder"
  c.seeds = "0,1"
  c.steps = 6
  c.train.batch_size, c.data.length, c.train.log_every = 8, 64, 3
  c.data.input_length, c.data.target_length = 48, 24
  c.model.d_model, c.model.num_heads, c.model.d_ff = 32, 2, 64
  c.crosseval.prompts, c.crosseval.new_tokens, c.crosseval.prompt_bytes, c.crosseval.new_bytes = 12, 8, 32, 32
  logs: list[str] = []
  workdir = cli.workdir_path(f"{fake_gcs.PREFIX}/exp")
  (out,) = experiments.run(c, workdir, log=logs.append).values()
  assert out == f"{fake_gcs.PREFIX}/exp/report/{out.rsplit('/', 1)[-1]}"

  rows = report.load_rows(out)
  assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
  cells = sorted((r["arch"], r["seed"], r["eval_isa"]) for r in rows)
  assert cells == [(a, s, i) for a in ("decoder", "encoder_decoder") for s in (0, 1) for i in ("char", "char-perm1")]
  # Encoder-decoders continue prose (prefix_lm), so their generations are judged like a decoder's.
  assert {r["objective"] for r in rows if r["arch"] == "encoder_decoder"} == {"prefix_lm"}
  # 11 test documents, 5 of which open with a heading: no word boundary shared by both ISAs within 32–56 bytes.
  assert all(r["prompts"] == rows[0]["prompts"] >= 6 and r["relevance"] is not None for r in rows)
  for isa in ("char", "char-perm1"):  # one table row for both seeds: mean ± std, recomputed here
    bpb = np.array([r["bits_per_byte"] for r in rows if r["eval_isa"] == isa and r["arch"] == "decoder"])
    assert f"{bpb.mean():.3f} ± {bpb.std(ddof=1):.3f}" in report.markdown_table(rows, "bits_per_byte")
  calibration = report.load_rows(out, "calibration.jsonl")
  assert [r["reference"] for r in calibration][:2] == ["true continuation", "another document's continuation"]
  summary = fs.read_text(f"{out}/summary.md")
  assert "## Calibration" in summary and "shuffled" in summary and "seeds 0, 1" in summary
  stats = json.loads(fs.read_text(f"{out}/corpus_stats.json"))  # what the held-out split supports, said in summary
  assert stats["prompts_used"] == rows[0]["prompts"] == min(12, stats["prompts_available"])
  assert f"test {stats['splits']['test']['files']} files, {stats['splits']['test']['docs']} docs" in summary
  assert f"Prompts: {stats['prompts_used']} used of {stats['prompts_available']} available." in summary
  provenance = json.loads(fs.read_text(f"{workdir}/report/experiment.json"))
  assert provenance["config"]["seeds"] == "0,1" and provenance["seconds"]["total"] > 0

  logs.clear()
  experiments.run(c, workdir, log=logs.append)  # everything is done: nothing retrains or re-evaluates
  assert sum("done" in line for line in logs if line.startswith("== ")) == 6, logs

  # A seed added later: only its CPU trains and only its cells are evaluated; the others are read back unchanged.
  logs.clear()
  c.archs, c.seeds = "decoder", "0,1,2"
  experiments.run(c, workdir, log=logs.append)
  assert sum("cells kept from an earlier run" in line for line in logs) == 2, logs
  assert sum(line.startswith("decoder/char on ") for line in logs) == 2, logs  # the new CPU's two cells
  grown = report.load_rows(out)
  assert sorted((r["seed"], r["eval_isa"]) for r in grown) == [
    (s, i) for s in (0, 1, 2) for i in ("char", "char-perm1")
  ]
  before = {(r["seed"], r["eval_isa"]): r for r in rows if r["arch"] == "decoder"}
  kept = ("bits_per_byte", "relevance", "prompt_table")
  for r in (r for r in grown if r["seed"] != 2):
    assert {k: r[k] for k in kept} == {k: before[r["seed"], r["eval_isa"]][k] for k in kept}
  c.archs, c.seeds = "decoder,encoder_decoder", "0,1"

  # Another corpus set would retrain the compilers these CPUs were built with: refused, and nothing is touched.
  isa = tmp_path / "bucket" / "exp" / "compiled" / "compilers" / "char" / "isa.json"
  before = isa.read_bytes()
  c.corpus = "text:" + str(tmp_path / "docs" / "00*.txt")
  with pytest.raises(UserError, match="compiler_corpora=text:"):
    experiments.run(c, workdir, log=logs.append)
  assert isa.read_bytes() == before
  # Every stage went through the bucket; nothing landed in a local ./gs: directory.
  served = "\n".join(sorted(fake_gcs.served))
  for part in ("compiled/data/", "compiled/compilers/char/isa.json", "/checkpoints", "metrics.jsonl", "tensorboard"):
    assert part in served, part
  assert not (tmp_path / "gs:").exists() and sorted(os.listdir(tmp_path)) == ["bucket", "docs"]


def test_bucket_workdir_checked_with_one_line(fake_gcs, monkeypatch):
  assert cli.workdir_path(f"{fake_gcs.PREFIX}/runs/x") == f"{fake_gcs.PREFIX}/runs/x"  # kept as a URI, writable

  def denied(*args, **kwargs):
    raise PermissionError("403 Forbidden: no storage.objects.create on bucket\nmore detail")

  monkeypatch.setattr(fake_gcs, "GFile", denied)
  with pytest.raises(UserError, match=r"cannot write to workdir gs://fake-bucket/y \(403 Forbidden[^\n]*\); check"):
    cli.workdir_path(f"{fake_gcs.PREFIX}/y")


def test_a_preempted_experiment_exits_zero(tmp_path, monkeypatch, capsys):
  """Preemption is not failure: experiment.py exits 0 like train.py, and says how to continue."""
  from llmcpu.errors import Stopped
  from llmcpu.training import trainer

  c = experiments.matrix.experiment_config("tiny")
  c.corpus, c.compilers, c.steps = "text:" + write_docs(tmp_path), "char", 5
  stopped = trainer.TrainResult(step=3, stopped="preempted", train={}, eval={}, state={}, illegal_opcodes=0)
  monkeypatch.setattr(trainer, "train", lambda config, workdir, log: stopped)
  with pytest.raises(Stopped, match=r"stopped at step 3 of \[1/1\] .* \(preempted\); rerun the same command"):
    experiments.run(c, str(tmp_path / "exp"), log=lambda m: None)

  def preempted_main(argv):
    raise Stopped("stopped at step 3; rerun the same command to continue")

  with pytest.raises(SystemExit) as e:
    cli.user_errors(preempted_main)([])
  assert e.value.code == 0 and "rerun the same command" in capsys.readouterr().out


def test_numbers_out_of_range_refused_before_compiling(tmp_path):
  c = experiments.matrix.experiment_config("tiny")
  c.corpus, c.compilers = "text:" + write_docs(tmp_path), "char"
  c.train.learning_rate = -1.0
  with pytest.raises(UserError, match=r"^--config.train.learning_rate=-1.0 must be a positive finite number$"):
    experiments.run(c, str(tmp_path / "exp"), log=lambda m: None)
  assert not (tmp_path / "exp" / "compiled").exists()
