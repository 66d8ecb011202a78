"""Turning SIGTERM / SIGINT into a clean stop between two training steps.

A preempted job gets SIGTERM and some seconds of grace; Ctrl-C sends SIGINT.
Either way the loop should finish the step it is in, write a checkpoint and
exit, instead of dying with the work since the last checkpoint lost.
"""

import contextlib
import signal
import threading
from typing import Iterator, List, Sequence

__all__ = ['STOP_SIGNALS', 'deferred_signals']

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def deferred_signals(
    signals: Sequence[int] = STOP_SIGNALS) -> Iterator[List[int]]:
  """Records `signals` instead of acting on them, inside the block.

  Yields a list that receives each signal number as it arrives; the caller
  polls it at a safe point. The previous handlers come back on exit. Outside
  the main thread (where Python cannot install handlers) nothing is caught.
  """
  received: List[int] = []
  if threading.current_thread() is not threading.main_thread():
    yield received
    return
  previous = {s: signal.signal(s, lambda signum, _: received.append(signum))
              for s in signals}
  try:
    yield received
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
