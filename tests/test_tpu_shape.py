"""The `tpu` experiment's shape on CPU: configs/experiments/tpu.py itself, shrunk, on 8 forced host devices.

The config is read from its file (so this test follows it). Only sizes shrink and lm1b becomes an offline corpus;
the rest (base preset with bf16 and jax.nn.dot_product_attention, all three architectures, the kinds of compiler,
generation and judging) runs as on a TPU VM: once under jit over a data × fsdp × tensor = 2 × 2 × 2 mesh, once under
pmap, each through scripts/experiment.py in a fresh process (the device count is fixed when jax initialises).
"""

import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_docs

from llmcpu import compilers
from llmcpu.crosseval import report
from llmcpu.experiments import base, matrix
from llmcpu.training import checkpoints

ROOT = pathlib.Path(__file__).resolve().parent.parent
TPU_CONFIG = ROOT / "configs" / "experiments" / "tpu.py"
DEVICES = 8
# JAX devices of the slices the tpu config is meant for (v4: one device per chip, megacore; v5e: one per chip).
POD_DEVICES = {"v4-8": 4, "v4-32": 16, "v5litepod-32": 32}
RUNS = {  # parallelism and mesh overrides → what the trainer reports for them
  "jit": ({"parallelism": "jit", "mesh.fsdp": 2, "mesh.tensor": 2}, "(jit, mesh data 2 × fsdp 2 × tensor 2)"),
  # Cross-eval runs the same code in both (one device); generation is judged once, in the jit run.
  "pmap": ({"parallelism": "pmap", "mesh.fsdp": 1, "mesh.tensor": 1, "crosseval.coherence": False}, "(pmap)"),
}
# jit-mesh vs pmap, relative: cross-eval bits per byte and the training loss of every step. Same seed, same rows,
# same math, but bf16 compute: the mesh splits contractions over fsdp/tensor and all-reduces partial sums where pmap
# sums whole rows, so roundings differ, and 6 AdamW steps carry that into the parameters. Seen: ≤ 6e-5 (bits per
# byte, any cell), ≤ 1e-5 (losses). Another seed with half the batch moved native bits per byte by 3e-3 to 1.3e-2, so
# 3e-4 (5× the worst seen) still catches a model that saw other rows or another initialisation.
RTOL = 3e-4


def tpu_config():
  spec = importlib.util.spec_from_file_location("tpu_experiment", TPU_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def shrink_compilers(specs: str) -> str:
  """The same families, permutations and partial permutations with small vocabularies (bpe:32000 → bpe:640).

  400 is about the fewest pieces SentencePiece's bpe accepts on the test corpus (its required characters).
  """
  return re.sub(r"\b(bpe|unigram):(\d+)", lambda m: f"{m[1]}:{max(400, int(m[2]) // 50)}", specs)


def shrink(c, corpus: str) -> dict[str, object]:
  """--config overrides that make the tpu experiment take seconds: sizes only, and an offline corpus."""
  shrunk = shrink_compilers(c.compilers)
  return {
    "corpus": corpus,
    "compilers": shrunk,
    # CPUs on the first ISA only (tpu.py trains every one): each trained ISA costs three compiled train steps per run.
    "train_compilers": shrunk.split(",")[0],
    "steps": 6,
    "model.d_model": 32,  # embed: split over fsdp
    "model.num_heads": 4,  # heads, d_ff and the vocabulary (bpe:400): split over tensor
    "model.d_ff": 64,
    "model.num_layers": 1,  # encoder-decoders: one layer per stack
    "model.max_len": 128,
    "model.attention_impl": "dot_product_attention",  # tpu.py's pallas is TPU-only (tests/test_flash_tpu.py)
    "data.length": 64,
    "data.input_length": 48,
    "data.target_length": 24,
    "train.batch_size": 16,  # 4 rows per batch-parallel device (data × fsdp = 4) under jit, 2 per device under pmap
    "train.learning_rate": 3e-3,
    "train.warmup_steps": 1,
    "train.log_every": 1,
    "train.peak_tflops": 1.0,  # the MFU denominator given: no bf16 matmul benchmark per run
    "crosseval.max_docs": 16,
    "crosseval.prompts": 6,
    "crosseval.new_tokens": 8,
    "crosseval.prompt_bytes": 32,
    "crosseval.representation_docs": 8,
  }


def run_experiment(workdir: pathlib.Path, overrides: dict[str, object], xla_cache: pathlib.Path) -> str:
  """scripts/experiment.py in a fresh process with 8 CPU devices; its output."""
  args = [sys.executable, str(ROOT / "scripts" / "experiment.py"), f"--config={TPU_CONFIG}", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  env = dict(
    os.environ,
    # LLVM at -O0 (XLA's own HLO passes still run): ~20% less CPU time compiling programs that run for milliseconds.
    XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES} --xla_backend_optimization_level=0",
    JAX_PLATFORMS="cpu",
    # Cross-evaluation runs on one device in both runs, with the same shapes: the second run reuses those programs.
    JAX_COMPILATION_CACHE_DIR=str(xla_cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-6000:]
  return out


def test_tpu_config_fits_meshes_and_pod_slices():
  c = tpu_config()
  specs = compilers.parse_list(c.compilers)
  assert {s.family for s in specs} >= {"bpe", "unigram", "byte"}
  assert any(s.permuted and s.perm_fraction == 1 for s in specs) and any(s.perm_fraction < 1 for s in specs)
  archs = base.split_list(c.archs, "archs")
  assert sorted(archs) == sorted(matrix.ARCHS)
  shards = c.mesh.fsdp * c.mesh.tensor
  for devices in (DEVICES, *POD_DEVICES.values()):
    assert devices % shards == 0, devices
    assert c.train.batch_size % (devices // shards) == 0, devices  # rows per batch-parallel device (data × fsdp)
    assert c.train.batch_size % devices == 0, devices  # and under pmap (every device a data shard)
  assert c.train.batch_size % (2 * 2) == 0  # this test's 2 × 2 × 2 mesh: data × fsdp = 4
  for arch in archs:  # parallelism and the mesh reach every run
    run = matrix.cpu_config(c, c.corpus, arch, str(specs[0]), "/tmp/compiled")
    assert run.parallelism == c.parallelism and run.mesh.to_dict() == c.mesh.to_dict()
    assert run.model.num_heads % c.mesh.tensor == 0 and run.model.d_ff % c.mesh.tensor == 0
  shrunk = compilers.parse_list(shrink_compilers(c.compilers))
  assert [(s.family, s.perm_seed, s.perm_fraction) for s in shrunk] == [
    (s.family, s.perm_seed, s.perm_fraction) for s in specs
  ]


@pytest.mark.slow  # 8 forced host devices, two trainings and a matrix: ~80 s of the default run
def test_tpu_shape_on_8_devices_jit_mesh_and_pmap(tmp_path):
  c = tpu_config()
  overrides = shrink(c, "text:" + write_docs(tmp_path))
  archs = base.split_list(c.archs, "archs")
  isas = [s.name for s in compilers.parse_list(overrides["compilers"])]
  trained = compilers.parse(overrides["train_compilers"]).name
  # One after the other: two processes of 8 CPU devices each on 2 cores starve each other's collectives (pmap's
  # training took 4× longer side by side).
  cells, losses = {}, {}
  for name, (extra, shape) in RUNS.items():
    workdir = tmp_path / name
    if cells:  # the same compilers and compiled splits: the second run reuses the first's compile cache
      shutil.copytree(tmp_path / "jit" / "compiled", workdir / "compiled")
    out = run_experiment(workdir, overrides | extra, tmp_path / "xla-cache")
    started = [line for line in out.splitlines() if line.startswith("training ")]
    assert len(started) == len(archs), out[-4000:]
    assert all(f"devices {DEVICES} {shape}, processes 1" in line for line in started), started
    (out_dir,) = re.findall(r"^Report: (\S+) ", out, re.M)
    losses[name] = []
    for arch in archs:  # every run logged every step
      run = pathlib.Path(matrix.cpu_dir(str(workdir), pathlib.Path(out_dir).name, arch, trained))
      logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
      assert [m["step"] for m in logged] == list(range(1, overrides["steps"] + 1)), (arch, logged)
      losses[name] += [m["train/loss"] for m in logged]
      saved = checkpoints.load_meta(str(run))["config"]  # what the run was really trained with
      assert saved["parallelism"] == extra["parallelism"] and saved["mesh"]["tensor"] == extra["mesh.tensor"]
      assert (
        saved["model"]["dtype"] == c.model.dtype
        and saved["model"]["attention_impl"] == overrides["model.attention_impl"]
      )
    rows = report.load_rows(out_dir)
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    got = {(r["arch"], r["model_isa"], r["eval_isa"]): r for r in rows}
    assert sorted(got) == sorted((a, trained, isa) for a in archs for isa in isas)
    assert all(r["step"] == overrides["steps"] for r in rows)
    summary = pathlib.Path(out_dir, "summary.md").read_text()
    assert ("## Calibration" in summary) == extra.get("crosseval.coherence", True) and trained in summary
    cells[name] = got

  jit, pmap = ({k: r["bits_per_byte"] for k, r in cells[n].items()} for n in RUNS)
  native = [k for k, r in cells["jit"].items() if r["native"]]
  assert len(native) == len(archs)
  np.testing.assert_allclose([pmap[k] for k in native], [jit[k] for k in native], rtol=RTOL)
  np.testing.assert_allclose([pmap[k] for k in jit], list(jit.values()), rtol=RTOL)  # and every foreign cell
  jit, pmap = (losses[n] for n in RUNS)
  np.testing.assert_allclose(pmap, jit, rtol=RTOL)
