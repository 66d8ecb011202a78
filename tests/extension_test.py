"""The loop takes the researcher's pieces: a model defined only here, an
objective added to the table, presets and the binary's --help."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from elbo import config as config_lib
from elbo import evaluation
from elbo import factory
from elbo import losses
from elbo import models
from elbo import objectives
from elbo import train
import conftest

tfd = tfp.distributions


class TinyDiagonalVAE(keras.Model):
  """Not in elbo/: 8 latents, one hidden layer each way."""

  def __init__(self, latent_dim: int = 8):
    super().__init__()
    self.latent_dim = latent_dim
    self.encoder = keras.Sequential([
        keras.Input((784,)), keras.layers.Dense(32, activation='relu'),
        keras.layers.Dense(2 * latent_dim)])
    self.decoder = keras.Sequential([
        keras.Input((latent_dim,)), keras.layers.Dense(32, activation='relu'),
        keras.layers.Dense(784)])

  def approx_posterior(self, x):
    loc, raw = tf.split(self.encoder(tf.reshape(x, [-1, 784])), 2, axis=-1)
    return tfd.MultivariateNormalDiag(loc, tf.nn.softplus(raw) + 1e-4)

  def decoder_likelihood(self, z):
    logits = self.decoder(tf.reshape(z, [-1, self.latent_dim]))
    shape = tf.concat([tf.shape(z)[:-1], [28, 28, 1]], axis=0)
    return tfd.Independent(tfd.Bernoulli(logits=tf.reshape(logits, shape),
                                         dtype=tf.float32), 3)

  def latent_prior(self):
    return tfd.MultivariateNormalDiag(tf.zeros([self.latent_dim]))


def _tiny_model(config):
  del config  # Unused: this model has no options.
  return TinyDiagonalVAE()


def _settings(data_dir, **overrides):
  settings = dict(data_dir=data_dir, batch_size=32, log_every=4,
                  checkpoint_every=4, image_every=1000, eval_batch_size=1000)
  settings.update(overrides)
  return settings


def test_a_model_defined_in_a_test_trains_resumes_and_evaluates(data_dir,
                                                                tmp_path):
  workdir = str(tmp_path / 'run')
  first = train.train_and_evaluate(
      train.Config(max_steps=8, **_settings(data_dir)), workdir, _tiny_model)
  second = train.train_and_evaluate(
      train.Config(max_steps=40, **_settings(data_dir)), workdir,
      _tiny_model)
  assert tf.train.latest_checkpoint(
      os.path.join(workdir, 'checkpoints')).endswith('ckpt-40')
  # It learned: about 543 nats (p = 0.5 everywhere) at the start.
  assert -second['test']['elbo'] < -first['test']['elbo'] < 543
  for name in ('reconstructions.png', 'prior_samples.png'):
    assert os.path.isfile(os.path.join(workdir, name))

  result = evaluation.evaluate_run(
      workdir, evaluation.EvalConfig(num_samples=4, num_examples=16,
                                     examples_per_call=8),
      model_fn=_tiny_model)
  assert result['step'] == 40
  assert result['nll'] == -result['log_likelihood']['mean']
  # Learned: below an untrained decoder's 543 nats (784 log 2).
  assert result['nll'] < 543


def test_a_model_without_the_interface_is_a_one_line_error(data_dir,
                                                          tmp_path):
  with pytest.raises(config_lib.ConfigError, match='lacks one of'):
    train.train_and_evaluate(train.Config(max_steps=1, **_settings(data_dir)),
                             str(tmp_path), lambda config: keras.Sequential())


def test_an_objective_added_to_the_table_trains(data_dir, tmp_path,
                                                monkeypatch):
  """A new bound is one function and one entry; its value is what the loop
  maximizes and logs as `objective`."""

  def half_kl(model, batch, config, seed, step):
    terms = objectives.batch_elbo(model, batch, config, seed)
    return terms, terms.reconstruction - 0.5 * terms.kl

  monkeypatch.setitem(objectives.OBJECTIVES, 'half_kl', half_kl)
  result = train.train_and_evaluate(
      train.Config(objective='half_kl', model='iwae_mlp', max_steps=4,
                   **_settings(data_dir)), str(tmp_path))
  metrics = result['train']
  np.testing.assert_allclose(
      metrics['objective'], metrics['reconstruction'] - 0.5 * metrics['kl'],
      rtol=1e-5)


def test_iwae_mlp_has_the_papers_architecture():
  model = factory.build_model(train.Config(model='iwae_mlp'))
  assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == (
      425_284)
  assert [layer.units for layer in model.encoder.layers] == [200, 200, 100]
  assert [layer.units for layer in model.decoder.layers] == [200, 200, 784]
  assert models.latent_size(model) == 50
  x = tf.cast(tf.random.stateless_uniform([3, 28, 28, 1], (0, 1)) < 0.5,
              tf.float32)
  q = model.approx_posterior(x)
  assert isinstance(q, tfd.MultivariateNormalDiag) and q.batch_shape == [3]
  terms = losses.elbo(x, q, model.decoder_likelihood,
                      latent_prior=model.latent_prior(), num_samples=2,
                      seed=(1, 2))
  assert terms.elbo.shape == [3]
  with pytest.raises(config_lib.ConfigError, match='iwae_mlp has the prior'):
    factory.build_model(train.Config(model='iwae_mlp', prior='mixture',
                                        kl='mc'))


def test_iwae_stages_schedule_is_the_papers_compressed():
  config = train.Config(lr_schedule='iwae_stages', epochs=1)
  schedule = factory.learning_rate(config, steps_per_epoch=3280)
  # Stage i lasts 3^i of 3280 steps at 1e-3 * 10^(-i/7).
  starts = np.cumsum([0] + [3 ** i for i in range(7)])
  for i, start in enumerate(starts):
    np.testing.assert_allclose(float(schedule(int(start))),
                               1e-3 * 10 ** (-i / 7), rtol=1e-6)
  np.testing.assert_allclose(float(schedule(3279)), 1e-4, rtol=1e-6)


def test_preset_supplies_defaults_and_explicit_flags_win(data_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  result = conftest.run_binary(
      f'--workdir={workdir}', f'--data_dir={data_dir}', '--preset=iwae_k5',
      '--num_samples=2', '--max_steps=2', '--batch_size=16',
      '--eval_batch_size=1000')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  preset = config_lib.PRESETS['iwae_k5']
  assert saved['num_samples'] == 2 and saved['batch_size'] == 16  # Given.
  for name in ('model', 'objective', 'adam_epsilon', 'lr_schedule'):
    assert saved[name] == preset[name], name  # From the preset.


def test_help_lists_the_training_flags():
  result = conftest.run_binary('--help')
  for flag in ('--learning_rate', '--model', '--preset', '--workdir',
               '--divergence_threshold'):
    assert flag in result.stdout, result.stdout[:2000]
  assert 'absl.logging' not in result.stdout.split('--learning_rate')[0]


def test_every_config_field_has_help():
  for field in dataclasses.fields(config_lib.Config):
    assert len(field.metadata.get('help', '')) > 10, field.name
