"""End-to-end tests of the training loop and the train binary."""

import os

import keras
import numpy as np
import tensorflow as tf

from elbo import config as config_lib
from elbo import data
from elbo import models
from elbo import train
import conftest

_BLOG_START = 784 * np.log(2)  # -ELBO of a decoder that outputs p = 0.5.


def test_binary_trains_logs_and_resumes(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  common = ['--workdir', workdir, '--data_dir', data_dir, '--batch_size=64',
            '--log_every=10', '--image_every=20', '--checkpoint_every=20',
            '--eval_batch_size=1000']
  first = conftest.run_binary(*common, '--max_steps=40')
  assert first.returncode == 0, first.stderr[-3000:]

  train_events = conftest.read_events(os.path.join(workdir, 'train'))
  test_events = conftest.read_events(os.path.join(workdir, 'test'))
  train_tags = {tag for tag, _, _ in train_events}
  assert {'elbo', 'reconstruction', 'kl', 'learning_rate',
          'examples_per_second'} <= train_tags
  assert {'input', 'reconstruction/mode', 'reconstruction/mean',
          'prior_sample/mode', 'prior_sample/mean'} <= train_tags
  test_scalars = {tag: value for tag, _, value in test_events}
  assert set(test_scalars) == {'elbo', 'reconstruction', 'kl'}
  np.testing.assert_allclose(
      test_scalars['elbo'],
      test_scalars['reconstruction'] - test_scalars['kl'], rtol=1e-5)
  # 40 steps take -ELBO far below where training starts (about 543 nats).
  first_logged = [v for tag, step, v in train_events
                  if tag == 'elbo' and step == 10]
  assert -first_logged[0] > 0.6 * _BLOG_START
  assert -test_scalars['elbo'] < 0.6 * _BLOG_START
  assert test_scalars['kl'] > 0

  for name, rows in (('reconstructions.png', 3), ('prior_samples.png', 2)):
    png = tf.io.decode_png(tf.io.read_file(os.path.join(workdir, name)))
    assert png.shape == (rows * 28, 16 * 28, 1)

  second = conftest.run_binary(*common, '--max_steps=60')
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Restored' in second.stderr and 'ckpt-40' in second.stderr
  assert tf.train.latest_checkpoint(
      os.path.join(workdir, 'checkpoints')).endswith('ckpt-60')
  steps = sorted({step for tag, step, _ in
                  conftest.read_events(os.path.join(workdir, 'train'))
                  if tag == 'elbo'})
  assert steps == [10, 20, 30, 40, 50, 60]  # No step logged twice.


def test_xla_and_default_steps_compute_the_same_loss(data_dir):
  config = train.Config(batch_size=32)
  images = next(iter(data.epoch_batches(
      data.load_images('mnist', 'test', data_dir), 32, seed=0, epoch=0)))
  seed = tf.constant([1, 2], tf.int32)
  step_number = tf.constant(0, tf.int64)
  results = {}
  for jit_compile in (False, True):
    keras.utils.set_random_seed(0)
    model = models.VAE()
    optimizer = keras.optimizers.Adam(1e-3)
    step = train.make_train_step(model, optimizer, config, jit_compile)
    eval_step = train.make_eval_step(model, config, jit_compile)
    before = eval_step(images, seed).numpy()
    first = step(images, step_number).numpy()
    second = step(images, step_number).numpy()
    results[jit_compile] = (before, first, second)
  (before, first, second), (before_xla, first_xla, second_xla) = (
      results[False], results[True])
  # Same weights, same batch, same latent draws: equal up to float rounding
  # (XLA's and oneDNN's convolutions sum in different orders; measured up
  # to 2.3e-5 relative).
  np.testing.assert_allclose(before_xla, before, rtol=1e-4)
  np.testing.assert_allclose(first_xla, first, rtol=1e-4)
  # Adam's first update is about lr * sign(gradient), so rounding-level
  # gradient differences move some weights by up to 2e-3 either way; the
  # next loss still agrees closely (measured: 2e-5 in the ELBO, 3e-3 in KL).
  np.testing.assert_allclose(second_xla[:2], second[:2], rtol=2e-4)
  np.testing.assert_allclose(second_xla[2], second[2], rtol=2e-2)


def test_config_defaults_are_the_blogs():
  config = train.Config()
  assert (config.epochs, config.batch_size, config.learning_rate) == (
      15, 256, 1e-3)
  assert config.kl == 'analytic' and config.dataset == 'mnist'


def test_jit_compile_auto_means_accelerator_only():
  has_accelerator = bool(tf.config.list_physical_devices('GPU') or
                         tf.config.list_physical_devices('TPU'))
  assert train.resolve_jit_compile('auto') == has_accelerator
  assert train.resolve_jit_compile('true') is True
  assert train.resolve_jit_compile('false') is False


def _one_batch(data_dir, batch_size=32):
  return next(iter(data.epoch_batches(
      data.load_images('mnist', 'test', data_dir), batch_size, seed=0,
      epoch=0)))


def _first_step_metrics(config, batch, step=0):
  """[elbo, reconstruction, kl, objective] of one train step from the
  seed-0 initialization."""
  keras.utils.set_random_seed(0)
  model = config_lib.build_model(config)
  train_step = train.make_train_step(model, keras.optimizers.Adam(1e-3),
                                     config, jit_compile=False)
  return train_step(batch, tf.constant(step, tf.int64)).numpy()


def test_objectives(data_dir):
  batch = _one_batch(data_dir)
  elbo, _, _, objective = _first_step_metrics(train.Config(), batch)
  assert objective == elbo  # beta = 1: the plain ELBO.

  elbo, reconstruction, kl, objective = _first_step_metrics(
      train.Config(kl_weight=0.5, kl_warmup_steps=10), batch, step=4)
  np.testing.assert_allclose(objective, reconstruction - 0.2 * kl, rtol=1e-6)

  elbo, _, _, bound = _first_step_metrics(
      train.Config(objective='iwae', num_samples=8), batch)
  assert elbo < bound < 0  # L_8 >= ELBO on the same samples.

  metrics = _first_step_metrics(
      train.Config(prior='mixture', prior_components=10, kl='mc'), batch)
  assert np.all(np.isfinite(metrics)) and metrics[2] > 0


def test_cosine_schedule_decays_to_zero_over_all_epochs():
  schedule = config_lib.learning_rate(
      train.Config(lr_schedule='cosine', epochs=2), steps_per_epoch=10)
  np.testing.assert_allclose(
      [float(schedule(s)) for s in (0, 10, 20)], [1e-3, 5e-4, 0.], atol=1e-9)
  assert config_lib.learning_rate(train.Config(), 10) == 1e-3


def test_mixed_bfloat16_evaluates_within_a_nat_of_float32(data_dir):
  """The same weights (trained 30 steps) score the same test batch in both
  precisions within 1 nat per example. (Whole trainings in both precisions
  are compared by experiments/benchmark.py, not here: 30 steps of early
  training diverge by several nats from rounding alone.)"""
  images = data.load_images('mnist', 'train', data_dir)
  test_batch = _one_batch(data_dir, batch_size=100)
  config = train.Config(batch_size=64)
  keras.utils.set_random_seed(0)
  model = config_lib.build_model(config)
  step = train.make_train_step(model, keras.optimizers.Adam(1e-3), config,
                               jit_compile=False)
  for i, batch in enumerate(data.epoch_batches(images, 64, 0, 0)):
    if i == 30:
      break
    step(batch, tf.constant(i, tf.int64))
  elbo = {}
  for precision in config_lib.PRECISIONS:
    copy = config_lib.build_model(config, precision=precision)
    copy.set_weights(model.get_weights())
    eval_step = train.make_eval_step(copy, config, jit_compile=False)
    elbo[precision] = eval_step(test_batch, tf.constant([0, 0]))[0] / 100
  print('test ELBO of the same weights:', elbo)
  assert abs(elbo['mixed_bfloat16'] - elbo['float32']) < 1.0
