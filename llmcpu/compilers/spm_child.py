"""SentencePiece training, in this process (``train_proto``) or as a child process the parent can stop at once.

SentencePiece's trainer does not return to Python until it is done (~12 s for a 4k BPE), so a Ctrl-C in the process
that runs it waits that long. ``backends.train_sentencepiece`` therefore runs this file as a script: the parent
streams the texts to its stdin and reads the model from its stdout, staying in Python (a pipe read or write) the
whole time, so SIGINT stops the parent at once and it kills the child. The child writes no file, so nothing
half-written is left; it ignores SIGINT (a terminal's Ctrl-C reaches the whole process group: the parent decides)
and, on Linux, is killed by the kernel if its parent dies first (a SIGTERM or SIGKILL to the parent).

Standard library and sentencepiece only: the child starts in a fraction of a second and imports no llmcpu module.
Protocol: stdin = one JSON line of trainer options, then each text as a 4-byte little-endian length and its UTF-8
bytes, then end of file; stdout = one JSON line (``{"size": n}`` or ``{"error": type, "message": ...}``), then the
model's n bytes.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import sentencepiece as spm

_LENGTH = struct.Struct("<I")


def train_proto(texts: Iterable[str], options: dict) -> bytes:
  """The model proto SentencePiece trains on ``texts`` with ``options``; the same bytes in any process."""
  spm.set_random_generator_seed(0)
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=writer, minloglevel=2, **options)
  return writer.getvalue()


def write_texts(texts: Iterable[str], out: BinaryIO, chunk: int = 1 << 20) -> None:
  """Frames ``texts`` onto ``out`` (see the protocol), in writes of about ``chunk`` bytes."""
  buf = bytearray()
  for text in texts:
    data = text.encode("utf-8")
    buf += _LENGTH.pack(len(data))
    buf += data
    if len(buf) >= chunk:
      out.write(buf)
      buf.clear()
  out.write(buf)


def read_texts(stream: BinaryIO) -> Iterator[str]:
  """The texts ``write_texts`` framed, until end of file."""
  while header := stream.read(_LENGTH.size):
    (n,) = _LENGTH.unpack(header)
    yield stream.read(n).decode("utf-8")


def _die_with_parent(parent: int) -> None:
  """Linux: the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG), so no orphan trains on."""
  if sys.platform.startswith("linux"):
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
  if os.getppid() != parent:  # the parent died before the call above
    os._exit(1)


def main() -> None:
  import signal

  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _die_with_parent(int(sys.argv[1]))
  stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
  options = json.loads(stdin.readline())
  try:
    proto = train_proto(read_texts(stdin), options)
  except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it as its own
    stdout.write((json.dumps({"error": type(e).__name__, "message": str(e)}) + "\n").encode())
  else:
    stdout.write((json.dumps({"size": len(proto)}) + "\n").encode() + proto)
  stdout.flush()


if __name__ == "__main__":
  main()
