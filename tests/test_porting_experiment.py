"""The porting experiment (configs/experiments/porting.py's kind) end to end with tiny CPUs: natives, one port run per
budget (scratch also at multiples of the native's steps), scored recovery curves, and a rerun that finds everything
done. The methods themselves are tested one
by one in tests/test_porting.py; the report's arithmetic by hand there too."""

import json

import pytest
from conftest import write_docs

from llmcpu import experiments
from llmcpu.errors import UserError
from llmcpu.training import checkpoints


def test_porting_experiment_end_to_end(tmp_path):
  c = experiments.porting.porting_config("tiny")
  c.update(corpus="text:" + write_docs(tmp_path), ports="char>byte", archs="decoder", steps=4, seeds="0")
  c.update(methods="translate,align,omp,relearn,scratch", budgets="0,2", scratch_budgets="2")  # scratch: 0, 2, 2 × 4
  c.model.update(d_model=32, num_heads=2, d_ff=64, max_len=64)
  c.train.update(batch_size=8, peak_tflops=1.0)
  c.checkpoint.async_save = False
  c.data.length = 64
  c.crosseval.max_docs = 16
  workdir, logs = str(tmp_path / "exp"), []
  (out,) = experiments.run(c, workdir, log=logs.append).values()
  rows = [json.loads(line) for line in open(f"{out}/results.jsonl")]
  assert [r["method"] for r in rows] == ["translate", "align", "omp", "relearn", "scratch"]
  steps = {r["method"]: [p["step"] for p in r["points"]] for r in rows}
  assert steps == {"translate": [0], "align": [0], "omp": [0], "relearn": [0, 2], "scratch": [0, 2, 8]}
  by = {r["method"]: r for r in rows}
  # Every curve of one (source, target) shares its reference cells; translate is the source read in its own ISA.
  assert len({(r["zero_shot_bpb"], r["native_bpb"]) for r in rows}) == 1
  assert by["translate"]["points"][0]["bpb"] == by["translate"]["source_native_bpb"]
  # relearn's step 0 is align's port (the same rows, nothing trained yet): the same bits per byte.
  assert by["relearn"]["points"][0]["bpb"] == by["align"]["points"][0]["bpb"]
  assert by["relearn"]["points"][1]["tokens"] == 2 * 8 * 64
  # Each budget is its own run whose schedule ends there: relearn's 2-step run is a separate checkpoint.
  run2 = tmp_path / "exp" / "ports"
  assert len(list(run2.glob("*/decoder/char-to-byte/relearn/seed0/budget2/checkpoints/2"))) == 1
  # Both anchors: align's port is every row's align anchor; tokens in all add the source's own 4 × 8 × 64.
  assert {r["align_bpb"] for r in rows} == {by["align"]["points"][0]["bpb"]}
  assert by["relearn"]["source_tokens"] == by["relearn"]["native_tokens"] == 4 * 8 * 64
  assert by["scratch"]["source_tokens"] == 0 and by["scratch"]["points"][-1]["tokens"] == 8 * 8 * 64
  # omp's donor is the native byte CPU; every byte piece keeps align's row (char → byte: nothing is missing).
  ported = f"{workdir}/ports/{rows[0]['corpus']}/decoder/char-to-byte/omp/seed0/budget0"
  donor = checkpoints.load_meta(ported)["provenance"]["donor"]["checkpoint"]
  assert donor == f"{workdir}/runs/{rows[0]['corpus']}/decoder/byte/seed0"
  assert by["omp"]["points"][0]["bpb"] == by["align"]["points"][0]["bpb"]
  gap = by["align"]["align_bpb"] - by["align"]["source_native_bpb"]  # align → translate: 0 closed, or no gap
  assert by["omp"]["share_translate"] == by["align"]["share_translate"] == (0.0 if gap > 0 else None)
  text = open(f"{out}/porting.md").read()
  assert "| decoder | char → byte | relearn |" in text and "share of align → translate gap closed" in text
  assert any(line.startswith("== port [7/7] decoder char → byte by scratch, 8 steps") for line in logs)
  logs.clear()
  experiments.run(c, workdir, log=logs.append)  # a rerun: nothing trains again
  assert not any(line.startswith("training ") or line.startswith("porting ") for line in logs), logs
  assert sum(line.endswith(": done") for line in logs) == 9  # two natives, seven port runs
  # ... and the report scores nothing again: every cell is read back from the report's cells/.
  assert any(line.endswith("cells kept from an earlier run") for line in logs)
  assert not any(": bpb " in line for line in logs), [line for line in logs if ": bpb " in line]
  timeless = lambda r: {k: v for k, v in r.items() if k != "ms_per_1k_tokens"}  # noqa: E731 (translate's timing)
  assert [timeless(json.loads(line)) for line in open(f"{out}/results.jsonl")] == [timeless(r) for r in rows]


def test_the_plan_ports_by_every_method_with_the_native_target_cpu_as_donor(tmp_path):
  """The port runs the full config asks for, read off the plan (nothing compiled or trained)."""
  import importlib.util
  import os

  from llmcpu.experiments import porting

  spec = importlib.util.spec_from_file_location(
    "porting_config", os.path.join(os.path.dirname(__file__), "..", "configs", "experiments", "porting.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.corpus = "text:" + write_docs(tmp_path)
  c.seeds = "0"
  workdir, logs = str(tmp_path / "exp"), []
  exp = porting.Porting(c, workdir, log=logs.append)
  exp.plan()
  stages = exp.port_stages()
  assert {(a.name, b.name) for a, b in exp.pairs} >= {("bpe1000", "byte"), ("byte", "bpe1000")}
  runs = {}
  for stage in stages:
    config = stage.train.args[0]
    parts = stage.path.split(os.sep)  # …/ports/<corpus>/<arch>/<source>-to-<target>/<method>/seed0/budget<N>
    corpus = parts[-6]
    runs.setdefault((parts[-5], parts[-4], parts[-3]), []).append((config, int(parts[-1].removeprefix("budget"))))
  methods = {m for _, _, m in runs}
  assert methods == set(porting.ALL_METHODS + ("relearn+omp", "relearn+procrustes", "relearn+distill")) - {"translate"}
  # distill (and relearn from its rows) ports decoders only: no such run for the encoder-decoders.
  assert not [k for k in runs if k[0] == "encoder_decoder" and "distill" in k[2]]
  assert ("encoder_decoder", "bpe1000-to-byte", "omp") in runs
  for (arch, where, method), configs in runs.items():
    source, target = where.split("-to-")
    want = method.partition("+")
    for config, budget in configs:
      if method != "scratch":  # one scratch run per target serves every source
        assert config.checkpoint.endswith(os.path.join("exp", "runs", corpus, arch, source, "seed0"))
      assert config.donor.endswith(os.path.join("exp", "runs", corpus, arch, target, "seed0"))  # the native ISA-B CPU
      assert (config.method, config.init) == (want[0], want[2] or "align") and config.steps == budget
      assert config.distill_tokens == 65_536 and config.omp_atoms == 8
    budgets = sorted(b for _, b in configs)
    trained = want[0] in ("relearn", "finetune", "scratch")
    assert budgets == ([0, 10, 30, 100, 300] if trained and method != "scratch" else budgets if trained else [0])
  assert any("distill, relearn+distill port decoders only" in line for line in logs)
  with pytest.raises(UserError, match=r"unknown porting method 'relearn\+scratch'"):
    porting.split_method("relearn+scratch")
