"""decoder training config: `--config=configs/decoder.py[:tiny|small|base]`."""

from llmcpu.training.run_config import base_config


def get_config(preset: str = "tiny"):
  return base_config("decoder", preset)
