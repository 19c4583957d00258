"""Cross-evaluation cost: one XLA compile per model serves every ISA; quickstart wall time and peak memory.

  python benchmarks/crosseval_bench.py [--workdir=/tmp/crosseval_bench] [--isas=bpe:1000,bpe:4000,...] [--steps=60]

Compiles python_docs for the ISAs and trains a tiny decoder on the first one (both reused when ``--workdir`` holds
them), then times the *pure eval* of each cell: one exact bits-per-byte pass over the test split (host batching +
the jitted scoring function; no baselines, generation or report).

  pure_eval_seconds  {ISA: best of --repeats warm passes of that ISA alone}
  all_isas_seconds   one pass over every ISA with a *fresh* evaluator: its single XLA compile is inside
  compile_seconds    the first (cold) pass of the first ISA minus its warm pass: the cost of one compile
  eval_cost_ratio    (all_isas_seconds − compile_seconds) / Σ pure_eval_seconds: the one-time compile excluded,
                     as it would be paid by a single ISA too (target ≤ 1.2; a recompile per ISA adds N−1 compiles)
  eval_cost_ratio_with_compile   all_isas_seconds / Σ pure_eval_seconds (on a small test split the one compile
                     is a large share of it)
  xla_compiles       compiles of the scoring function after the all-ISA pass (1 = once per model, the direct check)

Then it runs ``scripts/experiment.py --config=configs/experiments/quickstart.py`` in a subprocess, if that exists,
for ``quickstart_seconds`` and ``peak_rss_gib`` (the child's peak resident memory, target ≤ 4 GiB); null otherwise.
Prints progress, then one JSON object as the last line.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import flags

from llmcpu import compilers, data, toolchain
from llmcpu.crosseval import scoring
from llmcpu.crosseval.evaluate import CrossEvalOptions, LoadedModel, ModelEvaluator
from llmcpu.crosseval.library import Library
from llmcpu.data import objectives as obj
from llmcpu.ops import cli
from llmcpu.training import checkpoints, run_config, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKDIR = flags.DEFINE_string("workdir", None, "Reuse compiled data and the model here (default: a temp dir).")
_ISAS = flags.DEFINE_string(
  "isas", "bpe:1000,bpe:4000,bpe:1000+perm:1,char", "Evaluation ISAs; the model's is the first."
)
_STEPS = flags.DEFINE_integer("steps", 60, "Training steps of the benchmark model (its quality does not matter).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Best of this many warm passes per ISA.")
_QUICKSTART = flags.DEFINE_bool("quickstart", True, "Also time scripts/experiment.py on the quickstart config.")
_QUICKSTART_TIMEOUT = flags.DEFINE_integer("quickstart_timeout", 3600, "Seconds before the quickstart is abandoned.")


def prepare(workdir: str, specs: list[str], steps: int) -> str:
  compile_dir = os.path.join(workdir, "compiled")
  corpus = data.load_corpus("python_docs", data_dir=os.path.join(workdir, "tfds"))
  built = toolchain.build_compilers(compilers.parse_list(specs), [corpus], compile_dir, log=cli.log)
  toolchain.compile_corpora([corpus], built, compile_dir, log=lambda _: None)
  run = os.path.join(workdir, "model")
  c = run_config.base_config("decoder", "tiny")
  c.data.compile_dir, c.data.isa, c.data.corpus = compile_dir, specs[0], "python_docs"
  c.train.steps, c.train.eval_every, c.train.peak_tflops, c.checkpoint.every = steps, 0, 1.0, steps
  trainer.train(c, run, log=cli.log)
  return run


def timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def eval_pass(ev: ModelEvaluator, comp) -> None:
  name = ev.lib.corpus_name(ev.corpus, comp)
  split = ev.lib.split(name, comp, ev.opt.split)
  objective = obj.objective_for(ev.config, split.kind)
  share = scoring.unk_share_nats(ev.mc.vocab_size, comp.vocab_size)
  unigram = ev.lib.unigram_bits(name, comp, scoring.scored_fields(split, objective), ev.opt.train_split)
  batches = ev.pipeline(split, objective).eval_batches()
  scoring.run_pass(ev.sums_fn, ev.params, ev.rest, batches, share, unigram, split.num_docs)


def quickstart() -> dict:
  script = os.path.join(ROOT, "scripts", "experiment.py")
  cfg = os.path.join(ROOT, "configs", "experiments", "quickstart.py")
  if not (os.path.exists(script) and os.path.exists(cfg)):
    return {
      "quickstart_seconds": None,
      "peak_rss_gib": None,
      "quickstart_note": "scripts/experiment.py or configs/experiments/quickstart.py does not exist yet",
    }
  with tempfile.TemporaryDirectory() as tmp:
    cmd = [sys.executable, script, f"--config={cfg}", f"--workdir={tmp}"]
    cli.log("quickstart: " + " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_QUICKSTART_TIMEOUT.value, cwd=ROOT)
    seconds = time.perf_counter() - t0
  peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child waited for, in KiB
  out = {"quickstart_seconds": round(seconds, 1), "peak_rss_gib": round(peak_kib / 2**20, 3)}
  if proc.returncode:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
    out["quickstart_note"] = f"exit status {proc.returncode}: {tail[0]}"
  return out


def main(argv):
  del argv
  specs = [s.strip() for s in _ISAS.value.split(",") if s.strip()]
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.abspath(_WORKDIR.value or tmp)
    run = prepare(workdir, specs, _STEPS.value)
    model, meta, own = checkpoints.load_model(run)
    loaded = LoadedModel(model, meta, own, run)
    lib = Library(os.path.join(workdir, "compiled"))
    opts = CrossEvalOptions(coherence=False)
    comps = [lib.compiler(s) for s in specs]
    for c in comps:  # load (memory-map) every split first: the timings are about evaluation, not disk
      lib.split(lib.corpus_name("python_docs", c), c, "test")

    warm = ModelEvaluator(loaded, lib, opts)
    warm.plan(comps)
    cold_first = timed(lambda: eval_pass(warm, comps[0]))
    pure = {c.name: min(timed(lambda c=c: eval_pass(warm, c)) for _ in range(_REPEATS.value)) for c in comps}
    fresh = ModelEvaluator(loaded, lib, opts)  # a new jit: its one compile is inside the all-ISA timing
    fresh.plan(comps)
    all_isas = timed(lambda: [eval_pass(fresh, c) for c in comps])
    compile_s = cold_first - pure[comps[0].name]
    result = {
      "isas": [c.name for c in comps],
      "pure_eval_seconds": {k: round(v, 4) for k, v in pure.items()},
      "all_isas_seconds": round(all_isas, 4),
      "compile_seconds": round(compile_s, 4),
      "eval_cost_ratio": round((all_isas - compile_s) / sum(pure.values()), 4),
      "eval_cost_ratio_with_compile": round(all_isas / sum(pure.values()), 4),
      "xla_compiles": fresh.xla_compiles,
      "bench_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }
    cli.log(f"pure eval per ISA {result['pure_eval_seconds']}; all {len(comps)} ISAs {all_isas:.2f}s")
  if _QUICKSTART.value:
    result.update(quickstart())
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  cli.run_script(main)
