"""Tests of elbo.diagnostics against closed forms."""

import glob
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from elbo import diagnostics
from elbo import models
from elbo import summaries
import conftest

tfd = tfp.distributions


class _LinearGaussian:
  """z ~ N(0, I_3), x = A z + sigma * noise, with the exact posterior

  ```none
  S = (I + A^T A / sigma^2)^-1,   q(z | x) = N(S A^T x / sigma^2, S)
  I(x; z) = 1/2 log det(I + A^T A / sigma^2)
  Cov_x(E[z_u | x]) = 1 - S_uu          (law of total variance)
  ```

  The third column of A is 0: that latent is ignored, its posterior is the
  prior. The others are correlated in the posterior.
  """

  sigma = 0.5
  weights = np.array([[1.0, 0.5, 0.0], [0.3, 0.5, 0.0], [0.0, 0.0, 0.0],
                      [0.2, -0.4, 0.0], [0.0, 0.0, 0.0]])

  def __init__(self):
    a, sigma2 = self.weights, self.sigma**2
    self.posterior_covariance = np.linalg.inv(np.eye(3) + a.T @ a / sigma2)
    self.mutual_information = 0.5 * np.log(
        np.linalg.det(np.eye(3) + a.T @ a / sigma2))

  def sample_x(self, n, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal([n, 3])
    noise = rng.standard_normal([n, len(self.weights)])
    return (z @ self.weights.T + self.sigma * noise).astype(np.float32)

  def latent_prior(self):
    return tfd.MultivariateNormalDiag(tf.zeros(3), tf.ones(3))

  def approx_posterior(self, x):
    s = self.posterior_covariance
    loc = x @ (s @ self.weights.T / self.sigma**2).T.astype(np.float32)
    return tfd.MultivariateNormalTriL(
        loc, tf.constant(np.linalg.cholesky(s), tf.float32))


def _diagonal_posterior():
  loc = tf.constant([[0.5, -1.0, 0.0], [2.0, 0.1, 0.0]])
  scale = tf.constant([[0.3, 1.0, 1.0], [0.8, 0.2, 1.0]])
  return tfd.MultivariateNormalDiag(loc, scale), loc.numpy(), scale.numpy()


def _standard_normal(d):
  return tfd.MultivariateNormalDiag(tf.zeros(d), tf.ones(d))


class TestActiveUnits:

  def test_counts_dimensions_whose_mean_moves(self):
    # Variances of the means over the 4 inputs: 1.25, 0.0125, 0.005, 0.
    loc = tf.constant([[1., 0.1, 0.05, 3.], [-1., -0.1, -0.05, 3.],
                       [2., 0.1, 0.15, 3.], [0., -0.1, 0.05, 3.]])
    posterior = tfd.MultivariateNormalDiag(loc, tf.ones_like(loc))
    np.testing.assert_allclose(
        diagnostics.posterior_mean_variance(posterior),
        np.var(loc.numpy(), axis=0), rtol=1e-6)
    assert int(diagnostics.active_units(posterior)) == 2
    assert int(diagnostics.active_units(posterior, threshold=0.001)) == 3

  def test_posterior_equal_to_the_prior_has_none(self):
    posterior = tfd.MultivariateNormalDiag(tf.zeros([100, 4]),
                                           tf.ones([100, 4]))
    assert int(diagnostics.active_units(posterior)) == 0

  def test_linear_gaussian(self):
    model = _LinearGaussian()
    posterior = model.approx_posterior(model.sample_x(20_000))
    variance = diagnostics.posterior_mean_variance(posterior).numpy()
    np.testing.assert_allclose(
        variance, 1 - np.diag(model.posterior_covariance), rtol=0.05,
        atol=1e-6)
    assert variance[2] == 0
    assert int(diagnostics.active_units(posterior)) == 2


class TestKlPerDimension:

  def test_diagonal_posterior_closed_form_sums_to_the_joint_kl(self):
    posterior, loc, scale = _diagonal_posterior()
    prior = _standard_normal(3)
    kl = diagnostics.kl_per_dimension(posterior, prior).numpy()
    np.testing.assert_allclose(
        kl, 0.5 * (loc**2 + scale**2 - 1 - np.log(scale**2)), rtol=1e-5,
        atol=1e-7)
    assert np.all(kl[:, 2] == 0)  # The posterior is the prior there.
    np.testing.assert_allclose(kl.sum(-1),
                               tfd.kl_divergence(posterior, prior),
                               rtol=1e-5)

  def test_independent_normal_equals_diagonal_mvn(self):
    posterior, loc, scale = _diagonal_posterior()
    independent = tfd.Independent(tfd.Normal(loc, scale), 1)
    prior = tfd.Independent(tfd.Normal(tf.zeros(3), tf.ones(3)), 1)
    np.testing.assert_allclose(
        diagnostics.kl_per_dimension(independent, prior),
        diagnostics.kl_per_dimension(posterior, _standard_normal(3)),
        rtol=1e-6)

  def test_full_covariance_marginals_and_total_correlation(self):
    model = _LinearGaussian()
    posterior = model.approx_posterior(model.sample_x(4))
    prior = model.latent_prior()
    kl = diagnostics.kl_per_dimension(posterior, prior).numpy()
    loc, s = posterior.mean().numpy(), model.posterior_covariance
    s_uu = np.diag(s)
    np.testing.assert_allclose(
        kl, 0.5 * (loc**2 + s_uu - 1 - np.log(s_uu)), rtol=1e-4, atol=1e-6)
    # Joint KL = sum of the marginal KLs + the total correlation of q.
    total_correlation = 0.5 * (np.sum(np.log(s_uu)) -
                               np.log(np.linalg.det(s)))
    assert total_correlation > 0.05
    np.testing.assert_allclose(diagnostics.total_correlation(posterior),
                               np.full(4, total_correlation), rtol=1e-4)
    assert np.all(np.abs(diagnostics.total_correlation(
        _diagonal_posterior()[0])) < 1e-6)
    np.testing.assert_allclose(
        kl.sum(-1) + total_correlation,
        tfd.kl_divergence(posterior, prior), rtol=1e-4)

  def test_mixture_prior_against_quadrature(self):
    # Two components with unequal weights, locations and scales.
    prior = tfd.MixtureSameFamily(
        tfd.Categorical(logits=[0.0, 1.0]),
        tfd.MultivariateNormalDiag([[-1.0, 0.0], [2.0, 0.5]],
                                   [[0.5, 1.0], [1.5, 0.3]]))
    posterior, loc, scale = _diagonal_posterior()
    posterior = tfd.MultivariateNormalDiag(loc[:, :2], scale[:, :2])
    kl = diagnostics.kl_per_dimension(posterior, prior, num_samples=20_000,
                                      seed=tf.constant([1, 2])).numpy()
    weights = np.exp([0.0, 1.0]) / np.sum(np.exp([0.0, 1.0]))
    locs = np.array([[-1.0, 0.0], [2.0, 0.5]])
    scales = np.array([[0.5, 1.0], [1.5, 0.3]])
    normal = lambda z, m, s: (np.exp(-0.5 * ((z - m) / s)**2) /
                              (s * np.sqrt(2 * np.pi)))
    for i in range(2):
      for u in range(2):
        m, s = loc[i, u], scale[i, u]
        z = np.linspace(m - 10 * s, m + 10 * s, 20_001)
        q = normal(z, m, s)
        p = sum(w * normal(z, locs[k, u], scales[k, u])
                for k, w in enumerate(weights))
        exact = np.sum(q * (np.log(q) - np.log(p))) * (z[1] - z[0])
        np.testing.assert_allclose(kl[i, u], exact, rtol=0.03, atol=0.01)

  def test_rejects_a_non_gaussian_posterior(self):
    with pytest.raises(TypeError, match='Expected a Gaussian'):
      diagnostics.kl_per_dimension(
          tfd.Independent(tfd.Laplace(tf.zeros([2, 3]), 1.0), 1),
          _standard_normal(3))


class TestMutualInformation:

  def test_posterior_equal_to_the_prior_has_none(self):
    posterior = tfd.MultivariateNormalTriL(
        tf.fill([64, 3], 0.7), tf.eye(3, batch_shape=[64]) * 2.0)
    mi = diagnostics.mutual_information(posterior, num_samples=3,
                                        seed=tf.constant([0, 1]))
    assert abs(float(mi)) < 1e-5

  def test_disjoint_posteriors_reach_the_ceiling_log_n(self):
    n = 50
    posterior = tfd.MultivariateNormalDiag(
        100.0 * tf.range(n, dtype=tf.float32)[:, None] * tf.ones([n, 2]),
        tf.ones([n, 2]))
    mi = diagnostics.mutual_information(posterior, seed=tf.constant([0, 1]))
    np.testing.assert_allclose(float(mi), math.log(n), rtol=1e-5)

  def test_linear_gaussian_closed_form(self):
    model = _LinearGaussian()
    posterior = model.approx_posterior(model.sample_x(2000))
    mi = float(diagnostics.mutual_information(
        posterior, num_samples=4, seed=tf.constant([3, 4])))
    assert 1.0 < model.mutual_information < math.log(2000) - 5
    np.testing.assert_allclose(mi, model.mutual_information, atol=0.05)

  def test_chunks_do_not_change_the_result(self, monkeypatch):
    model = _LinearGaussian()
    posterior = model.approx_posterior(model.sample_x(300))
    seed = tf.constant([5, 6])
    whole = diagnostics.mutual_information(posterior, 2, seed=seed)
    monkeypatch.setattr(diagnostics, '_PAIRS_PER_CHUNK', 7 * 300)
    chunked = diagnostics.mutual_information(posterior, 2, seed=seed)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)

  def test_needs_a_static_batch_of_posteriors(self):
    with pytest.raises(ValueError, match='batch shape'):
      diagnostics.mutual_information(_standard_normal(3))


def test_bar_chart_heights_are_proportional_to_the_sorted_values():
  chart = np.asarray(diagnostics.bar_chart(np.array([1., 4., 2., 0.]),
                                           height=100))[0, ..., 0]
  width = 320 // 4
  heights = [int(np.sum(chart[:, 4 + i * width] < 1)) for i in range(4)]
  assert heights == [100, 50, 25, 0]


class TestDiagnosticsSummary:

  def test_linear_gaussian(self):
    model = _LinearGaussian()
    x = model.sample_x(1000)
    summary = diagnostics.diagnostics_summary(model, x, tf.constant([0, 1]))
    assert summary['active_units'] == 2
    np.testing.assert_allclose(summary['log_num_examples'], math.log(1000))
    np.testing.assert_allclose(
        summary['total_correlation'],
        np.mean(diagnostics.total_correlation(model.approx_posterior(x))),
        rtol=1e-5)
    np.testing.assert_allclose(summary['mutual_information'],
                               model.mutual_information, atol=0.1)
    posterior = model.approx_posterior(x)
    np.testing.assert_allclose(
        summary['kl_per_dimension'],
        np.mean(diagnostics.kl_per_dimension(posterior, model.latent_prior()),
                axis=0), rtol=1e-6)
    np.testing.assert_allclose(
        summary['posterior_mean_variance'],
        diagnostics.posterior_mean_variance(posterior), rtol=1e-6)

  @pytest.mark.parametrize('prior', models.PRIORS)
  def test_vae(self, prior):
    keras.utils.set_random_seed(0)
    model = models.VAE(prior=prior, prior_components=3)
    images = tf.cast(tf.random.stateless_uniform([8, 28, 28, 1], [0, 1]) > 0.5,
                     tf.float32)
    summary = diagnostics.diagnostics_summary(model, images,
                                              tf.constant([0, 1]))
    # The count of the units whose posterior mean varies more than 0.01.
    assert summary['active_units'] == np.sum(
        summary['posterior_mean_variance'] > diagnostics.ACTIVE_UNIT_THRESHOLD)
    # I(x; z) for x uniform over these 8 images is >= 0, and the estimate
    # (one draw per image) is unbiased for it: checked against 2,000 draws
    # per image of the same terms, within 4 standard errors.
    posterior = model.approx_posterior(images)
    z = posterior.sample(2000, seed=tf.constant([7, 8])).numpy()
    # log q(z_si | x_j), [draws s, image i, image j].
    log_q = posterior.log_prob(z[:, :, None, :]).numpy().astype(np.float64)
    terms = (np.diagonal(log_q, axis1=1, axis2=2) -
             (np.logaddexp.reduce(log_q, axis=2) - math.log(8)))
    mi, sd = terms.mean(), terms.std()
    error = sd / math.sqrt(terms.size)
    summary_error = sd / math.sqrt(8)  # One draw for each of 8 images.
    print('MI', summary['mutual_information'], 'from 2000 draws', mi, '+-',
          error, '; one draw: +-', summary_error)
    assert mi > -4 * error
    assert abs(summary['mutual_information'] - mi) < 4 * math.hypot(
        summary_error, error)
    assert summary['kl_per_dimension'].shape == (models.LATENT_DIM,)
    assert np.all(np.isfinite(summary['kl_per_dimension']))

  def test_write_summaries(self, tmp_path):
    summary = {'active_units': 2, 'mutual_information': 1.5,
               'total_correlation': 0.25,
               'kl_per_dimension': np.array([0.1, 3.0, 0.0])}
    writer = summaries.SummaryWriter(str(tmp_path))
    diagnostics.write_summaries(writer, 7, summary)
    values = {}
    for path in glob.glob(str(tmp_path / 'events.out.*')):
      for event in tf.compat.v1.train.summary_iterator(path):
        for value in event.summary.value:
          assert event.step == 7
          values[value.tag] = tf.make_ndarray(value.tensor)
    assert values['latent/active_units'] == 2
    assert values['latent/mutual_information'] == 1.5
    assert values['latent/total_correlation'] == 0.25
    # Buckets of the histogram: (left edge, right edge, count); 3 values.
    assert values['latent/kl_per_dimension'][:, 2].sum() == 3
    # The bar chart, as a PNG: width, height, bytes.
    chart = tf.io.decode_png(values['latent/kl_per_dimension_sorted'][2])
    np.testing.assert_array_equal(
        chart, np.round(diagnostics.bar_chart([0.1, 3.0, 0.0])[0] * 255))
    # The events read back as in tests/conftest.py (no text summaries).
    assert {tag for tag, _, _ in conftest.read_events(str(tmp_path))} == set(
        values)
