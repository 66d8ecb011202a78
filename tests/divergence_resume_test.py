"""The divergence guard's window is in the checkpoint: a resumed run judges
its first step as an uninterrupted run would, and runs saved before the
window was checkpointed still resume.

The divergence is injected as in divergence_test: pixels 1e4 instead of
0/1 in one batch, which takes the objective and the gradient norm orders of
magnitude out of the window.
"""

import numpy as np
import pytest
import tensorflow as tf

from elbo import checkpoints
from elbo import data
from elbo import divergence
from elbo import train
import conftest

# Mechanics, not learning: the small generated files (conftest.data_dir).
pytestmark = pytest.mark.generated_data

_WINDOW = 20
_RESUME_AT = 30  # A checkpoint; the window is full (30 >= 20 steps seen).


def _config(data_dir, **overrides):
  settings = dict(model='iwae_mlp', data_dir=data_dir, batch_size=32,
                  max_steps=60, log_every=5, checkpoint_every=5,
                  image_every=1000, steps_per_call=5,
                  divergence_window=_WINDOW, divergence_rewind=5,
                  divergence_skip=3, divergence_cooldown=10,
                  eval_batch_size=1000)
  settings.update(overrides)
  return train.Config(**settings)


def _corrupt_data_step(monkeypatch, bad_step):
  """The batch of data step `bad_step` (0-based) gets pixels 1e4."""
  if hasattr(data, 'training_batches'):
    clean_batches = data.training_batches

    def corrupted(images, batch_size, seed, first_step, num_steps):
      steps = first_step + tf.range(tf.cast(num_steps, tf.int64))
      factor = tf.where(steps == bad_step, 1e4, 1.)
      return clean_batches(images, batch_size, seed, first_step,
                           num_steps) * factor[:, None, None, None, None]

    monkeypatch.setattr(data, 'training_batches', corrupted)
  else:
    clean_batch = data.training_batch

    def corrupted(images, batch_size, seed, step):
      return clean_batch(images, batch_size, seed, step) * tf.where(
          step == bad_step, 1e4, 1.)

    monkeypatch.setattr(data, 'training_batch', corrupted)


def test_a_divergence_at_the_first_step_after_a_resume_is_detected(
    data_dir, tmp_path, monkeypatch):
  """Stopped at step 30, resumed with step 31's batch corrupted: detected
  at step 31 and recovered from. A guard that started empty after the
  resume (its window not checkpointed) would judge nothing before step 50
  and let step 31 through."""
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(_config(data_dir, max_steps=_RESUME_AT), workdir)
  assert divergence.read_recoveries(workdir) == []
  saved = conftest.checkpoint_tensors(workdir + '/checkpoints')
  assert saved['divergence_guard/.ATTRIBUTES/seen'] == _RESUME_AT
  assert saved['divergence_guard/.ATTRIBUTES/recent'].shape == (2, _WINDOW)

  _corrupt_data_step(monkeypatch, _RESUME_AT)
  train.train_and_evaluate(_config(data_dir), workdir)
  recoveries = divergence.read_recoveries(workdir)
  assert [r.bad_step for r in recoveries] == [_RESUME_AT + 1], recoveries
  assert recoveries[0].restored_step <= _RESUME_AT - 5


def test_a_checkpoint_without_the_guard_resumes_with_an_empty_window(
    data_dir, tmp_path, monkeypatch):
  """A run saved as before the window was checkpointed (no
  `divergence_guard` in its checkpoints) resumes: every other tensor
  equals an uninterrupted run's at step 40; the guard counted only the
  steps since the resume."""
  whole, old = str(tmp_path / 'whole'), str(tmp_path / 'old')
  train.train_and_evaluate(_config(data_dir, max_steps=40), whole)
  make_manager = checkpoints.make_manager

  def without_guard(*args, divergence_guard=None, **objects):
    del divergence_guard
    return make_manager(*args, **objects)

  with monkeypatch.context() as patch:
    patch.setattr(checkpoints, 'make_manager', without_guard)
    train.train_and_evaluate(_config(data_dir, max_steps=_RESUME_AT), old)
  old_names = conftest.checkpoint_tensors(old + '/checkpoints')
  assert not any(name.startswith('divergence_guard') for name in old_names)

  train.train_and_evaluate(_config(data_dir, max_steps=40), old)
  expected = conftest.checkpoint_tensors(whole + '/checkpoints')
  resumed = conftest.checkpoint_tensors(old + '/checkpoints')
  guard = 'divergence_guard/.ATTRIBUTES/'
  assert resumed[guard + 'seen'] == 40 - _RESUME_AT
  assert expected[guard + 'seen'] == 40
  conftest.assert_same_tensors(
      {k: v for k, v in resumed.items() if not k.startswith(guard)},
      {k: v for k, v in expected.items() if not k.startswith(guard)})


def _observe(guard, objectives):
  for step, objective in enumerate(objectives):
    guard.observe(tf.constant(step, tf.int64), tf.constant(objective),
                  tf.constant(100.))


@pytest.mark.parametrize('new_window', [3, 5, 8])
def test_the_saved_window_fits_any_window_size(tmp_path, new_window):
  """13 steps seen in a window of 5 (a ring that wrapped): restored into a
  window of 3, 5 or 8, the guard holds the newest steps that fit, and one
  of the same size is bit for bit the saved one."""
  objectives = np.arange(-113., -100., dtype=np.float32)  # Step 12 newest.
  saved = divergence.DivergenceGuard(5, threshold=10.)
  _observe(saved, objectives)
  path = tf.train.Checkpoint(guard=saved).save(str(tmp_path / 'ckpt'))
  restored = divergence.DivergenceGuard(new_window, threshold=10.)
  tf.train.Checkpoint(guard=restored).restore(path).assert_consumed()
  kept = min(new_window, 5)
  window = restored.objectives.numpy()
  np.testing.assert_array_equal(np.sort(window[window != 0]),
                                objectives[-kept:])
  # A full window goes on counting; a partly filled one waits for more.
  assert restored.seen.numpy() == (13 if kept == new_window else kept)
  if new_window == 5:
    for name in ('objectives', 'log_norms', 'seen', 'first_bad_step',
                 'evidence'):
      np.testing.assert_array_equal(getattr(restored, name).numpy(),
                                    getattr(saved, name).numpy(), name)
