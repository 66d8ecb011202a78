"""Tests of elbo.losses against closed forms and Monte Carlo identities."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import elbo
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


def _x(batch: int = 3):
  return tf.random.stateless_normal([batch, 4], seed=(3, 4))


class TestPackage:

  def test_import_elbo_gives_losses_and_version(self):
    assert elbo.losses is losses
    assert elbo.__version__ == '0.1.0'


class TestKlDivergence:

  def test_analytic_matches_monte_carlo(self):
    q, p = _random_posterior(), _standard_normal()
    analytic = losses.kl_divergence(q, latent_prior=p, kl_method='analytic')
    samples = q.sample(200_000, seed=(1, 2))
    mc = losses.kl_divergence(q, latent_prior=p, samples=samples,
                              kl_method='mc')
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
        losses.kl_divergence(q, latent_prior=_standard_normal(1)), [expected],
        rtol=1e-6)

  def test_unregistered_pair_raises_clear_error(self):
    q = _random_posterior()
    p = tfd.Independent(tfd.Normal(tf.zeros(4), 1.),
                        reinterpreted_batch_ndims=1)
    with pytest.raises(NotImplementedError, match='No analytic KL.*mc'):
      losses.kl_divergence(q, latent_prior=p, kl_method='analytic')

  def test_mc_needs_samples(self):
    with pytest.raises(ValueError, match='samples'):
      losses.kl_divergence(_random_posterior(),
                           latent_prior=_standard_normal(), kl_method='mc')

  def test_unknown_method(self):
    with pytest.raises(ValueError, match='analytic'):
      losses.kl_divergence(_random_posterior(),
                           latent_prior=_standard_normal(), kl_method='exact')

  def test_prior_is_keyword_only_and_checked(self):
    q, p = _random_posterior(), _standard_normal()
    with pytest.raises(TypeError):
      losses.kl_divergence(*(q, p))
    # Swapped: the "posterior" p has batch shape [], the "prior" q [3].
    with pytest.raises(ValueError, match=r'batch shape \[3\].*broadcast'):
      losses.kl_divergence(p, latent_prior=q)
    with pytest.raises(ValueError, match='event shape'):
      losses.kl_divergence(q, latent_prior=_standard_normal(5))


class TestElbo:

  def test_terms_add_up_and_have_batch_shape(self):
    q, p = _random_posterior(), _standard_normal()
    for kl_method in losses.KL_METHODS:
      terms = losses.elbo(_x(), q, _gaussian_decoder(0.5), latent_prior=p,
                          num_samples=7, kl_method=kl_method, seed=(5, 6))
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
    terms = losses.elbo(x, q, _gaussian_decoder(sigma),
                        latent_prior=_standard_normal(dim),
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
    terms = losses.elbo(x, q, _gaussian_decoder(sigma),
                        latent_prior=_standard_normal(), num_samples=1,
                        kl_method='mc', seed=(9, 10))
    np.testing.assert_allclose(terms.elbo, _log_evidence(x, sigma), rtol=1e-5)

  @pytest.mark.parametrize('num_samples', [0, 2.5, True, [2]])
  def test_bad_num_samples(self, num_samples):
    with pytest.raises(ValueError, match='num_samples'):
      losses.elbo(_x(), _random_posterior(), _gaussian_decoder(1.),
                  latent_prior=_standard_normal(), num_samples=num_samples)

  def test_num_samples_as_a_tensor_in_tf_function(self):
    q, p = _random_posterior(), _standard_normal()

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def terms(num_samples):
      return losses.elbo(_x(), q, _gaussian_decoder(0.5), latent_prior=p,
                         num_samples=num_samples, kl_method='mc', seed=(5, 6))

    want = losses.elbo(_x(), q, _gaussian_decoder(0.5), latent_prior=p,
                       num_samples=7, kl_method='mc', seed=(5, 6))
    for got, expected in zip(terms(tf.constant(7)), want):
      np.testing.assert_allclose(got, expected, rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match='>= 1'):
      terms(tf.constant(0))

  def test_positional_prior_is_a_type_error(self):
    args = _x(), _random_posterior(), _gaussian_decoder(1.), _standard_normal()
    with pytest.raises(TypeError):
      losses.elbo(*args)

  def test_swapped_posterior_and_prior(self):
    with pytest.raises(ValueError, match='latent_prior has batch shape'):
      losses.elbo(_x(), _standard_normal(), _gaussian_decoder(1.),
                  latent_prior=_random_posterior())

  def test_posterior_batch_must_lead_the_observations(self):
    with pytest.raises(ValueError, match=r'batch shape \[3\].*\[7, 4\]'):
      losses.elbo(_x(7), _random_posterior(), _gaussian_decoder(1.),
                  latent_prior=_standard_normal())
    # Without tfd.Independent the 4 latent dims are batch dims.
    q = tfd.Normal(loc=tf.zeros([3, 2]), scale=1.)
    with pytest.raises(ValueError, match='tfd.Independent'):
      losses.elbo(_x(), q, _gaussian_decoder(1.),
                  latent_prior=tfd.Normal(0., 1.))

  def test_decoder_shapes_are_checked(self):
    q, p = _random_posterior(), _standard_normal()
    flat = lambda z: _gaussian_decoder(1.)(tf.reshape(z, [-1, 4]))
    with pytest.raises(ValueError, match=r'batch shape \[6\].*\[2, 3\]'):
      losses.elbo(_x(), q, flat, latent_prior=p, num_samples=2)
    wrong_event = lambda z: _gaussian_decoder(1.)(tf.concat([z, z], -1))
    with pytest.raises(ValueError, match=r'observations.*\[3, 8\]'):
      losses.elbo(_x(), q, wrong_event, latent_prior=p)

  def test_keras_decoder_for_flat_inputs(self):
    """A Sequential built for [N, 4] fails on [S, B, 4] with a hint; wrapped
    in fold_leading_dims it gives what the same layer gives on [S, B, 4]."""
    network = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    q, p = _random_posterior(), _standard_normal()
    likelihood = lambda net: lambda z: tfd.MultivariateNormalDiag(
        loc=net(z), scale_diag=tf.ones(4))
    with pytest.raises(ValueError, match='fold_leading_dims'):
      losses.elbo(_x(), q, likelihood(network), latent_prior=p, num_samples=2)
    folded = losses.elbo(_x(), q,
                         likelihood(losses.fold_leading_dims(network)),
                         latent_prior=p, num_samples=2, seed=(1, 2))
    dense = network.layers[0]
    direct = losses.elbo(
        _x(), q, likelihood(lambda z: z @ dense.kernel + dense.bias),
        latent_prior=p, num_samples=2, seed=(1, 2))
    np.testing.assert_allclose(folded.reconstruction, direct.reconstruction,
                               rtol=1e-6)

  def test_seed_contract(self):
    """An int seed draws anew at every call; a stateless seed in a
    tf.function the same at every call unless the step is folded in."""
    q, p = _random_posterior(), _standard_normal()
    reconstruction = lambda seed: losses.elbo(
        _x(), q, _gaussian_decoder(1.), latent_prior=p,
        seed=seed).reconstruction
    assert not np.array_equal(reconstruction(5), reconstruction(5))
    stateless = tf.function(lambda step: reconstruction(tf.constant([1, 2])))
    np.testing.assert_array_equal(stateless(0), stateless(1))
    folded = tf.function(lambda step: reconstruction(
        tf.random.experimental.stateless_fold_in(tf.constant([1, 2]), step)))
    assert not np.array_equal(folded(0), folded(1))


def _bernoulli_model(num_seeds: int):
  """Three Bernoulli latents with a per-seed trainable q(z | x), a fixed
  Bernoulli(0.3) prior and p(x | z) = N(x; W z + c, I), x in R^2."""
  logits = tf.Variable(tf.fill([num_seeds, 3], 0.4))
  weight = tf.constant([[1., -0.5], [0.3, 0.8], [-1.2, 0.4]])
  x = tf.constant([0.9, -0.3])
  prior = tfd.Independent(tfd.Bernoulli(probs=tf.fill([3], 0.3),
                                        dtype=tf.float32), 1)
  decoder = lambda z: tfd.MultivariateNormalDiag(
      loc=z @ weight + 0.1, scale_diag=tf.ones(2))
  posterior = lambda: tfd.Independent(
      tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)
  return logits, tf.tile(x[None], [num_seeds, 1]), prior, decoder, posterior


def _exact_bernoulli_gradient(bound: str):
  """d/d logits of E_q[ELBO] or E_q[L_2], enumerating the 8 (or 8^2) z."""
  logits, x, prior, decoder, posterior = _bernoulli_model(1)
  latents = tf.constant(list(itertools.product([0., 1.], repeat=3)))
  with tf.GradientTape() as tape:
    q = posterior()
    log_q = q.log_prob(latents[:, None])[:, 0]
    log_w = (decoder(latents).log_prob(x[0]) + prior.log_prob(latents) -
             log_q)
    if bound == 'elbo':
      value = tf.reduce_sum(tf.exp(log_q) * log_w)
    else:
      pair_log_q = log_q[:, None] + log_q[None, :]
      l2 = tf.reduce_logsumexp(
          tf.stack([log_w[:, None] + 0 * log_w[None], 0 * log_w[:, None] +
                    log_w[None]]), axis=0) - np.log(2.)
      value = tf.reduce_sum(tf.exp(pair_log_q) * l2)
  return tape.gradient(value, logits).numpy()[0]


class TestScoreFunction:
  """A posterior that is not reparameterized gets unbiased score-function
  gradients (checked against exact expectations over all latents)."""

  def _check_unbiased(self, bound_fn, exact):
    num_seeds = 100_000
    logits, x, prior, decoder, posterior = _bernoulli_model(num_seeds)
    with tf.GradientTape() as tape:
      with pytest.warns(UserWarning, match='score-function'):
        total = tf.reduce_sum(bound_fn(x, posterior(), decoder, prior))
    # One row of `logits` per seed: each row is one gradient estimate.
    estimates = tape.gradient(total, logits).numpy()
    standard_error = estimates.std(axis=0) / np.sqrt(num_seeds)
    np.testing.assert_array_less(np.abs(estimates.mean(axis=0) - exact),
                                 4 * standard_error)
    # Power: pathwise gradients alone (zero here) would fail the test.
    assert np.abs(exact).max() > 20 * standard_error.max()

  @pytest.mark.parametrize('kl_method', losses.KL_METHODS)
  def test_elbo(self, kl_method):
    self._check_unbiased(
        lambda x, q, decoder, prior: losses.elbo(
            x, q, decoder, latent_prior=prior, kl_method=kl_method,
            seed=(1, 2)).elbo,
        _exact_bernoulli_gradient('elbo'))

  def test_importance_weighted_bound(self):
    self._check_unbiased(
        lambda x, q, decoder, prior: losses.importance_weighted_bound(
            x, q, decoder, latent_prior=prior, num_samples=2, seed=(1, 2)),
        _exact_bernoulli_gradient('iwae'))

  def test_dreg_needs_reparameterization(self):
    _, x, prior, decoder, posterior = _bernoulli_model(2)
    with pytest.raises(ValueError, match='reparameterized'):
      losses.importance_weighted_bound(
          x, posterior(), decoder, latent_prior=prior, num_samples=2,
          gradient_estimator='dreg')


class TestImportanceWeightedBound:

  def test_one_sample_equals_monte_carlo_elbo(self):
    q, p = _random_posterior(), _standard_normal()
    decoder = _gaussian_decoder(0.7)
    iwae = losses.importance_weighted_bound(_x(), q, decoder, latent_prior=p,
                                            num_samples=1, seed=(11, 12))
    terms = losses.elbo(_x(), q, decoder, latent_prior=p, num_samples=1,
                        kl_method='mc', seed=(11, 12))
    np.testing.assert_allclose(iwae, terms.elbo, rtol=1e-5)

  def test_bounds_are_ordered(self):
    """E[ELBO] <= E[L_k] <= log p(x) in a model with known evidence."""
    sigma = 0.5
    x = tf.constant([[0.3, -1.2, 2.0, 0.1], [1.0, 0.5, -0.5, 0.0]])
    q = _random_posterior(batch=2, seed=1)  # A deliberately poor posterior.
    p = _standard_normal()
    decoder = _gaussian_decoder(sigma)
    log_evidence = _log_evidence(x, sigma)
    elbo_value = losses.elbo(x, q, decoder, latent_prior=p, num_samples=5000,
                             seed=(1, 1)).elbo
    bounds = [
        np.mean([losses.importance_weighted_bound(
            x, q, decoder, latent_prior=p, num_samples=k,
            seed=(k, r)).numpy() for r in range(50)], axis=0)
        for k in (10, 1000)
    ]
    np.testing.assert_array_less(elbo_value, bounds[0])
    np.testing.assert_array_less(bounds[0], bounds[1])
    np.testing.assert_array_less(bounds[1], log_evidence)

  def test_unknown_gradient_estimator(self):
    with pytest.raises(ValueError, match='dreg'):
      losses.importance_weighted_bound(
          _x(), _random_posterior(), _gaussian_decoder(1.),
          latent_prior=_standard_normal(), num_samples=2,
          gradient_estimator='vimco')


class TestElboAndImportanceWeightedBound:

  def test_matches_the_separate_functions_on_the_same_samples(self):
    q, p = _random_posterior(), _standard_normal()
    decoder = _gaussian_decoder(0.7)
    terms, bound = losses.elbo_and_importance_weighted_bound(
        _x(), q, decoder, latent_prior=p, num_samples=16, seed=(5, 5))
    mc_terms = losses.elbo(_x(), q, decoder, latent_prior=p, num_samples=16,
                           kl_method='mc', seed=(5, 5))
    iwae = losses.importance_weighted_bound(_x(), q, decoder, latent_prior=p,
                                            num_samples=16, seed=(5, 5))
    for got, want in zip(terms, mc_terms):
      np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(bound, iwae, rtol=1e-6)
    # The bound is the log-mean-exp of the 16 log weights, not their mean
    # (0 gap): measured gaps 2.9, 7.3 and 6.2 nats. Margin 2.9.
    assert np.all(bound - terms.elbo > 1.0)


class _LinearGaussianModel:
  """z ~ N(m, I_2), x | z ~ N(w z + c, 0.5^2 I_2) (decoder w, c; prior m),
  and q(z | x) = N(A x + b, diag(softplus(r))^2) with one (A, b, r) per
  seed: the gradient for row n of the encoder's variables is the estimate
  from seed n, so one backward pass gives `num_seeds` estimates."""

  def __init__(self, num_seeds: int):
    self.x = tf.tile([[1.5, -0.5]], [num_seeds, 1])
    self.encoder = [tf.Variable(tf.tile([[[0.3, 0.], [0., 0.3]]],
                                        [num_seeds, 1, 1])),
                    tf.Variable(tf.fill([num_seeds, 2], 0.2)),
                    tf.Variable(tf.fill([num_seeds, 2], 0.5))]
    self.model = [tf.Variable([1.0, 0.8]), tf.Variable([0.1, -0.2]),
                  tf.Variable([0.05, 0.0])]

  def bound_and_gradients(self, num_samples: int, gradient_estimator: str,
                          seed=(1, 2)):
    """`[bound, dA, db, dr, dw, dc, dm]`, `Tensor`s."""
    a, b, r = self.encoder
    w, c, m = self.model
    with tf.GradientTape() as tape:
      q = tfd.MultivariateNormalDiag(
          loc=tf.einsum('nij,nj->ni', a, self.x) + b,
          scale_diag=tf.nn.softplus(r))
      decoder = lambda z: tfd.MultivariateNormalDiag(
          loc=w * z + c, scale_diag=[0.5, 0.5])
      prior = tfd.MultivariateNormalDiag(loc=m, scale_diag=[1., 1.])
      bound = losses.importance_weighted_bound(
          self.x, q, decoder, latent_prior=prior, num_samples=num_samples,
          gradient_estimator=gradient_estimator, seed=seed)
      total = tf.reduce_sum(bound)
    return [bound] + tape.gradient(total, self.encoder + self.model)

  def encoder_gradients(self, num_samples: int,
                        gradient_estimator: str) -> np.ndarray:
    """The 8 gradients of the encoder's variables, one row per seed."""
    gradients = self.bound_and_gradients(num_samples, gradient_estimator)[1:4]
    return np.concatenate(
        [g.numpy().reshape(len(self.x), -1) for g in gradients], axis=1)


class TestDoublyReparameterized:

  def test_value_is_the_bound(self):
    model = _LinearGaussianModel(num_seeds=4)
    np.testing.assert_array_equal(model.bound_and_gradients(10, 'dreg')[0],
                                  model.bound_and_gradients(10, 'standard')[0])

  def test_terms_are_those_of_the_same_samples_without_gradient(self):
    q, p = _random_posterior(), _standard_normal()
    terms, _ = losses.elbo_and_importance_weighted_bound(
        _x(), q, _gaussian_decoder(0.7), latent_prior=p, num_samples=8,
        seed=(5, 5))
    loc = tf.Variable(q.loc)
    with tf.GradientTape() as tape:
      q = tfd.MultivariateNormalTriL(loc=loc * 1., scale_tril=q.scale_tril)
      dreg_terms, _ = losses.elbo_and_importance_weighted_bound(
          _x(), q, _gaussian_decoder(0.7), latent_prior=p, num_samples=8,
          gradient_estimator='dreg', seed=(5, 5))
    for got, want in zip(dreg_terms, terms):
      np.testing.assert_allclose(got, want, rtol=1e-6)
    assert tape.gradient(dreg_terms.elbo, loc) is None

  def test_decoder_and_prior_gradients_are_those_of_the_bound(self):
    model = _LinearGaussianModel(num_seeds=4)
    want = model.bound_and_gradients(10, 'standard')[4:]
    got = model.bound_and_gradients(10, 'dreg')[4:]
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-5)

  def test_in_tf_function_and_under_xla(self):
    """The weights that scale z's gradient are bound after the decoder ran:
    this works in graphs too. (XLA draws other numbers for the same seed,
    so there DReG is compared with the standard estimator.)"""
    model = _LinearGaussianModel(num_seeds=4)
    seed = tf.constant([1, 2])
    eager = model.bound_and_gradients(10, 'dreg', seed)
    graph = tf.function(model.bound_and_gradients)(10, 'dreg', seed)
    for got, want in zip(graph, eager):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    compiled = tf.function(model.bound_and_gradients, jit_compile=True)
    dreg = compiled(10, 'dreg', seed)
    standard = compiled(10, 'standard', seed)
    np.testing.assert_allclose(dreg[0], standard[0], rtol=1e-6)
    for got, want in zip(dreg[4:], standard[4:]):  # The model's variables.
      np.testing.assert_allclose(got, want, rtol=1e-5)
    assert not np.allclose(dreg[1], standard[1], rtol=1e-3)

  @pytest.mark.parametrize('num_samples, min_variance_ratio',
                           [(5, 3.), (50, 100.)])
  def test_unbiased_with_lower_variance(self, num_samples,
                                        min_variance_ratio):
    """Over 10,000 seeds, the encoder gradients of DReG and of the standard
    estimator have the same mean (paired: within 4 standard errors of their
    difference; IWAE-STL, i.e. w~_s instead of w~_s^2, fails by > 100) and
    DReG's variance is lower, by 4.6x at k = 5 and 534x at k = 50 (summed
    over the encoder's 8 parameters; 1.7x at k = 1, 6.1e4x at k = 500)."""
    model = _LinearGaussianModel(num_seeds=10_000)
    standard = model.encoder_gradients(num_samples, 'standard')
    dreg = model.encoder_gradients(num_samples, 'dreg')
    difference = standard - dreg
    standard_error = difference.std(axis=0) / np.sqrt(len(difference))
    np.testing.assert_array_less(np.abs(difference.mean(axis=0)),
                                 4 * standard_error)
    ratio = standard.var(axis=0).sum() / dreg.var(axis=0).sum()
    assert ratio > min_variance_ratio, ratio


class TestLogLikelihoodAndRatio:

  def test_pieces_make_the_bound_and_are_named(self):
    q, p = _random_posterior(), _standard_normal()
    decoder = _gaussian_decoder(0.7)

    @tf.function
    def pieces():
      return losses.log_likelihood_and_ratio(
          _x(), q, decoder, latent_prior=p, num_samples=6, seed=(2, 3),
          name='pieces')

    log_likelihood, log_ratio = pieces()
    assert log_likelihood.shape == log_ratio.shape == (6, 3)
    np.testing.assert_allclose(
        tfp.math.reduce_logmeanexp(log_likelihood - log_ratio, axis=0),
        losses.importance_weighted_bound(_x(), q, decoder, latent_prior=p,
                                         num_samples=6, seed=(2, 3)),
        rtol=1e-6)
    names = [op.name for op in pieces.get_concrete_function().graph
             .get_operations()]
    assert any(name.startswith('pieces/') for name in names)


class TestKlWeight:

  def test_linear_warmup(self):
    weights = [float(losses.kl_weight(step, final_weight=0.5,
                                      warmup_steps=10))
               for step in (0, 5, 10, 20)]
    np.testing.assert_allclose(weights, [0., 0.25, 0.5, 0.5])

  def test_no_warmup_is_constant(self):
    assert float(losses.kl_weight(0, final_weight=1.0, warmup_steps=0)) == 1.0

  def test_negative_steps_give_zero(self):
    assert float(losses.kl_weight(-5, final_weight=1.0, warmup_steps=10)) == 0

  def test_float64(self):
    for warmup_steps in (0, 10):
      weight = losses.kl_weight(tf.constant(5, tf.int64), final_weight=0.5,
                                warmup_steps=warmup_steps, dtype=tf.float64)
      assert weight.dtype == tf.float64
    assert float(weight) == 0.25
