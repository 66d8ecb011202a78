"""Stopping training cleanly on SIGTERM / SIGINT, all workers at one step.

A preempted job gets SIGTERM and some seconds of grace; Ctrl-C sends SIGINT.
Either way the loop should finish the steps in flight, write a checkpoint and
exit, instead of dying with the work since the last checkpoint lost. With
several workers (MultiWorkerMirroredStrategy) they must also stop together: a
worker that stops alone leaves the others blocked in the next all-reduce
until the cluster declares it dead (10 s on localhost), with no checkpoint.

TensorFlow's `tf.distribute.experimental.PreemptionCheckpointHandler` does
the agreeing: the worker that gets SIGTERM publishes, through the
coordination service, a call count one past its own; every worker runs that
one more call (a worker may already be in it), saves and exits. It watches
SIGTERM only, so ours records which signal came and passes SIGINT on to it
too. Where it watches no signal (GCP CPU VMs, where it does nothing; GCP
GPU VMs, where it polls maintenance events instead; TPUStrategy, where we do
not create it), a process stops alone after the call in flight: all one
process needs, but in a multi-worker cluster there the others then wait in
the next all-reduce until the cluster times out, and a non-chief's
checkpoint lands only in its scratch directory. (A stop flag summed across
replicas inside the step would cover every platform; not done yet.)
Outside the main thread, where Python lets no one catch signals, nothing is
caught.
"""

import contextlib
import os
import signal
import threading
from typing import Callable, Iterator, List, NoReturn, Optional

import tensorflow as tf

__all__ = ['STOP_SIGNALS', 'stop_on_signals']

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(
    strategy: tf.distribute.Strategy, checkpoint_dir: str,
    save: Callable[[], None],
    stop: Callable[[Optional[int]], NoReturn]) -> Iterator[Callable[[], None]]:
  """Inside the block, SIGTERM and SIGINT ask every worker to stop.

  Yields `check()`, which every worker calls after each training call
  (`tf.function` call, however many steps it runs): at the call the workers
  agreed on, it runs `save()` and then `stop(signum)`, which must raise;
  `signum` is None on the workers the signal did not reach. Under TF's
  handler that is one call after the signal was seen, so that a worker
  already inside the next call can finish it. The previous signal handlers
  come back on exit.

  Args:
    strategy: the training strategy; its cluster is the one that agrees.
    checkpoint_dir: where `save()` writes; TF's handler gets a
      directory inside it that stays empty.
    save: writes the checkpoint of the current step.
    stop: ends training, e.g. by raising an exception.
  """
  received: List[int] = []
  if threading.current_thread() is not threading.main_thread():
    # Python lets only the main thread install signal handlers.
    yield lambda: None
    return
  previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
  handler = None
  if not isinstance(strategy, tf.distribute.TPUStrategy):
    # On TPUs it watches no signal: Borg's preemption notices off GCP,
    # nothing at all on a Cloud TPU VM.
    handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        strategy.cluster_resolver,
        # It needs a manager: it adds its call counter to the manager's
        # checkpoint and restores that from the manager's directory. An
        # empty checkpoint in a directory that stays empty (`save` does the
        # writing) leaves our checkpoints as they are, our restore (from the
        # chief's directory on every worker) the only one, and TF no value
        # of ours to warn about as unrestored.
        tf.train.CheckpointManager(
            tf.train.Checkpoint(),
            os.path.join(checkpoint_dir, 'unused_by_preemption_handler'),
            max_to_keep=1),
        termination_config=tf.distribute.experimental.TerminationConfig(
            exit_fn=lambda: stop(received[0] if received else None),
            grace_period=0, save_fn=save))
  # What TF's handler installed, if it watches SIGTERM on this platform.
  on_sigterm = signal.getsignal(signal.SIGTERM)
  watched = on_sigterm != previous[signal.SIGTERM] and callable(on_sigterm)

  def on_signal(signum, frame):
    received.append(signum)
    if watched:
      on_sigterm(signal.SIGTERM, frame)

  def check() -> None:
    if handler is not None:
      handler.save_checkpoint_if_preempted()
    if received and not watched:
      save()
      stop(received[0])

  for s in STOP_SIGNALS:
    signal.signal(s, on_signal)
  try:
    yield check
  finally:
    for s, old in previous.items():
      signal.signal(s, old)
