"""What the trainer adds on top of the bare step: data pipeline, host→device transfer, metrics, checkpoint dispatch.

  python benchmarks/train_bench.py [--preset=small] [--steps=40] [--isa=bpe:4000]

Both figures come from the same process, model, batch shape and compiled step:
  bare_step_s     the jitted train step (forward + backward + AdamW) looped on one device-resident batch
  trainer_step_s  ``trainer.train`` wall time per step in its steady state (the first logging window, which
                  holds compilation, is left out), with metrics every 5 steps and an async checkpoint every 10
  trainer_overhead = trainer_step_s / bare_step_s − 1   (target ≤ 0.05)
Prints progress, then one JSON object as the last line.
"""

import json
import os
import tempfile
import time

import jax
import numpy as np
from absl import flags
from flax import nnx

from llmcpu import compilers, data, models, toolchain
from llmcpu.ops import cli
from llmcpu.training import trainer
from llmcpu.training.optim import make_optimizer
from llmcpu.training.run_config import base_config

_PRESET = flags.DEFINE_string("preset", "small", "Model/training preset.")
_STEPS = flags.DEFINE_integer("steps", 20, "Training steps (the first logging window is excluded).")
_ISA = flags.DEFINE_string("isa", "bpe:4000", "Compiler spec.")
_CORPUS = flags.DEFINE_string("corpus", "python_docs", "Corpus.")


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    compile_dir = os.path.join(tmp, "compiled")
    corpus = data.load_corpus(_CORPUS.value)
    built = toolchain.build_compilers([compilers.parse(_ISA.value)], [corpus], compile_dir, log=cli.log)
    toolchain.compile_corpora([corpus], built, compile_dir, log=cli.log)

    config = base_config("decoder", _PRESET.value)
    config.data.compile_dir = compile_dir
    config.data.corpus = _CORPUS.value
    config.data.isa = _ISA.value
    config.train.steps = _STEPS.value
    config.train.log_every = 5
    config.train.eval_every = 0
    config.checkpoint.every = 10
    config.train.peak_tflops = 1.0  # MFU is not what this measures

    # Bare: the same pure step, jitted, on one resident batch.
    setup = trainer.resolve(config, os.path.join(tmp, "bare"))
    model = models.create_from_config(setup.model_config, seed=0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, schedule = make_optimizer(config.train)
    step_fn, _ = trainer.make_steps(graphdef, tx, schedule, 1)
    state = {"params": params, "opt_state": tx.init(params), "rest": rest, "step": jax.numpy.zeros((), "int32")}
    batch = jax.device_put(setup.train_data.batch(0))
    jitted = jax.jit(step_fn, donate_argnums=0)
    state, m = jitted(state, batch)
    jax.block_until_ready(m)
    n = max(_STEPS.value - 5, 5)
    t0 = time.perf_counter()
    for _ in range(n):
      state, m = jitted(state, batch)
    jax.block_until_ready((state, m))
    bare = (time.perf_counter() - t0) / n
    cli.log(f"bare step {bare * 1e3:.1f} ms")

    # The trainer, end to end; steady-state step time from its own windows after the first.
    windows = []
    workdir = os.path.join(tmp, "run")
    trainer.train(config, workdir, log=cli.log)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      windows = [json.loads(line) for line in f if "train/tokens_per_s" in line]
    tokens_per_step = setup.tokens_per_step
    steady = [tokens_per_step / w["train/tokens_per_s"] for w in windows[1:]]
    trainer_step = float(np.mean(steady))

  result = {
    "preset": _PRESET.value,
    "isa": _ISA.value,
    "devices": len(jax.devices()),
    "tokens_per_step": tokens_per_step,
    "bare_step_s": round(bare, 5),
    "trainer_step_s": round(trainer_step, 5),
    "trainer_overhead": round(trainer_step / bare - 1, 4),
    "trainer_tokens_per_s": round(tokens_per_step / trainer_step),
    "platform": jax.devices()[0].platform,
  }
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  cli.run_script(main)
