"""scripts/import_hf.py / export_hf.py (``llmcpu.training.hf_checkpoint``) on a random tiny GPT-2 made offline.

The model's logits are checked against test_hf's float64 numpy GPT-2; the provenance's sha256 against hashlib on
the files; the export against the source tensors byte for byte, and its re-import against the first import.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from conftest import InMemoryCorpus, prose_corpus
from safetensors import safe_open
from test_external_isas import byte_level_bpe
from test_hf import gpt2_checkpoint, logits, params, reference, relative_error, write

from llmcpu import compilers, toolchain
from llmcpu.crosseval.evaluate import CrossEvalOptions, LoadedModel, ModelEvaluator
from llmcpu.crosseval.library import Library
from llmcpu.errors import UserError
from llmcpu.porting import runner
from llmcpu.training import checkpoints, hf_checkpoint

VOCAB = 300  # the tiny byte-level BPE's ids: 256 bytes, <|endoftext|>, 43 merges
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_gpt2_dir(path: str, seed: int = 0) -> tuple[str, dict, dict]:
  """A random GPT2LMHeadModel directory whose vocabulary is the tiny tokenizer's (written beside it)."""
  cfg, tensors = gpt2_checkpoint(seed, hub_names=False)
  cfg["vocab_size"] = VOCAB
  tensors["transformer.wte.weight"] = np.random.default_rng(seed + 1).normal(0, 0.2, (VOCAB, 32)).astype(np.float32)
  byte_level_bpe(path, vocab=VOCAB)
  write(path, cfg, tensors)
  return path, cfg, tensors


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  root = tmp_path_factory.mktemp("import")
  src, cfg, tensors = tiny_gpt2_dir(str(root / "gpt2-tiny"))
  meta = hf_checkpoint.import_dir(src, str(root / "ckpt"), source_id="tiny/gpt2", revision="abc123", log=lambda _: 0)
  return {"root": root, "src": src, "cfg": cfg, "tensors": tensors, "meta": meta, "ckpt": str(root / "ckpt")}


def test_import_is_an_ordinary_checkpoint_with_isa_and_provenance(imported):
  model, meta, comp = checkpoints.load_model(imported["ckpt"])
  ids = np.random.default_rng(3).integers(0, VOCAB, (2, 12))
  assert relative_error(logits(model, ids), reference(imported["cfg"], imported["tensors"], ids)) < 1e-4
  assert comp.spec.family == "hf" and comp.vocab_size == VOCAB
  assert comp.fingerprint == compilers.train(f"hf:{imported['src']}").fingerprint
  record = meta["provenance"]["import"]
  with open(os.path.join(imported["src"], "model.safetensors"), "rb") as f:
    assert record["weights_sha256"] == {"model.safetensors": hashlib.sha256(f.read()).hexdigest()}
  with open(os.path.join(imported["src"], "tokenizer.json"), "rb") as f:
    assert record["tokenizer_sha256"] == hashlib.sha256(f.read()).hexdigest()
  assert (record["source_id"], record["revision"], record["unused_rows"]) == ("tiny/gpt2", "abc123", 0)
  assert meta["step"] == 0 and meta["config"]["data"]["isa"] == f"hf:{imported['src']}/tokenizer.json"
  # GPT-2's byte-level BPE has no UNK: an id the model does not know is read as its one special, <|endoftext|>.
  assert comp.roles.unk is None and meta["model_config"]["unk_id"] == comp.roles.eos == model.config.unk_id
  # The run config names the model as it is (a run derived from it, e.g. a port, builds that model).
  assert {k: meta["config"]["model"][k] for k in meta["model_config"]} == meta["model_config"]


def test_porting_an_imported_cpu_asks_for_its_corpus_in_one_line(imported, tmp_path):
  config = ml_collections.ConfigDict(dict(checkpoint=imported["ckpt"], to_isa="byte", method="align", steps=0))
  config.update(corpus="", seed=0, save_at="", compile_dir="", learning_rate=0.0)
  with pytest.raises(UserError, match=r"carries no training corpus .* pass --config.corpus=CORPUS and"):
    runner.port_checkpoint(config, str(tmp_path / "port"), log=lambda _: 0)
  assert not (tmp_path / "port").exists()


def test_imported_cpu_scores_bits_per_byte_on_its_isa(imported, tmp_path):
  texts = [d["text"][:400] for d in prose_corpus().docs["train"][:12]]
  corpus = InMemoryCorpus(
    "fake", {"train": tuple({"text": t} for t in texts[:8]), "test": tuple({"text": t} for t in texts[8:])}
  )
  built = toolchain.build_compilers(
    [compilers.parse(f"hf:{imported['src']}")], [corpus], str(tmp_path), log=lambda _: 0
  )
  toolchain.compile_corpora([corpus], built, str(tmp_path), log=lambda _: None)
  model, meta, comp = checkpoints.load_model(imported["ckpt"])
  options = CrossEvalOptions(prompts=2, new_bytes=8, program_prompts=2, answer_tokens=4, representation_docs=2)
  ev = ModelEvaluator(LoadedModel(model, meta, comp, imported["ckpt"]), Library(str(tmp_path)), options, corpus="fake")
  row = ev.score(comp)
  assert row["scored_bytes"] == sum(len(t.encode()) for t in texts[8:])
  # A random model: about uniform over its 300 ids, i.e. log2(300) bits per token, far from 0.
  assert 0.5 * row["bpb_uniform"] < row["bits_per_byte"] < 2 * row["bpb_uniform"]


def test_export_then_reimport_is_bit_identical(imported, tmp_path):
  out = str(tmp_path / "exported")
  hf_checkpoint.export_checkpoint(imported["ckpt"], out, log=lambda _: 0)
  with safe_open(os.path.join(out, "model.safetensors"), "numpy") as f:
    exported = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
  assert exported.keys() == imported["tensors"].keys()
  assert all(np.array_equal(exported[k], v) and exported[k].dtype == v.dtype for k, v in imported["tensors"].items())
  config = json.load(open(os.path.join(out, "config.json")))
  eot = compilers.train(f"hf:{imported['src']}").roles.eos
  assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (eot, eot, None)
  hf_checkpoint.import_dir(out, str(tmp_path / "again"), log=lambda _: 0)
  first, _, comp1 = checkpoints.load_model(imported["ckpt"])
  second, _, comp2 = checkpoints.load_model(str(tmp_path / "again"))
  a, b = params(first), params(second)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  assert comp1.fingerprint == comp2.fingerprint
  with pytest.raises(UserError, match="exists"):
    hf_checkpoint.export_checkpoint(imported["ckpt"], out, log=lambda _: 0)


def _nothing_written(workdir: str) -> bool:
  return not os.path.exists(workdir) or not checkpoints.find_runs(workdir)


@pytest.mark.parametrize(
  "damage, match",
  [
    ("no_tokenizer", "no tokenizer.json"),
    ("no_weights", "no model.safetensors"),
    ("mistral", "MistralForCausalLM"),
    ("relu", "activation_function='relu'"),
    ("small_model", "does not belong to these weights"),
  ],
)
def test_bad_source_is_one_line_and_writes_nothing(damage, match, tmp_path):
  src, cfg, tensors = tiny_gpt2_dir(str(tmp_path / "src"))
  if damage == "no_tokenizer":
    os.remove(os.path.join(src, "tokenizer.json"))
  elif damage == "no_weights":
    os.remove(os.path.join(src, "model.safetensors"))
  elif damage == "mistral":
    write(src, dict(cfg, architectures=["MistralForCausalLM"], model_type="mistral"), tensors)
  elif damage == "relu":  # an option llmcpu's GPT-2 does not compute
    write(src, dict(cfg, activation_function="relu"), tensors)
  else:
    small = dict(tensors, **{"transformer.wte.weight": tensors["transformer.wte.weight"][:200]})
    write(src, dict(cfg, vocab_size=200), small)
  workdir = str(tmp_path / "ckpt")
  with pytest.raises(UserError, match=match):
    hf_checkpoint.import_dir(src, workdir, log=lambda _: 0)
  assert _nothing_written(workdir)


def test_import_refuses_a_used_workdir(imported):
  with pytest.raises(UserError, match="already holds a checkpoint"):
    hf_checkpoint.import_dir(imported["src"], imported["ckpt"], log=lambda _: 0)


def test_script_missing_file_is_one_line_exit_1(tmp_path):
  src = tmp_path / "empty"
  src.mkdir()
  env = dict(os.environ, PYTHONPATH=ROOT)
  script = os.path.join(ROOT, "scripts", "import_hf.py")
  proc = subprocess.run(
    [sys.executable, script, f"--src={src}", f"--workdir={tmp_path / 'w'}"],
    capture_output=True, text=True, env=env, timeout=300,
  )  # fmt: skip
  assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
  assert "config.json" in proc.stderr and not (tmp_path / "w").exists()
