"""Recovery from a finite divergence: rewind, skip the data, cool down.

`elbo.divergence.DivergenceGuard` notices a divergence inside the compiled
step; before any action runs, the loop asks `Recovery.check()`, and on a
divergence `Recovery.rewind()` restores the newest checkpoint at least
`divergence_rewind` steps before it, records the remedy
(`divergences.jsonl`) and returns the step the run continues from; the loop
then tells the actions to reset. The remedies in force at a step (data
offset, learning-rate factor) follow from the recorded recoveries alone, so
a resumed run applies exactly those of an uninterrupted one.
"""

import os
from typing import Optional

from absl import logging
import keras
import tensorflow as tf

from elbo import checkpoints
from elbo import config as config_lib
from elbo import divergence
from elbo import errors
from elbo import factory
from elbo import step as step_lib
from elbo import summaries

__all__ = ['Recovery', 'checkpoints_to_keep']


def checkpoints_to_keep(config: config_lib.Config,
                        steps_per_epoch: int) -> int:
  """Enough that one checkpoint `divergence_rewind` steps before any step
  is still there when a divergence is noticed (before the next save)."""
  if config.divergence_threshold <= 0:
    return config.keep_checkpoints
  needed = (config.divergence_rewind // config.checkpoint_every +
            config.divergence_rewind // steps_per_epoch + 3)
  return max(config.keep_checkpoints, needed)


class Recovery:
  """The run's health between calls, and its divergence recoveries.

  Args:
    config: the run's; its `divergence_*` fields set the remedy.
    workdir: where `divergences.jsonl` is read and (on the chief) written.
    manager: the run's checkpoints, to rewind to.
    guard: the NaN guard of the compiled step.
    divergence_guard: the divergence guard of the compiled step.
    learning_rate: the optimizer's rate, whose factor the cool-down sets.
    optimizer: the optimizer using it.
    writer: where the divergence scalars go.
    chief: whether this process writes the workdir's records.
  """

  def __init__(self, config: config_lib.Config, workdir: str,
               manager: tf.train.CheckpointManager,
               guard: step_lib.NonFiniteGuard,
               divergence_guard: divergence.DivergenceGuard,
               learning_rate: factory.LearningRate,
               optimizer: keras.optimizers.Optimizer,
               writer: summaries.SummaryWriter, chief: bool):
    self.config = config
    self.workdir = workdir
    self.manager = manager
    self.guard = guard
    self.divergence_guard = divergence_guard
    self.learning_rate = learning_rate
    self.optimizer = optimizer
    self.writer = writer
    self.chief = chief
    self.recoveries = divergence.read_recoveries(workdir)
    self.data_offset = tf.Variable(0, dtype=tf.int64, trainable=False)

  def apply_remedies(self, step: int, force: bool = False) -> tf.Variable:
    """Sets the learning-rate factor and data offset in force at `step`
    (always with `force`, e.g. after a restore: it sets a constant rate
    again); returns the data offset."""
    if self.recoveries or force:
      self.learning_rate.set_factor(
          self.optimizer, divergence.lr_factor(self.recoveries, step))
      self.data_offset.assign(divergence.data_offset(self.recoveries, step))
    return self.data_offset

  def next_change(self, step: int) -> Optional[int]:
    """The first step after `step` where a remedy starts or ends."""
    return divergence.next_change(self.recoveries, step)

  def check(self) -> Optional[int]:
    """Raises NonFiniteError on a NaN or Inf; returns the first diverged
    step (0-based), or None."""
    self.guard.check()
    return self.divergence_guard.bad_step()

  def rewind(self, bad_step: int) -> int:
    """Restores the newest checkpoint `divergence_rewind` steps before
    `bad_step` (0-based), records the remedy and returns its step.

    Raises:
      DivergenceError: no recovery left, or no checkpoint to rewind to.
    """
    config = self.config
    detail = self.divergence_guard.describe()
    target = self._target(bad_step, detail)
    checkpoints.restore_path(
        self.manager.checkpoint,
        os.path.join(self.manager.directory, f'ckpt-{target}'),
        optional=('divergence_guard',))
    recovery = divergence.Recovery(
        bad_step=bad_step + 1, restored_step=target,
        data_skip=bad_step - target + 1 + config.divergence_skip,
        lr_factor=config.divergence_lr_factor,
        cooldown=config.divergence_cooldown, detail=detail)
    self.recoveries.append(recovery)
    if self.chief:
      divergence.record_recovery(self.workdir, recovery)
    logging.warning('Divergence at step %d (%s): restored ckpt-%d; data '
                    'skip %d steps ahead, learning rate x%g for %d steps '
                    '(recovery %d of at most %d).', bad_step + 1, detail,
                    target, recovery.data_skip, recovery.lr_factor,
                    recovery.cooldown, len(self.recoveries),
                    config.divergence_max_recoveries)
    self.writer.scalars(bad_step + 1, {
        'divergence/bad_step': bad_step + 1,
        'divergence/restored_step': target,
        'divergence/recoveries': len(self.recoveries)})
    self.divergence_guard.reset()
    self.apply_remedies(target, force=True)
    return target

  def _target(self, bad_step: int, detail: str) -> int:
    """The step to rewind to, or DivergenceError."""
    saved = sorted(checkpoints.step_of(path)
                   for path in self.manager.checkpoints)
    rewind = self.config.divergence_rewind
    before = [s for s in saved if s <= bad_step - rewind]
    target = (before or [s for s in saved if s <= bad_step] or [None])[-1]
    if (len(self.recoveries) >= self.config.divergence_max_recoveries or
        target is None):
      kept = f'ckpt-{saved[-1]} kept' if saved else 'no checkpoint yet'
      raise errors.DivergenceError(
          f'Training diverged at step {bad_step + 1} ({detail}) after '
          f'{len(self.recoveries)} recoveries; stopped, {kept}. Try a lower '
          '--learning_rate or --clip_norm.')
    return target
