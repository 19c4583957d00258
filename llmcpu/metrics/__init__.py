"""Metric computations shared by the evaluations (pure numpy and sacrebleu, no JAX): the one home of a text metric.

``text``  exact match, chrF, BLEU, token F1 and embedding cosine over paired texts, each with its per-item array
          where a caller bootstraps it; the cross-evaluation (``crosseval``) and the stitching scores read these.
"""
