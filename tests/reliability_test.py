"""Stop signals at a known step, no training on garbage, config checks,
resumes off the log grid.

Signals come from the loop's test-only fault point at a known step
(`conftest.signal_at_step_command`), not from polling the events. kill -9,
cut-short checkpoints, a second training and bad input, end to end through
the binary, are in promises_test.
"""

import os
import signal
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from elbo import data
from elbo import train
import conftest

# Mechanics, not learning: the small generated files (conftest.data_dir).
pytestmark = pytest.mark.generated_data


_STEPS = 24


def _flags(workdir, data_dir, *extra, model='iwae_mlp'):
  return ['--workdir', str(workdir), '--data_dir', data_dir,
          f'--model={model}', '--batch_size=32', '--log_every=1',
          '--checkpoint_every=4', '--image_every=1000',
          '--eval_batch_size=1000',
          f'--max_steps={_STEPS}', *extra]


def _checkpoint_values(workdir):
  reader = tf.train.load_checkpoint(os.path.join(workdir, 'checkpoints'))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not name.startswith('_CHECKPOINTABLE_OBJECT_GRAPH')}


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT],
                         ids=['SIGTERM', 'SIGINT'])
def test_stop_signal_writes_a_checkpoint_at_the_last_step_done(
    data_dir, tmp_path, signum):
  """The signal arrives right after the call that ends at step 6 (one step
  per call: logs every step); the run stops one call later, at 7, with a
  checkpoint of it and its events flushed up to it."""
  argv, env = conftest.signal_at_step_command(6, signum,
                                              *_flags(tmp_path, data_dir))
  result = subprocess.run(argv, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 75, result.stderr[-3000:]
  assert f'Stopped by signal {int(signum)} after step 7' in result.stderr
  assert tf.train.latest_checkpoint(
      os.path.join(tmp_path, 'checkpoints')).endswith('ckpt-7')
  assert max(conftest.elbo_curve(str(tmp_path))) == 7


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, monkeypatch):
  bad_step = 6  # The 6th step sees NaN pixels; ckpt-4 is the last good one.
  if hasattr(data, 'training_batches'):
    clean_batches = data.training_batches

    def poisoned_batches(images, batch_size, seed, first_step, num_steps):
      # Steps count from 0: the 6th step is 5.
      steps = first_step + tf.range(tf.cast(num_steps, tf.int64))
      factor = tf.where(steps + 1 == bad_step, np.nan, 1.)
      return clean_batches(images, batch_size, seed, first_step,
                           num_steps) * factor[:, None, None, None, None]

    monkeypatch.setattr(data, 'training_batches', poisoned_batches)
  else:
    clean_batch = data.training_batch

    def poisoned_batch(images, batch_size, seed, step):
      # `step` counts from 0: it is the 6th step's.
      return clean_batch(images, batch_size, seed, step) * tf.where(
          step + 1 == bad_step, np.nan, 1.)

    monkeypatch.setattr(data, 'training_batch', poisoned_batch)
  config = train.Config(model='iwae_mlp', data_dir=data_dir, batch_size=32,
                        max_steps=12, log_every=3, checkpoint_every=4,
                        image_every=1000)
  with pytest.raises(train.NonFiniteError,
                     match='Non-finite elbo, reconstruction, kl, objective, '
                     'gradients '
                     f'at step {bad_step};'):
    train.train_and_evaluate(config, str(tmp_path))
  latest = tf.train.latest_checkpoint(os.path.join(tmp_path, 'checkpoints'))
  assert latest.endswith('ckpt-4')
  for name, value in _checkpoint_values(tmp_path).items():
    if np.issubdtype(np.asarray(value).dtype, np.floating):
      assert np.all(np.isfinite(value)), name


# Every value Config rejects, checked in-process (the binary turns these
# same errors into usage errors; see the end-to-end table below).
_BAD_CONFIGS = [
    (dict(batch_size=0), 'batch_size must be >= 1'),
    (dict(batch_size=-5), 'batch_size must be >= 1'),
    (dict(epochs=-1), 'epochs must be >= 1'),
    (dict(num_samples=0), 'num_samples must be >= 1'),
    (dict(log_every=0), 'log_every must be >= 1'),
    (dict(image_every=0), 'image_every must be >= 1'),
    (dict(checkpoint_every=0), 'checkpoint_every must be >= 1'),
    (dict(keep_checkpoints=0), 'keep_checkpoints must be >= 1'),
    (dict(eval_batch_size=0), 'eval_batch_size must be >= 1'),
    (dict(max_steps=-5), 'max_steps must be >= 0'),
    (dict(learning_rate=0.), 'learning_rate must be > 0'),
    (dict(learning_rate=float('nan')), 'learning_rate must be > 0'),
    (dict(clip_norm=-1.), 'clip_norm must be >= 0'),
    (dict(clip_norm=float('inf')), 'clip_norm must be >= 0'),
    (dict(kl='exact'), 'kl must be one of'),
    (dict(dataset='cifar10'), 'dataset must be one of'),
    (dict(jit_compile='maybe'), 'jit_compile must be one of'),
    (dict(data_dir='/nonexistent'), "data_dir '/nonexistent' is not a"),
]


@pytest.mark.parametrize('kwargs,message', _BAD_CONFIGS,
                         ids=[str(k) for k, _ in _BAD_CONFIGS])
def test_config_rejects_bad_values(kwargs, message):
  with pytest.raises(ValueError, match=message):
    train.Config(**kwargs)


def test_steps_to_next_event_stops_at_every_boundary():
  ends, step = [], 0
  while step < 30:
    step += train.steps_to_next_event(step, [7, 100, 5, 12], total_steps=30,
                                      steps_per_call=10, also_at=[3, 23])
    ends.append(step)
  # Multiples of 5 (checkpoints), 7 (logs), 12 (epochs), the steps asked
  # for (3, 23), and the end.
  assert ends == [3, 5, 7, 10, 12, 14, 15, 20, 21, 23, 24, 25, 28, 30]
  assert train.steps_to_next_event(0, [100, 1000], 2000, 3) == 3


def test_resuming_off_the_log_grid_with_several_steps_per_call(data_dir,
                                                               tmp_path):
  """3 steps per call, logs every 7, checkpoints every 5: a run stopped at
  step 12 (neither a log nor a call boundary of the longer run) and resumed
  to 21 ends with the weights of a run of 21, and logs the same averages
  at steps 7, 14 and 21."""
  settings = dict(model='iwae_mlp', data_dir=data_dir, batch_size=32,
                  steps_per_call=3, log_every=7, checkpoint_every=5,
                  image_every=1000)
  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  train.train_and_evaluate(train.Config(max_steps=21, **settings), whole)
  train.train_and_evaluate(train.Config(max_steps=12, **settings), split)
  train.train_and_evaluate(train.Config(max_steps=21, **settings), split)
  resumed = _checkpoint_values(split)
  for name, value in _checkpoint_values(whole).items():
    if '_sums' in name:  # Added up in other groupings of steps: rounding.
      np.testing.assert_allclose(resumed[name], value, rtol=1e-6)
    elif not name.startswith('save_counter'):  # One more save at step 12.
      # Weights, Adam's moments, the step: bit for bit.
      np.testing.assert_array_equal(resumed[name], value, err_msg=name)
  curve, resumed_curve = conftest.elbo_curve(whole), conftest.elbo_curve(split)
  assert sorted(curve) == [7, 14, 21]
  np.testing.assert_allclose([resumed_curve[step] for step in curve],
                             list(curve.values()), rtol=1e-6)
