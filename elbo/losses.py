"""Variational bounds as plain functions on `tfp.distributions` objects.

Nothing here knows about our models or data: any encoder that returns a
distribution over latents, any decoder that maps latent samples to a
distribution over observations, and any prior will do.

Shapes: `approx_posterior` has batch shape `B` and event shape `D`;
`decoder_likelihood_fn(z)` receives `z` of shape `[S] + B + D` and returns a
distribution with batch shape `[S] + B` whose event is one observation. All
functions return per-example values (shape `B`); the caller takes the mean.

#### References

[1]: Diederik P. Kingma, Max Welling. Auto-Encoding Variational Bayes.
     https://arxiv.org/abs/1312.6114
[2]: Yuri Burda, Roger Grosse, Ruslan Salakhutdinov. Importance Weighted
     Autoencoders. https://arxiv.org/abs/1509.00519
"""

from typing import Callable, NamedTuple, Optional, Tuple

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

__all__ = [
    'KL_METHODS',
    'ElboTerms',
    'elbo',
    'elbo_and_importance_weighted_bound',
    'importance_weighted_bound',
    'kl_divergence',
    'kl_weight',
    'log_likelihood_and_ratio',
]

KL_METHODS = ('analytic', 'mc')

DecoderFn = Callable[[tf.Tensor], tfd.Distribution]


class ElboTerms(NamedTuple):
  """The evidence lower bound and its two terms, per example, in nats.

  `elbo == reconstruction - kl`. In the vocabulary of TFP's old VAE example,
  `-reconstruction` is the distortion and `kl` the rate.
  """
  elbo: tf.Tensor
  reconstruction: tf.Tensor  # E_q[log p(x | z)]
  kl: tf.Tensor  # KL(q(z | x) || p(z))


def kl_divergence(approx_posterior: tfd.Distribution,
                  latent_prior: tfd.Distribution,
                  samples: Optional[tf.Tensor] = None,
                  method: str = 'analytic',
                  name: Optional[str] = None) -> tf.Tensor:
  """KL(q || p) per example, in closed form or by Monte Carlo.

  ```none
  analytic: KL(q || p) from the registered closed form
  mc:       mean_s [log q(z_s) - log p(z_s)],   z_s ~ q
  ```

  Args:
    approx_posterior: `q`, batch shape `B`.
    latent_prior: `p`, over the same event space.
    samples: `[S] + B + D` draws from `q`; required when `method='mc'`. Pass
      the samples the reconstruction term used, so both terms share them.
    method: `'analytic'` or `'mc'`. Default value: `'analytic'`.
    name: Python `str` name for the ops. Default value: `'kl_divergence'`.

  Returns:
    kl: `Tensor` of shape `B`.

  Raises:
    ValueError: for an unknown `method`, or `'mc'` without samples.
    NotImplementedError: when no analytic KL is registered for the pair.
  """
  _check_kl_method(method)
  with tf.name_scope(name or 'kl_divergence'):
    if method == 'analytic':
      try:
        return tfd.kl_divergence(approx_posterior, latent_prior)
      except NotImplementedError as e:
        raise NotImplementedError(
            'No analytic KL is registered for '
            f'KL({type(approx_posterior).__name__} || '
            f'{type(latent_prior).__name__}); use method="mc" (flag '
            f'--kl=mc) or register one with tfd.RegisterKL. ({e})') from e
    if samples is None:
      raise ValueError(
          'method="mc" needs `samples` drawn from approx_posterior.')
    return tf.reduce_mean(
        approx_posterior.log_prob(samples) - latent_prior.log_prob(samples),
        axis=0)


def elbo(observations: tf.Tensor,
         approx_posterior: tfd.Distribution,
         decoder_likelihood_fn: DecoderFn,
         latent_prior: tfd.Distribution,
         num_samples: int = 1,
         kl_method: str = 'analytic',
         seed=None,
         name: Optional[str] = None) -> ElboTerms:
  """The ELBO with its reconstruction and KL terms kept apart.

  ```none
  reconstruction = mean_s log p(x | z_s),   z_s ~ q(z | x), s = 1..S
  kl             = KL(q(z | x) || p(z))     (analytic or Monte Carlo)
  elbo           = reconstruction - kl
  ```

  Args:
    observations: `x`, shape `B + event_shape` of the decoder likelihood.
    approx_posterior: `q(z | x)`, batch shape `B`; must be reparameterized
      for pathwise gradients.
    decoder_likelihood_fn: maps `z` of shape `[S] + B + D` to `p(x | z)`.
    latent_prior: `p(z)`.
    num_samples: `S`, latent samples per example. Default value: `1`.
    kl_method: `'analytic'` or `'mc'` (from the same samples).
      Default value: `'analytic'`.
    seed: PRNG seed for the latent samples (an `int`, or a stateless
      `Tensor` of shape `[2]`).
    name: Python `str` name for the ops. Default value: `'elbo'`.

  Returns:
    terms: `ElboTerms` of `Tensor`s of shape `B`.
  """
  _check_kl_method(kl_method)
  with tf.name_scope(name or 'elbo'):
    z, log_likelihood = _sample_log_likelihood(
        observations, approx_posterior, decoder_likelihood_fn, num_samples,
        seed)
    reconstruction = tf.reduce_mean(log_likelihood, axis=0)
    kl = kl_divergence(approx_posterior, latent_prior, z, kl_method)
    return ElboTerms(elbo=reconstruction - kl,
                     reconstruction=reconstruction, kl=kl)


def importance_weighted_bound(observations: tf.Tensor,
                              approx_posterior: tfd.Distribution,
                              decoder_likelihood_fn: DecoderFn,
                              latent_prior: tfd.Distribution,
                              num_samples: int,
                              seed=None,
                              name: Optional[str] = None) -> tf.Tensor:
  """The importance-weighted bound L_k [2], a tighter bound on log p(x).

  ```none
  L_k = log (1/k) sum_s p(x | z_s) p(z_s) / q(z_s | x),   z_s ~ q(z | x)
  ELBO = E[L_1] <= E[L_k] <= E[L_{k+1}] <= log p(x)
  ```

  Args:
    observations: `x`, shape `B + event_shape`.
    approx_posterior: `q(z | x)`, batch shape `B`.
    decoder_likelihood_fn: maps `z` of shape `[k] + B + D` to `p(x | z)`.
    latent_prior: `p(z)`.
    num_samples: `k`, importance samples per example.
    seed: PRNG seed for the latent samples.
    name: Python `str` name for the ops.
      Default value: `'importance_weighted_bound'`.

  Returns:
    bound: `Tensor` of shape `B`.
  """
  with tf.name_scope(name or 'importance_weighted_bound'):
    _, bound = elbo_and_importance_weighted_bound(
        observations, approx_posterior, decoder_likelihood_fn, latent_prior,
        num_samples, seed)
    return bound


def elbo_and_importance_weighted_bound(
    observations: tf.Tensor,
    approx_posterior: tfd.Distribution,
    decoder_likelihood_fn: DecoderFn,
    latent_prior: tfd.Distribution,
    num_samples: int,
    seed=None,
    name: Optional[str] = None) -> Tuple[ElboTerms, tf.Tensor]:
  """The ELBO terms (Monte Carlo KL) and L_k from the same k samples.

  For training on L_k while logging the ELBO's two terms, or evaluating both
  at the cost of one. Arguments as for `importance_weighted_bound`.

  Returns:
    terms: `ElboTerms` averaged over the k samples, shape `B` each.
    bound: L_k, shape `B`.
  """
  with tf.name_scope(name or 'elbo_and_importance_weighted_bound'):
    log_likelihood, log_ratio = log_likelihood_and_ratio(
        observations, approx_posterior, decoder_likelihood_fn, latent_prior,
        num_samples, seed)
    reconstruction = tf.reduce_mean(log_likelihood, axis=0)
    kl = tf.reduce_mean(log_ratio, axis=0)
    terms = ElboTerms(elbo=reconstruction - kl,
                      reconstruction=reconstruction, kl=kl)
    bound = tfp.math.reduce_logmeanexp(log_likelihood - log_ratio, axis=0)
    return terms, bound


def log_likelihood_and_ratio(observations: tf.Tensor,
                             approx_posterior: tfd.Distribution,
                             decoder_likelihood_fn: DecoderFn,
                             latent_prior: tfd.Distribution,
                             num_samples: int,
                             seed=None) -> Tuple[tf.Tensor, tf.Tensor]:
  """The pieces every bound here is made of, for `z_s ~ q(z | x)`:

  ```none
  log_likelihood[s] = log p(x | z_s)
  log_ratio[s]      = log q(z_s | x) - log p(z_s)
  log weight        = log_likelihood - log_ratio
  ```

  Use it to compute a bound over many samples in chunks (e.g. L_5000 with
  a running log-sum-exp). Arguments as for `importance_weighted_bound`.

  Returns:
    log_likelihood, log_ratio: `Tensor`s of shape `[num_samples] + B`.
  """
  z, log_likelihood = _sample_log_likelihood(
      observations, approx_posterior, decoder_likelihood_fn, num_samples,
      seed)
  return (log_likelihood,
          approx_posterior.log_prob(z) - latent_prior.log_prob(z))


def kl_weight(step: tf.Tensor, final_weight: float = 1.0,
              warmup_steps: int = 0) -> tf.Tensor:
  """The KL weight beta at `step`, rising linearly from 0 to `final_weight`
  over `warmup_steps` (KL annealing); `final_weight` at once if 0.

  Train on `reconstruction - kl_weight(...) * kl`; beta = 1 is the ELBO.
  """
  if warmup_steps <= 0:
    return tf.constant(final_weight, tf.float32)
  fraction = tf.cast(step, tf.float32) / float(warmup_steps)
  return final_weight * tf.minimum(fraction, 1.0)


def _sample_log_likelihood(observations, approx_posterior,
                           decoder_likelihood_fn, num_samples, seed):
  """Draws `[S] + B` latents and scores the observations under each."""
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}.')
  z = approx_posterior.sample(num_samples, seed=seed)
  return z, decoder_likelihood_fn(z).log_prob(observations)


def _check_kl_method(method):
  if method not in KL_METHODS:
    raise ValueError(f'kl method must be one of {KL_METHODS}, got {method!r}.')
