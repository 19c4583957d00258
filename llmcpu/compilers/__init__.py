"""Compilers: tokenizers whose id → piece tables are the ISAs a model can run.

``train(spec, texts)`` builds one, ``load(path)`` reads one back, ``isa_overlap(a, b)`` measures compatibility.
"""

from llmcpu.compilers.compiler import Compiler, isa_overlap, load, train
from llmcpu.compilers.spec import FAMILIES, CompilerSpec, parse, parse_list

__all__ = ["FAMILIES", "Compiler", "CompilerSpec", "isa_overlap", "load", "parse", "parse_list", "train"]
