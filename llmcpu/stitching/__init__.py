"""Stitching CPUs of different ISAs: one CPU's encoder read by another's decoder, and the controls that say whether it
worked (issue 13).

Modules (pure numpy, no JAX):
  ``closed_form``   least-squares and orthogonal-Procrustes maps fitted on parallel anchors, relative representations
                    (cosine to anchors), and the control "ids are not an embedding" (raw ids zero-padded to width).
  (Reconstruction metrics, as vec2text reports them, are ``llmcpu.metrics.text``.)
  ``anchors``       token-level parallel anchors: the same text compiled by two ISAs, tokens paired by the bytes they
                    cover, hidden states stacked into (x, y) rows for ``closed_form``.
  ``analogies``     embedding-arithmetic analogies with a known answer on the ``programs`` corpus, held-out operands,
                    and the top-1 cosine neighbour that excludes the inputs.
"""
