"""The swap and embedding-languages experiments end to end with tiny CPUs, one seed of natives where the experiment
allows it: every stage runs and every cell reaches the report. Their stages are tested one by one in
tests/test_stitching.py, the reports' arithmetic by hand there too. The swap on programs runs by default (~100 CPU-s
on a loaded 2-core machine); the swap on prose (~90 CPU-s) and the languages experiment (four encoders, two readouts,
every feed decoded) are marked slow, to keep the default suite within 10 minutes: `pytest -m slow` runs them."""

import json

import pytest
from conftest import write_docs

from llmcpu import experiments


def tiny(c):
  c.corpus, c.compilers, c.steps, c.seeds = "programs:small", "char,byte", 4, "0,1"
  c.model.update(d_model=32, num_heads=2, d_ff=64, max_len=64)
  c.train.update(batch_size=8, eval_every=0, peak_tflops=1.0)
  c.checkpoint.async_save = False
  c.data.update(length=64, input_length=64, target_length=16, truncate=True)
  return c


def test_swap_experiment_end_to_end(tmp_path):
  """Every (decoder ISA, encoder ISA) cell of a trained stitch on programs, saved at every budget, scored with exact
  match and intervals."""
  from llmcpu.experiments import swapping as swaps

  s = tiny(swaps.swap_experiment_config())
  s.update(variants="stitch", budgets="0,2", prompts=8, anchor_docs=16, anchor_pairs=400)
  s.update(seeds="0", seed_pairs="0:0")  # the diagonal is then the CPU itself
  (out,) = experiments.run(s, str(tmp_path / "exp"), log=lambda _: None).values()
  rows = [json.loads(line) for line in open(f"{out}/results.jsonl")]
  cells = {(r["decoder"], r["encoder"], r["variant"], r["step"]) for r in rows}
  assert cells == {(a, a, v, 4) for a in ("char", "byte") for v in ("native", "shuffled")} | {
    (a, b, "stitch", step) for a in ("char", "byte") for b in ("char", "byte") for step in (0, 2)
  }
  assert all(r["exact_match"] is not None and r["corpus"] == rows[0]["corpus"] for r in rows)
  assert all(r["exact_match_ci"] is None or r["exact_match_ci"][0] <= r["exact_match"] for r in rows)
  assert f"### {rows[0]['corpus']}: stitch — penalty (exact match)" in open(f"{out}/swap.md").read()


@pytest.mark.slow
def test_languages_experiment_end_to_end(tmp_path):
  """Readouts of the char encoder fed every encoder's embeddings, the ids control and the analogies; a rerun finds
  every run done."""
  from llmcpu.experiments import languages

  workdir, quiet = str(tmp_path / "exp"), {"log": lambda _: None}
  g = tiny(languages.languages_config())
  g.archs, g.readers = "encoder", "char"
  g.readout.update(steps=2, relative=4, batch_size=8, length=48)
  g.update(programs=8, analogies=13, anchor_docs=32)
  (out,) = experiments.run(g, workdir, **quiet).values()
  rows = [json.loads(line) for line in open(f"{out}/results.jsonl")]
  feeds = {(r["reader"], r["source"], r.get("source_seed"), r["alignment"]) for r in rows if "bleu" in r}
  assert ("char", "byte", 0, "procrustes") in feeds and ("char", "ids", None, "none") in feeds
  assert ("char", "ids", None, "procrustes") in feeds  # the id control through the encoders' fitted map
  assert all(r["chrf_floor"] > 0 and "token_f1_above_floor" in r for r in rows if "bleu" in r)
  assert {r["query"] for r in rows if "query" in r} == {"analogy", "c_only", "b_only", "oracle"}
  logs = []
  experiments.run(g, workdir, log=logs.append)
  assert not any(m.startswith("training") for m in logs)  # nothing retrains


@pytest.mark.slow
def test_prose_swap_experiment_end_to_end(tmp_path):
  """The swap experiment on span filling of prose (spans:text:…): bits per byte in every cell, no exact match."""
  from llmcpu.experiments import swapping as swaps

  s = tiny(swaps.swap_experiment_config())
  s.update(corpus=f"spans:text:{write_docs(tmp_path)}", variants="lstsq,stitch_xattn", budgets="0,2")
  s.update(prompts=0, eval_docs=16, anchor_docs=16, anchor_pairs=400, seeds="0", seed_pairs="0:0")
  s.model.max_len = 160
  s.data.update(input_length=160, target_length=48)
  (out,) = experiments.run(s, str(tmp_path / "exp"), log=lambda _: None).values()
  rows = [json.loads(line) for line in open(f"{out}/results.jsonl")]
  swapped = [r for r in rows if not r["variant"].startswith("native_xattn")]
  assert {(r["decoder"], r["encoder"], r["variant"]) for r in swapped if r["step"] == 2} == {
    (a, b, "stitch_xattn") for a in ("char", "byte") for b in ("char", "byte")
  }
  assert all(r["exact_match"] is None and r["bits_per_byte"] > 0 and r["programs"] == 16 for r in rows)
  assert {(r["decoder"], r["encoder"], r["variant"]) for r in rows if r["step"] == 0} >= {
    (a, b, "lstsq") for a in ("char", "byte") for b in ("char", "byte")
  }
  # the control of stitch_xattn: each native's cross-attention trained as many steps on its own encoder, and
  # scored after another document's input too; every penalty and share lost also read against it, with an interval
  control = [r for r in rows if r["variant"] in ("native_xattn", "native_xattn_shuffled")]
  assert {(r["decoder"], r["encoder"], r["variant"], r["step"]) for r in control} == {
    (a, a, v, 2) for a in ("char", "byte") for v in ("native_xattn", "native_xattn_shuffled")
  }
  text = open(f"{out}/swap.md").read()
  assert "penalty (bits per byte)" in text
  lost = text[text.index("stitch_xattn — share of the input's worth lost (bits per byte), against native + cross-") :]
  assert lost.split("\n")[4].startswith("| char | ")  # a share (with its interval where the input is worth something)
