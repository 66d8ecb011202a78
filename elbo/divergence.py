"""Finite divergences: detected in the step, recovered from by the loop.

A run can blow up with every value finite: the long run of the README went
from a batch ELBO of -89 to -1.4e7 in 50 steps, its gradient norm from 60-240
to 4.7e6, and the NaN guard never fired. `DivergenceGuard` watches each
step's objective and global gradient norm against robust statistics of the
run's recent steps (median and median absolute deviation of the last
`window` healthy steps, the gradient norm on a log scale), and remembers the
first step where both lie more than `threshold` robust standard deviations
on the bad side (objective below, norm above). Both, because a gradient-norm
spike alone is common early in training and harmless under Adam: with
either one, an undisturbed 60-step run of the IWAE MLP (window 20) was
flagged twice; a true divergence moves both by orders of magnitude. Like
the NaN guard, it records in the compiled step and the host reads it only
before logging and checkpointing, so no checkpoint of a diverged state is
written.

The loop (`elbo.train`) then restores the newest checkpoint at least
`rewind` steps before the bad step and applies the remedy of large-model
trainings (PaLM restarts about 100 steps before a spike and skips the data
batches around it): the data skip past the bad step by `skip` steps, and the
learning rate is multiplied by `lr_factor` for `cooldown` steps. Each
recovery is one line of `divergences.jsonl` in the workdir; a resumed run
reads it back, so the data offset and learning-rate factor in force are the
same as in an uninterrupted run.
"""

import dataclasses
import json
import os
from typing import List, Optional

import tensorflow as tf

__all__ = ['DivergenceGuard', 'Recovery', 'data_offset', 'lr_factor',
           'next_change', 'read_recoveries', 'record_recovery']

_FILENAME = 'divergences.jsonl'
# Robust standard deviation = 1.4826 * MAD for a normal distribution.
_MAD_TO_SD = 1.4826
# Floors on the robust standard deviations: a run whose last steps were all
# alike must not call a tiny change a divergence.
_MIN_OBJECTIVE_SD = 0.5  # nats
_MIN_LOG_NORM_SD = 0.05


class DivergenceGuard(tf.__internal__.tracking.Trackable):
  """Remembers the first step far outside the run's recent steps.

  In a checkpoint, its window (the recent healthy steps, oldest first), the
  count of steps seen and the bad step if any, so that a resumed run judges
  its first step as an uninterrupted one would. The saved window does not
  depend on `window`: a run resumed with another one keeps the newest steps
  that fit (and waits for a full window before judging).

  Args:
    window: how many recent healthy steps the statistics cover; detection
      starts once that many were seen.
    threshold: robust standard deviations; <= 0 turns the guard off.
  """

  def __init__(self, window: int, threshold: float):
    self.window = window
    self.threshold = threshold
    self.objectives = tf.Variable(tf.zeros([window]), trainable=False)
    self.log_norms = tf.Variable(tf.zeros([window]), trainable=False)
    self.seen = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.first_bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
    # The bad step's objective and norm, and the medians they were judged by.
    self.evidence = tf.Variable(tf.zeros([4]), trainable=False)

  def observe(self, step: tf.Tensor, objective: tf.Tensor,
              gradient_norm: tf.Tensor) -> None:
    """Called once per step, in the graph, with the batch-mean objective."""
    if self.threshold <= 0:
      return
    log_norm = tf.math.log(tf.maximum(gradient_norm, 1e-30))
    objective_median, objective_sd = _robust_centre_and_sd(self.objectives)
    norm_median, norm_sd = _robust_centre_and_sd(self.log_norms)
    outlier = tf.logical_and(
        (objective_median - objective) >
        self.threshold * tf.maximum(objective_sd, _MIN_OBJECTIVE_SD),
        (log_norm - norm_median) >
        self.threshold * tf.maximum(norm_sd, _MIN_LOG_NORM_SD))
    bad = tf.logical_and(self.seen >= self.window, outlier)
    finite = tf.logical_and(tf.math.is_finite(objective),
                            tf.math.is_finite(log_norm))

    def record():
      self.first_bad_step.assign(step)
      self.evidence.assign(tf.stack([objective, gradient_norm,
                                     objective_median, tf.exp(norm_median)]))
      return tf.constant(0)

    def remember():
      slot = self.seen % self.window
      # assign, not scatter_nd_update: mirrored variables have only assign.
      self.objectives.assign(tf.tensor_scatter_nd_update(
          self.objectives, [[slot]], [objective]))
      self.log_norms.assign(tf.tensor_scatter_nd_update(
          self.log_norms, [[slot]], [log_norm]))
      self.seen.assign_add(1)
      return tf.constant(0)

    tf.cond(tf.logical_and(bad, self.first_bad_step < 0), record,
            lambda: tf.constant(0))
    # Non-finite steps are the NaN guard's; neither kind enters the window.
    tf.cond(tf.logical_and(tf.logical_not(bad), finite), remember,
            lambda: tf.constant(0))

  def bad_step(self) -> Optional[int]:
    """The first diverged step (0-based), or None; reads from the device."""
    step = int(self.first_bad_step.numpy())
    return None if step < 0 else step

  def describe(self) -> str:
    objective, norm, objective_median, norm_median = self.evidence.numpy()
    return (f'objective {objective:.4g} (median {objective_median:.4g}), '
            f'gradient norm {norm:.4g} (median {norm_median:.4g})')

  def reset(self) -> None:
    """Forgets the bad step; the statistics of healthy steps stay."""
    self.first_bad_step.assign(-1)

  def _serialize_to_tensors(self):
    """The checkpoint's values: the window oldest first (objectives, log
    norms), the count seen, the bad step and its evidence."""
    count = tf.minimum(self.seen, self.window)
    start = tf.where(self.seen >= self.window, self.seen % self.window, 0)
    order = (start + tf.range(count)) % self.window
    recent = tf.gather(tf.stack([self.objectives.read_value(),
                                 self.log_norms.read_value()]), order, axis=1)
    return {'recent': recent, 'seen': tf.identity(self.seen),
            'first_bad_step': tf.identity(self.first_bad_step),
            'evidence': tf.identity(self.evidence)}

  def _restore_from_tensors(self, restored_tensors):
    """The newest saved steps that fit this window, at the ring positions
    an uninterrupted run would have them in when they fill it."""
    recent, seen = restored_tensors['recent'], restored_tensors['seen']
    saved = tf.shape(recent, out_type=tf.int64)[1]
    count = tf.minimum(saved, self.window)
    recent = recent[:, saved - count:]
    full = count == self.window
    seen = tf.where(full, seen, count)
    slots = (tf.where(full, seen, 0) + tf.range(count))[:, None] % self.window
    fill = lambda values: tf.tensor_scatter_nd_update(
        tf.zeros([self.window]), slots, values)
    return tf.group(
        self.objectives.assign(fill(recent[0])),
        self.log_norms.assign(fill(recent[1])), self.seen.assign(seen),
        self.first_bad_step.assign(restored_tensors['first_bad_step']),
        self.evidence.assign(restored_tensors['evidence']))


def _robust_centre_and_sd(values: tf.Tensor):
  ordered = tf.sort(values)
  median = ordered[values.shape[0] // 2]
  mad = tf.sort(tf.abs(values - median))[values.shape[0] // 2]
  return median, _MAD_TO_SD * mad


@dataclasses.dataclass(frozen=True)
class Recovery:
  """One recovery: from `restored_step` on, the data are `data_skip` steps
  further ahead, and the learning rate is multiplied by `lr_factor` until
  `restored_step + cooldown`."""
  bad_step: int
  restored_step: int
  data_skip: int
  lr_factor: float
  cooldown: int
  detail: str = ''


def read_recoveries(workdir: str) -> List[Recovery]:
  """The recoveries of the run in `workdir`, oldest first."""
  path = os.path.join(workdir, _FILENAME)
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path) as f:
    return [Recovery(**json.loads(line)) for line in f if line.strip()]


def record_recovery(workdir: str, recovery: Recovery) -> None:
  """Appends one line to `divergences.jsonl`."""
  path = os.path.join(workdir, _FILENAME)
  lines = []
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      lines = [line for line in f.read().splitlines() if line.strip()]
  lines.append(json.dumps(dataclasses.asdict(recovery)))
  with tf.io.gfile.GFile(path + '.tmp', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  tf.io.gfile.rename(path + '.tmp', path, overwrite=True)


def data_offset(recoveries: List[Recovery], step: int) -> int:
  """How many steps ahead of `step` its batch is drawn."""
  return sum(r.data_skip for r in recoveries if r.restored_step <= step)


def lr_factor(recoveries: List[Recovery], step: int) -> float:
  """The product of the factors of the recoveries cooling down at `step`."""
  factor = 1.0
  for r in recoveries:
    if r.restored_step <= step < r.restored_step + r.cooldown:
      factor *= r.lr_factor
  return factor


def next_change(recoveries: List[Recovery], step: int) -> Optional[int]:
  """The first step after `step` where the factor or offset changes."""
  changes = [s for r in recoveries
             for s in (r.restored_step, r.restored_step + r.cooldown)
             if s > step]
  return min(changes, default=None)
