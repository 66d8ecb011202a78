"""The loop core and the actions, without a training run."""

import numpy as np
import pytest
import tensorflow as tf

from elbo import actions as actions_lib
from elbo import loop


class _Recorder(loop.Action):
  """Records when it ran and what it accumulated."""

  def __init__(self, every, at_end=False):
    self.every = every
    self.at_end = at_end
    self.ran, self.calls, self.resets = [], [], []

  def accumulate(self, outputs, first_step, num_steps):
    self.calls.append((first_step, num_steps))

  def __call__(self, step):
    self.ran.append(step)

  def reset(self, step):
    self.resets.append(step)


class _Recovery:
  """Healthy, except one divergence noticed at `bad_at` (0-based step
  `bad_step`), rewound to `target`."""

  def __init__(self, bad_at=None, bad_step=None, target=None):
    self.bad_at, self.bad_step, self.target = bad_at, bad_step, target
    self.step = 0

  def apply_remedies(self, step):
    self.step = step
    return tf.constant(0, tf.int64)

  def next_change(self, step):
    return None

  def check(self):
    if self.bad_at is not None and self.step_after == self.bad_at:
      self.bad_at = None
      return self.bad_step
    return None

  def rewind(self, bad_step):
    return self.target


def _train_steps(recovery):
  def train_steps(first_step, num_steps, data_offset):
    recovery.step_after = int(first_step) + int(num_steps)
    return tf.fill([5], float(num_steps))  # Each step's outputs are 1.
  return train_steps


@pytest.mark.parametrize('steps_per_call', [1, 3, 7, 100])
def test_actions_run_at_exactly_their_steps(steps_per_call):
  every_4, every_6 = _Recorder((4,)), _Recorder((6, 10), at_end=True)
  recovery = _Recovery()
  state = loop.LoopState(step=0, total_steps=23)
  loop.run(state, _train_steps(recovery), [every_4, every_6], recovery,
           steps_per_call)
  assert state.step == 23
  assert every_4.ran == [4, 8, 12, 16, 20]
  assert every_6.ran == [6, 10, 12, 18, 20, 23]
  # The calls cover every step once, none longer than steps_per_call.
  covered = [s for first, n in every_4.calls for s in range(first, first + n)]
  assert covered == list(range(23))
  assert max(n for _, n in every_4.calls) <= steps_per_call


def test_a_resumed_loop_runs_the_same_actions_from_there():
  whole, part = _Recorder((5,)), _Recorder((5,))
  loop.run(loop.LoopState(0, 20), _train_steps(_Recovery()), [whole],
           _Recovery(), 3)
  loop.run(loop.LoopState(7, 20), _train_steps(_Recovery()), [part],
           _Recovery(), 3)
  assert part.ran == [s for s in whole.ran if s > 7]


def test_a_divergence_rewinds_and_resets_every_action():
  action = _Recorder((5,))
  recovery = _Recovery(bad_at=15, bad_step=12, target=5)
  state = loop.LoopState(0, 20)
  loop.run(state, _train_steps(recovery), [action], recovery, 5)
  # At 15 the check finds the divergence: no action runs there, the run
  # goes back to 5 and continues.
  assert action.resets == [5]
  assert action.ran == [5, 10, 10, 15, 20]
  assert state.step == 20


def test_check_stop_is_called_after_each_call():
  stops = []
  loop.run(loop.LoopState(0, 9), _train_steps(_Recovery()), [_Recorder((3,))],
           _Recovery(), 100, check_stop=lambda: stops.append(1))
  assert len(stops) == 3


def test_steps_to_next_event_stops_at_the_nearest_boundary():
  assert loop.steps_to_next_event(0, [50], 1000, 10) == 10
  assert loop.steps_to_next_event(45, [50], 1000, 10) == 5
  assert loop.steps_to_next_event(995, [50], 1000, 10) == 5
  assert loop.steps_to_next_event(0, [50], 1000, 10, also_at=[3, None]) == 3


class _Writer:

  def __init__(self):
    self.written = []

  def scalars(self, step, values):
    self.written.append((step, dict(values)))


class _Progress:

  def __init__(self):
    self.lines = []

  def update(self, step, metrics, examples_per_second):
    self.lines.append((step, dict(metrics)))


def _log_action(every=4):
  class _Optimizer:
    learning_rate = tf.Variable(2e-3)
  times = iter(np.arange(0., 100., 1.))
  log = actions_lib.LogScalars(every, batch_size=10, total_steps=100,
                               steps_per_epoch=50, writer=_Writer(),
                               optimizer=_Optimizer(),
                               clock=lambda: next(times))
  return log


def test_log_scalars_averages_its_interval_and_starts_again():
  log = _log_action(every=4)
  # Two calls of 2 steps: metric sums 2*(1, 2, 3, 4), gradient norms 2*5.
  outputs = tf.constant([2., 4., 6., 8., 10.])
  log.accumulate(outputs, 0, 2)
  log.accumulate(outputs, 2, 2)
  log.progress = _Progress()
  log(4)
  step, scalars = log.writer.written[-1]
  assert step == 4
  assert [scalars[k] for k in ('elbo', 'reconstruction', 'kl',
                               'objective')] == [1., 2., 3., 4.]
  assert scalars['gradient_norm'] == 5.  # Mean of the two calls' sums/steps.
  assert scalars['learning_rate'] == pytest.approx(2e-3)
  # 2 steps of 10 examples since the first call ended, 1 tick of the clock.
  assert scalars['examples_per_second'] == pytest.approx(20.)
  assert log.progress.lines == [(4, log.metrics)]
  np.testing.assert_array_equal(log.interval_sums.numpy(), np.zeros(4))


def test_log_scalars_off_the_grid_keeps_its_sums():
  """A last step off the grid logs the partial interval but keeps it, so a
  run resumed with more steps logs the whole interval's mean."""
  log = _log_action(every=4)
  log.accumulate(tf.constant([3., 3., 3., 3., 3.]), 0, 3)
  log.progress = _Progress()
  log(3)
  assert log.metrics['elbo'] == 1.
  np.testing.assert_array_equal(log.interval_sums.numpy(), [3.] * 4)
  assert log.trackables() == {'interval_sums': log.interval_sums}


def test_evaluate_epoch_means_the_epoch_and_evaluates_on_the_chief():
  evaluated = []

  class _Test:
    metrics = {'elbo': -100.}

    def __call__(self, step):
      evaluated.append(step)

  epoch = actions_lib.EvaluateEpoch(4, _Test(), _Writer(), chief=True)
  epoch.accumulate(tf.constant([4., 8., 12., 16., 0.]), 0, 4)
  epoch(4)
  assert evaluated == [4]
  assert epoch.writer.written == [(4, {'epoch/elbo': 1., 'epoch/reconstruction':
                                       2., 'epoch/kl': 3.,
                                       'epoch/objective': 4.})]
  np.testing.assert_array_equal(epoch.epoch_sums.numpy(), np.zeros(4))
  off_chief = actions_lib.EvaluateEpoch(4, _Test(), _Writer(), chief=False)
  off_chief(4)
  assert evaluated == [4]


def test_save_checkpoint_never_saves_a_non_finite_state(tmp_path):
  from elbo import checkpoints
  from elbo import errors
  from elbo import step as step_lib
  weight = tf.Variable(1.)
  manager = checkpoints.make_manager(str(tmp_path), 3, weight=weight)
  guard = step_lib.NonFiniteGuard()

  class _History:
    steps = []

    def update(self, step):
      self.steps.append(step)

  save = actions_lib.SaveCheckpoint(5, 10, manager, guard, _History())
  save(5)
  assert [checkpoints.step_of(p) for p in manager.checkpoints] == [5]
  guard.observe(tf.constant(6, tf.int64), tf.constant([np.inf, 0., 0., 0.]),
                tf.constant(True))
  with pytest.raises(errors.NonFiniteError):
    save(10)
  assert [checkpoints.step_of(p) for p in manager.checkpoints] == [5]
  assert save.history.steps == [5]
