"""The one error type a user sees as a single line."""


class UserError(Exception):
  """Bad input: the message says what is wrong and how to fix it, in one line.

  Scripts catch it, print ``error: <message>`` and exit non-zero.
  """


class Stopped(Exception):
  """Work stopped on request (SIGTERM/SIGINT, a preemption) after saving: not a failure. Scripts print the message
  and exit 0; the same command continues."""
