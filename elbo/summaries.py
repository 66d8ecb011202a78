"""TensorBoard output: the one module that calls `tf.summary`.

A `SummaryWriter` writes into one log directory (any filesystem TensorFlow
reads, e.g. `gs://`), or nowhere (`SummaryWriter.noop()`, or a `None`
logdir: what a non-chief process uses, so callers need no `if chief`).
Every write is flushed, so a run killed mid-way still shows its curves.

    writer = summaries.SummaryWriter(os.path.join(workdir, 'train'))
    writer.scalars(step, {'loss': 1.5, 'kl': 0.3})
    writer.images(step, {'reconstruction/mean': batch})  # [N, H, W, C]
"""

from typing import Mapping, Optional

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

__all__ = ['SummaryWriter']


class SummaryWriter:
  """Scalars, images, histograms, text and hyperparameters for TensorBoard,
  after the interface of CommonLoopUtils' `metric_writers`."""

  def __init__(self, logdir: Optional[str]):
    """Writes event files into `logdir`; None: writes nothing. Nothing is
    created before the first write."""
    self.logdir = logdir
    self._created = None

  @property
  def _writer(self):
    if self._created is None:
      self._created = (tf.summary.create_file_writer(self.logdir)
                       if self.logdir else tf.summary.create_noop_writer())
    return self._created

  @classmethod
  def noop(cls) -> 'SummaryWriter':
    """A writer that writes nothing (say, off the chief)."""
    return cls(None)

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Each value as the scalar of its name at `step`."""
    with self._writer.as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)
    self.flush()

  def images(self, step: int, images: Mapping[str, tf.Tensor],
             max_outputs: int = 3) -> None:
    """Each `[N, H, W, C]` batch in [0, 1] as the image of its name (the
    first `max_outputs` of the batch)."""
    with self._writer.as_default(step=step):
      for name, batch in images.items():
        tf.summary.image(name, batch, max_outputs=max_outputs)
    self.flush()

  def histograms(self, step: int, values: Mapping[str, object]) -> None:
    """Each array's values as the histogram of its name."""
    with self._writer.as_default(step=step):
      for name, value in values.items():
        tf.summary.histogram(name, value)
    self.flush()

  def text(self, step: int, name: str, text: str) -> None:
    """Markdown shown in TensorBoard's text tab."""
    with self._writer.as_default(step=step):
      tf.summary.text(name, text)
    self.flush()

  def hparams(self, values: Mapping[str, object], trial_id: str) -> None:
    """The run's hyperparameters for the HParams tab, where runs compare:
    write them into the run's top directory."""
    with self._writer.as_default():
      hparams_api.hparams(dict(values), trial_id=trial_id)
    self.flush()

  def flush(self) -> None:
    if self._created is not None:
      self._created.flush()

  def close(self) -> None:
    if self._created is not None:
      self._created.close()
