"""Nothing lost on interruption, no training on garbage, same seed same run.

Kill points are drawn at random (seeded, printed) and resumed runs are
compared with an uninterrupted one: parameters and the logged ELBO curve.
The interrupted runs train the small `iwae_mlp` model (what is saved and
resumed is the loop's business, not the model's; the blog's convolutions
made each start 2-3 times slower); that the blog's model repeats bit for
bit is checked on the blog's model.
"""

import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from elbo import checkpoints
from elbo import data
from elbo import models
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


def _last_logged_step(workdir) -> int:
  directory = os.path.join(workdir, 'train')
  if not os.path.isdir(directory):
    return 0
  steps = [step for tag, step, _ in conftest.read_events(directory)
           if tag == 'elbo']
  return max(steps, default=0)


def _start_and_signal_at(workdir, data_dir, at_step: int, signum: int):
  """Starts training, sends `signum` once step `at_step` is logged."""
  argv, env = conftest.binary_command(*_flags(workdir, data_dir))
  process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while process.poll() is None and time.time() < deadline:
    if _last_logged_step(workdir) >= at_step:
      process.send_signal(signum)
      break
    time.sleep(0.05)
  _, stderr = process.communicate(timeout=300)
  return process.returncode, stderr


def _checkpoint_values(workdir):
  reader = tf.train.load_checkpoint(os.path.join(workdir, 'checkpoints'))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not name.startswith('_CHECKPOINTABLE_OBJECT_GRAPH')}


def _elbo_curve(workdir):
  """Step -> ELBO; where a resumed run logged a step again, the last value."""
  return {step: value for tag, step, value in
          conftest.read_events(os.path.join(workdir, 'train'))
          if tag == 'elbo'}


@pytest.fixture(scope='module')
def reference_run(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('reference')
  result = conftest.run_binary(*_flags(workdir, data_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_same_seed_gives_identical_losses(data_dir, tmp_path):
  """The blog's model, trained twice in two processes."""
  curves = []
  for name in ('first', 'second'):
    result = conftest.run_binary(*_flags(tmp_path / name, data_dir,
                                         '--max_steps=8', model='blog'))
    assert result.returncode == 0, result.stderr[-3000:]
    curves.append(_elbo_curve(tmp_path / name))
  assert sorted(curves[0]) == list(range(1, 9))
  assert curves[0] == curves[1]


def test_kill9_at_random_points_then_resume_matches_uninterrupted(
    reference_run, data_dir, tmp_path):
  kill_points = sorted(random.Random(6).sample(range(2, _STEPS - 1), 3))
  print('kill -9 after steps', kill_points)
  for at_step in kill_points:
    returncode, _ = _start_and_signal_at(tmp_path, data_dir, at_step,
                                         signal.SIGKILL)
    assert returncode == -signal.SIGKILL
  result = conftest.run_binary(*_flags(tmp_path, data_dir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Restored' in result.stderr

  resumed, reference = (_checkpoint_values(tmp_path),
                        _checkpoint_values(reference_run))
  assert resumed.keys() == reference.keys()
  for name in reference:
    np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)
  assert _elbo_curve(tmp_path) == _elbo_curve(reference_run)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT],
                         ids=['SIGTERM', 'SIGINT'])
def test_stop_signal_writes_a_checkpoint_at_the_last_step_done(
    data_dir, tmp_path, signum):
  returncode, stderr = _start_and_signal_at(tmp_path, data_dir, 6, signum)
  assert returncode == 75, stderr[-3000:]
  latest = tf.train.latest_checkpoint(os.path.join(tmp_path, 'checkpoints'))
  step = int(latest.rsplit('-', 1)[1])
  assert f'Stopped by signal {int(signum)} after step {step}' in stderr
  assert step >= 6
  assert step == _last_logged_step(tmp_path)  # Events flushed up to it.


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, monkeypatch):
  bad_step = 6  # The 6th step sees NaN pixels; ckpt-4 is the last good one.
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


def _write_foreign_checkpoint(workdir) -> None:
  """A checkpoint of a model with 8 latents instead of 16."""
  model = models.VAE(latent_dim=8)
  manager = checkpoints.make_manager(str(workdir), 1, model=model)
  manager.save(checkpoint_number=1)


def _no_file(_):
  pass


def _a_file(workdir):
  os.rmdir(workdir) if os.path.isdir(workdir) else None
  open(workdir, 'w').close()


def _bad_data_dir(workdir):
  os.makedirs(workdir + '_data')
  with open(os.path.join(workdir + '_data', 'train-images-idx3-ubyte.gz'),
            'wb') as f:
    f.write(b'junk')


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


# End to end through the binary, one case of each kind: flags, the workdir,
# data files, an old checkpoint. (flags, how to prepare the workdir,
# expected message on stderr)
_BAD_INPUTS = [
    (['--batch_size=-5'], _no_file, 'batch_size must be >= 1'),
    (['--epochs=many'], _no_file, 'flag --epochs=many: invalid literal'),
    (['--kl=exact'], _no_file, 'flag --kl=exact: value should be one of'),
    (['--bogus=1'], _no_file, 'Unknown command line flag'),
    (['stray'], _no_file, "Unexpected arguments: ['stray']"),
    ([], _a_file, 'workdir exists and is not a directory'),
    (['--data_dir={workdir}_data'], _bad_data_dir,
     'train-images-idx3-ubyte.gz: cannot read'),
    (['--data_dir={data_dir}'], _write_foreign_checkpoint,
     'ckpt-1: does not match this model'),
]


@pytest.mark.parametrize('flags,prepare,message', _BAD_INPUTS,
                         ids=[' '.join(f) or p.__name__
                              for f, p, _ in _BAD_INPUTS])
def test_bad_input_fails_with_one_line_message(data_dir, tmp_path, flags,
                                               prepare, message):
  workdir = str(tmp_path / 'run')
  prepare(workdir)
  before = sorted(os.listdir(tmp_path))
  flags = [f.format(workdir=workdir, data_dir=data_dir) for f in flags]
  result = conftest.run_binary('--workdir', workdir, *flags)
  assert result.returncode not in (0, 75)
  assert message in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  # No partial workdir that could break the next run.
  assert sorted(os.listdir(tmp_path)) == before


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
  curve, resumed_curve = _elbo_curve(whole), _elbo_curve(split)
  assert sorted(curve) == [7, 14, 21]
  np.testing.assert_allclose([resumed_curve[step] for step in curve],
                             list(curve.values()), rtol=1e-6)
