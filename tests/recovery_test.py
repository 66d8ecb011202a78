"""Divergence recovery without a training run: the rewind target, its
limits, the remedies, and the same remedies after a resume."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from elbo import checkpoints
from elbo import config as config_lib
from elbo import divergence
from elbo import errors
from elbo import factory
from elbo import recovery as recovery_lib
from elbo import step as step_lib


class _Writer:
  """Records scalars instead of writing events."""

  def __init__(self):
    self.scalars_written = []

  def scalars(self, step, values):
    self.scalars_written.append((step, dict(values)))


def _setup(tmp_path, max_recoveries=3, saved_steps=(5, 10, 15, 20, 25, 30)):
  """A 'model' variable whose value is the step it was saved at."""
  config = config_lib.Config(
      model='iwae_mlp', divergence_rewind=5, divergence_skip=3,
      divergence_lr_factor=0.5, divergence_cooldown=10,
      divergence_max_recoveries=max_recoveries, divergence_window=4)
  weight = tf.Variable(0.)
  guard = divergence.DivergenceGuard(config.divergence_window, 10.)
  manager = checkpoints.make_manager(str(tmp_path), 10, weight=weight,
                                     divergence_guard=guard)
  for step in saved_steps:
    weight.assign(float(step))
    checkpoints.save(manager, step)
  weight.assign(-1.)  # The diverged state.
  rate = factory.LearningRate(1e-3)
  optimizer = keras.optimizers.Adam(rate.for_optimizer())
  writer = _Writer()
  recovery = recovery_lib.Recovery(config, str(tmp_path), manager,
                                   step_lib.NonFiniteGuard(), guard, rate,
                                   optimizer, writer, chief=True)
  return recovery, weight, guard, optimizer, writer


def _diverge_at(guard, step):
  guard.first_bad_step.assign(step)


def test_healthy_run_reports_no_divergence(tmp_path):
  recovery, *_ = _setup(tmp_path)
  assert recovery.check() is None


def test_a_nan_is_an_error_not_a_rewind(tmp_path):
  recovery, *_ = _setup(tmp_path)
  recovery.guard.observe(tf.constant(7, tf.int64),
                         tf.constant([np.nan, 0., 0., 0.]), tf.constant(True))
  with pytest.raises(errors.NonFiniteError, match='at step 8'):
    recovery.check()


def test_rewind_restores_the_newest_checkpoint_rewind_steps_before(tmp_path):
  recovery, weight, guard, optimizer, writer = _setup(tmp_path)
  _diverge_at(guard, 31)  # 0-based step 31, logged as step 32.
  assert recovery.check() == 31
  target = recovery.rewind(31)
  assert target == 25  # The newest of 5..30 at or before 31 - 5 = 26.
  assert float(weight.numpy()) == 25.
  assert guard.bad_step() is None
  saved, = divergence.read_recoveries(str(tmp_path))
  assert saved == recovery.recoveries[0]
  assert (saved.bad_step, saved.restored_step) == (32, 25)
  assert saved.data_skip == 31 - 25 + 1 + 3
  assert writer.scalars_written == [(32, {
      'divergence/bad_step': 32, 'divergence/restored_step': 25,
      'divergence/recoveries': 1})]
  # The remedy from the restored step: data 10 steps ahead, the learning
  # rate halved for 10 steps, then back.
  assert int(recovery.apply_remedies(25).numpy()) == 10
  assert float(optimizer.learning_rate.numpy()) == pytest.approx(5e-4)
  assert recovery.next_change(25) == 35
  recovery.apply_remedies(35)
  assert float(optimizer.learning_rate.numpy()) == pytest.approx(1e-3)


def test_too_close_to_the_start_rewinds_to_the_newest_before(tmp_path):
  recovery, weight, guard, *_ = _setup(tmp_path)
  _diverge_at(guard, 7)  # No checkpoint at or before 7 - 5 = 2.
  assert recovery.rewind(7) == 5
  assert float(weight.numpy()) == 5.


def test_no_checkpoint_to_rewind_to_stops_with_one_line(tmp_path):
  recovery, _, guard, *_ = _setup(tmp_path, saved_steps=(10,))
  _diverge_at(guard, 7)
  with pytest.raises(errors.DivergenceError,
                     match=r'^Training diverged at step 8 .* after 0 '
                     r'recoveries; stopped, ckpt-10 kept\. Try a lower') as error:
    recovery.rewind(7)
  assert '\n' not in str(error.value)


def test_the_last_allowed_recovery_is_the_last(tmp_path):
  recovery, _, guard, *_ = _setup(tmp_path, max_recoveries=2)
  for bad_step in (31, 31):
    _diverge_at(guard, bad_step)
    recovery.rewind(bad_step)
  with pytest.raises(errors.DivergenceError,
                     match=r'after 2 recoveries; stopped, ckpt-30 kept\.'):
    recovery.rewind(31)
  assert len(divergence.read_recoveries(str(tmp_path))) == 2


def test_a_resumed_run_applies_the_recorded_remedies(tmp_path):
  live, _, guard, live_optimizer, _ = _setup(tmp_path / 'run')
  _diverge_at(guard, 31)
  live.rewind(31)
  resumed, _, _, optimizer, _ = _setup(tmp_path / 'run')
  assert resumed.recoveries == live.recoveries
  for step in (20, 25, 30, 34, 35, 50):
    expected_offset = int(live.apply_remedies(step).numpy())
    expected_rate = float(live_optimizer.learning_rate.numpy())
    assert int(resumed.apply_remedies(step).numpy()) == expected_offset
    assert float(optimizer.learning_rate.numpy()) == expected_rate
    assert expected_offset == (10 if step >= 25 else 0)


@pytest.mark.parametrize('rewind,checkpoint_every,expected', [
    (100, 500, 3), (1000, 100, 10 + 1000 // 234 + 3)])
def test_enough_checkpoints_are_kept_to_rewind(rewind, checkpoint_every,
                                               expected):
  config = config_lib.Config(divergence_rewind=rewind,
                             checkpoint_every=checkpoint_every)
  assert recovery_lib.checkpoints_to_keep(config, 234) == expected
