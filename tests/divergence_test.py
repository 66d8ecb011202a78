"""A run that diverges with every value finite recovers by itself.

The divergence is injected as a corrupted batch (pixels 1e4 instead of 0/1)
at a known data step: the objective falls by orders of magnitude and the
gradient norm jumps. The remedy skips the data past it, so one recovery
carries the run through. The rewind, its limits and the remedies of a
resumed run are tested without training in recovery_test.py.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from elbo import data
from elbo import divergence
from elbo import train
import conftest

_BAD_DATA_STEP = 30  # 0-based: the 31st batch of an undisturbed run.


def _config(data_dir, **overrides):
  settings = dict(model='iwae_mlp', data_dir=data_dir, batch_size=32,
                  max_steps=60, log_every=5, checkpoint_every=5,
                  image_every=1000, steps_per_call=5, divergence_window=20,
                  divergence_rewind=5, divergence_skip=3,
                  divergence_cooldown=10, eval_batch_size=1000)
  settings.update(overrides)
  return train.Config(**settings)


def _corrupt(monkeypatch, from_step, to_step):
  """Batches of data steps from_step..to_step get pixels of 1e4."""
  clean_batches = data.training_batches

  def corrupted(images, batch_size, seed, first_step, num_steps):
    steps = first_step + tf.range(num_steps, dtype=tf.int64)
    bad = tf.logical_and(steps >= from_step, steps <= to_step)
    scale = tf.where(bad, 1e4, 1.)[:, None, None, None, None]
    return clean_batches(images, batch_size, seed, first_step,
                         num_steps) * scale

  monkeypatch.setattr(data, 'training_batches', corrupted)


def _weights_finite(workdir) -> bool:
  reader = tf.train.load_checkpoint(os.path.join(workdir, 'checkpoints'))
  values = [np.asarray(reader.get_tensor(name))
            for name in reader.get_variable_to_shape_map()]
  return all(np.all(np.isfinite(v)) for v in values if v.dtype.kind == 'f')


def _trained_weights(workdir):
  """Model and optimizer tensors of the newest checkpoint, by key."""
  reader = tf.train.load_checkpoint(os.path.join(workdir, 'checkpoints'))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name.startswith(('model/', 'optimizer/'))}


def test_a_corrupted_batch_is_detected_and_skipped(data_dir, tmp_path,
                                                   monkeypatch):
  with monkeypatch.context() as patch:
    _corrupt(patch, _BAD_DATA_STEP, _BAD_DATA_STEP)
    workdir = str(tmp_path / 'run')
    train.train_and_evaluate(_config(data_dir), workdir)

  recoveries = divergence.read_recoveries(workdir)
  assert len(recoveries) == 1, recoveries
  recovery = recoveries[0]
  assert recovery.bad_step == _BAD_DATA_STEP + 1  # 1-based, as logged.
  assert recovery.restored_step <= _BAD_DATA_STEP - 5  # >= rewind before.
  assert recovery.restored_step % 5 == 0  # A checkpoint.
  # From the restored step on, the data are past the bad batch.
  assert (recovery.restored_step + recovery.data_skip >
          _BAD_DATA_STEP + 3)
  assert recovery.lr_factor == 0.5 and recovery.cooldown == 10
  assert tf.train.latest_checkpoint(
      os.path.join(workdir, 'checkpoints')).endswith('ckpt-60')
  assert _weights_finite(workdir)
  # The recovery is exact: the run equals, bit for bit, one that never saw
  # the bad batch, stopped at the restored step and resumed with the same
  # remedies on record.
  reference = str(tmp_path / 'reference')
  train.train_and_evaluate(
      _config(data_dir, max_steps=recovery.restored_step), reference)
  divergence.record_recovery(reference, recovery)
  train.train_and_evaluate(_config(data_dir), reference)
  recovered, expected = _trained_weights(workdir), _trained_weights(reference)
  assert recovered.keys() == expected.keys() and len(expected) > 10
  for name, value in expected.items():
    np.testing.assert_array_equal(recovered[name], value, err_msg=name)
  events = conftest.read_events(os.path.join(workdir, 'train'))
  logged = {tag: value for tag, step, value in events
            if tag.startswith('divergence/')}
  assert logged == {'divergence/bad_step': _BAD_DATA_STEP + 1,
                    'divergence/restored_step': recovery.restored_step,
                    'divergence/recoveries': 1}
  norms = [value for tag, _, value in events if tag == 'gradient_norm']
  assert norms and all(np.isfinite(norms))


def test_the_guard_ignores_ordinary_noise_and_flags_a_spike():
  guard = divergence.DivergenceGuard(window=50, threshold=10.)
  rng = np.random.default_rng(0)
  for step in range(200):
    objective = -90. + rng.normal(0., 2.)
    norm = 150. * np.exp(rng.normal(0., 0.3))
    if step == 120:
      norm = 150. * 50  # A norm spike alone is no divergence.
    if step == 150:
      objective, norm = -300., 150. * 50  # Both far out.
    guard.observe(tf.constant(step, tf.int64), tf.constant(objective,
                                                           tf.float32),
                  tf.constant(norm, tf.float32))
  assert guard.bad_step() == 150
  guard.reset()
  assert guard.bad_step() is None
