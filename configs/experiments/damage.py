"""damage: graded ISA drift. CPUs trained on bpe:1000 (every architecture, three seeds, both corpora) read bpe:1000
with 0, 1, 5, 10, 25, 50 and 100% of its regular opcodes renamed (`+perm:SEED:FRACTION` moves exactly that share).
heatmaps/damage_curves.png plots normalized score, relevance and (programs) exact match against the share, with
intervals; summary.md has the same numbers as a table.

Its training settings are the headline's, and it writes `report-damage/`: run it with the headline's --workdir and
it reuses the headline's bpe:1000 CPUs instead of training them again.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("headline", os.path.join(os.path.dirname(__file__), "headline.py"))
headline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(headline)
FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


def get_config():
  c = headline.get_config()
  c.kind = "damage"
  c.compilers = ",".join(["bpe:1000", *(f"bpe:1000+perm:1:{f:g}" for f in FRACTIONS)])
  c.train_compilers = "bpe:1000"
  c.report = "report-damage"
  return c
