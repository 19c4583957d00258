"""The benchmarks' own arithmetic, checked against independent counts."""

import os
import sys

import pytest

from llmcpu import models

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import model_bench  # noqa: E402  (benchmarks/ is not a package)


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_matmul_skeleton_does_the_steps_flops(mlp):
  """The matmuls-only estimate is credited with ``flops_per_token``: XLA's own count of the skeleton's FLOPs must be
  that figure, up to the head's gradient accumulation (vocab × d_model adds, which XLA may leave uncounted)."""
  config = models.ModelConfig(
    arch="decoder", vocab_size=300, d_model=32, num_heads=4, num_layers=2, d_ff=64, mlp=mlp, max_len=16
  )
  batch, seq = 2, 16
  fn, operands = model_bench.matmul_skeleton(config, batch, seq)
  cost = fn.lower(*operands).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  expected = models.flops_per_token(config, seq) * batch * seq
  assert abs(cost["flops"] - expected) <= 300 * 32
