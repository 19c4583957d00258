"""Hugging Face directories in and out as ordinary llmcpu checkpoints (``scripts/import_hf.py``, ``export_hf.py``).

Import: ``config.json`` + safetensors weights (``llmcpu.models.hf``) + ``tokenizer.json`` (the ``hf:`` compiler,
its own id table as the ISA) → a checkpoint at step 0 carrying the ISA and its provenance (source directory and id,
revision, sha256 of every weight and tokenizer file). Every check runs before anything is written. Export: a
decoder checkpoint → ``config.json`` + ``model.safetensors`` (+ its ``tokenizer.json`` when its ISA came from one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable

import ml_collections

from llmcpu import compilers, fs, models
from llmcpu.compilers import external
from llmcpu.errors import UserError
from llmcpu.models import hf
from llmcpu.training import checkpoints, placement, run_config
from llmcpu.training.optim import make_optimizer

TOKENIZER = "tokenizer.json"

EVAL_LENGTH = 1024  # rows cross-evaluation scores an imported CPU on (its max_len when shorter)


def weight_files(src: str) -> list[str]:
  """The safetensors files of ``src`` (one file, or the shards its index lists); one line when there are none."""
  if os.path.isfile(os.path.join(src, hf.WEIGHTS)):
    return [hf.WEIGHTS]
  if os.path.isfile(os.path.join(src, hf.INDEX)):
    with open(os.path.join(src, hf.INDEX), encoding="utf-8") as f:
      return sorted(set(json.load(f).get("weight_map", {}).values()))
  raise UserError(f"{src}: no {hf.WEIGHTS} or {hf.INDEX} (llmcpu reads safetensors weights only)")


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      h.update(block)
  return h.hexdigest()


def _check_source(src: str) -> list[str]:
  """The weight files, once the directory is known to hold everything an import needs."""
  if not os.path.isdir(src):
    raise UserError(f"{src} is not a directory; pass a Hugging Face model directory (config.json, weights, tokenizer)")
  missing = [n for n in (hf.CONFIG, TOKENIZER) if not os.path.isfile(os.path.join(src, n))]
  if missing:
    raise UserError(
      f"{src}: no {' or '.join(missing)}; an import needs config.json, safetensors weights and tokenizer.json"
    )
  return weight_files(src)


def _check_empty(workdir: str) -> None:
  if fs.exists(fs.join(workdir, "checkpoints")) and checkpoints.find_runs(workdir):
    raise UserError(f"{workdir} already holds a checkpoint; import into a new --workdir")


def run_config_for(compiler: compilers.Compiler, model_config: models.ModelConfig) -> ml_collections.ConfigDict:
  """The run config an imported CPU carries: its ISA, no training corpus ('': pass the corpus to cross_eval), and
  scoring rows as long as it reads (``EVAL_LENGTH`` at most)."""
  c = run_config.base_config("decoder", "tiny")
  for field in dataclasses.fields(model_config):  # the model as it is, so a run derived from it (a port) builds it
    c.model[field.name] = getattr(model_config, field.name)
  c.data.isa = str(compiler.spec)
  c.data.corpus = ""
  c.data.length = min(model_config.max_len, EVAL_LENGTH)
  c.train.steps = 0
  return c


def import_dir(src: str, workdir: str, *, source_id: str = "", revision: str = "", log: Callable = print) -> dict:
  """Imports the Hugging Face directory ``src`` into ``workdir`` as a step-0 checkpoint; returns its metadata."""
  src = os.path.abspath(src)
  files = _check_source(src)
  _check_empty(workdir)
  compiler = compilers.train(f"hf:{src}")
  model = hf.load(src, unk_id=compiler.roles.stand_in)  # what ids from a larger foreign ISA are read as
  mc = model.config
  if mc.vocab_size < compiler.vocab_size:
    raise UserError(
      f"{src}: the model has {mc.vocab_size} embedding rows but {TOKENIZER} has {compiler.vocab_size} ids; "
      "the tokenizer does not belong to these weights"
    )
  provenance = {
    "import": {
      "source_dir": src,
      "source_id": source_id or os.path.basename(src),
      "revision": revision or None,
      "weights_sha256": {n: sha256_file(os.path.join(src, n)) for n in files},
      "tokenizer_sha256": compiler.manifest["model_sha256"],
      "architectures": hf.read_config(src).get("architectures"),
      "unused_rows": mc.vocab_size - compiler.vocab_size,  # padded embeddings: ids no compile ever emits
    }
  }
  config = run_config_for(compiler, mc)
  graphdef, params, frozen, rest = models.split_trainable(model, "")
  state = placement.host_state(params, frozen, rest, make_optimizer(config.train)[0])
  meta = checkpoints.make_meta(
    config=config.to_dict(), model_config=mc, compiler=compiler, step=0, tokens_seen=0, data_step=0,
    provenance=provenance,
  )  # fmt: skip
  mngr = checkpoints.manager(fs.join(workdir, "checkpoints"), keep=0, async_save=False)
  try:
    checkpoints.save(mngr, 0, state, meta, force=True)
  finally:
    checkpoints.close(mngr)
  log(
    f"imported {src} ({mc.vocab_size} ids, {models.param_count(model):,} parameters, ISA {compiler.name}) → {workdir}"
  )
  return meta


def export_checkpoint(path: str, out: str, *, dtype: str = "float32", log: Callable = print) -> None:
  """Writes the decoder checkpoint at ``path`` as a Hugging Face directory ``out`` (refused if ``out`` exists)."""
  if fs.exists(out):
    raise UserError(f"{out} exists; export into a new directory")
  model, meta, compiler = checkpoints.load_model(path)
  if meta["arch"] != "decoder":
    raise UserError(f"{path} holds an {meta['arch']}; only decoders have a Hugging Face form here")
  r = compiler.roles
  extra = {"bos_token_id": r.bos, "eos_token_id": r.eos, "pad_token_id": None if "pad" in r.borrowed else r.pad}
  hf.save(model, out, dtype=dtype, config_extra=extra)
  if compiler.family == "hf":  # the ISA's own file: the directory is complete (an own ISA has no tokenizer.json)
    fs.write_bytes(fs.join(out, TOKENIZER), compiler.backend.model_proto())
    names = compiler.manifest.get("role_names")
    if names:
      fs.write_text(fs.join(out, external.TOKENIZER_CONFIG), json.dumps({f"{k}_token": v for k, v in names.items()}))
  log(f"exported {path} (ISA {compiler.name}) → {out}")
