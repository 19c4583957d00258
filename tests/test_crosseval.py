"""Cross-ISA evaluation, checked against independent computations on tiny trained CPUs.

One module-scoped world: an in-memory prose corpus (pydoc topics cut into ~1.5 KB documents) compiled by bpe:500,
bpe:1000 and bpe:500+perm:1; tiny decoders trained on bpe:500 and bpe:1000; a third decoder made from the first by
permuting its embedding rows along with the ISA (it *is* a bpe:500+perm:1 CPU, exactly); a tiny encoder; and a
programs corpus with a tiny encoder-decoder.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import pydoc_data.topics
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import held_out_corpus

from llmcpu import compilers, models, specials, toolchain
from llmcpu.crosseval import calibration, coherence, generation, intervals, report, scoring, summary
from llmcpu.crosseval.evaluate import CrossEvalOptions, LoadedModel, ModelEvaluator, calibrate, evaluate
from llmcpu.crosseval.judge import ByteJudge
from llmcpu.crosseval.library import Library
from llmcpu.data import programs
from llmcpu.experiments import damage
from llmcpu.metrics import text as text_metrics
from llmcpu.training import checkpoints, loss, run_config, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISAS = ["bpe:500", "bpe:1000", "bpe:500+perm:1"]
FAST = CrossEvalOptions(prompts=8, new_bytes=32, program_prompts=16, answer_tokens=12, representation_docs=8)
QUICKSTART_ISAS = ["char", "bpe:1000", "byte", "char+perm:1"]  # configs/experiments/quickstart.py


def prose_docs(chunk: int = 1500) -> tuple[dict, ...]:
  docs = []
  for text in sorted(pydoc_data.topics.topics.values()):
    buf = ""
    for para in text.split("\n\n"):
      if buf and len(buf) + len(para) > chunk:
        docs.append({"text": buf})
        buf = ""
      buf = f"{buf}\n\n{para}" if buf else para
    if buf:
      docs.append({"text": buf})
  return tuple(docs)


def program_docs() -> tuple[dict, ...]:
  train, test = programs.generate("train", 1400), programs.generate("test", 200)
  return tuple(train[:1400] + test)  # documents() holds out every 8th: a mix of both, fine for a smoke test


def compile_world(workdir: str, corpus, specs: list[str]) -> None:
  built = toolchain.build_compilers(compilers.parse_list(specs), [corpus], workdir, log=lambda _: None)
  toolchain.compile_corpora([corpus], built, workdir, log=lambda _: None)


def train_cpu(compile_dir: str, workdir: str, arch: str, isa: str, corpus: str, steps: int, **data) -> str:
  c = run_config.base_config(arch, "tiny")
  c.data.compile_dir, c.data.isa, c.data.corpus, c.data.eval_split = compile_dir, isa, corpus, "test"
  c.data.length = 64
  for k, v in data.items():
    setattr(c.data, k, v)
  c.train.steps, c.train.batch_size, c.train.eval_every, c.train.peak_tflops = steps, 16, 0, 1.0
  c.train.log_every, c.train.warmup_steps = steps, 10
  c.checkpoint.every, c.checkpoint.async_save = steps, False
  trainer.train(c, workdir, log=lambda _: None)
  return workdir


def permuted_copy(path: str, compiler: compilers.Compiler) -> LoadedModel:
  """The same CPU re-wired for a permuted ISA: row ``perm[i]`` of the embedding is old row ``i``."""
  model, meta, _ = checkpoints.load_model(path)
  inv = compilers.isa.inverse(compiler.perm)
  model.embed.table[...] = model.embed.table[...][inv]
  if hasattr(model, "head"):
    model.head.kernel[...] = model.head.kernel[...][:, inv]
  meta = dict(meta, isa_name=compiler.name, isa_fingerprint=compiler.fingerprint)
  return LoadedModel(model, meta, compiler, path + "+perm")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("crosseval")
  compile_dir = str(root / "compiled")
  compile_world(compile_dir, held_out_corpus(prose_docs(), 8), ISAS)
  a = train_cpu(compile_dir, str(root / "dec-bpe500"), "decoder", "bpe:500", "fake", 120)
  b = train_cpu(compile_dir, str(root / "dec-bpe1000"), "decoder", "bpe:1000", "fake", 120)
  lib = Library(compile_dir)
  perm = lib.compiler("bpe:500+perm:1")
  a_perm = permuted_copy(a, perm)
  return {"root": root, "compile_dir": compile_dir, "a": a, "b": b, "a_perm": a_perm, "lib": lib}


@pytest.fixture(scope="module")
def rows(world):
  return evaluate([world["a"], world["b"], world["a_perm"]], ISAS, world["compile_dir"], options=FAST, log=print)


def _cell(rows, ckpt, isa):
  (r,) = [r for r in rows if r["checkpoint"] == ckpt and r["eval_isa"] == isa]
  return r


def _loaded(path):
  model, meta, comp = checkpoints.load_model(path)
  return LoadedModel(model, meta, comp, path)


# ------------------------------------------------------------------------------------------------- exact scoring


def _numpy_bpb(ev: ModelEvaluator, split, objective: str, eval_vocab: int) -> tuple[float, int]:
  """Float64 bits per byte from the model's logits; bytes from the split's raw counts (not target_bytes)."""
  nll, illegal = 0.0, 0
  vocab = ev.model.config.vocab_size
  for batch in ev.pipeline(split, objective).eval_batches():
    logits, targets, weights = loss.forward(ev.model, {k: jnp.asarray(v) for k, v in batch.items()})
    logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1))
    t = np.asarray(targets)
    keep = (np.asarray(weights) > 0) & (t != specials.EOS_ID)
    bad = t >= vocab
    unk = ev.model.config.unk_id  # what the model reads an id it does not know as (its ISA's UNK)
    picked = np.take_along_axis(logp, np.where(bad, unk, t)[..., None], axis=-1)[..., 0]
    # An illegal target: the UNK mass shared by UNK and every id the model cannot name.
    picked = np.where(bad, picked - math.log(eval_vocab - vocab + 1), picked)
    nll -= float(picked[keep].sum())
    illegal += int((bad & keep).sum())
  return nll / (math.log(2) * float(split.fields["text"].nbytes.sum())), illegal


def _with_unk(loaded: LoadedModel, unk_id: int) -> LoadedModel:
  """The same CPU whose stand-in for unknown ids is ``unk_id`` (an ISA whose UNK is not id 1)."""
  from flax import nnx

  other = models.create_from_config(loaded.model.config.replace(unk_id=unk_id))
  nnx.update(other, nnx.state(loaded.model))
  return LoadedModel(other, loaded.meta, loaded.compiler, loaded.name)


@pytest.mark.parametrize("isa, unk_id", [("bpe:500", 1), ("bpe:1000", 1), ("bpe:1000", 40)])
def test_bpb_equals_float64_recomputation_from_logits(world, isa, unk_id):
  lib = Library(world["compile_dir"], max_docs=6)
  loaded = _loaded(world["a"])
  ev = ModelEvaluator(loaded if unk_id == 1 else _with_unk(loaded, unk_id), lib, FAST)
  comp = lib.compiler(isa)
  row = ev.score(comp)
  split = lib.split("fake", comp, "test")
  expect, illegal = _numpy_bpb(ev, split, row["objective"], comp.vocab_size)
  assert row["bits_per_byte"] == pytest.approx(expect, rel=1e-5)
  ids = np.asarray(split.fields["text"].tokens)
  # lm: every content id of the split is a target exactly once; ids >= 500 are illegal and scored as p(UNK).
  assert row["scored_tokens"] == len(ids)
  assert row["bytes"] == row["scored_bytes"] == int(split.fields["text"].nbytes.sum())
  assert row["illegal_targets"] == illegal == int((ids >= 500).sum())
  assert row["illegal_rate"] == pytest.approx((ids >= 500).mean())
  if isa == "bpe:1000":
    assert illegal > 0 and row["illegal_inputs"] > 0
  assert row["bpb_uniform"] == pytest.approx(math.log2(500) * len(ids) / row["bytes"])


def test_unigram_baseline_equals_direct_count(world):
  lib = world["lib"]
  comp = lib.compiler("bpe:1000")
  train, test = lib.split("fake", comp, "train"), lib.split("fake", comp, "test")
  counts = collections.Counter(np.asarray(train.fields["text"].tokens).tolist())
  counts[specials.EOS_ID] += train.num_docs
  total = sum(counts.values()) + comp.vocab_size
  bits = sum(-math.log2((counts[i] + 1) / total) for i in np.asarray(test.fields["text"].tokens).tolist())
  expect = bits / int(test.fields["text"].nbytes.sum())
  assert lib.unigram_bpb("fake", comp, test, ["text"], "train") == pytest.approx(expect, rel=1e-9)


def test_permuted_cpu_on_permuted_isa_equals_native_cell(rows, world):
  native = _cell(rows, world["a"], "bpe500")
  moved = _cell(rows, world["a_perm"].name, "bpe500-perm1")
  assert native["native"] and moved["native"]
  assert moved["bits_per_byte"] == pytest.approx(native["bits_per_byte"], rel=1e-5)
  assert moved["token_accuracy"] == pytest.approx(native["token_accuracy"], abs=1e-6)
  # The permuted pair in both directions is confidently wrong: at or below the unigram baseline.
  for ck, isa in ((world["a"], "bpe500-perm1"), (world["a_perm"].name, "bpe500")):
    r = _cell(rows, ck, isa)
    assert summary.pair_kind(r) == "permuted"
    assert r["normalized_score"] is not None and r["normalized_score"] <= 0, r


def test_damage_points_are_matched_by_the_permutation_symmetry():
  # No CPU is trained on a partly permuted ISA: its matched cell is the base ISA's native one (the test above shows
  # a CPU on a permuted ISA scores exactly its base's native bits per byte). By hand: (4 − 5) / (4 − 3) = −1.
  def row(spec, fingerprint, bpb, native):
    return dict(
      status="ok",
      arch="decoder",
      corpus="c",
      split="test",
      seed=0,
      eval_isa_spec=spec,
      eval_fingerprint=fingerprint,
      native=native,
      bits_per_byte=bpb,
      bpb_unigram=4.0,
    )

  rows = [row("bpe:1000", "A", 3.0, True), row("bpe:1000+perm:1:0.5", "B", 5.0, False), row("char", "C", 6.0, False)]
  scoring.add_baselines(rows)
  assert rows[1]["normalized_score"] == pytest.approx(-1.0) and rows[1]["bpb_matched_via"] == "bpe:1000"
  assert rows[2]["normalized_score"] is None and rows[2]["bpb_matched_via"] is None  # not a permutation: unmatched


def test_damage_curves_table_and_figure(tmp_path):
  # Hand-made cells of two seeds: the table shows each point's mean ± std, recomputed here with numpy.
  rng = np.random.default_rng(0)
  rows, values = [], {}
  for arch in ("decoder", "encoder"):
    for f in (0.0, 0.1, 1.0):
      for seed in (0, 1):
        spec = "bpe:1000" if f == 0 else f"bpe:1000+perm:1:{f:g}"
        v = float(rng.uniform(-2, 1))
        values.setdefault((arch, f), []).append(v)
        rows.append(
          dict(
            status="ok",
            arch=arch,
            corpus="c",
            model_isa="bpe1000",
            model_isa_spec="bpe:1000",
            eval_isa_spec=spec,
            seed=seed,
            normalized_score=v,
          )
        )
  table = damage.damage_markdown(rows)
  for arch in ("decoder", "encoder"):
    line = next(x for x in table.splitlines() if x.startswith(f"| bpe1000 · {arch} · c | normalized_score"))
    for f in (0.0, 0.1, 1.0):
      v = np.array(values[arch, f])
      assert f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" in line
  assert damage.damage_figure(rows, str(tmp_path / "d.png")) and (tmp_path / "d.png").stat().st_size > 0
  assert not damage.damage_figure(rows[:4], str(tmp_path / "none.png"))  # two points are not a curve


def test_native_cell_is_best_of_its_row(rows, world):
  for ck in (world["a"], world["b"], world["a_perm"].name):
    cells = [r for r in rows if r["checkpoint"] == ck]
    assert all(r["status"] == "ok" for r in cells)
    (nat,) = [r for r in cells if r["native"]]
    assert nat["bits_per_byte"] == min(r["bits_per_byte"] for r in cells)
    assert nat["normalized_score"] == pytest.approx(1.0)
    assert nat["isa_overlap"] == 1.0 and nat["illegal_rate"] == 0.0
    assert nat["bpb_unigram"] > nat["bits_per_byte"]  # trained beyond counting opcodes


def test_one_xla_compile_per_model_and_coherence_fields(rows, world):
  for r in rows:
    assert r["xla_compiles"] == 1, (r["checkpoint"], r["eval_isa"])
    assert 0.0 <= r["coherence"] <= 1.0 and 0.0 <= r["fluency"] <= 1.0
    rel = r["relevance"]
    assert r["coherence"] == pytest.approx(r["fluency"] * (0.0 if rel < 0 else rel if rel <= 1 else 1.0 / rel))
    assert 0.0 <= r["copy_rate"] <= 1.0 and math.isfinite(r["relevance_beyond_tail"])
    assert r["new_tokens"] > 0 and r["prompt_bytes_mean"] >= FAST.prompt_bytes
    for key in ("fluency", "relevance", "coherence", "bits_per_byte"):
      lo, hi = r[f"{key}_ci"]
      assert lo <= r[key] + 1e-9 and r[key] <= hi + 1e-9, (key, r[key], lo, hi)
    assert r["prompts"] == FAST.prompts and len(r["samples"]) == FAST.samples
    assert r["judge_bpb_real"] < 4.0  # the judge reads real held-out text well
    assert r["byte_context"] == pytest.approx(64 * r["bytes_per_token"])
    # Only native cells replay their prompts shuffled (a calibration of relevance).
    assert (r.get("shuffled_prompt") is not None) == r["native"]
    if r["native"]:
      assert set(r["shuffled_prompt"]) >= {"fluency", "relevance", "coherence", "relevance_ci"}
  # Every column of a row judged the same documents' prompts, and keeps its per-prompt table for paired comparisons:
  # a paired difference recomputed from two tables equals the difference of the figures each cell computed alone.
  for ck in {r["checkpoint"] for r in rows}:
    cells = [r for r in rows if r["checkpoint"] == ck]
    assert len({tuple(r["prompt_table"]["docs"]) for r in cells}) == 1
    nat, other = next(r for r in cells if r["native"]), next(r for r in cells if not r["native"])
    p = coherence.paired(nat["prompt_table"], other["prompt_table"], "relevance")
    assert p["difference"] == pytest.approx(nat["relevance"] - other["relevance"], abs=1e-9)
  r = _cell(rows, world["b"], "bpe500")
  assert summary.pair_kind(r) == "prefix"  # bpe:500's regular ids are bpe:1000's first ones
  assert r["illegal_rate"] == 0.0


# ------------------------------------------------------------------------------------------------- failures


def _no_isa_checkpoint(path: str) -> str:
  mngr = checkpoints.manager(os.path.join(path, "checkpoints"), async_save=False)
  checkpoints.save(mngr, 1, {"x": jnp.zeros(3)}, {"format": 1}, force=True)
  mngr.wait_until_finished()
  mngr.close()
  return path


def _corrupt_checkpoint(src: str, path: str) -> str:
  import shutil

  shutil.copytree(src, path)
  for dirpath, _, files in os.walk(os.path.join(path, "checkpoints")):
    for f in files:
      if "state" in dirpath and not f.endswith(".json"):
        with open(os.path.join(dirpath, f), "wb") as fh:
          fh.write(b"garbage")
  return path


def test_failed_cells_are_recorded_and_the_rest_computed(world):
  root = world["root"]
  bogus = [
    str(root / "does-not-exist"),
    _no_isa_checkpoint(str(root / "no-isa")),
    _corrupt_checkpoint(world["a"], str(root / "corrupt")),
  ]
  logs = []
  opts = dataclasses.replace(FAST, coherence=False, max_docs=3)
  out = evaluate([*bogus, world["a"]], ["bpe:500", "bpe:777"], world["compile_dir"], options=opts, log=logs.append)
  assert len(out) == 8
  for r in out:
    good = r["checkpoint"] == world["a"] and r["eval_isa"] == "bpe500"
    assert r["status"] == ("ok" if good else "failed"), r
    if not good:
      assert r["error"] and "\n" not in r["error"]
  errors = {r["checkpoint"]: r.get("error") for r in out if r["eval_isa"] == "bpe500"}
  assert "no checkpoint" in errors[bogus[0]]
  assert "no ISA metadata" in errors[bogus[1]]
  assert "no compiler bpe:777 under" in _cell(out, world["a"], "bpe777")["error"]
  assert errors[bogus[2]]  # the corrupt one: orbax's error, on one line
  assert len(logs) >= 4
  paths = report.write_report(out, str(root / "failed-report"))
  assert "failed" in open(paths["tables"]["bits_per_byte"]["md"]).read()
  assert "Failed cells" in open(paths["summary"]).read()


def test_script_exit_status(world, tmp_path):
  def run(ckpts: str) -> subprocess.CompletedProcess:
    cmd = [
      sys.executable,
      os.path.join(ROOT, "scripts", "cross_eval.py"),
      f"--config.checkpoints={ckpts}",
      "--config.isas=bpe:500,bpe:1000",
      f"--config.compile_dir={world['compile_dir']}",
      f"--config.out={tmp_path / 'out'}",
      "--config.coherence=false",
      "--config.max_docs=2",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))

  bad = run(str(tmp_path / "nothing"))
  assert bad.returncode == 1 and "error:" in bad.stderr
  good = run(f"{world['a']},{tmp_path / 'nothing'}")
  assert good.returncode == 0, good.stderr
  assert "error:" in good.stderr and os.path.exists(tmp_path / "out" / "summary.md")


def test_script_takes_a_directory_of_runs_at_any_depth(world, tmp_path):
  """--config.checkpoints=<an experiment's runs/> evaluates every run below it, whatever its depth, and nothing else
  (the compile dir beside it holds no run)."""
  exp = tmp_path / "exp"
  exp.mkdir()
  os.symlink(world["compile_dir"], exp / "compiled")
  runs = {world["a"]: exp / "runs" / "fake" / "decoder" / "bpe500" / "seed0", world["b"]: exp / "runs" / "b" / "seed0"}
  for target, link in runs.items():
    link.parent.mkdir(parents=True)
    os.symlink(target, link)
  cmd = [
    sys.executable,
    os.path.join(ROOT, "scripts", "cross_eval.py"),
    f"--config.checkpoints={exp / 'runs'}",
    "--config.isas=bpe:500",
    f"--config.compile_dir={exp / 'compiled'}",
    f"--config.out={tmp_path / 'out'}",
    "--config.coherence=false",
    "--config.max_docs=2",
  ]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr
  rows = report.load_rows(str(tmp_path / "out"))
  assert sorted(r["checkpoint"] for r in rows) == sorted(str(p) for p in runs.values())
  assert all(r["status"] == "ok" for r in rows)


def _cross_eval_command(world, out, options: CrossEvalOptions) -> list[str]:
  flags = [f"--config.{f.name}={getattr(options, f.name)}" for f in dataclasses.fields(options)]
  return [
    sys.executable,
    os.path.join(ROOT, "scripts", "cross_eval.py"),
    f"--config.checkpoints={world['a']}",
    f"--config.isas={','.join(ISAS)}",
    f"--config.compile_dir={world['compile_dir']}",
    f"--config.out={out}",
    *flags,
  ]


def test_sigterm_mid_matrix_keeps_finished_cells_and_the_rerun_gives_the_same_report(world, tmp_path):
  """SIGTERM while cell 2 of 3 runs: exit 0, one line, the finished cells kept; the rerun computes only the others,
  and its report (generation and calibration included) is the one an uninterrupted in-process run writes (all but
  wall times)."""
  import signal

  options = dataclasses.replace(FAST, max_docs=16, prompts=4, new_tokens=8)
  out = tmp_path / "out"
  cmd = _cross_eval_command(world, out, options)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  try:
    for line in proc.stdout:
      if ": bpb " in line:  # the first cell is finished and kept; the second one is under way
        proc.send_signal(signal.SIGTERM)
        break
    stdout, stderr = proc.communicate(timeout=300)
  finally:
    proc.kill()
  assert proc.returncode == 0, stderr
  (stopped,) = [line for line in stdout.splitlines() if line.startswith("stopped by SIGTERM")]
  done = int(stopped.split("after ")[1].split(" of")[0])
  assert stopped == f"stopped by SIGTERM after {done} of 3 cells; rerun the same command to continue"
  assert 1 <= done < 3 and len(os.listdir(out / "cells")) == done
  assert not os.path.exists(out / "results.jsonl")
  again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
  assert again.returncode == 0, again.stderr
  assert f"{done} cells kept from an earlier run" in again.stdout
  assert not os.path.exists(out / "cells")  # the report is written: nothing left to continue
  whole = evaluate([world["a"]], ISAS, world["compile_dir"], options=options, log=lambda _: None)
  reference = calibrate(world["compile_dir"], whole[0]["corpus"], ISAS[0], options)
  report.write_report(whole, str(tmp_path / "whole"), reference)

  def files(d):
    found = {}
    for root, _, names in os.walk(d):
      for n in names:
        if not n.endswith(".png") and n != "results.jsonl":
          found[os.path.relpath(os.path.join(root, n), d)] = open(os.path.join(root, n), encoding="utf-8").read()
    return found

  def results(d):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in report.load_rows(str(d))]

  assert results(out) == results(tmp_path / "whole")
  assert files(out) == files(tmp_path / "whole")


def test_cell_store_gives_back_exactly_what_it_kept_and_only_for_its_key(tmp_path):
  from llmcpu.crosseval import resume

  store = resume.CellStore(str(tmp_path / "cells"))
  key = resume.CellStore.key("ckpt", (12, 34), "bpe500", "f" * 16, isas=["a", "b"], options={"seed": 0})
  docs = np.random.default_rng(0).random(5) * 1e3
  row = {"status": "ok", "bits_per_byte": 1 / 3, "ci": (0.1, 0.2), "_docs": {"nll": docs}, "n": np.int64(7)}
  assert store.load(key) is None
  store.save(key, row)
  back = store.load(key)
  assert back["_docs"]["nll"].dtype == np.float64 and back["_docs"]["nll"].tobytes() == docs.tobytes()
  assert back["bits_per_byte"] == 1 / 3 and back["ci"] == [0.1, 0.2] and back["n"] == 7
  other = resume.CellStore.key("ckpt", (13, 34), "bpe500", "f" * 16, isas=["a", "b"], options={"seed": 0})
  assert store.load(other) is None  # another checkpoint step: computed again
  assert resume.CellStore.key("ckpt", None, "bpe500", "f" * 16) is None  # an unidentified checkpoint is not kept
  (path,) = [os.path.join(tmp_path / "cells", n) for n in os.listdir(tmp_path / "cells")]
  with open(path, "r+") as f:
    f.truncate(10)
  assert store.load(key) is None  # damaged: computed again


# ------------------------------------------------------------------------------------------------- the report


def test_a_report_cut_short_is_not_finished(rows, tmp_path):
  """results.jsonl is the report's marker: written last, removed first, so a rewrite killed in the middle (here: at
  an experiment's figure, after the tables) leaves no finished-looking report for experiment.py to skip."""
  report.write_report(rows, str(tmp_path))
  assert report.load_rows(str(tmp_path))

  def killed(*args, **kwargs):
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    report.write_report(rows, str(tmp_path), views=(killed,))
  assert not os.path.exists(tmp_path / "results.jsonl") and report.load_rows(str(tmp_path)) == []
  paths = report.write_report(rows, str(tmp_path))  # the rerun writes it all again
  assert os.path.exists(paths["summary"]) and len(report.load_rows(str(tmp_path))) == len(rows)


def test_report_files_hold_the_numbers_of_results(rows, world, tmp_path):
  paths = report.write_report(rows, str(tmp_path))
  back = report.load_rows(str(tmp_path))
  assert len(back) == len(rows)
  for metric in ("bits_per_byte", "normalized_score", "token_accuracy", "illegal_rate", "isa_overlap", "coherence"):
    for ext in ("md", "csv", "tex"):
      assert os.path.getsize(paths["tables"][metric][ext]) > 0
    assert open(paths["heatmaps"][metric], "rb").read(4) == b"\x89PNG"
  md = open(paths["tables"]["bits_per_byte"]["md"]).read()
  csv_text = open(paths["tables"]["bits_per_byte"]["csv"]).read()
  tex = open(paths["tables"]["bits_per_byte"]["tex"]).read()
  for r in back:
    v = f"{r['bits_per_byte']:.3f}"
    lo, hi = r["bits_per_byte_ci"]
    k = r["bits_per_byte_ci_info"]["clusters"]
    assert k == r["documents"]  # a corpus with no known structure: one cluster per document
    cell = f"{v} ({lo:.3f}–{hi:.3f}, {k} clusters)"  # one seed: the figure and its interval over documents
    assert (f"**{cell}**" if r["native"] else cell) in md
    assert (f"{v}*" if r["native"] else v) in csv_text
    assert (f"\\textbf{{{v} ({lo:.3f}--{hi:.3f}, {k} clusters)}}" if r["native"] else v) in tex
    assert "_docs" not in r  # per-document arrays stay in memory
  text = open(paths["summary"]).read()
  assert "Native bits per byte (lowest) best of its row in 3/3 (CPU, seed) pairs: holds" in text
  assert "Fully permuted ISA scores at or below the unigram baseline" in text


def test_seeds_are_one_row_with_mean_and_std(rows):
  base = [dict(r, seed=0) for r in rows if r["checkpoint"] == rows[0]["checkpoint"]]
  again = [dict(r, seed=1, checkpoint=r["checkpoint"] + "-s1", bits_per_byte=r["bits_per_byte"] + 0.25) for r in base]
  m = report.matrix(base + again, "bits_per_byte")
  assert len(m.rows) == 1
  md = report.markdown_table(base + again, "bits_per_byte")
  for r0, r1 in zip(base, again, strict=True):
    pair = np.array([r0["bits_per_byte"], r1["bits_per_byte"]])
    assert f"{pair.mean():.3f} ± {pair.std(ddof=1):.3f}" in md
  text = summary.summarize(base + again, {})
  assert "in 2/2 (CPU, seed) pairs" in text and "(seeds)" in text


def test_relevance_verdicts_are_equivalence_tests_not_an_interval_holding_0():
  def cell(model, isa, ci90, prompts=64):
    info = {"clusters": 23, "undefined": 0, "resamples": 4999}
    return {
      **dict(status="ok", checkpoint=model, arch="decoder", model_isa=model, model_isa_spec=model, seed=0),
      **dict(eval_isa=isa, eval_isa_spec=isa, native=model == isa, prompts=prompts, equivalence_margin=0.1),
      **dict(relevance=sum(ci90) / 2, relevance_ci=[ci90[0] - 0.01, ci90[1] + 0.01], relevance_ci_info=info),
      "relevance_ci90": list(ci90),
    }

  rows = [
    cell("bpe:500", "bpe:500", (0.25, 0.45)),  # executes
    cell("bpe:1000", "bpe:1000", (-0.05, 0.30), prompts=12),  # wide: undecided
    cell("bpe:500", "bpe:500+perm:1", (-0.04, 0.06)),  # inside ±0.1: equivalent to 0
    cell("bpe:1000", "bpe:1000+perm:1", (-0.15, 0.12)),  # holds 0, but is not shown to be 0
  ]
  lines = "\n".join(summary.relevance_claims(rows))
  assert "Native CPUs execute their prompt (TOST at ±0.1" in lines
  assert "in 1/2 (CPU, seed) pairs: DOES NOT HOLD" in lines
  want = "bpe:1000 · decoder (seed 0): relevance 0.125 (-0.060–0.310, 23 clusters), 90% -0.050–0.300: undecided at 12"
  assert want in lines
  assert "Fully permuted code does not execute (relevance equivalent to 0" in lines and "in 1/2 cells" in lines
  assert "on bpe:1000+perm:1: relevance -0.015" in lines and "undecided at 64 prompts" in lines
  assert "interval includes 0" not in lines


# ------------------------------------------------------------------------------------------------- judge & text


def test_judge_prefers_real_text_to_shuffled_bytes():
  docs = [d["text"] for d in prose_docs()]
  judge = ByteJudge(5).fit(docs[:-20])
  held = docs[-20:]
  rng = np.random.default_rng(0)
  shuffled = [bytes(rng.permutation(np.frombuffer(t.encode(), np.uint8))) for t in held]
  real, noise = judge.bits_per_byte(held), judge.bits_per_byte(shuffled)
  assert real < 3.0 < 6.0 < noise
  probs = 2.0 ** np.array([judge.log2_probs([bytes([b])], ["The quick bro"])[0] for b in range(256)])
  assert probs.sum() == pytest.approx(1.0)


def test_text_measures_on_hand_made_strings():
  assert coherence.distinct_n("the cat sat on the mat", 2) == 1.0
  assert coherence.distinct_n("a b a b a b", 2) == pytest.approx(2 / 5)
  assert coherence.distinct_n("", 2) == 0.0
  assert coherence.repetition("x y z w x y z w", 4) == pytest.approx(1 - 4 / 5)
  assert coherence.repetition("one two three four five", 4) == 0.0
  assert coherence.lexical_validity(["Hello world", "zzq"], {"hello", "world"}) == pytest.approx(2 / 3)
  assert text_metrics.chrf(["the same text"], ["the same text"]) == pytest.approx(100.0)
  assert text_metrics.chrf(["qqqq"], ["the same text"]) < 5
  assert text_metrics.exact_match([" 42", "7"], ["42", "8"]) == 0.5
  assert coherence.well_formed("add", " -12") and not coherence.well_formed("add", "twelve")
  assert coherence.well_formed("num2words", "forty-two") and not coherence.well_formed("num2words", "42")
  assert coherence.well_formed("sort", "abc") and not coherence.well_formed("sort", "a b")
  assert list(coherence.fit(np.array([-0.5, 0.0, 0.4, 1.0, 4.0]))) == [0.0, 0.0, 0.4, 1.0, 0.25]


def _prompt_bits_naive(judge: ByteJudge, text: bytes, prompt: bytes) -> float:
  """The prompt-adapted judge, byte by byte with dictionaries: the static model's probability of each byte after
  the whole history, then one Witten–Bell step per cache order from the prompt's own n-gram counts."""
  lo, hi = judge.cache_orders
  grams = {n: collections.Counter(prompt[i : i + n] for i in range(len(prompt) - n + 1)) for n in range(lo, hi + 1)}
  bits = 0.0
  for t in range(len(text)):
    history, w = prompt + text[:t], text[t : t + 1]
    q = 2.0 ** judge.log2_probs([w], [history])[0]
    for n in range(lo, min(hi, len(prompt)) + 1):
      ctx = history[len(history) - (n - 1) :]
      following = {g: c for g, c in grams[n].items() if g[:-1] == ctx}
      c_h, t_h = sum(following.values()), len(following)
      if c_h:
        q = (following.get(ctx + w, 0) + t_h * q) / (c_h + t_h)
    bits -= math.log2(q)
  return bits


def test_prompt_adapted_judge_equals_a_naive_recomputation():
  docs = [d["text"] for d in prose_docs()]
  judge = ByteJudge(5).fit(docs[:-10])
  prompts = [docs[-1][:70].encode(), docs[-2][:50].encode(), "ünïcode → prompt, ünïcode".encode()]
  texts = [docs[-1][70:160].encode(), b"", b"x", docs[-3][:40].encode(), "ünïcode again".encode()]
  bits = judge.prompt_bits(texts, prompts)
  for i, text in enumerate(texts):
    for j, prompt in enumerate(prompts):
      assert bits[i, j] == pytest.approx(_prompt_bits_naive(judge, text, prompt), rel=1e-9, abs=1e-9), (i, j)
  # A text costs fewer bits after its own prompt than after another one: the prompt's words are cheap.
  assert bits[0, 0] < bits[0, 1] and bits[4, 2] < bits[4, 0]


def test_coherence_axes_on_hand_made_generations():
  docs = [d["text"] for d in prose_docs()]
  judge = ByteJudge(5).fit(docs[::2])
  lexicon = {w for t in docs[::2] for w in coherence.words(t)}
  held = [t for t in docs[1::2] if len(t) > 400][:40]
  prompts = [t[:100] for t in held]
  conts = [t[100:] for t in held]

  def figures(gens):
    return coherence.assess(coherence.prose_table(judge, lexicon, prompts, [gens], conts, nbytes=120), "prose")

  cut = [coherence.cut_bytes(c, 120) for c in conts]  # the references: the true continuations' first 120 bytes
  real = figures(cut)
  assert real["fluency"] == real["relevance"] == real["coherence"] == pytest.approx(1.0)
  other = figures([cut[(i + 20) % 40] for i in range(40)])
  assert abs(other["relevance"]) < 0.1 and other["fluency"] > 0.9 and other["coherence"] < 0.15
  loop = figures(["the " * 30] * 40)
  assert loop["fluency"] < 0.1 and loop["coherence"] < 0.1
  echo = figures(prompts)
  assert echo["relevance"] > 2 and echo["coherence"] < 0.5
  # Half a true continuation, half another's: relevance in between, both intervals honest.
  half = figures([conts[i][:60] + conts[(i + 20) % 40][:60] for i in range(40)])
  assert 0.1 < half["relevance"] < 0.9
  lo, hi = half["relevance_ci"]
  assert lo < half["relevance"] < hi and lo > other["relevance_ci"][0]


def test_tables_show_each_intervals_clusters_and_undefined_resamples():
  base = dict(status="ok", model_isa="char", arch="decoder", eval_isa="char", native=True, corpus="x", seed=0)
  info = {"clusters": 23, "undefined": 12, "resamples": 4999}
  rows = [base | dict(checkpoint="a", relevance=0.3, relevance_ci=[0.2, 0.4], relevance_ci_info=info)]
  assert "**0.300 (0.200–0.400, 23 clusters, 12/4999 resamples undefined)**" in report.markdown_table(rows, "relevance")
  rows[0]["relevance_ci_info"] = dict(info, undefined=0)
  assert "**0.300 (0.200–0.400, 23 clusters)**" in report.markdown_table(rows, "relevance")


def test_output_that_ignores_its_prompt_is_equivalent_to_0_given_enough_prompts():
  """Another document's continuation ignores its prompt by construction: with every held-out prompt (179) its
  relevance is shown equivalent to 0 at ±0.1 (TOST); with 40 the test cannot tell, and says so instead of reading
  "interval includes 0" as "not executed". The true continuation executes at either size."""
  docs = [d["text"] for d in prose_docs()]
  judge = ByteJudge(5).fit(docs[::2])
  lexicon = {w for t in docs[::2] for w in coherence.words(t)}
  held = [t for t in docs[1::2] if len(t) > 400]
  assert len(held) == 179
  for n, verdict in ((len(held), intervals.EQUIVALENT), (40, intervals.UNDECIDED)):
    prompts, conts = [t[:100] for t in held[:n]], [t[100:] for t in held[:n]]

    def judged(gens, prompts=prompts, conts=conts):
      return coherence.assess(coherence.prose_table(judge, lexicon, prompts, [gens], conts), "prose", margin=0.1)

    other = judged([conts[(i + n // 2) % n][:120] for i in range(n)])
    assert other["relevance_verdict"] == verdict, other["relevance_ci90"]
    assert other["relevance_ci"][0] < 0 < other["relevance_ci"][1]  # both hold 0: only the test tells them apart
    assert judged([c[:120] for c in conts])["relevance_verdict"] == intervals.EXECUTES


def test_calibration_table_holds_on_the_world(world):
  lib = Library(world["compile_dir"])
  opt = dataclasses.replace(FAST, prompts=32, new_bytes=96)  # a repeated word is a loop only over enough bytes
  rows = {r["reference"]: r for r in calibration.calibrate(lib, "fake", lib.compiler("bpe:500"), opt)}
  assert all(r["prompts"] == 32 for r in rows.values())
  # Known answers, stated here rather than read from summary.EXPECTED: noise and a loop are not fluent, another
  # document's text does not depend on this prompt, an echo is far too dependent on it.
  assert rows["random bytes"]["fluency"] == 0.0 and rows["repeated piece"]["fluency"] < 0.1
  assert rows["another document's continuation"]["fluency"] > 0.9
  lo, hi = rows["another document's continuation"]["relevance_ci"]
  assert lo < 0.0 < hi
  assert rows["prompt echoed"]["relevance"] > 2 and rows["prompt echoed"]["copy_rate"] == 1.0
  for name in coherence.BASELINES:  # they read only the tail: the same text after the head-swapped prompt
    assert rows[name]["relevance_beyond_tail"] == 0.0 and rows[name]["relevance_beyond_tail_ci"] == [0.0, 0.0]
  assert rows["true continuation"]["relevance_beyond_tail"] == pytest.approx(1.0)
  text = summary.summarize([], {}, list(rows.values()))
  assert "## Calibration" in text and coherence.NGRAM_BASELINE in text


def test_token_prefix_covers_the_bytes_and_stays_a_prefix(world):
  comp = world["lib"].compiler("bpe:500")
  text = "Hello wörld — “quoted”  text\nnew line"
  ids = np.asarray(comp.encode(text))
  for want in range(1, len(text.encode())):
    k = generation.token_prefix(comp, ids, text, want, len(ids))
    got = comp.decode(ids[:k])
    assert text.startswith(got) and len(got.encode()) >= want - 3


def _relevance_by_hand(judge: ByteJudge, prompts: list[bytes], texts: list[bytes], refs: list[bytes], heads) -> float:
  """Pooled PMI per byte of ``texts`` over that of ``refs``, every bit from the naive judge: PMI = mean bits after
  every other prompt (``heads(i, j)``: the prompt text i is read after in place of prompt j) − bits after its own."""

  def pmi(i: int, text: bytes) -> float:
    others = [j for j in range(len(prompts)) if j != i]
    mean = sum(_prompt_bits_naive(judge, text, heads(i, j)) for j in others) / len(others)
    return mean - _prompt_bits_naive(judge, text, prompts[i])

  gen = sum(pmi(i, t) for i, t in enumerate(texts)) / sum(map(len, texts))
  ref = sum(pmi(i, t) for i, t in enumerate(refs)) / sum(map(len, refs))
  return gen / ref


def _strip_copies_naive(text: bytes, prompt: bytes, n: int = 8) -> bytes:
  """``text`` without every byte that lies in some n-byte substring of it also found in ``prompt``."""
  starts = [s for s in range(len(text) - n + 1) if text[s : s + n] in prompt]
  return bytes(b for i, b in enumerate(text) if not any(s <= i < s + n for s in starts))


def test_relevance_and_its_variants_equal_a_by_hand_computation():
  docs = [d["text"] for d in prose_docs()]
  judge = ByteJudge(3, cache_orders=(2, 4)).fit(docs[:-10])
  held = [t.encode() for t in docs[-5:]]
  prompts, refs = [t[:40] for t in held], [t[40:70] for t in held]
  # Outputs: one that copies 12 bytes of its prompt, others that take words from the prompt or from elsewhere.
  gens = [prompts[0][5:17] + b" zzz qq", b" the" + prompts[1][-6:], held[3][100:125], b"", prompts[4][:9] + b"x"]
  # What each would write after its head-swapped prompt: the same for two, something else for the others.
  swapped = [gens[0], b" a" + prompts[1][-6:], b" and of the", b"zz", gens[4]]
  table = coherence.prose_table(
    judge,
    {"the"},
    [p.decode() for p in prompts],
    [[g.decode() for g in gens]],
    [r.decode() for r in refs],
    nbytes=30,
    tail_bytes=8,
    swapped=[[g.decode() for g in swapped]],
  )
  got = coherence.assess(table, "prose")
  assert got["relevance"] == pytest.approx(_relevance_by_hand(judge, prompts, gens, refs, lambda i, j: prompts[j]))
  hybrid = lambda i, j: prompts[j][:-8] + prompts[i][-8:]  # noqa: E731 - another prompt's head, this one's tail
  assert got["relevance_beyond_tail_judge"] == pytest.approx(_relevance_by_hand(judge, prompts, gens, refs, hybrid))
  # Head swap by hand: 5 prompts, partner i + 2; each tail the last 8 bytes back to the space before their first word.
  starts = [p.rfind(b" ", len(p) - 8 - 16, len(p) - 8 + 1) for p in prompts]  # ASCII prompts: else len − 8
  tails = [p[s if s >= 0 else len(p) - 8 :] for p, s in zip(prompts, starts, strict=True)]
  assert any(s < 0 for s in starts) and any(s >= 0 for s in starts)  # both rules are exercised
  swap = [prompts[(i + 2) % 5][: len(prompts[(i + 2) % 5]) - len(tails[(i + 2) % 5])] for i in range(5)]
  swap = [h[max(len(h) - (len(p) - len(t)), 0) :] + t for h, p, t in zip(swap, prompts, tails, strict=True)]
  assert coherence.head_swap([p.decode() for p in prompts])[0] == [h.decode() for h in swap]

  def crossed(i: int, g: bytes, g_swapped: bytes) -> float:
    b = lambda text, prompt: _prompt_bits_naive(judge, text, prompt)  # noqa: E731
    return (b(g, swap[i]) - b(g, prompts[i])) - (b(g_swapped, swap[i]) - b(g_swapped, prompts[i]))

  per_byte = lambda texts, others: (
    sum(  # noqa: E731 - pooled D over the pairs' mean bytes
      crossed(i, g, o) for i, (g, o) in enumerate(zip(texts, others, strict=True))
    )
    / sum((len(g) + len(o)) / 2 for g, o in zip(texts, others, strict=True))
  )
  real = per_byte(refs, [refs[(i + 2) % 5] for i in range(5)])
  assert got["head_swap_pmi_per_byte"] == pytest.approx(per_byte(gens, swapped))
  assert got["head_swap_pmi_per_byte_real"] == pytest.approx(real)
  # Five 40-byte prompts: real text shows no use of these heads, so the ratio is undefined, not a sign flip.
  assert real < 0 and got["relevance_beyond_tail"] is None
  # Copied bytes by hand: gens[0] copies 12 bytes (one 8-gram run), gens[4] 9; no other output has an 8-byte match.
  assert got["copy_rate"] == pytest.approx((12 + 9) / sum(map(len, gens)))
  stripped = [b" zzz qq", gens[1], gens[2], b"", b"x"]
  ref_stripped = [_strip_copies_naive(r, p) for r, p in zip(refs, prompts, strict=True)]
  want = _relevance_by_hand(judge, prompts, stripped, ref_stripped, lambda i, j: prompts[j])
  assert got["relevance_beyond_copying"] == pytest.approx(want)


def test_byte_measures_and_finish_word_on_known_answers():
  assert coherence.cut_bytes("añb", 2) == "a" and coherence.cut_bytes("añb", 3) == "añ"
  assert coherence.copied_mask(b"xx12345678yy", b"__12345678__").tolist() == [False] * 2 + [True] * 8 + [False] * 2
  assert not coherence.copied_mask(b"1234567", b"1234567").any()  # shorter than 8 bytes: no copy
  counts = {"function": 5, "functional": 2, "fun": 1, "class": 9}
  assert coherence.finish_word("a Fun", counts) == "ction"
  assert coherence.finish_word("the functio", counts) == "n"
  assert coherence.finish_word("a fun.", counts) == "" and coherence.finish_word("xyz", counts) == ""


def test_greedy_judge_continuation_is_the_argmax_of_its_own_probabilities():
  docs = [d["text"] for d in prose_docs()]
  judge = ByteJudge(4).fit(docs[:-10])
  for ctx in [b"", b"ab", b"The quick bro", "ünïc".encode()]:
    naive = [judge.log2_probs([bytes([b])], [ctx])[0] for b in range(256)]  # one byte at a time, the scoring path
    assert judge.next_byte_log2([ctx])[0] == pytest.approx(np.array(naive), abs=1e-12)
  prompt = b"The object is"
  out = judge.greedy_continuation([prompt, b""], 12)
  text = b""
  for _ in range(12):
    text += bytes([int(np.argmax([judge.log2_probs([bytes([b])], [prompt + text])[0] for b in range(256)]))])
  assert out[0] == text and len(out[1]) == 12


def test_local_baselines_earn_no_relevance_beyond_the_tail():
  """On the embedded corpus, no CPU: the judge continuing each prompt greedily earns today's relevance (it finishes
  what the prompt's last bytes start) but none beyond the tail; finishing the last word then babbling neither."""
  docs = [d["text"] for d in prose_docs()]
  train, held = docs[::2], docs[1::2]
  judge = ByteJudge(5).fit(train)
  counts = collections.Counter(w for t in train for w in coherence.words(t))
  prompts, conts = [], []
  for t in held:  # cut just before the first word-starting space past 64 bytes, 96 bytes left after it
    b = t.encode()
    cand = [k for k in generation.word_starts(b) if 64 <= k and k + 96 <= len(b)]
    if cand:
      prompts.append(b[: cand[0]].decode())
      conts.append(b[cand[0] :].decode())
  assert len(prompts) >= 64
  prompts, conts = prompts[:64], conts[:64]
  texts = coherence.calibration_texts(judge, counts, prompts, conts, 96)
  swapped_prompts, partner = coherence.head_swap(prompts)
  # A generator that reads the head: the document's text after the judged window (its partner's after the swap).
  texts["later text"] = ([coherence.cut_bytes(c[96:], 96) for c in conts], [])
  texts["later text"][1].extend(texts["later text"][0][j] for j in partner)
  got = {}
  for k, (own, other) in texts.items():
    table = coherence.prose_table(judge, set(counts), prompts, [own], conts, nbytes=96, swapped=[other])
    got[k] = coherence.assess(table, "prose")
  for s, p in zip(swapped_prompts, prompts, strict=True):
    assert s.encode().endswith(p.encode()[-8:]) and len(s.encode()) <= len(p.encode()), (s, p)
  names = (*coherence.BASELINES, "true continuation")
  assert all(len(t.encode()) == 96 for n in names for t in texts[n][0] if t.isascii())
  assert got["true continuation"]["relevance_beyond_tail"] == pytest.approx(1.0)
  assert got["true continuation"]["head_swap_pmi_per_byte_real"] > 0.02  # real text depends on its prompt's head
  assert got[coherence.NGRAM_BASELINE]["relevance"] > 0.3  # today's relevance rewards a purely local model
  for name in coherence.BASELINES:  # they write the same after both prompts: exactly nothing beyond the tail
    assert texts[name][0] == texts[name][1]
    assert got[name]["relevance_beyond_tail"] == 0.0 and got[name]["relevance_beyond_tail_ci"] == [0.0, 0.0]
  assert got["later text"]["relevance_beyond_tail"] > 0.2 and got["later text"]["relevance_beyond_tail_ci"][0] > 0
  # The judge-side estimate (other heads + this tail as the other prompts) does not hold local models at 0.
  assert max(abs(got[n]["relevance_beyond_tail_judge"]) for n in coherence.BASELINES) > 0.05


@pytest.fixture(scope="module")
def quickstart_isas(tmp_path_factory):
  """The test corpus compiled by the quickstart's ISAs and by unigram:500 (no CPU trained)."""
  compile_dir = str(tmp_path_factory.mktemp("quickstart-isas") / "compiled")
  specs = [*QUICKSTART_ISAS, "unigram:500"]
  compile_world(compile_dir, held_out_corpus(prose_docs(), 8), specs)
  lib = Library(compile_dir)
  return lib, [lib.compiler(s) for s in specs]


def test_prompts_are_the_same_bytes_for_every_isa(quickstart_isas):
  lib, comps = quickstart_isas
  cuts = lib.prompt_cuts("fake", comps, "test", 64, 96)
  raw = lib.raw_texts(lib.corpus_name("fake", comps[0]), comps[0], "test")["text"]
  docs = generation.pick_cuts(cuts, 64)
  assert len(docs) >= 16
  decoded = []
  for comp in comps:
    split = lib.split(lib.corpus_name("fake", comp), comp, "test")
    prompts = generation.prose_prompts(comp, raw, cuts, docs)
    decoded.append([comp.decode(ids).encode() for ids in prompts.ids])
    for d, ids in zip(docs, prompts.ids, strict=True):
      # The prompt's own compile is exactly the start of the document's compile: in-distribution machine code.
      assert np.array_equal(ids, np.asarray(split.fields["text"].doc(d))[: len(ids)]), (comp.name, d)
  for d, k, *per_isa in zip(docs, [cuts[d] for d in docs], *decoded, strict=True):
    text = raw[d].encode()
    assert all(p == text[:k] for p in per_isa)  # byte-identical across ISAs, and the raw text's prefix
    assert 64 <= k <= 64 + generation.CUT_SLACK and text[k : k + 1] == b" " and len(text) - k >= 96


# ------------------------------------------------------------------------------------------------- other CPUs


def test_encoder_representation_agreement(world):
  enc = train_cpu(world["compile_dir"], str(world["root"] / "enc"), "encoder", "bpe:500", "fake", 40)
  out = evaluate([enc], ["bpe:500", "bpe:500+perm:1"], world["compile_dir"], options=FAST, log=print)
  nat, perm = _cell(out, enc, "bpe500"), _cell(out, enc, "bpe500-perm1")
  assert nat["objective"] == "mlm" and nat["coherence"] is None
  assert nat["representation_agreement"] == pytest.approx(1.0, abs=1e-6)
  assert perm["representation_agreement"] < 0.999
  assert perm["normalized_score"] is None or perm["normalized_score"] < 1


def test_encoder_decoder_on_programs(tmp_path):
  corpus = held_out_corpus(program_docs(), 8, "progs", fields=("input", "target"), label_fields=("task",))
  compile_dir = str(tmp_path / "compiled")
  compile_world(compile_dir, corpus, ["char", "char+perm:1"])
  ed = train_cpu(
    compile_dir, str(tmp_path / "ed"), "encoder_decoder", "char", "progs", 60, input_length=64, target_length=48
  )
  out = evaluate([ed], ["char", "char+perm:1"], compile_dir, options=FAST, log=print)
  for r in out:
    assert r["status"] == "ok", r
    assert r["objective"] == "seq2seq" and r["truncated_examples"] == 0
    assert 0.0 <= r["exact_match"] <= 1.0 and r["coherence"] == r["exact_match"]
    assert set(r["exact_match_by_task"]) <= set(programs.TASKS)
    assert r["prompts"] == FAST.program_prompts
    hits = np.asarray(r["prompt_table"]["rows"])[:, 0]  # one row per program: its hit, by program
    assert r["prompt_table"]["kind"] == "programs" and hits.mean() == pytest.approx(r["exact_match"])
  assert _cell(out, ed, "char")["bits_per_byte"] < _cell(out, ed, "char-perm1")["bits_per_byte"]
  assert _cell(out, ed, "char")["prompt_table"]["docs"] == _cell(out, ed, "char-perm1")["prompt_table"]["docs"]
  # The local baselines on the same programs, checked against what each task's answer is, not the code's tables:
  # copying the operand solves `copy` exactly and never `num2words` (digits in, words out).
  lib = Library(compile_dir)
  rows = {r["reference"]: r for r in calibration.calibrate(lib, "progs", lib.compiler("char"), FAST)}
  operand = rows[coherence.OPERAND_BASELINE]["exact_match_by_task"]
  assert operand["copy"] == 1.0 and operand["num2words"] == 0.0
  assert rows[coherence.PRIOR_BASELINE]["exact_match_by_task"]["copy"] == 0.0  # random words never repeat
  text = summary.summarize(out, {}, list(rows.values()))
  assert "## Exact match by task" in text and "Native exact match above every local baseline" in text
