"""The periodic actions of a training run (`elbo.loop.Action`).

Each holds its own state and schedule: `LogScalars` (mean train metrics of
each interval, TensorBoard and progress lines), `WriteImages` (the blog's
picture grids), `EvaluateEpoch` (train means of the epoch, test ELBO terms
and the latent diagnostics), `SaveCheckpoint`. A researcher's own action is
one more `Action` passed to `elbo.train.train_and_evaluate`.
"""

import time
from typing import Callable, Dict, Optional

from absl import logging
import keras
import tensorflow as tf

from elbo import checkpoints
from elbo import diagnostics
from elbo import images
from elbo import loop
from elbo import progress as progress_lib
from elbo import run_record
from elbo import step as step_lib
from elbo import summaries

__all__ = ['EvaluateEpoch', 'LogScalars', 'SaveCheckpoint', 'TestEvaluation',
           'WriteImages', 'format_metrics']

_NUM_METRICS = len(step_lib.TRAIN_METRICS)


def format_metrics(metrics: Dict[str, float]) -> str:
  return ', '.join(f'{k} {v:.2f}' for k, v in metrics.items())


def _sums_variable() -> tf.Variable:
  """Running sums of the batch-mean metrics, checkpointed, so a resumed
  run logs the same averages as an uninterrupted one."""
  return tf.Variable(tf.zeros([_NUM_METRICS]), trainable=False)


class LogScalars(loop.Action):
  """Every `every` steps (and at the end): the mean train metrics since the
  last log, the learning rate, the mean gradient norm and examples/s, to
  TensorBoard and as a progress line."""

  at_end = True

  def __init__(self, every: int, batch_size: int, total_steps: int,
               steps_per_epoch: int, writer: summaries.SummaryWriter,
               optimizer: keras.optimizers.Optimizer,
               clock: Callable[[], float] = time.perf_counter):
    self.every = (every,)
    self.batch_size = batch_size
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.writer = writer
    self.optimizer = optimizer
    self.clock = clock
    self.progress: Optional[progress_lib.Progress] = None
    self.interval_sums = _sums_variable()
    self.metrics: Dict[str, float] = {}
    self._norm_sum, self._norm_steps = 0., 0
    self._timer: Optional[tuple] = None  # (time, step) of the last log.

  def trackables(self):
    return {'interval_sums': self.interval_sums}

  def accumulate(self, outputs, first_step, num_steps):
    if self._timer is None:
      outputs.numpy()  # Waits for the first call, which compiles.
      self._timer = (self.clock(), first_step + num_steps)
      self.progress = progress_lib.Progress(
          self.total_steps, start_step=first_step,
          steps_per_epoch=self.steps_per_epoch)
    self.interval_sums.assign_add(outputs[:_NUM_METRICS])
    self._norm_sum += outputs[-1]
    self._norm_steps += num_steps

  def reset(self, step):
    self._norm_sum, self._norm_steps = 0., 0
    self._timer = (self.clock(), step)

  def __call__(self, step):
    every = self.every[0]
    since_log = step - (step - 1) // every * every
    self.metrics = dict(zip(
        step_lib.TRAIN_METRICS,
        (self.interval_sums / since_log).numpy().tolist()))
    if step % every == 0:
      # Not at a last step off the grid: if the run is resumed with more
      # steps, the next log still averages its whole interval.
      self.interval_sums.assign(tf.zeros_like(self.interval_sums))
    scalars = {**self.metrics,
               'learning_rate': float(self.optimizer.learning_rate.numpy())}
    if self._norm_steps:
      scalars['gradient_norm'] = float(self._norm_sum) / self._norm_steps
    self._norm_sum, self._norm_steps = 0., 0
    last_time, last_step = self._timer
    if step > last_step:
      # Without the first call of the process: it traces and compiles.
      scalars['examples_per_second'] = ((step - last_step) * self.batch_size /
                                        (self.clock() - last_time))
      self._timer = (self.clock(), step)
    self.writer.scalars(step, scalars)
    self.progress.update(step, self.metrics,
                         scalars.get('examples_per_second'))


class WriteImages(loop.Action):
  """Every `every` steps, the picture grids (on the chief)."""

  def __init__(self, every: int, writer: summaries.SummaryWriter,
               pictures: Callable[[], Dict[str, tf.Tensor]], chief: bool):
    self.every = (every,)
    self.writer = writer
    self.pictures = pictures
    self.chief = chief
    self.written_at = -1

  def __call__(self, step):
    if self.chief:
      images.write_image_summaries(self.writer, step, self.pictures())
      self.written_at = step


class TestEvaluation:
  """The test-set ELBO terms, and the latent diagnostics (active units,
  I(x; z), KL per dimension) under test/latent/."""

  def __init__(self, eval_step, test_batches: tf.data.Dataset,
               diagnostic_images: tf.Tensor, diagnostic_seed: tf.Tensor,
               model, seed: int, writer: summaries.SummaryWriter):
    self.eval_step = eval_step
    self.test_batches = test_batches
    self.diagnostic_images = diagnostic_images
    self.diagnostic_seed = diagnostic_seed
    self.model = model
    self.seed = seed
    self.writer = writer
    self.metrics: Dict[str, float] = {}

  def __call__(self, step: int) -> Dict[str, float]:
    self.metrics = step_lib.evaluate(self.eval_step, self.test_batches,
                                     self.seed)
    self.writer.scalars(step, self.metrics)
    diagnostics.write_summaries(self.writer, step,
                                diagnostics.diagnostics_summary(
                                    self.model, self.diagnostic_images,
                                    self.diagnostic_seed))
    return self.metrics


class EvaluateEpoch(loop.Action):
  """At the end of each epoch: the epoch's mean train metrics and (on the
  chief) the test evaluation."""

  def __init__(self, steps_per_epoch: int, test: TestEvaluation,
               writer: summaries.SummaryWriter, chief: bool):
    self.every = (steps_per_epoch,)
    self.test = test
    self.writer = writer
    self.chief = chief
    self.epoch_sums = _sums_variable()

  def trackables(self):
    return {'epoch_sums': self.epoch_sums}

  def accumulate(self, outputs, first_step, num_steps):
    self.epoch_sums.assign_add(outputs[:_NUM_METRICS])

  def __call__(self, step):
    steps_per_epoch = self.every[0]
    epoch_metrics = dict(zip(
        step_lib.TRAIN_METRICS,
        (self.epoch_sums / steps_per_epoch).numpy().tolist()))
    self.epoch_sums.assign(tf.zeros_like(self.epoch_sums))
    # Not collective: only the chief evaluates; the others wait at the
    # next step's all-reduce.
    if self.chief:
      self.test(step)
    self.writer.scalars(
        step, {f'epoch/{k}': v for k, v in epoch_metrics.items()})
    logging.info('Epoch %d (step %d): train %s; test %s',
                 step // steps_per_epoch, step, format_metrics(epoch_metrics),
                 format_metrics(self.test.metrics))


class SaveCheckpoint(loop.Action):
  """Every `checkpoint_every` steps, each epoch and at the end: a
  checkpoint (never of a non-finite state) and the run history."""

  at_end = True

  def __init__(self, checkpoint_every: int, steps_per_epoch: int,
               manager: tf.train.CheckpointManager,
               guard: step_lib.NonFiniteGuard,
               history: run_record.RunHistory):
    self.every = (checkpoint_every, steps_per_epoch)
    self.manager = manager
    self.guard = guard
    self.history = history

  def __call__(self, step):
    self.guard.check()
    checkpoints.save(self.manager, step)
    self.history.update(step)
