"""Tests that elbo.models is the blog's architecture."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from elbo import export
from elbo import losses
from elbo import models

tfd = tfp.distributions


def _count(variables) -> int:
  return sum(int(np.prod(v.shape)) for v in variables)


def test_parameter_count_equals_the_blog_model():
  model = models.VAE()
  assert _count(model.encoder.trainable_variables) == 390_840
  assert _count(model.decoder.trainable_variables) == 358_465
  assert _count(model.trainable_variables) == 749_305
  # The encoder's head: loc (16) and the lower triangle (136) of a 16x16.
  assert model.encoder.layers[-1].units == 152


def test_posterior_is_a_full_covariance_gaussian():
  model = models.VAE()
  images = tf.cast(tf.random.stateless_uniform([5, 28, 28, 1], (1, 2)) < 0.3,
                   tf.float32)
  q = model.approx_posterior(images)
  assert isinstance(q, tfd.MultivariateNormalTriL)
  assert q.batch_shape == (5,)
  assert q.event_shape == (16,)
  tril = q.scale.to_dense().numpy()
  assert np.all(np.triu(tril, k=1) == 0)
  assert np.all(np.diagonal(tril, axis1=-2, axis2=-1) > 0)
  # Off-diagonal entries are free parameters: the covariance is not diagonal.
  assert np.any(np.tril(tril, k=-1) != 0)


@pytest.mark.parametrize('model_class', [models.VAE, models.IWAEMLP])
def test_decoder_likelihood_shapes_for_sampled_latents(model_class):
  """The conv decoder's pixels are scored as an image, the dense one's flat
  then reshaped: the same shapes and values either way."""
  model = model_class()
  z = tf.random.stateless_normal([3, 5, model.latent_dim], (3, 4))
  p = model.decoder_likelihood(z)
  assert p.batch_shape == (3, 5)
  assert p.event_shape == (28, 28, 1)
  sample = p.sample(seed=(5, 6)).numpy()
  assert sample.shape == (3, 5, 28, 28, 1)
  assert set(np.unique(sample)) <= {0., 1.}
  images = tf.cast(tf.random.stateless_uniform([5, 28, 28, 1], (7, 8)) > 0.5,
                   tf.float32)
  log_prob = p.log_prob(images).numpy()
  assert log_prob.shape == (3, 5)
  # Independent Bernoulli pixels: log p(x) = sum x * l - softplus(l).
  logits = export.decode(model, z)['logits'].numpy().astype(np.float64)
  assert logits.shape == (3, 5, 28, 28, 1)
  x = images.numpy().astype(np.float64)
  np.testing.assert_allclose(
      log_prob, (x * logits - np.logaddexp(0., logits)).sum(axis=(2, 3, 4)),
      rtol=1e-5)
  np.testing.assert_allclose(p.mean(), 1 / (1 + np.exp(-logits)), rtol=1e-5)


def test_prior_is_standard_normal():
  prior = models.VAE().latent_prior()
  np.testing.assert_array_equal(prior.mean(), np.zeros(16))
  np.testing.assert_array_equal(prior.covariance(), np.eye(16))


def test_call_reconstructs_in_unit_interval():
  model = models.VAE()
  out = model(tf.zeros([2, 28, 28, 1])).numpy()
  assert out.shape == (2, 28, 28, 1)
  assert np.all((out > 0) & (out < 1))


def test_mixture_prior_normalizes_and_is_learnable():
  """Integrates exp(log_prob) of a 2-D mixture prior on a grid."""
  model = models.VAE(latent_dim=2, prior='mixture', prior_components=5)
  prior = model.latent_prior()
  assert isinstance(prior, tfd.MixtureSameFamily)
  assert prior.event_shape == (2,)
  names = {v.path.split('/')[-1] for v in model.trainable_variables}
  assert {'prior_logits', 'prior_locs', 'prior_raw_scales'} <= names
  grid = np.linspace(-9, 9, 721).astype(np.float32)
  zz = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2)
  density = np.exp(prior.log_prob(zz).numpy())
  cell = (grid[1] - grid[0]) ** 2
  np.testing.assert_allclose(density.sum() * cell, 1.0, rtol=1e-3)


def test_mixed_bfloat16_computes_convolutions_in_bfloat16():
  model = models.VAE(precision='mixed_bfloat16')
  assert model.encoder.layers[0].compute_dtype == 'bfloat16'
  assert all(v.dtype == 'float32' for v in model.trainable_variables)
  q = model.approx_posterior(tf.zeros([2, 28, 28, 1]))
  assert q.dtype == tf.float32
  likelihood = model.decoder_likelihood(q.sample(seed=(1, 2)))
  assert likelihood.distribution.logits.dtype == tf.float32


def test_mixed_bfloat16_gradients_match_float32():
  """Same weights, batch and latent draws: every bias gradient in
  mixed_bfloat16 is within 3% (relative L2) of float32's, every kernel
  gradient within 15%. TF sums a bfloat16 bias gradient in bfloat16; without
  `models.Conv2DTranspose` the decoder's were 40-98% off (batch 256), and
  without `models.Conv2D`, on a CPU without AVX-512 (no oneDNN bfloat16
  kernels), the encoder's were 10-41% off (batch 128); with both, at most
  1.2%. The kernels are 1-2% off but for the first decoder layer's: 6%
  (AVX-512) to 11% (AVX2), the same with that layer in float32, so it is
  the rounding of the gradient from the layers above, summed over the batch
  against latents of both signs."""
  rng = np.random.default_rng(0)
  batch = tf.constant(rng.random((128, 28, 28, 1)) < 0.2, tf.float32)
  gradients = {}
  for precision in ('float32', 'mixed_bfloat16'):
    tf.keras.utils.set_random_seed(0)
    model = models.VAE(precision=precision)

    @tf.function
    def gradient(batch, model=model):
      with tf.GradientTape() as tape:
        terms = losses.elbo(batch, model.approx_posterior(batch),
                            model.decoder_likelihood,
                            latent_prior=model.latent_prior(),
                            seed=tf.constant([1, 2]))
        loss = -tf.reduce_mean(terms.elbo)
      return tape.gradient(loss, model.trainable_variables)

    gradients[precision] = [g.numpy() for g in gradient(batch)]
    names = [v.path for v in model.trainable_variables]
  errors = {name: np.linalg.norm(a - b) / np.linalg.norm(a) for name, a, b in
            zip(names, gradients['float32'], gradients['mixed_bfloat16'])}
  print({name: round(float(e), 4) for name, e in errors.items()})
  biases = {name: e for name, e in errors.items() if name.endswith('bias')}
  kernels = {name: e for name, e in errors.items() if name.endswith('kernel')}
  first_decoder_kernel = next(name for name in kernels
                              if name.startswith('decoder/'))
  # Measured on AVX-512 (AVX2 in the docstring): biases at most 1.2%
  # (1.2%), kernels 1.9% (about 2%) but the first decoder layer's 5.9%
  # (11%). Margins: 2.5, 2 and 1.4 on AVX2.
  assert len(biases) == 13 and max(biases.values()) < 0.03, errors
  assert len(kernels) == 13
  assert kernels.pop(first_decoder_kernel) < 0.15, errors
  assert max(kernels.values()) < 0.04, errors
