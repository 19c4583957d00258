"""Runs many ``python scripts/X.py --check ...`` commands for tests/test_readme_commands.py, paying the imports once.

stdin: a JSON list of argvs (``["scripts/train.py", "--config=...", ...]``, relative to the repository root, the
working directory). stdout: a JSON list of ``{"rc": int, "output": str}``, one per argv. The heavy modules the
scripts and their configs import (jax, TensorFlow, the package) are imported here once; each command then runs as
``__main__`` in a forked child, so it gets a fresh absl flag registry exactly as ``python scripts/X.py`` would, and
its exit status and output are the script's own.
"""

import json
import os
import runpy
import sys

# What the scripts and configs/ import, so that a forked child finds them loaded.
import llmcpu.crosseval  # noqa: F401
import llmcpu.experiments  # noqa: F401
import llmcpu.stitching.swap  # noqa: F401
from llmcpu.ops import cli, launch  # noqa: F401


def run_one(argv: list[str]) -> dict:
  read_end, write_end = os.pipe()
  pid = os.fork()
  if pid == 0:  # the child: the script as __main__, its stdout and stderr into the pipe
    os.close(read_end)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    sys.argv = list(argv)
    code = 0
    try:
      runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:  # noqa: BLE001 - a traceback is a failed command, reported as such
      import traceback

      traceback.print_exception(e)
      code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  os.close(write_end)
  chunks = []
  with os.fdopen(read_end, "rb") as pipe:
    for chunk in iter(lambda: pipe.read(65536), b""):
      chunks.append(chunk)
  _, status = os.waitpid(pid, 0)
  return {"rc": os.waitstatus_to_exitcode(status), "output": b"".join(chunks).decode(errors="replace")}


def main() -> None:
  argvs = json.load(sys.stdin)
  results = [run_one(argv) for argv in argvs]
  sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
  main()
