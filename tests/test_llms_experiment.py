"""configs/experiments/llms.py (``kind = "llms"``) on two random tiny GPT-2s made offline, each with its own
byte-level BPE: import → compile every ISA → the cross-ISA matrix and its report."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from conftest import write_docs
from test_external_isas import byte_level_bpe
from test_hf import gpt2_checkpoint, write

from llmcpu import crosseval, experiments, fs
from llmcpu.errors import UserError
from llmcpu.training import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_gpt2(path: str, vocab: int, seed: int, positions: int = 512) -> str:
  """A random tiny GPT2LMHeadModel directory with a ``vocab``-id byte-level BPE tokenizer of its own."""
  cfg, t = gpt2_checkpoint(seed, hub_names=False)
  rng = np.random.default_rng(seed + 10)
  cfg.update(vocab_size=vocab, n_positions=positions)
  t["transformer.wte.weight"] = rng.normal(0, 0.2, (vocab, 32)).astype(np.float32)
  t["transformer.wpe.weight"] = rng.normal(0, 0.2, (positions, 32)).astype(np.float32)
  byte_level_bpe(path, vocab=vocab)
  return write(path, cfg, t)


def llms_config(models: str, corpus: str, **changes):
  spec = importlib.util.spec_from_file_location("llms_config", os.path.join(ROOT, "configs", "experiments", "llms.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.models, c.corpus, c.compilers = models, corpus, "byte"
  c.train.batch_size = 4
  c.crosseval.prompts, c.crosseval.max_docs, c.crosseval.coherence = 4, 12, False
  c.crosseval.new_bytes, c.crosseval.prompt_bytes, c.crosseval.new_tokens = 16, 32, 8
  for key, value in changes.items():
    c[key] = value
  return c


def test_a_model_not_here_is_one_line_naming_how_to_provide_it(tmp_path):
  c = llms_config("gpt2", f"text:{write_docs(tmp_path)}", model_root=str(tmp_path / "hub"))
  with pytest.raises(UserError, match=r"'gpt2' is not a local directory or .*hub/gpt2.*huggingface-cli download gpt2"):
    experiments.run(c, str(tmp_path / "exp"), log=lambda _: 0)
  assert not os.path.exists(tmp_path / "exp" / "compiled")


@pytest.mark.slow  # ~2 min: two imports, 2 × 3 cells with generations
def test_llms_matrix_end_to_end(tmp_path):
  hub = tmp_path / "hub"
  random_gpt2(str(hub / "tiny" / "a"), 300, seed=0)
  random_gpt2(str(hub / "b"), 320, seed=1)
  c = llms_config(f"tiny/a,{hub / 'b'}", f"text:{write_docs(tmp_path)}", model_root=str(hub))
  reports = experiments.run(c, str(tmp_path / "exp"), log=lambda _: 0)
  (out,) = reports.values()
  rows = crosseval.load_rows(fs.join(out, "results.jsonl"))
  assert len(rows) == 2 * 3  # two LLMs × (their two ISAs + byte)
  assert sum(r["native"] for r in rows) == 2
  foreign = [r for r in rows if not r["native"] and r["eval_isa"] != "byte"]
  # The 320-id model reads the 300-id ISA without illegal ids; the 300-id one meets ids ≥ 300 in the other.
  assert sorted(r["illegal_rate"] > 0 for r in foreign) == [False, True]
  for r in rows:
    meta = checkpoints.load_meta(r["checkpoint"])
    assert meta["provenance"]["import"]["weights_sha256"] and meta["step"] == 0
  assert json.load(open(fs.join(os.path.dirname(out), "experiment.json")))["config"]["kind"] == "llms"
  again = experiments.run(c, str(tmp_path / "exp"), log=lambda _: 0)  # everything done: nothing recomputed
  assert again == reports


def test_ports_must_name_two_of_the_models(tmp_path):
  hub = tmp_path / "hub"
  random_gpt2(str(hub / "a"), 300, seed=0)
  c = llms_config(str(hub / "a"), f"text:{write_docs(tmp_path)}", ports=f"{hub / 'a'}>gpt2")
  with pytest.raises(UserError, match=r"is not SOURCE>TARGET over two of the models"):
    experiments.run(c, str(tmp_path / "exp"), log=lambda _: 0)
  assert not os.path.exists(tmp_path / "exp" / "compiled")


@pytest.mark.slow  # ~1.5 min: two imports, four ports (one trained), their curves scored
def test_an_llm_ported_to_another_llms_isa(tmp_path):
  hub = tmp_path / "hub"
  a, b = random_gpt2(str(hub / "a"), 300, seed=0), random_gpt2(str(hub / "b"), 320, seed=1)
  c = llms_config(f"{a},{b}", f"text:{write_docs(tmp_path)}", ports=f"{a}>{b}")
  c.methods, c.budgets = "translate,align,fvt,omp,relearn", "0,2"
  reports = experiments.run(c, str(tmp_path / "exp"), log=lambda _: 0)
  rows = [json.loads(line) for line in open(fs.join(reports["report-porting"], "results.jsonl"))]
  by = {r["method"]: r for r in rows}
  assert sorted(by) == ["align", "fvt", "omp", "relearn", "translate"]
  assert [p["step"] for p in by["relearn"]["points"]] == [0, 2]
  assert by["relearn"]["points"][0]["bpb"] == by["align"]["points"][0]["bpb"]  # step 0 is align's port
  assert by["translate"]["points"][0]["bpb"] == by["translate"]["source_native_bpb"]
  assert by["align"]["source_tokens"] == 0  # an imported source: no training of ours to count
  where = f"{rows[0]['source']}-to-{rows[0]['target']}"
  ported = checkpoints.load_meta(f"{tmp_path}/exp/ports/{rows[0]['corpus']}/decoder/{where}/relearn/seed0/budget2")
  assert ported["step"] == 2 and ported["config"]["data"]["corpus"].startswith("text:")
  assert ported["provenance"]["transplant"]["counts"]["special"] == 1  # <|endoftext|> by role
  again = experiments.run(c, str(tmp_path / "exp"), log=lambda _: 0)  # everything done: nothing recomputed
  assert again == reports


@pytest.mark.slow  # ~30 s: one import, 2 cells of programs with generation
def test_imported_llm_answers_programs_scored_by_exact_match(tmp_path):
  a = random_gpt2(str(tmp_path / "hub" / "a"), 300, seed=0)
  c = llms_config(a, "programs")
  c.crosseval.coherence, c.crosseval.program_prompts = True, 8
  (out,) = experiments.run(c, str(tmp_path / "exp"), log=lambda _: 0).values()
  rows = crosseval.load_rows(fs.join(out, "results.jsonl"))
  assert len(rows) == 2 and all(r["status"] == "ok" and r["prompts"] == 8 for r in rows)
  # A random model computes nothing: its exact match is 0 on its own ISA and on byte (relevance = exact match).
  assert [r["relevance"] for r in rows] == [0.0, 0.0] and all(np.isfinite(r["bits_per_byte"]) for r in rows)
