"""Training progress for people: a progress bar on a terminal, plain lines
in a file.

Keras' `Progbar` redraws one line with carriage returns and ANSI colour
codes, and it does so whenever `posix` is imported, i.e. always on Linux:
redirected to a file or a cluster job's log, it is unreadable. `Progress`
keeps the bar for a terminal and otherwise writes one line per update:

  step 1200/3510 (epoch 6): elbo -112.41, reconstruction -95.20, kl 17.21 | 905 examples/s | ETA 0:04:15
"""

import contextlib
import datetime
import sys
import time
from typing import Callable, Mapping, Optional, TextIO

import keras

__all__ = ['Progress', 'is_terminal', 'plain_line']


def is_terminal(stream: TextIO) -> bool:
  """Whether `stream` is an interactive terminal (False when it cannot
  tell)."""
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # No isatty, or a closed file.
    return False


def _number(value: float) -> str:
  if isinstance(value, int):
    return str(value)
  return f'{value:.2f}' if abs(value) < 1e5 else f'{value:.4g}'


def _duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(seconds)))


def plain_line(step: int, total_steps: int, metrics: Mapping[str, float],
               epoch: Optional[int] = None,
               examples_per_second: Optional[float] = None,
               eta_seconds: Optional[float] = None) -> str:
  """One progress line, without a newline; only printable characters."""
  head = f'step {step}/{total_steps}'
  if epoch is not None:
    head += f' (epoch {epoch})'
  parts = [head + ': ' + ', '.join(
      f'{name} {_number(value)}' for name, value in metrics.items())]
  if examples_per_second is not None:
    parts.append(f'{examples_per_second:.0f} examples/s')
  parts.append('ETA ' + ('?' if eta_seconds is None
                         else _duration(eta_seconds)))
  return ' | '.join(parts)


class Progress:
  """Reports training progress once per log interval.

  Args:
    total_steps: the step the run ends at.
    start_step: the step it starts (or resumes) at.
    steps_per_epoch: when given, each update also shows the epoch.
    stream: where to write; default `sys.stdout` (at construction).
    clock: seconds, for the ETA (a test passes a fake one).
  """

  def __init__(self, total_steps: int, start_step: int = 0,
               steps_per_epoch: Optional[int] = None,
               stream: Optional[TextIO] = None,
               clock: Callable[[], float] = time.monotonic):
    self.total_steps = total_steps
    self.start_step = start_step
    self.steps_per_epoch = steps_per_epoch
    self.stream = sys.stdout if stream is None else stream
    self.terminal = is_terminal(self.stream)
    self._clock = clock
    # The first update's time and step: the ETA leaves out the time before
    # it, which holds tracing and compilation.
    self._first: Optional[tuple] = None
    self._bar: Optional[keras.utils.Progbar] = None

  def _epoch(self, step: int) -> Optional[int]:
    if not self.steps_per_epoch:
      return None
    return (step - 1) // self.steps_per_epoch + 1

  def _eta(self, step: int) -> Optional[float]:
    now = self._clock()
    if self._first is None:
      self._first = (now, step)
      return None
    first_time, first_step = self._first
    if step <= first_step:
      return None
    seconds_per_step = (now - first_time) / (step - first_step)
    return seconds_per_step * max(self.total_steps - step, 0)

  def update(self, step: int, metrics: Mapping[str, float],
             examples_per_second: Optional[float] = None) -> None:
    """Reports the metrics (e.g. the ELBO terms) at global step `step`."""
    epoch = self._epoch(step)
    if self.terminal:
      self._update_bar(step, metrics, epoch, examples_per_second)
      return
    line = plain_line(step, self.total_steps, metrics, epoch,
                      examples_per_second, self._eta(step))
    self.stream.write(line + '\n')
    self.stream.flush()

  def _update_bar(self, step: int, metrics: Mapping[str, float],
                  epoch: Optional[int],
                  examples_per_second: Optional[float]) -> None:
    values = [] if epoch is None else [('epoch', epoch)]
    values += list(metrics.items())
    if examples_per_second is not None:
      values.append(('examples/s', examples_per_second))
    # Progbar writes to sys.stdout and decides at construction whether it
    # may redraw: both must see this stream.
    with contextlib.redirect_stdout(self.stream):
      if self._bar is None:
        self._bar = keras.utils.Progbar(
            max(self.total_steps - self.start_step, 1),
            stateful_metrics=['epoch', 'examples/s', *metrics])
      self._bar.update(step - self.start_step, values)
