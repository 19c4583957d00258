#!/usr/bin/env bash
# Accelerator check: on one GPU or TPU machine, in about 10 minutes, one JSON object on stdout (progress on stderr):
#
#   model_bench       benchmarks/model_bench.py as it is (f32 tiny/small step MFU, KV-cache speedup)
#   group_bench       benchmarks/group_bench.py: tokens/s of one tiny CPU alone vs CPUs trained in groups of 3/9/18
#                     under one jit (llmcpu.training.group), the figure that sets experiments' config.group
#   model_bench_bf16  its training-step measurement in bfloat16 for the small and base presets, MFU against the
#                     chip's bf16 matmul peak measured in the same run; attention_impl=dot_product_attention
#                     (cuDNN's fused attention on a GPU, XLA's elsewhere)
#   compile           scripts/compile.py: python_docs with bpe:4000 and a fully permuted copy
#   train             scripts/train.py: a base-preset decoder (bf16), --steps steps of 16 × 1024 tokens on bpe:4000
#   cross_eval        scripts/cross_eval.py: that checkpoint on both ISAs
#
#   benchmarks/accelerator_check.sh [--steps=300] [--workdir=DIR] [--allow_cpu] [--tiny] > check.json
#
# Without a GPU or TPU visible to jax it stops at once (one line, exit 1) unless --allow_cpu. --tiny shrinks every
# step to seconds (tiny preset, char ISAs, 20 steps): with --allow_cpu it checks the script itself on a CPU.
# Run from anywhere; the install must have the accelerator's jax (README: Dependencies). The workdir is a temporary
# directory, removed at the end, unless --workdir is given.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
STEPS=300
ALLOW_CPU=0
TINY=0
WORK=""
for arg in "$@"; do
  case "$arg" in
    --allow_cpu) ALLOW_CPU=1 ;;
    --tiny) TINY=1 ;;
    --steps=*) STEPS="${arg#*=}" ;;
    --workdir=*) WORK="${arg#*=}" ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
    *) echo "accelerator_check: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || { echo "accelerator_check: --steps=$STEPS is not a positive integer" >&2; exit 2; }
cd "$ROOT"
if [[ -z "$WORK" ]]; then
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"  # orbax refuses relative paths
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
T0=$SECONDS

log() { echo "== $* ($((SECONDS - T0))s)" >&2; }

# step NAME COMMAND...: runs it with its output on stderr; a failure is one line and a non-zero exit.
step() {
  local name=$1 t=$SECONDS status=0
  shift
  log "$name"
  "$@" >&2 || status=$?
  if ((status != 0)); then
    echo "accelerator_check: $name failed (exit status $status): $*" >&2
    exit "$status"
  fi
  echo "$((SECONDS - t))" >"$WORK/$name.seconds"
}

PLATFORM="$("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null)" || {
  echo "accelerator_check: jax does not import with $PY; install the requirements (README: Quickstart)" >&2
  exit 1
}
if [[ "$PLATFORM" == cpu && $ALLOW_CPU == 0 ]]; then
  pin="$(sed -n 's/^jax==//p' requirements.txt)"
  echo "accelerator_check: no GPU or TPU visible to jax (backend cpu); install jax[cuda12]==$pin or jax[tpu]==$pin," \
    "or pass --allow_cpu" >&2
  exit 1
fi
log "jax backend: $PLATFORM; workdir $WORK"

if ((TINY)); then
  BENCH=(--batch=4 --seq=64 --vocab=512 --repeats=2 --matmul_n=256 --decode_preset=tiny --decode_new=16
    --decode_repeats=1 --skip_reference)
  PRESET=tiny ISAS=char,char+perm:1 ISA=char STEPS=20
  TRAIN=(--config.train.batch_size=8 --config.data.length=64 --config.train.log_every=5)
  EVAL=(--config.max_docs=8 --config.prompts=8 --config.new_tokens=8)
  GROUP_ARGS=(--groups=2,3 --batch=4 --seq=32 --vocab=512 --steps=1 --repeats=1)
else
  BENCH=()
  PRESET=base ISAS=bpe:4000,bpe:4000+perm:1 ISA=bpe:4000
  # 16 × 1024 tokens a step (the batch divides a v2-8's or v3-8's 8 cores): seconds to a few minutes for 300 steps
  # on one recent chip; a T4-class GPU needs ~2 s a step (estimated), so give it --steps=100.
  TRAIN=(--config.train.batch_size=16 --config.train.log_every=25)
  EVAL=(--config.max_docs=64 --config.prompts=32)
  GROUP_ARGS=(--groups=3,9,18)  # the tiny preset's step (16 × 128 tokens, vocabulary 4000) per CPU
fi

bench() { "$PY" benchmarks/model_bench.py "${BENCH[@]}" >"$WORK/model_bench.out"; }
group_bench() { "$PY" benchmarks/group_bench.py "${GROUP_ARGS[@]}" >"$WORK/group_bench.out"; }

# model_bench.py's step measurement (train_step_fn, Timing) with bf16 models and a bf16 matmul peak.
bench_bf16() {
  "$PY" - "$TINY" >"$WORK/model_bench_bf16.out" <<'PY'
import json
import sys
import types

import jax
import jax.numpy as jnp

sys.path.insert(0, "benchmarks")
import model_bench as mb  # noqa: E402

import llmcpu.models as models  # noqa: E402

tiny = sys.argv[1] == "1"
args = types.SimpleNamespace(
  batch=4 if tiny else 8, seq=64 if tiny else 1024, vocab=512 if tiny else 32000, repeats=2 if tiny else 5
)


class Bf16Peak(mb.MatmulPeak):
  """MatmulPeak in bfloat16, the dtype the models' matmuls run in."""

  def __init__(self, n: int):
    self.flops = 2.0 * n**3
    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.bfloat16) for i in (0, 1))
    mm = jax.jit(lambda a, b: a @ b)
    mm(a, b).block_until_ready()
    self.run = lambda: mm(a, b).block_until_ready()
    self.timing = mb.Timing()


peak = Bf16Peak(256 if tiny else 8192)
peak.sample(repeats=5)
result = {"platform": jax.default_backend(), "device": jax.devices()[0].device_kind, "train_shape": vars(args)}
for preset in ("tiny",) if tiny else ("small", "base"):
  model = models.create(
    "decoder", preset, args.vocab, max_len=args.seq, dtype="bfloat16", attention_impl="dot_product_attention"
  )
  out = mb.measure_train(f"{preset} bf16", model, model.config, args, peak)
  result[f"params_{preset}"] = models.param_count(model)
  result[f"tokens_per_s_{preset}"] = out["tokens_per_s"]
  result[f"step_ms_{preset}"] = out["step"].wall * 1e3
  result[f"mfu_{preset}"] = out["flops"] / out["step"].wall / peak.flops_per_s  # the best peak of the whole run
result["matmul_peak_tflops_bf16"] = peak.flops_per_s / 1e12
result["attention_impl"] = "dot_product_attention"
print(json.dumps(result))
PY
}

step model_bench bench
step group_bench group_bench
step model_bench_bf16 bench_bf16
step compile "$PY" scripts/compile.py --config.corpus=python_docs --config.compilers="$ISAS" --workdir="$WORK/compiled"
step train "$PY" scripts/train.py --config="configs/decoder.py:$PRESET" --workdir="$WORK/train" \
  --config.data.corpus=python_docs --config.data.compile_dir="$WORK/compiled" --config.data.isa="$ISA" \
  --config.train.steps="$STEPS" --config.train.warmup_steps="$((STEPS / 10 + 1))" --config.train.eval_every=0 \
  --config.checkpoint.every="$STEPS" "${TRAIN[@]}"
step cross_eval "$PY" scripts/cross_eval.py --config.checkpoints="$WORK/train" --config.isas="$ISAS" \
  --config.compile_dir="$WORK/compiled" --config.out="$WORK/crosseval" "${EVAL[@]}"

# Every step's figures as one JSON object.
"$PY" - "$WORK" "$PLATFORM" "$PRESET" "$STEPS" "$((SECONDS - T0))" <<'PY'
import glob
import json
import os
import sys

work, platform, preset, steps, total = sys.argv[1:]


def seconds(name):
  with open(os.path.join(work, f"{name}.seconds")) as f:
    return int(f.read())


def last_json(path):
  with open(path) as f:
    return json.loads(f.read().strip().splitlines()[-1])


def jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


out = {"platform": platform}
for name in ("model_bench", "group_bench", "model_bench_bf16"):
  out[name] = {**last_json(os.path.join(work, f"{name}.out")), "seconds": seconds(name)}
manifests = sorted(glob.glob(os.path.join(work, "compiled", "data", "*", "*", "train", "manifest.json")))
isas = {}
for path in manifests:
  with open(path) as f:
    m = json.load(f)
  isas[m["compiler"]] = {"vocab_size": m["vocab_size"], "train_tokens": m["stats"]["text"]["tokens"]}
out["compile"] = {"isas": isas, "seconds": seconds("compile")}
metrics = jsonl(os.path.join(work, "train", "metrics.jsonl"))
trained = [m for m in metrics if "train/loss" in m]
last = trained[-1] if trained else None
out["train"] = {"preset": preset, "steps": int(steps), "last": last, "seconds": seconds("train")}
keep = ("model_isa", "eval_isa", "status", "bits_per_byte", "bits_per_byte_ci", "normalized_score")
keep += ("token_accuracy", "fluency", "relevance", "coherence", "seconds")
cells = [{k: r.get(k) for k in keep} for r in jsonl(os.path.join(work, "crosseval", "results.jsonl"))]
out["cross_eval"] = {"cells": cells, "seconds": seconds("cross_eval")}
out["total_s"] = int(total)
print(json.dumps(out))
PY
log "done"
