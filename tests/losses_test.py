"""Tests of elbo.losses against closed forms and Monte Carlo identities."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from elbo import losses

tfd = tfp.distributions


def _random_posterior(batch: int = 3, dim: int = 4, seed: int = 0):
  rng = np.random.default_rng(seed)
  loc = rng.normal(size=(batch, dim)).astype(np.float32)
  tril = np.tril(rng.normal(size=(batch, dim, dim)) * 0.3).astype(np.float32)
  idx = np.arange(dim)
  tril[:, idx, idx] = rng.uniform(0.3, 1.5, size=(batch, dim))
  return tfd.MultivariateNormalTriL(loc=loc, scale_tril=tril)


def _standard_normal(dim: int = 4):
  return tfd.MultivariateNormalDiag(loc=tf.zeros(dim), scale_diag=tf.ones(dim))


def _gaussian_decoder(noise_scale: float):
  """p(x | z) = N(x; z, noise_scale^2 I): a linear-Gaussian model."""
  return lambda z: tfd.MultivariateNormalDiag(
      loc=z, scale_diag=tf.fill(tf.shape(z), noise_scale))


def _log_evidence(x, noise_scale: float):
  """log p(x) of the linear-Gaussian model: x ~ N(0, (1 + sigma^2) I)."""
  scale = np.float32(np.sqrt(1 + noise_scale**2))
  return tfd.MultivariateNormalDiag(
      loc=tf.zeros(x.shape[-1]), scale_diag=tf.fill([x.shape[-1]], scale)
  ).log_prob(x).numpy()


class TestKlDivergence:

  def test_analytic_matches_monte_carlo(self):
    q, p = _random_posterior(), _standard_normal()
    analytic = losses.kl_divergence(q, p, method='analytic')
    samples = q.sample(200_000, seed=(1, 2))
    mc = losses.kl_divergence(q, p, samples=samples, method='mc')
    log_ratio = q.log_prob(samples) - p.log_prob(samples)
    standard_error = tf.math.reduce_std(log_ratio, axis=0) / np.sqrt(200_000)
    assert analytic.shape == (3,)
    np.testing.assert_array_less(np.abs(analytic - mc), 5 * standard_error)
    np.testing.assert_array_less(0., analytic)

  def test_closed_form_univariate(self):
    m, s = 0.7, 0.4
    q = tfd.MultivariateNormalDiag(loc=[[m]], scale_diag=[[s]])
    expected = 0.5 * (s**2 + m**2 - 1 - np.log(s**2))
    np.testing.assert_allclose(
        losses.kl_divergence(q, _standard_normal(1)), [expected], rtol=1e-6)

  def test_unregistered_pair_raises_clear_error(self):
    q = _random_posterior()
    p = tfd.Independent(tfd.Normal(tf.zeros(4), 1.),
                        reinterpreted_batch_ndims=1)
    with pytest.raises(NotImplementedError, match='No analytic KL.*mc'):
      losses.kl_divergence(q, p, method='analytic')

  def test_mc_needs_samples(self):
    with pytest.raises(ValueError, match='samples'):
      losses.kl_divergence(_random_posterior(), _standard_normal(), method='mc')

  def test_unknown_method(self):
    with pytest.raises(ValueError, match='analytic'):
      losses.kl_divergence(_random_posterior(), _standard_normal(),
                           method='exact')


class TestElbo:

  def test_terms_add_up_and_have_batch_shape(self):
    q, p = _random_posterior(), _standard_normal()
    x = tf.random.stateless_normal([3, 4], seed=(3, 4))
    for kl_method in losses.KL_METHODS:
      terms = losses.elbo(x, q, _gaussian_decoder(0.5), p, num_samples=7,
                          kl_method=kl_method, seed=(5, 6))
      for term in terms:
        assert term.shape == (3,)
        assert np.all(np.isfinite(term))
      np.testing.assert_allclose(terms.elbo,
                                 terms.reconstruction - terms.kl, rtol=1e-6)

  def test_linear_gaussian_closed_form(self):
    """x | z ~ N(z, sigma^2), z ~ N(0, 1), q = N(m, s^2), per dimension:

      E_q log p(x|z) = -1/2 log(2 pi sigma^2) - ((x - m)^2 + s^2) / (2 sigma^2)
      KL             = 1/2 (s^2 + m^2 - 1 - log s^2)
    """
    sigma, dim = 0.5, 4
    x = np.array([[0.3, -1.2, 2.0, 0.1]], np.float32)
    m = np.array([[0.1, -0.8, 1.5, 0.0]], np.float32)
    s = np.array([[0.5, 0.3, 0.8, 1.0]], np.float32)
    q = tfd.MultivariateNormalDiag(loc=m, scale_diag=s)
    expected_reconstruction = np.sum(
        -0.5 * np.log(2 * np.pi * sigma**2) - ((x - m)**2 + s**2) /
        (2 * sigma**2))
    expected_kl = np.sum(0.5 * (s**2 + m**2 - 1 - np.log(s**2)))
    terms = losses.elbo(x, q, _gaussian_decoder(sigma), _standard_normal(dim),
                        num_samples=200_000, seed=(7, 8))
    np.testing.assert_allclose(terms.kl, [expected_kl], rtol=1e-5)
    np.testing.assert_allclose(terms.reconstruction, [expected_reconstruction],
                               rtol=5e-3)
    np.testing.assert_allclose(terms.elbo,
                               [expected_reconstruction - expected_kl],
                               rtol=5e-3)

  def test_exact_posterior_makes_elbo_equal_log_evidence(self):
    """With q = p(z | x) the log weight is constant: ELBO = log p(x) for
    every sample, and the bound is tight."""
    sigma = 0.5
    x = np.array([[0.3, -1.2, 2.0, 0.1]], np.float32)
    posterior_scale = np.sqrt(sigma**2 / (1 + sigma**2))
    q = tfd.MultivariateNormalDiag(
        loc=x / (1 + sigma**2), scale_diag=np.full_like(x, posterior_scale))
    terms = losses.elbo(x, q, _gaussian_decoder(sigma), _standard_normal(),
                        num_samples=1, kl_method='mc', seed=(9, 10))
    np.testing.assert_allclose(terms.elbo, _log_evidence(x, sigma), rtol=1e-5)

  def test_bad_num_samples(self):
    with pytest.raises(ValueError, match='num_samples'):
      losses.elbo(tf.zeros([3, 4]), _random_posterior(), _gaussian_decoder(1.),
                  _standard_normal(), num_samples=0)


class TestImportanceWeightedBound:

  def test_one_sample_equals_monte_carlo_elbo(self):
    q, p = _random_posterior(), _standard_normal()
    x = tf.random.stateless_normal([3, 4], seed=(3, 4))
    decoder = _gaussian_decoder(0.7)
    iwae = losses.importance_weighted_bound(x, q, decoder, p, num_samples=1,
                                            seed=(11, 12))
    terms = losses.elbo(x, q, decoder, p, num_samples=1, kl_method='mc',
                        seed=(11, 12))
    np.testing.assert_allclose(iwae, terms.elbo, rtol=1e-5)

  def test_bounds_are_ordered(self):
    """E[ELBO] <= E[L_k] <= log p(x) in a model with known evidence."""
    sigma = 0.5
    x = tf.constant([[0.3, -1.2, 2.0, 0.1], [1.0, 0.5, -0.5, 0.0]])
    q = _random_posterior(batch=2, seed=1)  # A deliberately poor posterior.
    p = _standard_normal()
    decoder = _gaussian_decoder(sigma)
    log_evidence = _log_evidence(x, sigma)
    elbo = losses.elbo(x, q, decoder, p, num_samples=5000, seed=(1, 1)).elbo
    bounds = [
        np.mean([losses.importance_weighted_bound(
            x, q, decoder, p, num_samples=k, seed=(k, r)).numpy()
                 for r in range(50)], axis=0)
        for k in (10, 1000)
    ]
    np.testing.assert_array_less(elbo, bounds[0])
    np.testing.assert_array_less(bounds[0], bounds[1])
    np.testing.assert_array_less(bounds[1], log_evidence)


class TestElboAndImportanceWeightedBound:

  def test_matches_the_separate_functions_on_the_same_samples(self):
    q, p = _random_posterior(), _standard_normal()
    x = tf.random.stateless_normal([3, 4], seed=(3, 4))
    decoder = _gaussian_decoder(0.7)
    terms, bound = losses.elbo_and_importance_weighted_bound(
        x, q, decoder, p, num_samples=16, seed=(5, 5))
    mc_terms = losses.elbo(x, q, decoder, p, num_samples=16, kl_method='mc',
                           seed=(5, 5))
    iwae = losses.importance_weighted_bound(x, q, decoder, p, num_samples=16,
                                            seed=(5, 5))
    for got, want in zip(terms, mc_terms):
      np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(bound, iwae, rtol=1e-6)
    # Jensen on the same samples: log-mean-exp >= mean.
    np.testing.assert_array_less(terms.elbo, bound + 1e-5)


class TestKlWeight:

  def test_linear_warmup(self):
    weights = [float(losses.kl_weight(step, 0.5, warmup_steps=10))
               for step in (0, 5, 10, 20)]
    np.testing.assert_allclose(weights, [0., 0.25, 0.5, 0.5])

  def test_no_warmup_is_constant(self):
    assert float(losses.kl_weight(0, 1.0, warmup_steps=0)) == 1.0
