"""Test-only fault points: the process kills itself (SIGKILL) at a chosen
place, as a crash there would, so that tests interrupt a run at a known
point instead of one found by polling a clock.

    ELBO_TEST_KILL_AT_STEP=N      training: after the call that ends at
                                  step N, before any action at N.
    ELBO_TEST_KILL_AFTER_SAVES=N  evaluation: right after this process's
                                  N-th save of its per-call results.
"""

import os
import signal

KILL_AT_STEP = 'ELBO_TEST_KILL_AT_STEP'
KILL_AFTER_SAVES = 'ELBO_TEST_KILL_AFTER_SAVES'


def point(name: str) -> int:
  """The fault point's value, -1 when it is not set."""
  return int(os.environ.get(name, -1))


def die() -> None:
  """Dies hard, as a crash would: no handler, no flush."""
  os.kill(os.getpid(), signal.SIGKILL)


def kill_if(name: str, value: int) -> None:
  """Dies hard if the fault point `name` is set to `value`."""
  if value == point(name):
    die()
