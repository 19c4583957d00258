"""Porting cost: ``align``/``fvt`` seconds for a 32k-piece ISA, against raw SentencePiece encoding of its pieces.

  python benchmarks/porting_bench.py [--corpus=python_docs] [--source=unigram:32000] [--target=bpe:32000]
                                     [--d_model=512] [--repeats=3] [--transplant] [--hard_vocab_limit]

Trains the two compilers (ISA A = ``--source``, ISA B = ``--target``) on the train split of ``--corpus`` (a
comma-separated list of corpus strings: all of them are the training text), then times porting from A to B, best of
``--repeats``. The cost of porting scales with B (every id of B gets a row), so B is the 32k-piece ISA. On
python_docs (1.9 MB of train text) BPE reaches 32000 pieces but Unigram at most 13278: by default
(``--nohard_vocab_limit``) SentencePiece stops at the largest vocabulary the corpus supports instead of failing,
and ``vocab_a``/``vocab_b`` say what was reached; on a large corpus (``--corpus=tfds:lm1b:text``) both reach 32000.

  corpus, train_mb         the training corpora and their train-split UTF-8 megabytes
  source, target           the compiler specs of A and B (requested vocabularies)
  vocab_a, vocab_b         the vocabulary sizes actually reached
  train_seconds_a / _b     training each compiler: context, not porting cost (a port reuses trained compilers)
  threads                  SentencePiece encode threads (both ours and the raw reference)
  fvt_texts                B's pieces that FVT segments with A (every regular non-byte piece of B)
  plan_fvt_seconds         ``plan_rows(A, B, "fvt")``: the compiler-side work, done once per pair of ISAs
  plan_align_seconds       ``plan_rows(A, B, "align")`` (segments only the pieces A does not share)
  apply_fvt_seconds        ``RowPlan.apply`` of the fvt plan on a float32 [vocab_a, d_model] table
  apply_align_seconds      the same with the align plan
  d_model                  the table width (``--d_model``)
  transplant_fvt_seconds   ``transplant(...)`` of a 2-layer decoder (d_model ``--d_model``, tied embeddings) from A
  transplant_align_seconds to B, plan included (null with ``--notransplant``); transplant_params: the source's
                           parameter count
  raw_encode_seconds       raw ``SentencePieceProcessor.encode(fvt_texts, num_threads=threads)`` with A's processor,
                           one batch call: the floor of FVT's segmentation step (the side-by-side reference)
  plan_fvt_vs_raw          plan_fvt_seconds ÷ raw_encode_seconds (what the plan costs beyond SentencePiece itself)
  plan_align_vs_raw        plan_align_seconds ÷ raw_encode_seconds (align segments only the unshared pieces, so
                           this can be < 1)
  ms_per_1k_pieces         {plan_fvt, plan_align, apply_fvt, apply_align, raw_encode}: milliseconds per 1000 ids of B
  counts_fvt, counts_align the plans' row counts: special / copied (bit-exact, align only) / byte / fvt / fallback

Prints progress, then one JSON object as the last line.
"""

import json
import re
import tempfile
import time

import numpy as np
from absl import flags

from llmcpu import compilers, data, models, porting, specials, toolchain
from llmcpu.compilers import backends
from llmcpu.errors import UserError
from llmcpu.ops import cli

_CORPUS = flags.DEFINE_string("corpus", "python_docs", "Training corpus (comma-separated corpus strings).")
_SOURCE = flags.DEFINE_string("source", "unigram:32000", "Compiler spec of ISA A (the port's source).")
_TARGET = flags.DEFINE_string("target", "bpe:32000", "Compiler spec of ISA B (the port's target).")
_HARD_LIMIT = flags.DEFINE_bool(
  "hard_vocab_limit", False, "Fail if the corpus cannot give a requested vocabulary (else the largest it can)."
)
_D_MODEL = flags.DEFINE_integer("d_model", 512, "Width of the ported table and of the transplanted model.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Best of this many timings.")
_TRANSPLANT = flags.DEFINE_bool("transplant", True, "Also time transplant() of a small decoder.")

_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


def best_of(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def fvt_texts(compiler_b: compilers.Compiler) -> list[str]:
  """The texts ``plan_rows(..., "fvt")`` segments with A: B's regular pieces other than byte pieces, ``▁`` → space."""
  pieces, nbytes = compiler_b.pieces, compiler_b.piece_bytes
  return [
    pieces[j].replace(backends.META, " ")
    for j in range(specials.FIRST_REGULAR_ID, compiler_b.vocab_size)
    if not (_BYTE_PIECE.fullmatch(pieces[j]) and nbytes[j] == 1)
  ]


def time_transplant(a: compilers.Compiler, b: compilers.Compiler, repeats: int) -> dict:
  kw = dict(d_model=_D_MODEL.value, d_ff=4 * _D_MODEL.value, tie_embeddings=True)
  source = models.create("decoder", "tiny", vocab_size=a.vocab_size, seed=0, **kw)
  target = models.create("decoder", "tiny", vocab_size=b.vocab_size, seed=1, **kw)
  out = {
    f"transplant_{m}_seconds": round(best_of(lambda m=m: porting.transplant(source, target, a, b, m), repeats), 4)
    for m in ("fvt", "align")
  }
  out["transplant_params"] = models.param_count(source)
  return out


def main(argv):
  del argv
  corpora = [data.load_corpus(s.strip()) for s in _CORPUS.value.split(",") if s.strip()]
  nbytes = sum(len(t.encode()) for t in toolchain.training_texts(corpora))
  cli.log(f"{', '.join(c.name for c in corpora)}: {nbytes / 1e6:.1f} MB of train text")
  options = {} if _HARD_LIMIT.value else {"hard_vocab_limit": False}
  specs = [compilers.parse(_SOURCE.value), compilers.parse(_TARGET.value)]
  if specs[0].name == specs[1].name:
    raise UserError(f"source and target are the same ISA {specs[0]}; port between two")

  with tempfile.TemporaryDirectory() as tmp:
    built, train_s = [], []
    for spec in specs:
      t0 = time.perf_counter()
      built += toolchain.build_compilers([spec], corpora, tmp, options=options, log=cli.log)
      train_s.append(time.perf_counter() - t0)
  a, b = built
  for spec, c in zip(specs, built, strict=True):
    if spec.vocab is not None and c.vocab_size < spec.vocab:
      cli.log(f"{spec}: the corpus supports only {c.vocab_size} pieces (not {spec.vocab}); timing that")

  repeats = _REPEATS.value
  threads = backends.default_threads()
  texts = fvt_texts(b)
  sp = getattr(a.backend, "sp", None)
  if sp is None:
    raise UserError(f"source {a.spec} is not a SentencePiece ISA: no raw encoder to compare with")
  raw = best_of(lambda: sp.encode(texts, num_threads=threads), repeats)
  cli.log(f"raw SentencePiece: {len(texts)} piece texts of B encoded with A in {raw:.4f}s ({threads} threads)")

  plans, plan_s, apply_s = {}, {}, {}
  table = np.random.default_rng(0).standard_normal((a.vocab_size, _D_MODEL.value), dtype=np.float32)
  for method in ("fvt", "align"):
    plan_s[method] = best_of(lambda m=method: plans.__setitem__(m, porting.plan_rows(a, b, m)), repeats)
    apply_s[method] = best_of(lambda m=method: plans[m].apply(table), repeats)
    cli.log(f"{method}: plan {plan_s[method]:.4f}s, apply {apply_s[method]:.4f}s, counts {plans[method].counts}")

  per_1k = 1e6 / b.vocab_size  # seconds → milliseconds per 1000 ids of B
  result = {
    "corpus": ",".join(c.name for c in corpora),
    "train_mb": round(nbytes / 1e6, 2),
    "source": str(specs[0]),
    "target": str(specs[1]),
    "vocab_a": a.vocab_size,
    "vocab_b": b.vocab_size,
    "train_seconds_a": round(train_s[0], 2),
    "train_seconds_b": round(train_s[1], 2),
    "threads": threads,
    "fvt_texts": len(texts),
    "plan_fvt_seconds": round(plan_s["fvt"], 4),
    "plan_align_seconds": round(plan_s["align"], 4),
    "apply_fvt_seconds": round(apply_s["fvt"], 4),
    "apply_align_seconds": round(apply_s["align"], 4),
    "d_model": _D_MODEL.value,
    "transplant_fvt_seconds": None,
    "transplant_align_seconds": None,
    "transplant_params": None,
    "raw_encode_seconds": round(raw, 4),
    "plan_fvt_vs_raw": round(plan_s["fvt"] / raw, 1),
    "plan_align_vs_raw": round(plan_s["align"] / raw, 1),
    "ms_per_1k_pieces": {
      "plan_fvt": round(plan_s["fvt"] * per_1k, 2),
      "plan_align": round(plan_s["align"] * per_1k, 2),
      "apply_fvt": round(apply_s["fvt"] * per_1k, 2),
      "apply_align": round(apply_s["align"] * per_1k, 2),
      "raw_encode": round(raw * per_1k, 3),
    },
    "counts_fvt": dict(plans["fvt"].counts),
    "counts_align": dict(plans["align"].counts),
  }
  if _TRANSPLANT.value:
    result.update(time_transplant(a, b, repeats))
    cli.log(f"transplant: fvt {result['transplant_fvt_seconds']}s, align {result['transplant_align_seconds']}s")
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  cli.run_script(main)
