"""Host memory and time of Hugging Face import/export (``llmcpu.models.hf``) at GPT-2-small's shape.

  python benchmarks/hf_bench.py [--vocab=50257] [--layers=12]

Writes a random float32 checkpoint of GPT-2-small's shape (124M parameters with the default flags) to a temporary
directory, then loads it and saves it (float32 and bfloat16), each in a fresh process so that each peak is its own.
Prints progress, then one JSON object as the last line, per action: seconds, the weights' MiB, and the peaks above
the process's memory after its imports: ``rss`` (ru_maxrss: includes the memory-mapped file's pages, which the
kernel can drop; not reported for the saves, which run after a load in the same process) and ``anon`` (anonymous
memory only, sampled every 2 ms).
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


def child(action: str, path: str, vocab: int, layers: int) -> None:
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
  if action == "make":
    config = models.ModelConfig(arch="decoder", vocab_size=vocab, num_layers=layers, **GPT2_SMALL)
    model = models.create_from_config(config, seed=0)
    hf.save(model, path)
  elif action == "load":
    model = hf.load(path)
  else:  # save_float32 | save_bfloat16: the load is not timed
    model = hf.load(path)
    base_rss, base_anon, t0 = _status("VmRSS"), _status("RssAnon"), time.perf_counter()
    peak[0] = base_anon
    hf.save(model, tempfile.mkdtemp(), dtype=action.removeprefix("save_"))
  seconds = time.perf_counter() - t0
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  weights = models.param_count(model) * 4 / 2**20
  result = dict(action=action, params=models.param_count(model), weights_mib=round(weights), seconds=round(seconds, 2))
  # ru_maxrss is the whole process's peak: meaningless for a save that follows a load in the same process.
  result["rss_peak_above_start_mib"] = None if action.startswith("save") else round(rss - base_rss)
  result["anon_peak_above_start_mib"] = round(peak[0] - base_anon)
  print(json.dumps(result))


def main(argv):
  del argv
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for action in ("make", "load", "save_float32", "save_bfloat16"):
      args = [sys.executable, __file__, "--child", action, tmp + "/ckpt", str(_VOCAB.value), str(_LAYERS.value)]
      out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
      results[action] = json.loads(out)
      print(out, file=sys.stderr, flush=True)
  print(json.dumps(results), flush=True)


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "--child":
    child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
  else:
    cli.run_script(main)
