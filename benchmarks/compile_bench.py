"""Compile throughput against raw SentencePiece, and a warm (cached) compile against a cold one.

  python benchmarks/compile_bench.py [--corpus=python_docs] [--compiler=bpe:4000]

Prints progress, then one JSON object as the last line:
  encode_vs_raw  llmcpu's compile of the train split (encode + byte counts + write) ÷ the time of raw
                 ``SentencePieceProcessor.encode(batch, num_threads=N)`` on the same texts (≥ 0.8 is the target)
  warm_vs_cold   time of a cold ``compile`` (train compiler, encode every split) ÷ a warm rerun (≥ 20)
"""

import json
import tempfile
import time

from absl import flags

from llmcpu import compilers, data, toolchain
from llmcpu.compilers import backends
from llmcpu.data import compiled
from llmcpu.ops import cli

_CORPUS = flags.DEFINE_string("corpus", "python_docs", "Corpus to compile.")
_COMPILER = flags.DEFINE_string("compiler", "bpe:4000", "Compiler spec.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Best of this many timings.")


def best_of(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def main(argv):
  del argv
  corpus = data.load_corpus(_CORPUS.value)
  texts = [d[f] for d in corpus.documents("train") for f in corpus.fields]
  nbytes = sum(len(t.encode()) for t in texts)
  cli.log(f"{corpus.name}: {len(texts)} train texts, {nbytes / 1e6:.1f} MB")
  spec = compilers.parse(_COMPILER.value)

  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    built = toolchain.build_compilers([spec], [corpus], tmp, log=cli.log)
    toolchain.compile_corpora([corpus], built, tmp, log=cli.log)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    toolchain.build_compilers([spec], [corpus], tmp, log=lambda _: None)
    toolchain.compile_corpora([corpus], built, tmp, log=lambda _: None)
    warm = time.perf_counter() - t0
    compiler = built[0]

    threads = backends.default_threads()
    sp = compiler.backend.sp
    raw = best_of(lambda: sp.encode(texts, num_threads=threads), _REPEATS.value)
    docs = [{"text": t} for t in texts]
    ours = best_of(
      lambda: toolchain.compile_split(compiler, iter(docs), ["text"], [], f"{tmp}/bench_split", {}), _REPEATS.value
    )
    tokens = compiled.load(f"{tmp}/bench_split").fields["text"].tokens.size

  result = {
    "corpus": corpus.name,
    "compiler": str(spec),
    "threads": threads,
    "train_mb": round(nbytes / 1e6, 2),
    "tokens": int(tokens),
    "raw_sentencepiece_tokens_per_s": round(tokens / raw),
    "llmcpu_compile_tokens_per_s": round(tokens / ours),
    "encode_vs_raw": round(raw / ours, 3),
    "cold_seconds": round(cold, 3),
    "warm_seconds": round(warm, 4),
    "warm_vs_cold": round(cold / warm, 1),
  }
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  cli.run_script(main)
