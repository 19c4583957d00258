"""Hugging Face import/export against ``transformers`` itself (PyTorch, float32): the reference implementation.

test_hf.py checks the same checkpoints against float64 numpy forward passes written from transformers' equations;
this file closes the loop with the real library, in both directions: a checkpoint ``transformers`` computes (ours
written in save_pretrained's layout, and its own ``save_pretrained`` output, config keys of its version included)
gives the same logits and the same greedy continuation in llmcpu, and what ``hf.save`` exports loads in
``transformers`` and computes the same logits. Needs ``pip install -r requirements-reference.txt`` (PyTorch and
transformers; ``.ci/run`` installs it); skipped without it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_hf as ref

from llmcpu.models import decoding, hf

torch = pytest.importorskip(
  "torch", reason="the transformers reference needs: pip install -r requirements-reference.txt"
)
transformers = pytest.importorskip("transformers", reason="pip install -r requirements-reference.txt")

NEW = 4  # greedy tokens compared; GPT-2's 16 positions hold the 12 prompt ids and these


def reference_model(path: str):
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  return model.eval()


def reference_logits(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.double().numpy()


@pytest.mark.parametrize("case", sorted(ref.CASES))
def test_llmcpu_computes_what_transformers_computes_both_ways(case, tmp_path):
  cfg, tensors = ref.CASES[case]()
  src = ref.write(tmp_path / "src", cfg, tensors)
  theirs = reference_model(src)
  ids = ref.ids_for(cfg)
  want = reference_logits(theirs, ids)
  # The float64 numpy reference of test_hf.py is transformers' computation (so those tests test the right thing).
  assert ref.relative_error(ref.reference(cfg, tensors, ids), want) < 1e-5

  ours = hf.load(src)
  assert ref.relative_error(ref.logits(ours, ids), want) < 1e-4

  # transformers' own save_pretrained (its names, its version's config keys, e.g. rope_parameters) imports the same.
  theirs.save_pretrained(tmp_path / "saved")
  saved = json.loads((tmp_path / "saved" / "config.json").read_text())
  assert saved["transformers_version"] == transformers.__version__
  again = hf.load(str(tmp_path / "saved"))
  assert again.config == ours.config
  assert ref.relative_error(ref.logits(again, ids), want) < 1e-4

  # What llmcpu exports loads in transformers, which then computes the same logits.
  hf.save(ours, str(tmp_path / "export"))
  exported = reference_model(str(tmp_path / "export"))
  assert type(exported).__name__ == cfg["architectures"][0]
  assert ref.relative_error(reference_logits(exported, ids), want) < 1e-4

  # Greedy continuations: llmcpu's KV-cached generation against transformers' generate (both greedy, no EOS stop).
  with torch.no_grad():
    prompt = torch.tensor(ids)
    out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW, min_new_tokens=NEW,
                          do_sample=False, eos_token_id=None, pad_token_id=0)  # fmt: skip
  mine = np.asarray(decoding.generate(ours, ids, NEW, eos_id=-1))
  np.testing.assert_array_equal(mine, out[:, ids.shape[1] :].numpy())
