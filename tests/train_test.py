"""End-to-end tests of the training loop and the train binary."""

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from elbo import config as config_lib
from elbo import data
from elbo import factory
from elbo import losses
from elbo import train
import conftest

_BLOG_START = 784 * np.log(2)  # -ELBO of a decoder that outputs p = 0.5.


def test_binary_trains_logs_and_resumes(generated_data_dir, tmp_path):
  """What the binary writes, with the small `iwae_mlp` model on the small
  generated files: with the blog's model on real MNIST (two test
  evaluations and latent figures of 10,000 images) the test took 4 minutes
  on a 2-core AVX2 CPU, 42 s like this. The blog's binary runs in
  train_smoke_test; learning on real MNIST is asserted in the bf16 test."""
  data_dir = generated_data_dir
  workdir = str(tmp_path / 'run')
  common = ['--workdir', workdir, '--data_dir', data_dir, '--model=iwae_mlp',
            '--batch_size=64',
            '--log_every=10', '--image_every=20', '--checkpoint_every=20',
            '--eval_batch_size=1000']
  first = conftest.run_binary(*common, '--max_steps=40')
  assert first.returncode == 0, first.stderr[-3000:]

  train_events = conftest.read_events(os.path.join(workdir, 'train'))
  test_events = conftest.read_events(os.path.join(workdir, 'test'))
  train_tags = {tag for tag, _, _ in train_events}
  assert {'elbo', 'reconstruction', 'kl', 'learning_rate',
          'examples_per_second', 'gradient_norm', 'config'} <= train_tags
  # The first call traces and compiles: not timed. It ends at step 10 (the
  # first log) or, on small generated data, at the end of the first epoch.
  first_call = min(10, data.steps_per_epoch(
      len(data.load_images('mnist', 'train', data_dir)), 64))
  assert [step for tag, step, _ in train_events
          if tag == 'examples_per_second'] == [
              step for step in (10, 20, 30, 40) if step > first_call]
  norms = [value for tag, _, value in train_events if tag == 'gradient_norm']
  assert len(norms) == 4 and all(0 < norm < 1e4 for norm in norms)
  # Images at 20 and 40 (the last step), each once.
  assert [step for tag, step, _ in train_events if tag == 'input'] == [20, 40]
  # The HParams plugin's per-run entry, at the top of the run.
  top_level = {tag for tag, _, _ in conftest.read_events(workdir)}
  assert '_hparams_/session_start_info' in top_level
  assert {'input', 'reconstruction/mode', 'reconstruction/mean',
          'prior_sample/mode', 'prior_sample/mean'} <= train_tags
  test_scalars = {tag: value for tag, _, value in test_events}
  assert set(test_scalars) == {
      'elbo', 'reconstruction', 'kl', 'latent/active_units',
      'latent/mutual_information', 'latent/total_correlation',
      'latent/kl_per_dimension', 'latent/kl_per_dimension_sorted'}
  active_units = test_scalars['latent/active_units']
  print('active units', active_units)
  # A count of units, at least one (KL > 0 below); measured: all 50 (the
  # posterior means still vary with the input after 40 steps).
  assert active_units == int(active_units) and active_units >= 1
  np.testing.assert_allclose(
      test_scalars['elbo'],
      test_scalars['reconstruction'] - test_scalars['kl'], rtol=1e-5)
  # 40 steps take -ELBO far below where training starts (about 543 nats).
  first_logged = [v for tag, step, v in train_events
                  if tag == 'elbo' and step == 10]
  assert -first_logged[0] > 0.6 * _BLOG_START
  assert -test_scalars['elbo'] < 0.6 * _BLOG_START
  assert test_scalars['kl'] > 0

  for name in ('interpolations.png', 'traversals.png', 'latent_pca.png'):
    assert os.path.isfile(os.path.join(workdir, name)), name
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
  return data.training_batch(data.load_images('mnist', 'test', data_dir),
                             batch_size, seed=0, step=0)


def _first_step_metrics(config, batch, step=0):
  """[elbo, reconstruction, kl, objective] of one train step from the
  seed-0 initialization (without the gradient norm)."""
  keras.utils.set_random_seed(0)
  model = factory.build_model(config)
  train_step = train.make_train_step(model, keras.optimizers.Adam(1e-3),
                                     config, jit_compile=False)
  return train_step(batch, tf.constant(step, tf.int64)).numpy()[:4]


def test_objectives(data_dir):
  batch = _one_batch(data_dir)
  elbo, _, _, objective = _first_step_metrics(train.Config(), batch)
  assert objective == elbo  # beta = 1: the plain ELBO.

  elbo, reconstruction, kl, objective = _first_step_metrics(
      train.Config(kl_weight=0.5, kl_warmup_steps=10), batch, step=4)
  np.testing.assert_allclose(objective, reconstruction - 0.2 * kl, rtol=1e-6)

  elbo, _, _, bound = _first_step_metrics(
      train.Config(objective='iwae', num_samples=8), batch)
  assert elbo < bound  # L_8 >= L_1 in expectation; other draws here.
  # DReG changes the encoder's gradient only: the same value of L_8.
  *_, dreg_bound = _first_step_metrics(
      train.Config(objective='iwae_dreg', num_samples=8), batch)
  np.testing.assert_allclose(dreg_bound, bound, rtol=1e-6)

  metrics = _first_step_metrics(
      train.Config(prior='mixture', prior_components=10, kl='mc'), batch)
  assert np.all(np.isfinite(metrics)) and metrics[2] > 0


def test_cosine_schedule_decays_to_zero_over_all_epochs():
  schedule = factory.learning_rate(
      train.Config(lr_schedule='cosine', epochs=2), steps_per_epoch=10)
  np.testing.assert_allclose(
      [float(schedule(s)) for s in (0, 10, 20)], [1e-3, 5e-4, 0.], atol=1e-9)
  assert factory.learning_rate(train.Config(), 10) == 1e-3


def test_mixed_bfloat16_evaluates_within_a_nat_of_float32(real_data_dir):
  """The same weights (trained 30 steps) score the same test batch in both
  precisions within 0.2 nats per example. (Whole trainings in both precisions
  are compared in the README, not here: 30 steps of early training diverge
  by several nats from rounding alone.)"""
  images = data.load_images('mnist', 'train', real_data_dir)
  test_batch = _one_batch(real_data_dir, batch_size=100)
  config = train.Config(batch_size=64)
  keras.utils.set_random_seed(0)
  model = factory.build_model(config)
  step = train.make_train_step(model, keras.optimizers.Adam(1e-3), config,
                               jit_compile=False)
  for i in range(30):
    step(data.training_batch(images, 64, 0, i), tf.constant(i, tf.int64))
  elbo = {}
  for precision in config_lib.PRECISIONS:
    copy = factory.build_model(
        dataclasses.replace(config, precision=precision))
    copy.set_weights(model.get_weights())
    eval_step = train.make_eval_step(copy, config, jit_compile=False)
    elbo[precision] = eval_step(test_batch, tf.constant([0, 0]))[0] / 100
  print('test ELBO of the same weights:', elbo)
  # Measured 0.039 nats (AVX-512). Margin 5.
  assert abs(elbo['mixed_bfloat16'] - elbo['float32']) < 0.2
  # Learning on real MNIST (skipped where it is absent): 30 steps
  # take the test -ELBO from 543 nats to 371 (measured).
  assert -elbo['float32'] < 0.75 * _BLOG_START


def _reference_training(config, images, num_steps, optimizer):
  """Our training steps written out plainly: eager, one device, no XLA,
  no guard, one Python call per step. Returns the sums over the steps of
  the batch-mean [elbo, reconstruction, kl] and the final weights."""
  keras.utils.set_random_seed(0)
  model = factory.build_model(config)
  latent_seed = tf.constant([config.seed, 1], tf.int32)  # The latent stream.
  sums = np.zeros(3)
  for step in range(num_steps):
    batch = data.training_batch(images, config.batch_size, config.seed, step)
    seed = tf.random.experimental.stateless_fold_in(latent_seed, step)
    with tf.GradientTape() as tape:
      terms = losses.elbo(batch, model.approx_posterior(batch),
                          model.decoder_likelihood,
                          latent_prior=model.latent_prior(),
                          kl_method=config.kl, seed=seed)
      loss = -tf.reduce_mean(terms.elbo)
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    sums += [float(tf.reduce_mean(t)) for t in terms]
  return sums, model.get_weights()


def _fast_loop(config, images, jit_compile, optimizer):
  """Our training loop from the seed-0 initialization: the model and
  `train_steps(first_step, num_steps)`."""
  keras.utils.set_random_seed(0)
  model = factory.build_model(config)
  optimizer.build(model.trainable_variables)
  train_steps = train.make_train_loop(
      train.make_train_step(model, optimizer, config, jit_compile,
                            guard=train.NonFiniteGuard()),
      data.resident_images(images), config.batch_size, config.seed)
  return model, lambda first, num: train_steps(
      tf.constant(first, tf.int64), tf.constant(num, tf.int64)).numpy()


def _distance(weights, other_weights):
  return np.sqrt(sum(np.sum((w - o)**2)
                     for w, o in zip(weights, other_weights)))


@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_fast_training_loop_matches_a_plain_reference(data_dir, optimizer):
  """Batches made in the graph, several steps per call, the guard: the
  same losses and weights as the plain loop, up to float rounding.

  Adam's first steps are about lr * sign(gradient), at most about lr per
  weight and step: where a gradient is near zero, rounding can flip the
  sign of one step's update, moving that weight by up to 2 lr. So each
  weight is bounded in units of lr, and the whole difference relative to
  the distance the weights moved. Measured after 4 steps (real MNIST /
  generated blobs): Adam max |dw| 0.49 lr / 1.07 lr, |dw| / moved 5.0e-4 /
  2.5e-3; SGD 1.9e-4 lr / 1.5e-5 lr, 5.1e-7 / 8.1e-8. A learning rate 1%
  off in the fast loop gives 2.5 lr and 0.021 / 0.029 under Adam (2.3 lr
  and 4.5e-3 / 5.8e-3 under SGD), and loss sums 0.13-0.44% off."""
  images = data.load_images('mnist', 'test', data_dir)
  config = train.Config(batch_size=32)
  make_optimizer = {'sgd': keras.optimizers.SGD,
                    'adam': keras.optimizers.Adam}[optimizer]
  reference_sums, reference_weights = _reference_training(
      config, images, 4, make_optimizer(config.learning_rate))
  model, train_steps = _fast_loop(
      config, images, False, make_optimizer(config.learning_rate))
  sums = train_steps(0, 2) + train_steps(2, 2)
  moved = _distance(reference_weights, _initial_weights(config))
  apart = _distance(model.get_weights(), reference_weights)
  print(optimizer, 'loss sums', sums, 'reference', reference_sums,
        'weights apart / moved', apart / moved)
  assert sums[3] == sums[0]  # The objective is the ELBO.
  # Measured 7.5e-8 / 5.2e-6 (real / generated); lr 1% off: 1.3e-3 or more.
  np.testing.assert_allclose(sums[:3], reference_sums, rtol=1e-5)
  lr = config.learning_rate
  largest = max(np.max(np.abs(w - r)) for w, r in
                zip(model.get_weights(), reference_weights))
  print(optimizer, 'largest weight difference / lr', largest / lr)
  # One sign flip of one step's update (2 lr) at most: measured up to
  # 1.07 lr (Adam, generated); 2.5 lr with a learning rate 1% off.
  # SGD: measured 1.9e-4 lr; 1e-2 lr leaves a margin of 50.
  assert largest < {'adam': 2.0, 'sgd': 1e-2}[optimizer] * lr
  # Measured up to 2.5e-3 (Adam) and 5.1e-7 (SGD); lr 1% off: 0.021 and
  # 4.5e-3 or more.
  assert apart < {'adam': 5e-3, 'sgd': 1e-5}[optimizer] * moved


def _initial_weights(config):
  keras.utils.set_random_seed(0)
  return factory.build_model(config).get_weights()


def test_xla_loop_agrees_with_the_default_loop(data_dir):
  """XLA draws other latent samples from the same seed (its stateless RNG
  is not TF's kernels'), so the two agree in distribution, not bit for bit:
  one SGD(1) step (update = -gradient) from the same weights on the same
  batch. Measured: ELBO 1.7e-5 relative, gradient cosine 0.99998 overall
  and 0.995 for the encoder, which sees the latent noise most."""
  images = data.load_images('mnist', 'test', data_dir)
  config = train.Config(batch_size=32)
  results = {}
  for jit_compile in (False, True):
    model, train_steps = _fast_loop(config, images, jit_compile,
                                    keras.optimizers.SGD(1.0))
    before = _initial_weights(config)
    metrics = train_steps(0, 1)
    encoder_size = len(model.encoder.get_weights())
    gradient = [b - w for b, w in zip(before, model.get_weights())]
    results[jit_compile] = metrics, gradient, encoder_size
  (metrics, gradient, encoder_size), (metrics_xla, gradient_xla, _) = (
      results[False], results[True])
  # Measured 1.7e-5 (real MNIST) and 3.2e-5 (generated blobs) relative:
  # other latent draws. Margin 3.
  np.testing.assert_allclose(metrics_xla[:4], metrics[:4], rtol=1e-4)
  # The logged gradient norm is that of the update SGD(1) applied:
  # measured 3e-8 relative in both, margin 30.
  for logged, applied in ((metrics[4], gradient),
                          (metrics_xla[4], gradient_xla)):
    np.testing.assert_allclose(
        logged, np.sqrt(sum(np.sum(g.astype(np.float64)**2)
                            for g in applied)), rtol=1e-6)
  # XLA's other latent samples move the norm by 0.15% (real) and 0.087%
  # (generated). Margin 3.
  np.testing.assert_allclose(metrics_xla[4], metrics[4], rtol=5e-3)

  def cosine(a, b):
    a, b = (np.concatenate([x.ravel() for x in v]) for v in (a, b))
    return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

  # Measured 1 - cosine: 1.6e-5 / 8e-6 overall, 5.3e-3 / 6.5e-3 for the
  # encoder (real / generated). Margins 6 and 3.
  assert cosine(gradient, gradient_xla) > 0.9999
  assert cosine(gradient[:encoder_size], gradient_xla[:encoder_size]) > 0.98


@pytest.mark.parametrize('clip_norm', [0., 1.])
def test_the_compiled_steps_gradient_norm_is_the_updates(data_dir,
                                                          clip_norm):
  """Under XLA the norm is summed by matrix-vector products (faster on a
  CPU than XLA's reduction): on the IWAE MLP, whose 784-wide layers have
  the longest rows, it is the norm of the gradient SGD(1) applied, and a
  clipped update has the clip's norm. Measured 5e-8 relative (clipped:
  the update's norm 1 + 7e-8); on random gradients of these shapes up to
  1.9e-6 (a row of 784 summed in one sequence, as a matmul sums its
  inputs), against 4e-8 for `tf.linalg.global_norm`."""
  images = data.load_images('mnist', 'test', data_dir)
  config = train.Config(model='iwae_mlp', batch_size=20, clip_norm=clip_norm)
  model, train_steps = _fast_loop(config, images, True,
                                  keras.optimizers.SGD(1.0))
  before = _initial_weights(config)
  logged_norm = train_steps(0, 1)[4]
  update = np.sqrt(sum(np.sum((b.astype(np.float64) - w)**2) for b, w in
                       zip(before, model.get_weights())))
  print('logged', logged_norm, 'update', update)
  if clip_norm:
    assert logged_norm > 2 * clip_norm  # The clip was needed.
    np.testing.assert_allclose(update, clip_norm, rtol=1e-5)
  else:
    np.testing.assert_allclose(logged_norm, update, rtol=1e-5)


def test_a_resumed_run_trains_at_its_new_constant_learning_rate(data_dir,
                                                                tmp_path):
  """Keras checkpoints a constant learning rate (a variable); the loop sets
  the config's again after the restore, so a changed --learning_rate
  takes effect."""
  workdir = str(tmp_path)
  settings = dict(model='iwae_mlp', data_dir=data_dir, batch_size=32,
                  log_every=4, checkpoint_every=4, image_every=1000,
                  eval_batch_size=1000)
  train.train_and_evaluate(train.Config(max_steps=4, learning_rate=1e-3,
                                        **settings), workdir)
  train.train_and_evaluate(train.Config(max_steps=8, learning_rate=5e-4,
                                        **settings), workdir)
  logged = {step: value for tag, step, value in
            conftest.read_events(os.path.join(workdir, 'train'))
            if tag == 'learning_rate'}
  np.testing.assert_allclose([logged[4], logged[8]], [1e-3, 5e-4], rtol=1e-6)
