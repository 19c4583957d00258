"""Compilers: tokenizers whose id → piece tables are the ISAs a model can run.

``train(spec, texts)`` builds one, ``load(path)`` reads one back, ``isa_overlap(a, b)`` measures compatibility.
"""

from llmcpu.compilers.compiler import MANIFEST, Compiler, from_blob, isa_overlap, load, to_blob, train
from llmcpu.compilers.spec import FAMILIES, CompilerSpec, parse, parse_list

__all__ = [
  "FAMILIES",
  "MANIFEST",
  "Compiler",
  "CompilerSpec",
  "from_blob",
  "isa_overlap",
  "load",
  "parse",
  "parse_list",
  "to_blob",
  "train",
]
