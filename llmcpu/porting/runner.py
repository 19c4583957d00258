"""Port a CPU to another ISA through the one training loop: the ported CPU is an ordinary checkpoint.

  align / fvt   rebuild the vocabulary rows (``transplant``), train nothing (``steps`` 0) or everything after
  relearn       align, then train only the vocabulary-indexed parameters (embedding, untied head); the rest frozen
  finetune      align, then train everything
  scratch       a new CPU on ISA B from random init with the same token budget: the reference curve
  translate     binary translation, no weights change: an evaluation of the source CPU (see experiments.porting)

The checkpoint's metadata carries ISA B, its compiler files, and the porting provenance (source checkpoint and
fingerprint, method, steps, tokens, row counts), so cross_eval and load_model read it like any other CPU. Preemption,
resume and integrity are the trainer's.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
from flax import nnx

from llmcpu import compilers, models
from llmcpu.errors import UserError
from llmcpu.porting.transplant import transplant, vocab_params
from llmcpu.training import derived, trainer

TRAINED = ("relearn", "finetune", "scratch")
PORT_METHODS = ("align", "fvt", *TRAINED)  # what writes a checkpoint; "translate" is evaluated, not written


def port_config(config: ml_collections.ConfigDict, source_meta: dict) -> ml_collections.ConfigDict:
  """The training config of the ported CPU: the source's, on ISA B, for ``config.steps`` steps."""
  c = derived.continued_config(source_meta, config, trained=config.method in TRAINED)  # align/fvt: step 0 only
  c.data.isa = str(compilers.parse(config.to_isa))
  c.model.vocab_size = 0  # ISA B's
  c.train.trainable = ""  # relearn's pattern is set from the model (see port_checkpoint)
  return c


def check_method(method: str) -> None:
  """A UserError unless ``method`` writes a ported checkpoint."""
  if method == "translate":
    raise UserError(
      "method translate changes no weights: it is the source CPU fed translated machine code; the porting "
      "experiment (configs/experiments/porting.py) evaluates it beside the others"
    )
  if method not in PORT_METHODS:
    raise UserError(f"unknown porting method {method!r}; choose one of translate, {', '.join(PORT_METHODS)}")


def port_checkpoint(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  should_stop: Callable[[int], bool] | None = None,
  log: Callable[[str], None] = print,
) -> trainer.TrainResult:
  """Ports ``config.checkpoint`` to ``config.to_isa`` with ``config.method`` into ``workdir``; resumable (see
  ``trainer.train`` for ``should_stop``)."""
  check_method(config.method)
  if not config.checkpoint:
    raise UserError("no source CPU: pass --config.checkpoint=RUN (a training workdir or checkpoint directory)")
  source = derived.Source.load(config.checkpoint)  # refuses a checkpoint that carries no ISA
  meta = source.meta
  if config.corpus and config.corpus != source.corpus:
    raise UserError(
      f"the source CPU was trained on corpus {source.corpus!r}, not {config.corpus!r}: a port changes the ISA, not "
      "the data; leave --config.corpus empty"
    )
  train_config = port_config(config, meta)
  if config.method == "relearn":  # the same parameter paths on both ISAs: only the vocabulary's rows differ
    source_config = models.ModelConfig(**meta["model_config"])
    abstract = nnx.eval_shape(lambda: models.create_from_config(source_config))  # shapes only: nothing is read
    train_config.train.trainable = ",".join(f"^{p}$" for p in vocab_params(abstract))
  provenance = {
    "source": source.record("isa", "isa_fingerprint", "step", "tokens_seen"),
    "method": config.method,
    "steps": train_config.train.steps,
  }

  def initialize(model, setup: trainer.Setup) -> None:
    if config.method != "scratch":  # scratch: random init, the reference curve
      source_model, _, compiler_a = source.load_model()
      how = "fvt" if config.method == "fvt" else "align"
      provenance["transplant"] = transplant(source_model, model, compiler_a, setup.compiler, how)

  # trainer.train checks ISA B's compiled data and the shapes before anything is written (one line if not).
  log(f"porting {meta['arch']} on {meta['isa_name']} → {config.to_isa} by {config.method}")
  return derived.train(
    train_config,
    workdir,
    provenance=provenance,
    initialize=initialize,
    count_tokens=True,
    should_stop=should_stop,
    log=log,
  )
