"""Tests of elbo.export and its binary: the SavedModel, loaded where `elbo`
is never imported, computes what the live model does."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from elbo import config as config_lib
from elbo import evaluation
from elbo import export
from elbo import losses
from elbo import models
import conftest

tfd = tfp.distributions

# Runs in a fresh interpreter: loads the SavedModel, calls each signature on
# the inputs in inputs.npz, writes outputs.npz.
_LOADER = textwrap.dedent('''
    import sys
    import numpy as np
    import tensorflow as tf
    export_dir, directory = sys.argv[1:]
    model = tf.saved_model.load(export_dir)
    inputs = dict(np.load(directory + '/inputs.npz'))
    s = model.signatures
    outputs = {
        **s['encode'](x=tf.constant(inputs['x'])),
        **s['decode'](z=tf.constant(inputs['z'])),
        **s['sample'](n=tf.constant(5), seed=tf.constant(7)),
        **s['log_prob_bound'](x=tf.constant(inputs['x']), k=tf.constant(3),
                              seed=tf.constant(11)),
    }
    np.savez(directory + '/outputs.npz',
             **{name: value.numpy() for name, value in outputs.items()})
    assert 'elbo' not in sys.modules, 'the loader imported elbo'
    print(sorted(s), 'keras' in sys.modules)
''')


def _write_run(workdir: str, prior: str) -> None:
  """An untrained model saved as a run would be: config.json and
  checkpoints/ckpt-1."""
  conftest.write_untrained_run(
      workdir, config_lib.Config(prior=prior, prior_components=3, kl='mc'))


@pytest.mark.parametrize('prior', ['normal', 'mixture'])
def test_saved_model_without_elbo_matches_the_live_model(tmp_path, prior):
  workdir = str(tmp_path / 'run')
  _write_run(workdir, prior)
  export_dir = os.path.join(workdir, 'saved_model')
  if prior == 'normal':  # Through the binary.
    result = conftest.run_binary(f'--workdir={workdir}', binary='export')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'Exported step 1 to {export_dir}' in result.stdout
  else:  # In this process, saving a Python start-up.
    export.export(evaluation.restore_model(workdir)[0], export_dir)

  rng = np.random.default_rng(0)
  x = (rng.uniform(size=[4, 28, 28, 1]) < 0.3).astype(np.float32)
  z = rng.standard_normal([6, 16]).astype(np.float32)
  np.savez(tmp_path / 'inputs.npz', x=x, z=z)
  loader = subprocess.run(
      [sys.executable, '-c', _LOADER, export_dir, str(tmp_path)],
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH='', TF_CPP_MIN_LOG_LEVEL='2'))
  assert loader.returncode == 0, loader.stderr[-3000:]
  assert "['decode', 'encode', 'log_prob_bound', 'sample']" in loader.stdout
  exported = dict(np.load(tmp_path / 'outputs.npz'))

  # The live model, computed here without the export module's functions.
  model, _, _ = evaluation.restore_model(workdir)
  posterior = model.approx_posterior(x)
  np.testing.assert_allclose(exported['loc'], posterior.loc, atol=1e-6)
  np.testing.assert_allclose(exported['scale_tril'], posterior.scale_tril,
                             atol=1e-6)
  np.testing.assert_allclose(
      exported['logits'],
      export.decode(model, z)['logits'], atol=1e-5)
  latents = model.latent_prior().sample(5, seed=tf.constant([7, 0]))
  np.testing.assert_allclose(exported['latents'], latents, atol=1e-6)
  np.testing.assert_allclose(exported['images'],
                             model.decoder_likelihood(latents).mean(),
                             atol=1e-6)
  log_weights = []
  for i in range(3):  # Draw i from seed fold_in([11, 0], i).
    seed = tf.random.experimental.stateless_fold_in(tf.constant([11, 0]), i)
    log_likelihood, log_ratio = losses.log_likelihood_and_ratio(
        x, posterior, model.decoder_likelihood,
        latent_prior=model.latent_prior(), num_samples=1, seed=seed)
    log_weights.append((log_likelihood - log_ratio)[0])
  bound = tfp.math.reduce_logmeanexp(tf.stack(log_weights), axis=0)
  np.testing.assert_allclose(exported['log_prob_bound'], bound, rtol=1e-6)
  # L_3 is above the ELBO of the same draws.
  assert np.all(exported['log_prob_bound'] >=
                np.mean(log_weights, axis=0) - 1e-4)


class _GaussianDecoder:
  def latent_prior(self):
    return tfd.MultivariateNormalDiag(tf.zeros(2), tf.ones(2))

  def approx_posterior(self, x):
    return tfd.MultivariateNormalDiag(x[:, :2], tf.ones_like(x[:, :2]))

  def decoder_likelihood(self, z):
    return tfd.Independent(tfd.Normal(z, 1.0), 1)


def test_non_bernoulli_decoder_is_an_export_error(tmp_path):
  with pytest.raises(export.ExportError, match='needs a Bernoulli decoder'):
    export.export(_GaussianDecoder(), str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out')


def test_bernoulli_pixels_are_found_under_independent_and_reshape():
  z = tf.zeros([2, 50])
  flat = models.IWAEMLP().decoder_likelihood(z)  # Reshaped flat pixels.
  image = models.VAE().decoder_likelihood(tf.zeros([2, 16]))
  for likelihood in (flat, image):
    assert isinstance(export.bernoulli_pixels(likelihood), tfd.Bernoulli)
  shifted = tfd.TransformedDistribution(
      tfd.Bernoulli(logits=z, dtype=tf.float32), tfp.bijectors.Shift(1.))
  assert export.bernoulli_pixels(shifted) is None
  gaussian = _GaussianDecoder().decoder_likelihood(z)
  assert export.bernoulli_pixels(gaussian) is None


def test_missing_run_is_a_one_line_error(tmp_path):
  result = conftest.run_binary(f'--workdir={tmp_path}', binary='export')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'Error: {tmp_path}/config.json: not found')
