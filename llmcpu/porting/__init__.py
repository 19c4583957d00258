"""Porting a CPU to another ISA: rebuild its vocabulary-indexed parameters from the old ones, copy the rest.

  rows, counts = fvt_rows(table_a, compiler_a, compiler_b)     # FVT: mean of A's rows of each piece's segmentation
  rows, counts = align_rows(table_a, compiler_a, compiler_b)   # shared pieces copied bit-exactly, the rest FVT
  provenance = transplant(source, target, compiler_a, compiler_b, "align")   # in place on a model for ISA B
  target, provenance = port(source, compiler_a, compiler_b, "fvt")            # builds the model for ISA B too
  rows, counts = omp_rows(table_a, table_donor, compiler_a, compiler_b, k=8)   # with a donor CPU of ISA B
  ids_b = translate_ids(ids_a, compiler_a, compiler_b)         # binary translation, the baseline

``plan_rows`` computes the per-id recipe once (``RowPlan.apply`` runs it on any [V_a, ...] table).
"""

from llmcpu.porting.donor import DONOR_METHODS, char_ids, missing_ids, omp_codes, shared_ids
from llmcpu.porting.transplant import (
  COUNT_KEYS,
  ROW_METHODS,
  RowPlan,
  align_rows,
  check_portable,
  fvt_rows,
  omp_rows,
  plan_rows,
  port,
  procrustes_rows,
  translate_ids,
  translation_cost,
  transplant,
  vocab_params,
)

__all__ = [
  "COUNT_KEYS",
  "DONOR_METHODS",
  "ROW_METHODS",
  "RowPlan",
  "align_rows",
  "char_ids",
  "check_portable",
  "fvt_rows",
  "missing_ids",
  "omp_codes",
  "omp_rows",
  "plan_rows",
  "port",
  "procrustes_rows",
  "shared_ids",
  "translate_ids",
  "translation_cost",
  "transplant",
  "vocab_params",
]
