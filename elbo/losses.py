"""Variational bounds as plain functions on `tfp.distributions` objects.

Nothing here knows about our models or data: any encoder that returns a
distribution over latents, any decoder that maps latent samples to a
distribution over observations, and any prior will do.

Shapes: `approx_posterior` has batch shape `B` and event shape `D`;
`decoder_likelihood_fn(z)` receives `z` of shape `[S] + B + D` and returns a
distribution with batch shape `[S] + B` whose event is one observation, so
`observations` have shape `B + event_shape`. These shapes are checked (where
known statically) with a one-line `ValueError`. A network built for `[N] + D`
inputs can be adapted with `fold_leading_dims`. All functions return
per-example values (shape `B`); the caller takes the mean.

Arguments: the observations, the posterior and the decoder are positional;
everything else (`latent_prior`, `num_samples`, ...) is keyword-only, so two
distributions cannot be swapped by position.

Seeds: `seed=None` or an `int` makes stateful draws, new at every call (also
every call of a `tf.function`). A stateless seed, a `Tensor` of shape `[2]`,
draws the same latents for the same seed: inside a `tf.function` a constant
seed draws the same at every step unless the caller folds the step in,
`tf.random.experimental.stateless_fold_in(seed, step)`.

Gradients: with a reparameterized `approx_posterior` they are pathwise [1].
Otherwise (e.g. Bernoulli latents) the bounds add the score-function term
[4], unbiased but noisy, and warn. `gradient_estimator='dreg'` gives L_k the
doubly reparameterized gradient for the encoder [3].

#### References

[1]: Diederik P. Kingma, Max Welling. Auto-Encoding Variational Bayes.
     https://arxiv.org/abs/1312.6114
[2]: Yuri Burda, Roger Grosse, Ruslan Salakhutdinov. Importance Weighted
     Autoencoders. https://arxiv.org/abs/1509.00519
[3]: George Tucker, Dieterich Lawson, Shixiang Gu, Chris J. Maddison. Doubly
     Reparameterized Gradient Estimators for Monte Carlo Objectives.
     https://arxiv.org/abs/1810.04152
[4]: Ronald J. Williams. Simple statistical gradient-following algorithms for
     connectionist reinforcement learning. Machine Learning 8, 1992.
"""

from typing import Callable, NamedTuple, Optional, Tuple, Union
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

__all__ = [
    'GRADIENT_ESTIMATORS',
    'KL_METHODS',
    'ElboTerms',
    'elbo',
    'elbo_and_importance_weighted_bound',
    'fold_leading_dims',
    'importance_weighted_bound',
    'kl_divergence',
    'kl_weight',
    'log_likelihood_and_ratio',
]

KL_METHODS = ('analytic', 'mc')
# 'standard': the gradient of L_k itself; 'dreg': Tucker et al.'s for q.
GRADIENT_ESTIMATORS = ('standard', 'dreg')

DecoderFn = Callable[[tf.Tensor], tfd.Distribution]
NumSamples = Union[int, tf.Tensor]


class ElboTerms(NamedTuple):
  """The evidence lower bound and its two terms, per example, in nats.

  `elbo == reconstruction - kl`. In the vocabulary of TFP's old VAE example,
  `-reconstruction` is the distortion and `kl` the rate.
  """
  elbo: tf.Tensor
  reconstruction: tf.Tensor  # E_q[log p(x | z)]
  kl: tf.Tensor  # KL(q(z | x) || p(z))


def kl_divergence(approx_posterior: tfd.Distribution,
                  *,
                  latent_prior: tfd.Distribution,
                  samples: Optional[tf.Tensor] = None,
                  kl_method: str = 'analytic',
                  name: Optional[str] = None) -> tf.Tensor:
  """KL(q || p) per example, in closed form or by Monte Carlo.

  ```none
  analytic: KL(q || p) from the registered closed form
  mc:       mean_s [log q(z_s) - log p(z_s)],   z_s ~ q
  ```

  Args:
    approx_posterior: `q`, batch shape `B`.
    latent_prior: `p`, over the same event space; its batch shape must
      broadcast to `B`.
    samples: `[S] + B + D` draws from `q`; required when `kl_method='mc'`.
      Pass the samples the reconstruction term used, so both terms share
      them.
    kl_method: `'analytic'` or `'mc'`. Default value: `'analytic'`.
    name: Python `str` name for the ops. Default value: `'kl_divergence'`.

  Returns:
    kl: `Tensor` of shape `B`.

  Raises:
    ValueError: for an unknown `kl_method`, `'mc'` without samples, or a
      prior that does not match the posterior's shapes.
    NotImplementedError: when no analytic KL is registered for the pair.
  """
  _check_kl_method(kl_method)
  _check_prior(approx_posterior, latent_prior)
  with tf.name_scope(name or 'kl_divergence'):
    if kl_method == 'analytic':
      try:
        return tfd.kl_divergence(approx_posterior, latent_prior)
      except NotImplementedError as e:
        raise NotImplementedError(
            'No analytic KL is registered for '
            f'KL({type(approx_posterior).__name__} || '
            f'{type(latent_prior).__name__}); use kl_method="mc" (flag '
            f'--kl=mc) or register one with tfd.RegisterKL. ({e})') from e
    if samples is None:
      raise ValueError(
          'kl_method="mc" needs `samples` drawn from approx_posterior.')
    return tf.reduce_mean(
        approx_posterior.log_prob(samples) - latent_prior.log_prob(samples),
        axis=0)


def elbo(observations: tf.Tensor,
         approx_posterior: tfd.Distribution,
         decoder_likelihood_fn: DecoderFn,
         *,
         latent_prior: tfd.Distribution,
         num_samples: NumSamples = 1,
         kl_method: str = 'analytic',
         seed=None,
         name: Optional[str] = None) -> ElboTerms:
  """The ELBO with its reconstruction and KL terms kept apart.

  ```none
  reconstruction = mean_s log p(x | z_s),   z_s ~ q(z | x), s = 1..S
  kl             = KL(q(z | x) || p(z))     (analytic or Monte Carlo)
  elbo           = reconstruction - kl
  ```

  Costs `S` decoder passes per example.

  Args:
    observations: `x`, shape `B + event_shape` of the decoder likelihood.
    approx_posterior: `q(z | x)`, batch shape `B`. Gradients are pathwise if
      it is reparameterized, else score-function gradients (with a warning).
    decoder_likelihood_fn: maps `z` of shape `[S] + B + D` to `p(x | z)`
      with batch shape `[S] + B`.
    latent_prior: `p(z)`; its batch shape must broadcast to `B`.
    num_samples: `S`, latent samples per example: an `int` or an integer
      scalar `Tensor`. Default value: `1`.
    kl_method: `'analytic'` or `'mc'` (from the same samples).
      Default value: `'analytic'`.
    seed: PRNG seed for the latent samples (see the module docstring).
    name: Python `str` name for the ops. Default value: `'elbo'`.

  Returns:
    terms: `ElboTerms` of `Tensor`s of shape `B`.

  Raises:
    ValueError: for bad shapes, `num_samples < 1` or an unknown `kl_method`.
  """
  _check_kl_method(kl_method)
  with tf.name_scope(name or 'elbo'):
    num_samples = _checked_num_samples(num_samples)
    _check_prior(approx_posterior, latent_prior)
    z, log_likelihood = _sample_log_likelihood(
        observations, approx_posterior, decoder_likelihood_fn, num_samples,
        seed)
    if _is_reparameterized(approx_posterior):
      reconstruction = tf.reduce_mean(log_likelihood, axis=0)
      kl = kl_divergence(approx_posterior, latent_prior=latent_prior,
                         samples=z, kl_method=kl_method)
    else:
      _warn_score_function(approx_posterior)
      log_q = approx_posterior.log_prob(z)
      reconstruction = tf.reduce_mean(
          _with_score_function(log_likelihood, log_q), axis=0)
      if kl_method == 'mc':
        kl = tf.reduce_mean(_with_score_function(
            log_q - latent_prior.log_prob(z), log_q), axis=0)
      else:
        kl = kl_divergence(approx_posterior, latent_prior=latent_prior)
    return ElboTerms(elbo=reconstruction - kl,
                     reconstruction=reconstruction, kl=kl)


def importance_weighted_bound(observations: tf.Tensor,
                              approx_posterior: tfd.Distribution,
                              decoder_likelihood_fn: DecoderFn,
                              *,
                              latent_prior: tfd.Distribution,
                              num_samples: NumSamples,
                              gradient_estimator: str = 'standard',
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
    gradient_estimator: `'standard'` or `'dreg'`; see
      `elbo_and_importance_weighted_bound`. Default value: `'standard'`.
    seed: PRNG seed for the latent samples.
    name: Python `str` name for the ops.
      Default value: `'importance_weighted_bound'`.

  Returns:
    bound: `Tensor` of shape `B`.
  """
  with tf.name_scope(name or 'importance_weighted_bound'):
    _, bound = elbo_and_importance_weighted_bound(
        observations, approx_posterior, decoder_likelihood_fn,
        latent_prior=latent_prior, num_samples=num_samples,
        gradient_estimator=gradient_estimator, seed=seed)
    return bound


def elbo_and_importance_weighted_bound(
    observations: tf.Tensor,
    approx_posterior: tfd.Distribution,
    decoder_likelihood_fn: DecoderFn,
    *,
    latent_prior: tfd.Distribution,
    num_samples: NumSamples,
    gradient_estimator: str = 'standard',
    seed=None,
    name: Optional[str] = None) -> Tuple[ElboTerms, tf.Tensor]:
  """The ELBO terms (Monte Carlo KL) and L_k from the same k samples.

  For training on L_k while logging the ELBO's two terms, or evaluating both
  at the cost of one: k decoder passes per example, with either estimator.

  The two estimators differ only in the gradient of `bound`, never in its
  value. With `w_s = p(x, z_s) / q(z_s | x)` and `w~_s = w_s / sum_t w_t`:

  ```none
  standard:  d L_k = sum_s w~_s d log w_s              (all parameters;
             + L_k sum_s d log q(z_s) if q is not reparameterized)
  dreg:      d L_k = sum_s w~_s d log p(x, z_s)        (decoder and prior)
             d L_k = sum_s w~_s^2 (d log w_s / d z_s) (d z_s / d phi)
                     with q's parameters phi stopped in log q  (encoder)
  ```

  DReG [3] is unbiased for the encoder's gradient, and its signal-to-noise
  ratio grows with k where the standard estimator's falls. It needs a
  reparameterized `approx_posterior` that is a `tf.CompositeTensor` (as
  `tfd` distributions are), to stop its parameters; it costs what the
  standard estimator does (k decoder passes, one `log_prob` of q). Unlike
  `tfp.vi.monte_carlo_variational_loss`'s `DOUBLY_REPARAMETERIZED`, which
  weights every gradient by `w~_s^2` (right for q only), the decoder and
  prior here keep the IWAE gradient, so one `bound` trains both networks.
  With `'dreg'` the returned `terms` carry no gradient: they are for
  logging.

  Args:
    observations: `x`, shape `B + event_shape`.
    approx_posterior: `q(z | x)`, batch shape `B`. If it is not
      reparameterized, `'standard'` adds the score-function term (with a
      warning).
    decoder_likelihood_fn: maps `z` of shape `[k] + B + D` to `p(x | z)`.
    latent_prior: `p(z)`.
    num_samples: `k`, importance samples per example.
    gradient_estimator: `'standard'` or `'dreg'`.
      Default value: `'standard'`.
    seed: PRNG seed for the latent samples.
    name: Python `str` name for the ops.
      Default value: `'elbo_and_importance_weighted_bound'`.

  Returns:
    terms: `ElboTerms` averaged over the k samples, shape `B` each.
    bound: L_k, shape `B`.

  Raises:
    ValueError: for bad shapes, `num_samples < 1`, an unknown
      `gradient_estimator`, or `'dreg'` with a posterior that is not
      reparameterized.
  """
  if gradient_estimator not in GRADIENT_ESTIMATORS:
    raise ValueError(f'gradient_estimator must be one of '
                     f'{GRADIENT_ESTIMATORS}, got {gradient_estimator!r}.')
  with tf.name_scope(name or 'elbo_and_importance_weighted_bound'):
    reparameterized = _is_reparameterized(approx_posterior)
    if gradient_estimator == 'dreg':
      if not reparameterized:
        raise ValueError(
            "gradient_estimator='dreg' needs a reparameterized "
            f'approx_posterior, not {type(approx_posterior).__name__}; use '
            "'standard' (score-function gradients).")
      return _dreg(observations, approx_posterior, decoder_likelihood_fn,
                   latent_prior, num_samples, seed)
    _, log_likelihood, log_prior, log_q = _sample_log_densities(
        observations, approx_posterior, decoder_likelihood_fn, latent_prior,
        num_samples, seed)
    log_ratio = log_q - log_prior
    bound = tfp.math.reduce_logmeanexp(log_likelihood - log_ratio, axis=0)
    if not reparameterized:
      _warn_score_function(approx_posterior)
      log_likelihood = _with_score_function(log_likelihood, log_q)
      log_ratio = _with_score_function(log_ratio, log_q)
      # The k draws are iid: d E[L_k] = E[d L_k + L_k sum_s d log q(z_s)].
      bound = _with_score_function(bound, tf.reduce_sum(log_q, axis=0))
    reconstruction = tf.reduce_mean(log_likelihood, axis=0)
    kl = tf.reduce_mean(log_ratio, axis=0)
    terms = ElboTerms(elbo=reconstruction - kl,
                      reconstruction=reconstruction, kl=kl)
    return terms, bound


def log_likelihood_and_ratio(observations: tf.Tensor,
                             approx_posterior: tfd.Distribution,
                             decoder_likelihood_fn: DecoderFn,
                             *,
                             latent_prior: tfd.Distribution,
                             num_samples: NumSamples,
                             seed=None,
                             name: Optional[str] = None
                             ) -> Tuple[tf.Tensor, tf.Tensor]:
  """The pieces every bound here is made of, for `z_s ~ q(z | x)`:

  ```none
  log_likelihood[s] = log p(x | z_s)
  log_ratio[s]      = log q(z_s | x) - log p(z_s)
  log weight        = log_likelihood - log_ratio
  ```

  Use it to compute a bound over many samples in chunks (e.g. L_5000 with
  a running log-sum-exp). Their gradients are pathwise only: for training
  with a posterior that is not reparameterized, use the bounds above.
  Arguments as for `importance_weighted_bound`.

  Returns:
    log_likelihood, log_ratio: `Tensor`s of shape `[num_samples] + B`.
  """
  with tf.name_scope(name or 'log_likelihood_and_ratio'):
    _, log_likelihood, log_prior, log_q = _sample_log_densities(
        observations, approx_posterior, decoder_likelihood_fn, latent_prior,
        num_samples, seed)
    return log_likelihood, log_q - log_prior


def kl_weight(step: tf.Tensor,
              *,
              final_weight: float = 1.0,
              warmup_steps: int = 0,
              dtype: tf.DType = tf.float32,
              name: Optional[str] = None) -> tf.Tensor:
  """The KL weight beta at `step`, rising linearly from 0 to `final_weight`
  over `warmup_steps` (KL annealing); `final_weight` at once if 0.

  ```none
  beta = final_weight * clip(step / warmup_steps, 0, 1)
  ```

  Train on `reconstruction - kl_weight(...) * kl`; beta = 1 is the ELBO.
  Negative steps give 0. `dtype` is the model's float type.
  """
  with tf.name_scope(name or 'kl_weight'):
    if warmup_steps <= 0:
      return tf.constant(final_weight, dtype)
    fraction = tf.cast(step, dtype) / float(warmup_steps)
    return final_weight * tf.clip_by_value(fraction, 0., 1.)


def fold_leading_dims(network: Callable[[tf.Tensor], tf.Tensor],
                      *,
                      event_ndims: int = 1) -> Callable[[tf.Tensor],
                                                        tf.Tensor]:
  """`network`, built for inputs `[N] + E`, made to take any `S + E`.

  The decoder receives latents of shape `[num_samples] + B + D`; a Keras
  network built with `keras.Input((latent_dim,))` rejects them. This folds
  the leading dims into one batch dim and unfolds them on every output:

  ```none
  outputs[i] = network(reshape(inputs, [-1] + E))[j],   i = unravel(j, S)
  ```

  Args:
    network: callable from a `Tensor` of shape `[N] + E` to a (nest of)
      `Tensor`(s) of shape `[N] + ...`, e.g. a `keras.Sequential`.
    event_ndims: rank of `E`, the dims of one input. Default value: `1`.

  Returns:
    folded: callable from `S + E` to outputs of shape `S + ...`.
  """

  def folded(inputs):
    inputs = tf.convert_to_tensor(inputs)
    split = inputs.shape.rank - event_ndims  # Static slices keep shapes.
    shape = tf.shape(inputs)
    outputs = network(tf.reshape(inputs,
                                 tf.concat([[-1], shape[split:]], axis=0)))
    return tf.nest.map_structure(
        lambda output: tf.reshape(
            output, tf.concat([shape[:split], tf.shape(output)[1:]], axis=0)),
        outputs)

  return folded


def _dreg(observations, approx_posterior, decoder_likelihood_fn,
          latent_prior, num_samples, seed):
  """`(terms, bound)` of L_k whose gradient is the DReG estimator."""
  num_samples = _checked_num_samples(num_samples)
  _check_prior(approx_posterior, latent_prior)
  z = approx_posterior.sample(num_samples, seed=seed)
  # The decoder runs once, on z; the weights that scale the gradient that
  # reaches z through it are known only after it ran.
  later = []
  z_scaled = _scale_gradient(z, later)
  log_likelihood = _log_likelihood(observations, approx_posterior,
                                   decoder_likelihood_fn, z_scaled)
  log_ratio = (_stop_parameter_gradients(approx_posterior).log_prob(z_scaled)
               - latent_prior.log_prob(z_scaled))
  log_weights = log_likelihood - log_ratio
  normalized_weights = tf.stop_gradient(tf.nn.softmax(log_weights, axis=0))
  later.append(normalized_weights)
  # Gradient: sum_s w~_s d log w_s, and w~_s once more on the way to z.
  surrogate = tf.reduce_sum(normalized_weights * log_weights, axis=0)
  bound = tf.stop_gradient(
      tfp.math.reduce_logmeanexp(log_weights, axis=0)) + (
          surrogate - tf.stop_gradient(surrogate))
  reconstruction = tf.reduce_mean(log_likelihood, axis=0)
  kl = tf.reduce_mean(log_ratio, axis=0)
  terms = ElboTerms(elbo=reconstruction - kl,
                    reconstruction=reconstruction, kl=kl)
  return tf.nest.map_structure(tf.stop_gradient, terms), bound


def _scale_gradient(z, later):
  """Identity on `z` whose gradient is multiplied by `later[0]`, a `Tensor`
  of shape `[S] + B` appended after this call but before the gradient."""

  @tf.custom_gradient
  def identity(z):

    def gradient(upstream):
      scale = later[0]
      extra_dims = upstream.shape.rank - scale.shape.rank
      return upstream * tf.reshape(
          scale, tf.concat([tf.shape(scale), tf.ones([extra_dims], tf.int32)],
                           0))

    return tf.identity(z), gradient

  return identity(z)


def _stop_parameter_gradients(distribution):
  """A copy of `distribution` through whose parameters no gradient flows."""
  try:
    return tf.nest.map_structure(tf.stop_gradient, distribution,
                                 expand_composites=True)
  except (TypeError, ValueError) as e:
    raise TypeError(
        "gradient_estimator='dreg' stops the gradients of approx_posterior's "
        'parameters, which needs a tf.CompositeTensor (most tfd '
        f'distributions are); {type(distribution).__name__} is not.') from e


def _sample_log_densities(observations, approx_posterior,
                          decoder_likelihood_fn, latent_prior, num_samples,
                          seed):
  """`z ~ q` of shape `[S] + B + D`, and log p(x | z), log p(z), log q(z)."""
  num_samples = _checked_num_samples(num_samples)
  _check_prior(approx_posterior, latent_prior)
  z, log_likelihood = _sample_log_likelihood(
      observations, approx_posterior, decoder_likelihood_fn, num_samples,
      seed)
  return (z, log_likelihood, latent_prior.log_prob(z),
          approx_posterior.log_prob(z))


def _sample_log_likelihood(observations, approx_posterior,
                           decoder_likelihood_fn, num_samples, seed):
  """Draws `[S] + B` latents and scores the observations under each."""
  z = approx_posterior.sample(num_samples, seed=seed)
  if not _is_reparameterized(approx_posterior):
    z = tf.stop_gradient(z)  # Gradients through q come from the score.
  return z, _log_likelihood(observations, approx_posterior,
                            decoder_likelihood_fn, z)


def _log_likelihood(observations, approx_posterior, decoder_likelihood_fn,
                    z):
  """`log p(x | z)`, after checking the decoder's shapes."""
  _check_observations(observations, approx_posterior)
  try:
    likelihood = decoder_likelihood_fn(z)
  except ValueError as e:
    raise ValueError(
        f'decoder_likelihood_fn failed on latents of shape '
        f'{_format(z.shape)} ([num_samples] + batch + latent); if it was '
        'built for [N, latent_dim], wrap its network in '
        'elbo.losses.fold_leading_dims.') from e
  batch_shape = approx_posterior.batch_shape
  expected = z.shape[:1].concatenate(batch_shape)
  if not likelihood.batch_shape.is_compatible_with(expected):
    raise ValueError(
        f'decoder_likelihood_fn(z) has batch shape '
        f'{_format(likelihood.batch_shape)}, not [num_samples] + batch = '
        f'{_format(expected)}.')
  full_shape = batch_shape.concatenate(likelihood.event_shape)
  if not _shape(observations).is_compatible_with(full_shape):
    raise ValueError(
        f'observations have shape {_format(_shape(observations))}, not '
        f'batch + event shape of the likelihood = {_format(full_shape)}.')
  return likelihood.log_prob(observations)


def _check_observations(observations, approx_posterior):
  batch_shape = approx_posterior.batch_shape
  shape = _shape(observations)
  if batch_shape.rank is None or shape.rank is None:
    return
  if (shape.rank < batch_shape.rank or
      not shape[:batch_shape.rank].is_compatible_with(batch_shape)):
    raise ValueError(
        f'approx_posterior has batch shape {_format(batch_shape)}, which '
        f'must lead the shape of the observations, {_format(shape)} (one '
        'posterior per example; tfd.Independent makes the latents one '
        'event).')


def _check_prior(approx_posterior, latent_prior):
  if not latent_prior.event_shape.is_compatible_with(
      approx_posterior.event_shape):
    raise ValueError(
        f'latent_prior has event shape {_format(latent_prior.event_shape)}, '
        f'approx_posterior {_format(approx_posterior.event_shape)}.')
  batch_shape = approx_posterior.batch_shape
  prior_batch_shape = latent_prior.batch_shape
  if batch_shape.rank is None or prior_batch_shape.rank is None:
    return
  try:
    broadcast = tf.broadcast_static_shape(batch_shape, prior_batch_shape)
  except ValueError:
    broadcast = None
  if broadcast is None or broadcast.rank != batch_shape.rank:
    raise ValueError(
        f'latent_prior has batch shape {_format(prior_batch_shape)}, which '
        'does not broadcast to the batch shape of approx_posterior, '
        f'{_format(batch_shape)}.')


def _checked_num_samples(num_samples):
  """`num_samples` as a Python `int` if static, else the integer `Tensor`."""
  static = (tf.get_static_value(num_samples)
            if tf.is_tensor(num_samples) else np.asarray(num_samples))
  if static is None:
    if not num_samples.dtype.is_integer or num_samples.shape.rank not in (
        0, None):
      raise ValueError(f'num_samples must be an integer scalar, got '
                       f'{num_samples.dtype.name} of shape '
                       f'{num_samples.shape}.')
    with tf.control_dependencies([tf.debugging.assert_positive(
        num_samples, message='num_samples must be >= 1')]):
      return tf.identity(num_samples)
  if (np.ndim(static) != 0 or
      not np.issubdtype(np.asarray(static).dtype, np.integer) or static < 1):
    raise ValueError(f'num_samples must be an integer >= 1, got {static!r}.')
  return int(static)


def _is_reparameterized(distribution):
  return all(t == tfd.FULLY_REPARAMETERIZED
             for t in tf.nest.flatten(distribution.reparameterization_type))


def _warn_score_function(approx_posterior):
  warnings.warn(
      f'approx_posterior ({type(approx_posterior).__name__}) is not '
      'reparameterized: using score-function gradients (unbiased, high '
      'variance).', stacklevel=3)


def _with_score_function(value, log_q):
  """`value`, with `stop_gradient(value) * d log_q` added to its gradient."""
  return value + tf.stop_gradient(value) * (log_q - tf.stop_gradient(log_q))


def _shape(x):
  return tf.TensorShape(x.shape if hasattr(x, 'shape') else np.shape(x))


def _format(shape):
  return 'unknown' if shape.rank is None else str(shape.as_list())


def _check_kl_method(kl_method):
  if kl_method not in KL_METHODS:
    raise ValueError(
        f'kl_method must be one of {KL_METHODS}, got {kl_method!r}.')
