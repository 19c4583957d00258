"""Port a CPU to another ISA through the one training loop: the ported CPU is an ordinary checkpoint.

  align / fvt   rebuild the vocabulary rows (``transplant``), train nothing (``steps`` 0)
  omp / procrustes   align's copies, the rest from a donor CPU trained on ISA B (``--config.donor``; porting.donor)
  distill       the ``init`` method's rows, then only B's new embedding rows fitted to the source's hidden states
                (``--config.distill_tokens`` of ISA-B text; porting.distill); the trainer's steps stay 0
  relearn       ``init``'s rows (align by default; any method above), then train only the vocabulary-indexed
                parameters (embedding, untied head); the rest frozen
  finetune      ``init``'s rows, then train everything
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

from llmcpu import compilers, fs, models, toolchain
from llmcpu.errors import UserError
from llmcpu.porting import distill
from llmcpu.porting.donor import DONOR_METHODS
from llmcpu.porting.transplant import ROW_METHODS, transplant, vocab_params
from llmcpu.training import derived, trainer

TRAINED = ("relearn", "finetune", "scratch")
INITS = (*ROW_METHODS, "distill")  # the rows a port starts from (config.init for relearn, finetune, distill)
# Methods that need nothing but the source CPU.
PORT_METHODS = ("align", "fvt", *TRAINED)
# Methods that need a donor CPU of ISA B (omp, procrustes) or read ISA-B text before any step (distill); the porting
# experiment passes its native ISA-B CPU as the donor and counts distill's tokens (experiments.porting).
EXTRA_METHODS = ("omp", "procrustes", "distill")
WRITES = (*PORT_METHODS, *EXTRA_METHODS)  # what writes a checkpoint; "translate" is evaluated, not written
# Keys configs/port.py has and an older config (the porting experiment's) may lack: these defaults then.
DEFAULTS = dict(init="align", donor="", omp_atoms=8, distill_tokens=distill.DEFAULT_TOKENS, distill_learning_rate=1e-3)


def port_config(config: ml_collections.ConfigDict, source_meta: dict) -> ml_collections.ConfigDict:
  """The training config of the ported CPU: the source's, on ISA B, for ``config.steps`` steps."""
  c = derived.continued_config(source_meta, config, trained=config.method in TRAINED)  # others: step 0 only
  c.data.corpus = c.data.corpus or config.get("corpus", "")  # an imported source has none of its own
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
  if method not in WRITES:
    raise UserError(f"unknown porting method {method!r}; choose one of translate, {', '.join(WRITES)}")


def start_of(config: ml_collections.ConfigDict) -> tuple[str | None, bool]:
  """(the ``transplant`` method the port's rows start from, whether ``distill`` runs after it); (None, False) for
  scratch. A UserError for an unknown ``init`` or distill asked to start from itself."""
  if config.method == "scratch":
    return None, False
  if config.method in ROW_METHODS:
    return config.method, False
  if config.init not in INITS:
    raise UserError(f"unknown --config.init={config.init!r}; choose one of {', '.join(INITS)}")
  if config.method == "distill":
    if config.init == "distill":
      raise UserError(f"method distill starts from another method's rows: --config.init={'|'.join(ROW_METHODS)}")
    return config.init, True
  return ("align", True) if config.init == "distill" else (config.init, False)  # relearn / finetune


def check_donor(config: ml_collections.ConfigDict) -> dict | None:
  """The donor's metadata when the port's start needs one (omp, procrustes), checked without reading its weights:
  a CPU of the target ISA (any width, depth or architecture: only its vocabulary rows are read). Otherwise None."""
  start, _ = start_of(config)
  if start not in DONOR_METHODS:
    return None
  target = compilers.parse(config.to_isa).name
  if not config.donor:
    raise UserError(f"method {start} needs a donor CPU trained natively on ISA {target}: pass --config.donor=RUN")
  meta = derived.Source.load(config.donor).meta
  if meta["isa_name"] != target:
    raise UserError(f"the donor CPU speaks ISA {meta['isa_name']}, not the target {target}; pass a CPU of {target}")
  return meta


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
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.update({k: v for k, v in DEFAULTS.items() if k not in config})
  if not config.checkpoint:
    raise UserError("no source CPU: pass --config.checkpoint=RUN (a training workdir or checkpoint directory)")
  source = derived.Source.load(config.checkpoint)  # refuses a checkpoint that carries no ISA
  meta = source.meta
  if config.corpus and source.corpus and config.corpus != source.corpus:
    raise UserError(
      f"the source CPU was trained on corpus {source.corpus!r}, not {config.corpus!r}: a port changes the ISA, not "
      "the data; leave --config.corpus empty"
    )
  if not (config.corpus or source.corpus) or not (config.compile_dir or meta["config"]["data"]["compile_dir"]):
    raise UserError(  # an imported LLM (scripts/import_hf.py) was trained on no corpus of ours
      f"the source CPU {config.checkpoint} carries no training corpus or compile dir (an imported LLM): pass "
      "--config.corpus=CORPUS and --config.compile_dir=DIR holding that corpus compiled with ISA B"
    )
  train_config = port_config(config, meta)
  start, distills = start_of(config)
  donor_meta = check_donor(config)
  if config.method == "relearn":  # the same parameter paths on both ISAs: only the vocabulary's rows differ
    source_config = models.ModelConfig(**meta["model_config"])
    abstract = nnx.eval_shape(lambda: models.create_from_config(source_config))  # shapes only: nothing is read
    train_config.train.trainable = ",".join(f"^{p}$" for p in vocab_params(abstract))
  provenance = {
    "source": source.record("isa", "isa_fingerprint", "step", "tokens_seen"),
    "method": config.method,
    "steps": train_config.train.steps,
  }
  if config.method in ("relearn", "finetune", "distill"):
    provenance["init"] = config.init
  if donor_meta is not None:
    provenance["donor"] = {"checkpoint": fs.abspath(config.donor), "step": donor_meta["step"]}

  def initialize(model, setup: trainer.Setup) -> None:  # a fresh run only: a resumed one holds the ported weights
    if start is None:  # scratch
      return
    source_model, _, compiler_a = source.load_model()  # read once, and only when used
    donor = None
    if donor_meta is not None:
      donor, _, donor_compiler = derived.Source.load(config.donor).load_model()
      if donor_compiler.fingerprint != setup.compiler.fingerprint:
        raise UserError(f"the donor's ISA {donor_compiler.name} was built by another compiler than this port's (its "
                        "fingerprint differs); pass a donor trained on the same compiled ISA")  # fmt: skip
      provenance["donor"]["isa_fingerprint"] = donor_compiler.fingerprint
    provenance["transplant"] = transplant(
      source_model, model, compiler_a, setup.compiler, start, donor=donor, atoms=config.omp_atoms
    )
    if distills:  # distill's text counts in the port's budget like the trainer's steps
      provenance["distill"] = _distill(config, source_model, model, compiler_a, setup)
      provenance["tokens"] = provenance["distill"]["tokens"]  # derived.train adds the trainer's steps' tokens

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


def _distill(config, source_model, model, compiler_a, setup: trainer.Setup) -> dict:
  """``distill`` on ISA B's train split (the port's compiled data), with the config's budget and learning rate."""
  d = setup.config.data
  tools = toolchain.Toolchain(d.compile_dir)
  split = tools.split(tools.corpus_name(d.corpus, setup.compiler), setup.compiler, d.train_split)
  field = next(iter(split.fields.values()))
  docs = [field.doc(i) for i in range(len(field))]
  return distill.distill(
    source_model,
    model,
    compiler_a,
    setup.compiler,
    docs,
    tokens=config.distill_tokens,
    learning_rate=config.distill_learning_rate,
    seed=config.seed,
  )
