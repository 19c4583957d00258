"""Check a workdir end to end: every compiler, compiled split and checkpoint step, one line each.

  python scripts/verify.py runs/headline [gs://bucket/runs/other ...]

Run it after copying a workdir between machines or buckets. Exit status 0 when everything is intact, 1 when
anything is damaged (each damaged line says what and how to rebuild it).
"""

from absl import app

from llmcpu import fs, integrity
from llmcpu.errors import UserError
from llmcpu.ops import cli


def main(argv):
  roots = argv[1:]
  if not roots:
    raise app.UsageError("pass one or more workdirs: python scripts/verify.py DIR [DIR ...]")
  if cli.CHECK.value:
    return cli.check([cli.read("dir", fs.abspath(root)) for root in roots])
  counts = {"ok": 0, "damaged": 0}
  for root in roots:
    found = 0
    for finding in integrity.verify(root):
      print(finding.line(), flush=True)
      counts["ok" if finding.ok else "damaged"] += 1
      found += 1
    if not found:
      raise UserError(f"nothing to verify under {root}: no compiler, compiled split or checkpoint")
  print(f"{counts['ok'] + counts['damaged']} items: {counts['ok']} ok, {counts['damaged']} damaged", flush=True)
  if counts["damaged"]:
    raise SystemExit(1)


if __name__ == "__main__":
  cli.run_script(main)
