"""Host memory and time of a pretrained LLM's whole path at GPT-2-small's shape: Hugging Face import/export
(``llmcpu.models.hf``), import as a CPU, cross-evaluation and porting (issue 28: all within 8 GiB of host memory).

  python benchmarks/hf_bench.py [--vocab=50257] [--layers=12]

Writes a random float32 checkpoint of GPT-2-small's shape (124M parameters with the default flags) to a temporary
directory, with a byte-level BPE tokenizer.json of ``vocab`` ids (trained on python_docs, then padded with random
merges up to the size: GPT-2's own file needs the network), then runs each action in a fresh process so that each
peak is its own: load, save (float32, bfloat16), ``import`` (scripts/import_hf.py's checkpoint), ``crosseval`` (the
imported CPU read on its own ISA and on byte over python_docs: bits per byte at 1024-id rows, generation with the KV
cache and its judge, ``--docs`` documents and ``--prompts`` prompts), ``port`` (the CPU ported to the byte ISA by
align and by FVT), and ``relearn`` / ``finetune`` (scripts/port.py's trained ports onto the CPU's own ISA: every
piece shared, so the rows are copies and the step is what is measured; ``--steps`` steps of ``--batch`` rows of
``--length`` ids, AdamW on the embedding / on every parameter, checkpoint written). Prints progress, then one JSON
object as the last line, per action: seconds, the weights' MiB, and the peaks above the process's memory after its
imports: ``rss`` (ru_maxrss: includes the memory-mapped file's pages, which the kernel can drop; not reported for the
saves, which run after a load in the same process) and ``anon`` (anonymous memory only, sampled every 2 ms), and
``anon_peak_mib``, the process's own anonymous peak.
"""

import json
import resource
import subprocess
import sys
import tempfile
import threading
import time

from absl import flags

from llmcpu.ops import cli

_VOCAB = flags.DEFINE_integer("vocab", 50257, "Vocabulary size.")
_LAYERS = flags.DEFINE_integer("layers", 12, "Layers.")
_DOCS = flags.DEFINE_integer("docs", 8, "crosseval: test documents scored.")
_PROMPTS = flags.DEFINE_integer("prompts", 4, "crosseval: prompts generated from and judged.")
_STEPS = flags.DEFINE_integer("steps", 2, "relearn/finetune: training steps.")
_BATCH = flags.DEFINE_integer("batch", 2, "relearn/finetune: rows a step.")
_LENGTH = flags.DEFINE_integer("length", 512, "relearn/finetune: ids a row.")
ACTIONS = ("make", "load", "save_float32", "save_bfloat16", "import", "crosseval", "port", "relearn", "finetune")

GPT2_SMALL = dict(
  d_model=768, num_heads=12, d_ff=3072, max_len=1024, positions="learned", norm="layernorm", mlp="gelu",
  attention_bias="all", mlp_bias=True, norm_eps=1e-5,
)  # fmt: skip


def _status(key: str) -> float:
  """A /proc/self/status field in MiB."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(key + ":"):
        return int(line.split()[1]) / 1024
  raise KeyError(key)


def tokenizer(path: str, vocab: int) -> None:
  """A byte-level BPE tokenizer.json of exactly ``vocab`` ids (the last ``<|endoftext|>``) under ``path``: trained on
  python_docs, then random merges of existing pieces up to the size."""
  import random

  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  from llmcpu.data import corpora

  texts = [d["text"] for d in corpora.load_corpus("python_docs").documents("train")]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(vocab_size=vocab - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  model = json.loads(tok.to_str())["model"]
  pieces = sorted(model["vocab"], key=model["vocab"].get)
  merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
  seen, rng = set(pieces), random.Random(0)
  while len(pieces) < vocab - 1:  # the corpus ran out of merges: random ones of existing pieces
    a, b = rng.choice(pieces), rng.choice(pieces)
    if a + b not in seen:
      merges.append((a, b))
      pieces.append(a + b)
      seen.add(a + b)
  out = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges))
  out.pre_tokenizer, out.decoder = tok.pre_tokenizer, decoders.ByteLevel()
  out.add_special_tokens(["<|endoftext|>"])
  out.save(path + "/tokenizer.json")


def _import(path: str):
  from llmcpu.training import hf_checkpoint

  hf_checkpoint.import_dir(path, path + "-cpu", log=lambda _: None)


def _crosseval(path: str, docs: int, prompts: int) -> dict:
  """The imported CPU on its own ISA and on byte, python_docs' test split; returns its cells' headline figures."""
  from llmcpu import compilers, crosseval, toolchain
  from llmcpu.data import corpora

  workdir, corpus = path + "-compiled", corpora.load_corpus("python_docs")
  built = toolchain.build_compilers(compilers.parse_list(f"hf:{path},byte"), [corpus], workdir, log=lambda _: None)
  toolchain.compile_corpora([corpus], built, workdir, log=lambda _: None)
  options = crosseval.CrossEvalOptions(max_docs=docs, prompts=prompts, batch_size=1, shuffled_prompts=False)
  isas = [c.name for c in built]
  rows = crosseval.evaluate([path + "-cpu"], isas, workdir, corpus=corpus.spec, options=options, log=lambda _: None)
  failed = [r["error"] for r in rows if r["status"] != "ok"]
  if failed:
    raise RuntimeError(f"cross-evaluation failed: {failed}")
  return {r["eval_isa"]: dict(bpb=r["bits_per_byte"], ids=r["scored_tokens"], prompts=r["prompts"]) for r in rows}


def _port(path: str) -> dict:
  """The imported CPU ported to byte by align and by FVT (the whole model each time)."""
  from llmcpu import compilers, porting
  from llmcpu.training import checkpoints

  model, _, compiler = checkpoints.load_model(path + "-cpu")
  byte = compilers.train("byte")
  out = {}
  for method in ("align", "fvt"):
    ported, provenance = porting.port(model, compiler, byte, method)
    out[method] = {k: v for k, v in provenance["counts"].items() if v}
    del ported
  return out


def _trained_port(path: str, method: str, steps: int, batch: int, length: int) -> dict:
  """scripts/port.py's ``method`` from the imported CPU onto its own ISA (compiled by the crosseval action)."""
  import ml_collections

  from llmcpu.porting import runner

  config = ml_collections.ConfigDict(
    dict(checkpoint=path + "-cpu", to_isa=f"hf:{path}", method=method, steps=steps, save_at="", seed=0,
         learning_rate=0.0, corpus="python_docs", compile_dir=path + "-compiled", batch_size=batch, length=length)
  )  # fmt: skip
  lines = []
  result = runner.port_checkpoint(config, f"{path}-{method}", log=lines.append)
  estimate = next((line for line in lines if line.startswith("memory:")), "")
  figures = {k: round(float(v), 4) for k, v in result.train.items() if k in ("loss", "tokens_per_s")}
  return dict(steps=result.step, batch=batch, length=length, **figures, estimate=estimate)


def child(action: str, path: str, vocab: int, layers: int, docs: int, prompts: int, *train: int) -> None:
  """One action in this process; prints its JSON line."""
  import llmcpu.models as models
  from llmcpu.models import hf

  peak = [0.0]

  def watch():
    while True:
      peak[0] = max(peak[0], _status("RssAnon"))
      time.sleep(0.002)

  base_rss, base_anon = _status("VmRSS"), _status("RssAnon")
  threading.Thread(target=watch, daemon=True).start()
  t0 = time.perf_counter()
  extra, params = {}, None
  if action == "make":
    config = models.ModelConfig(arch="decoder", vocab_size=vocab, num_layers=layers, **GPT2_SMALL)
    model = models.create_from_config(config, seed=0)
    hf.save(model, path)
    tokenizer(path, vocab)
  elif action == "load":
    model = hf.load(path)
  elif action in ("import", "crosseval", "port", "relearn", "finetune"):
    params = models.expected_param_count(hf.config_from_hf(hf.read_config(path)))
    run = {
      "import": _import,
      "port": _port,
      "crosseval": lambda p: _crosseval(p, docs, prompts),
      "relearn": lambda p: _trained_port(p, "relearn", *train),
      "finetune": lambda p: _trained_port(p, "finetune", *train),
    }[action]
    extra = run(path) or {}
  else:  # save_float32 | save_bfloat16: the load is not timed
    model = hf.load(path)
    base_rss, base_anon, t0 = _status("VmRSS"), _status("RssAnon"), time.perf_counter()
    peak[0] = base_anon
    hf.save(model, tempfile.mkdtemp(), dtype=action.removeprefix("save_"))
  seconds = time.perf_counter() - t0
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  params = params or models.param_count(model)
  result = dict(action=action, params=params, weights_mib=round(params * 4 / 2**20), seconds=round(seconds, 2))
  # ru_maxrss is the whole process's peak: meaningless for a save that follows a load in the same process.
  result["rss_peak_above_start_mib"] = None if action.startswith("save") else round(rss - base_rss)
  result["anon_peak_above_start_mib"] = round(peak[0] - base_anon)
  result["anon_peak_mib"] = round(peak[0])
  print(json.dumps(result | extra))


def main(argv):
  del argv
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for action in ACTIONS:
      sizes = (_VOCAB.value, _LAYERS.value, _DOCS.value, _PROMPTS.value, _STEPS.value, _BATCH.value, _LENGTH.value)
      args = [sys.executable, __file__, "--child", action, tmp + "/ckpt", *map(str, sizes)]
      done = subprocess.run(args, capture_output=True, text=True)
      if done.returncode:
        raise RuntimeError(f"action {action} failed:\n{done.stderr[-3000:]}")
      out = done.stdout.strip().splitlines()[-1]
      results[action] = json.loads(out)
      print(out, file=sys.stderr, flush=True)
  print(json.dumps(results), flush=True)


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    child(sys.argv[2], sys.argv[3], *map(int, sys.argv[4:11]))
  else:
    cli.run_script(main)
