"""What the latent space is used for: active units, KL per latent dimension,
and the mutual information between inputs and latents.

Plain functions on `tfp.distributions` objects, like `elbo.losses`: any model
whose `approx_posterior(x)` is a Gaussian with batch shape `[N]` and event
shape `[D]` will do, whatever its covariance (diagonal or full). The prior
may be a Gaussian or a mixture of Gaussians (`tfd.MixtureSameFamily`).

A posterior that ignores its input (posterior collapse) shows as few active
units, dimensions with a KL near 0, and a mutual information near 0.

#### References

[1]: Yuri Burda, Roger Grosse, Ruslan Salakhutdinov. Importance Weighted
     Autoencoders, sec. 5.2. https://arxiv.org/abs/1509.00519
[2]: Matthew D. Hoffman, Matthew J. Johnson. ELBO surgery: yet another way to
     carve up the variational evidence lower bound. NIPS 2016 Workshop on
     Advances in Approximate Bayesian Inference.
[3]: Junxian He, Daniel Spokoyny, Graham Neubig, Taylor Berg-Kirkpatrick.
     Lagging Inference Networks and Posterior Collapse in Variational
     Autoencoders. https://arxiv.org/abs/1901.05534
[4]: Ben Poole, Sherjil Ozair, Aaron van den Oord, Alexander A. Alemi,
     George Tucker. On Variational Bounds of Mutual Information.
     https://arxiv.org/abs/1905.06922
"""

import math
from typing import Dict, Optional, Union

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from elbo import summaries

tfd = tfp.distributions

__all__ = [
    'ACTIVE_UNIT_THRESHOLD',
    'active_units',
    'bar_chart',
    'diagnostics_summary',
    'kl_per_dimension',
    'mutual_information',
    'posterior_mean_variance',
    'total_correlation',
    'write_summaries',
]

# Burda et al.'s threshold on Cov_x(E_q[z_u | x]).
ACTIVE_UNIT_THRESHOLD = 0.01
# Entries of the [samples, posteriors] matrix of log q(z_i | x_j) computed
# at once by `mutual_information`.
_PAIRS_PER_CHUNK = 1 << 22


def posterior_mean_variance(approx_posterior: tfd.Distribution) -> tf.Tensor:
  """Cov_x(E_q[z_u | x]) for each latent dimension u, over the batch.

  Args:
    approx_posterior: `q(z | x)` for N inputs, batch shape `[N]`, event
      shape `[D]`.

  Returns:
    variance: `Tensor` of shape `[D]` (the population variance, over N).
  """
  return tf.math.reduce_variance(approx_posterior.mean(), axis=0)


def active_units(approx_posterior: tfd.Distribution,
                 threshold: float = ACTIVE_UNIT_THRESHOLD) -> tf.Tensor:
  """The number of active latent dimensions [1, sec. 5.2].

  ```none
  A_u = Cov_x(E_q[z_u | x]);   unit u is active if A_u > threshold
  ```

  A dimension whose posterior mean does not move with the input carries no
  information about it. The count is for the coordinates of z: a rotation
  of the latent space would change it.

  Args:
    approx_posterior: `q(z | x)` for a set of inputs, batch shape `[N]`.
    threshold: Python `float`. Default value: `0.01`.

  Returns:
    count: int32 scalar `Tensor`.
  """
  variance = posterior_mean_variance(approx_posterior)
  return tf.reduce_sum(tf.cast(variance > threshold, tf.int32))


def kl_per_dimension(approx_posterior: tfd.Distribution,
                     latent_prior: tfd.Distribution,
                     num_samples: int = 64,
                     seed=None,
                     name: Optional[str] = None) -> tf.Tensor:
  """KL between the one-dimensional marginals of q(z | x) and p(z).

  ```none
  kl[..., u] = KL(q(z_u | x) || p(z_u))
  sum_u kl[..., u] = KL(q(z | x) || p(z)) - TC(q(z | x))   (p factorized)
  TC(q) = KL(q || prod_u q(z_u)) = 1/2 (sum_u log S_uu - log det S)
  ```

  For a diagonal posterior and a factorized prior (e.g. N(0, I)) the
  marginals are the factors: the values are exact and sum to the joint KL.
  For a full-covariance posterior with covariance S, the marginal
  q(z_u | x) = N(mu_u, S_uu) ignores the correlations, and the values sum
  to less than the joint KL, by the total correlation TC of q (0 for a
  diagonal S). Against a Gaussian prior the values are in closed form;
  against a mixture of Gaussians, whose marginal p(z_u) is the mixture of
  the components' marginals, they are Monte Carlo estimates from
  `num_samples` draws of each q(z_u | x).

  Args:
    approx_posterior: `q(z | x)`, a Gaussian over `[D]` (any
      `tfd.MultivariateNormalLinearOperator`, or `tfd.Independent` over a
      `tfd.Normal`), batch shape `B`.
    latent_prior: `p(z)`: such a Gaussian, or a `tfd.MixtureSameFamily` of
      them; batch shape `[]`.
    num_samples: draws per example for a mixture prior. Default value: `64`.
    seed: PRNG seed of those draws.
    name: Python `str` name for the ops. Default value: `'kl_per_dimension'`.

  Returns:
    kl: `Tensor` of shape `B + [D]`, in nats.

  Raises:
    TypeError: a distribution that is not one of these.
  """
  with tf.name_scope(name or 'kl_per_dimension'):
    marginals = _normal_marginals(approx_posterior)
    if isinstance(latent_prior, tfd.MixtureSameFamily):
      prior_marginals = _mixture_marginals(latent_prior)
      z = marginals.sample(num_samples, seed=seed)
      return tf.reduce_mean(
          marginals.log_prob(z) - prior_marginals.log_prob(z), axis=0)
    return tfd.kl_divergence(marginals, _normal_marginals(latent_prior))


def total_correlation(approx_posterior: tfd.Distribution) -> tf.Tensor:
  """How much of KL(q(z | x) || p(z)) the marginal KLs miss: the total
  correlation of a Gaussian q(z | x) with covariance S.

  ```none
  TC(q) = KL(q || prod_u q(z_u)) = 1/2 (sum_u log S_uu - log det S) >= 0
  ```

  0 for a diagonal S. For a factorized prior,
  `sum(kl_per_dimension(q, p), -1) + total_correlation(q) = KL(q || p)`.

  Args:
    approx_posterior: `q(z | x)`, a multivariate normal, batch shape `B`.

  Returns:
    total_correlation: `Tensor` of shape `B`, in nats.
  """
  covariance = approx_posterior.covariance()
  return 0.5 * (
      tf.reduce_sum(tf.math.log(tf.linalg.diag_part(covariance)), axis=-1) -
      tf.linalg.logdet(covariance))


def mutual_information(approx_posterior: tfd.Distribution,
                       num_samples: int = 1,
                       seed=None,
                       name: Optional[str] = None) -> tf.Tensor:
  """I_q(x; z) for x uniform over the N inputs of the batch [2, 3].

  ```none
  q(z)  = (1/N) sum_j q(z | x_j)                  (the aggregate posterior)
  I_q   = E_x E_q(z|x) [log q(z | x) - log q(z)]
  I_hat = mean_{i,s} [log q(z_is | x_i) - log (1/N) sum_j q(z_is | x_j)],
          z_is ~ q(z | x_i), s = 1..num_samples
  ```

  As `calc_mi` of He et al. [3], except that the first term uses the same
  samples instead of the closed-form entropy, so that the estimate is 0
  exactly when all the posteriors are equal. Each term is at most log N (the
  sum over j includes j = i), so `I_hat <= log N` always: a model whose
  posteriors barely overlap shows about log N whatever its true
  information. Over random batches of a data set, E[I_hat] is the InfoNCE
  bound with the exact critic [4]: at most the population I_q(x; z), and
  within a gap that closes as N grows. Single terms can be negative, and
  so can the estimate when the posteriors overlap. Costs N^2 * num_samples
  density evaluations.

  Args:
    approx_posterior: `q(z | x_j)` for N inputs, batch shape `[N]`.
    num_samples: draws from each posterior. Default value: `1`.
    seed: PRNG seed of the draws.
    name: Python `str` name for the ops.
      Default value: `'mutual_information'`.

  Returns:
    mutual_information: scalar `Tensor`, in nats.

  Raises:
    ValueError: a batch shape other than `[N]`.
  """
  with tf.name_scope(name or 'mutual_information'):
    batch_shape = approx_posterior.batch_shape
    if batch_shape.rank != 1 or batch_shape[0] is None:
      raise ValueError('mutual_information needs a posterior of static batch '
                       f'shape [N], got {batch_shape}.')
    n = batch_shape[0]
    z = approx_posterior.sample(num_samples, seed=seed)  # [S, N, D]
    log_q_own = approx_posterior.log_prob(z)  # [S, N]
    points = tf.reshape(z, [num_samples * n, 1, -1])
    chunk = max(1, _PAIRS_PER_CHUNK // n)
    # log q(z_is | x_j) for all j, a few rows of samples at a time.
    log_aggregate = tf.concat([
        tf.reduce_logsumexp(approx_posterior.log_prob(points[i:i + chunk]),
                            axis=-1)
        for i in range(0, num_samples * n, chunk)], axis=0) - math.log(n)
    return tf.reduce_mean(log_q_own) - tf.reduce_mean(log_aggregate)


def diagnostics_summary(
    model, images: tf.Tensor, seed,
    threshold: float = ACTIVE_UNIT_THRESHOLD
) -> Dict[str, Union[float, int, np.ndarray]]:
  """The diagnostics of this module for `model` on a batch of images.

  Uses only `model.approx_posterior` and `model.latent_prior`. The cost is
  one encoder pass over all N images at once and N^2 posterior densities
  (1000 test images: 2.6 s on 2 busy CPU cores).

  Args:
    model: has `approx_posterior(images)` (batch `[N]`) and
      `latent_prior()`.
    images: `[N, ...]`, as the model's encoder takes them.
    seed: stateless PRNG seed, a `Tensor` of shape `[2]`.
    threshold: of the active units. Default value: `0.01`.

  Returns:
    A dict of `active_units` (int), `mutual_information` and its ceiling
    `log_num_examples` = log N, the mean `total_correlation` of q(z | x)
    (floats, nats), and per latent dimension (NumPy `[D]`)
    `kl_per_dimension` (the mean over the images) and
    `posterior_mean_variance`.
  """
  posterior = model.approx_posterior(images)
  mi_seed, kl_seed = tfp.random.split_seed(seed, 2)
  return {
      'active_units': int(active_units(posterior, threshold)),
      'mutual_information': float(mutual_information(posterior,
                                                     seed=mi_seed)),
      'log_num_examples': math.log(posterior.batch_shape[0]),
      'total_correlation': float(tf.reduce_mean(
          total_correlation(posterior))),
      'kl_per_dimension': tf.reduce_mean(
          kl_per_dimension(posterior, model.latent_prior(), seed=kl_seed),
          axis=0).numpy(),
      'posterior_mean_variance': posterior_mean_variance(posterior).numpy(),
  }


def write_summaries(writer: summaries.SummaryWriter, step: int,
                    summary: Dict[str, object]) -> None:
  """TensorBoard under `latent/`: scalars `active_units`,
  `mutual_information` and `total_correlation`, the histogram
  `kl_per_dimension` over the dimensions, and those values from the largest
  down as a bar chart (the image `kl_per_dimension_sorted`)."""
  kl = np.asarray(summary['kl_per_dimension'])
  writer.scalars(step, {'latent/' + name: summary[name] for name in (
      'active_units', 'mutual_information', 'total_correlation')})
  writer.histograms(step, {'latent/kl_per_dimension': kl})
  writer.images(step, {'latent/kl_per_dimension_sorted': bar_chart(kl)})


def bar_chart(values: np.ndarray, height: int = 120) -> tf.Tensor:
  """Values from the largest down as dark bars on white, the largest
  `height` pixels tall.

  Returns:
    A `[1, height + 8, W, 1]` image in [0, 1].
  """
  values = np.sort(np.asarray(values, np.float64))[::-1]
  width = max(3, 320 // len(values))
  chart = np.ones([height + 8, len(values) * width + 8, 1])
  tops = np.round(np.clip(values / max(values[0], 1e-12), 0, 1) * height)
  for i, top in enumerate(tops.astype(int)):
    left = 4 + i * width
    chart[4 + height - top:4 + height, left:left + width - 1] = 0.2
  return tf.constant(chart[None], tf.float32)


def _normal_marginals(distribution: tfd.Distribution) -> tfd.Normal:
  """The one-dimensional marginals of a Gaussian over `[D]`, as a
  `tfd.Normal` of batch shape `B + [D]`."""
  if isinstance(distribution, tfd.MultivariateNormalLinearOperator):
    return tfd.Normal(distribution.mean(), distribution.stddev())
  if (isinstance(distribution, tfd.Independent) and
      isinstance(distribution.distribution, tfd.Normal) and
      distribution.reinterpreted_batch_ndims == 1):
    return tfd.Normal(distribution.mean(), distribution.stddev())
  raise TypeError('Expected a Gaussian over vectors (a tfd.MultivariateNormal* '
                  'or tfd.Independent(tfd.Normal)), got '
                  f'{type(distribution).__name__}.')


def _mixture_marginals(mixture: tfd.MixtureSameFamily) -> tfd.Distribution:
  """p(z_u) of a mixture of Gaussians: the mixture, with the same weights, of
  the components' marginals; batch shape `[D]`."""
  components = _normal_marginals(mixture.components_distribution)  # [K, D]
  logits = mixture.mixture_distribution.logits_parameter()  # [K]
  loc = tf.linalg.matrix_transpose(components.loc)  # [D, K]
  scale = tf.linalg.matrix_transpose(components.scale)
  return tfd.MixtureSameFamily(
      mixture_distribution=tfd.Categorical(
          logits=tf.broadcast_to(logits, tf.shape(loc))),
      components_distribution=tfd.Normal(loc, scale))
