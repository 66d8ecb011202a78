"""A trained model as a TensorFlow SavedModel that needs no `elbo`.

`export(model, export_dir)` writes four signatures, for images `x` in [0, 1]
of shape `[N] + image_shape`:

```none
encode(x)                  -> {loc [N, D], scale_tril [N, D, D]}: q(z | x)
decode(z)                  -> {logits [N] + image_shape}: p(x | z), Bernoulli
sample(n, seed)            -> {images, latents}: decoder means (pixel
                              probabilities) at n draws z ~ p(z)
log_prob_bound(x, k, seed) -> {log_prob_bound [N]}: the IWAE bound L_k
```

`seed` is an int32 scalar; the same seed gives the same numbers. Only the
model's `approx_posterior`, `decoder_likelihood` and `latent_prior` are used.
"""

import math
from typing import Optional

import tensorflow as tf
import tensorflow_probability as tfp

from elbo import losses
from elbo import streams

tfd = tfp.distributions

__all__ = ['ExportError', 'bernoulli_pixels', 'decode', 'encode', 'export',
           'log_prob_bound', 'sample']


class ExportError(ValueError):
  """A model the SavedModel's signatures cannot describe."""


def _stateless_seed(seed: tf.Tensor) -> tf.Tensor:
  return tf.stack([tf.cast(seed, tf.int32),
                   tf.constant(streams.EXPORT, tf.int32)])


def encode(model, x: tf.Tensor):
  """q(z | x) as its mean and lower-triangular scale."""
  posterior = model.approx_posterior(x)
  return {'loc': posterior.mean(), 'scale_tril': posterior.scale.to_dense()}


def bernoulli_pixels(likelihood: tfd.Distribution) -> Optional[tfd.Bernoulli]:
  """The Bernoulli of p(x | z): itself, or under `tfd.Independent` and
  `tfb.Reshape` (as `elbo.models` scores a dense decoder's flat pixels);
  None for any other likelihood."""
  while isinstance(likelihood, (tfd.Independent,
                                tfd.TransformedDistribution)):
    if (isinstance(likelihood, tfd.TransformedDistribution) and
        not isinstance(likelihood.bijector, tfp.bijectors.Reshape)):
      return None
    likelihood = likelihood.distribution
  return likelihood if isinstance(likelihood, tfd.Bernoulli) else None


def decode(model, z: tf.Tensor):
  """The Bernoulli logits of p(x | z), in its batch and event shape."""
  likelihood = model.decoder_likelihood(z)
  shape = tf.concat([likelihood.batch_shape_tensor(),
                     likelihood.event_shape_tensor()], axis=0)
  logits = bernoulli_pixels(likelihood).logits_parameter()
  return {'logits': tf.reshape(logits, shape)}


def sample(model, n: tf.Tensor, seed: tf.Tensor):
  """Decoder means at n latents drawn from the prior."""
  z = model.latent_prior().sample(n, seed=_stateless_seed(seed))
  return {'images': model.decoder_likelihood(z).mean(), 'latents': z}


def log_prob_bound(model, x: tf.Tensor, k: tf.Tensor, seed: tf.Tensor):
  """L_k with one draw per loop step, so memory is that of one decoder pass
  over x whatever k. Draw i is made with seed fold_in([seed, 0], i)."""
  posterior, prior = model.approx_posterior(x), model.latent_prior()
  base_seed = _stateless_seed(seed)

  def add_draw(i, log_sum_exp):
    log_likelihood, log_ratio = losses.log_likelihood_and_ratio(
        x, posterior, model.decoder_likelihood, latent_prior=prior,
        num_samples=1,
        seed=tf.random.experimental.stateless_fold_in(base_seed, i))
    return i + 1, tf.math.reduce_logsumexp(
        tf.stack([log_sum_exp, (log_likelihood - log_ratio)[0]]), axis=0)

  # An explicit loop: no AutoGraph, which needs this file's source.
  _, log_sum_exp = tf.while_loop(
      lambda i, _: i < k, add_draw,
      (tf.constant(0), tf.fill(tf.shape(x)[:1], -math.inf)))
  return {'log_prob_bound':
              log_sum_exp - tf.math.log(tf.cast(k, tf.float32))}


class _Exported(tf.Module):
  """The model's variables and the four signatures."""

  def __init__(self, model, image_shape, latent_dim):
    super().__init__()
    self.model = model
    x = tf.TensorSpec([None, *image_shape], tf.float32, name='x')
    scalar = lambda name: tf.TensorSpec([], tf.int32, name=name)
    self.encode = tf.function(lambda x: encode(model, x), input_signature=[x])
    self.decode = tf.function(
        lambda z: decode(model, z),
        input_signature=[tf.TensorSpec([None, latent_dim], tf.float32,
                                       name='z')])
    self.sample = tf.function(lambda n, seed: sample(model, n, seed),
                              input_signature=[scalar('n'), scalar('seed')])
    self.log_prob_bound = tf.function(
        lambda x, k, seed: log_prob_bound(model, x, k, seed),
        input_signature=[x, scalar('k'), scalar('seed')])


def export(model, export_dir: str) -> None:
  """Writes `model` (with `approx_posterior`, `decoder_likelihood` and
  `latent_prior`) as a SavedModel with the module docstring's signatures.

  Raises:
    ExportError: the posterior is not a multivariate normal or the decoder
      not Bernoulli.
  """
  latent_dim = model.latent_prior().event_shape[-1]
  likelihood = model.decoder_likelihood(tf.zeros([1, latent_dim]))
  if bernoulli_pixels(likelihood) is None:
    raise ExportError('decode(z) -> logits needs a Bernoulli decoder '
                      '(tfd.Bernoulli, under tfd.Independent or tfb.Reshape), '
                      f'got {type(likelihood).__name__}.')
  image_shape = likelihood.event_shape.as_list()
  posterior = model.approx_posterior(tf.zeros([1, *image_shape]))
  if not isinstance(posterior, tfd.MultivariateNormalLinearOperator):
    raise ExportError('encode(x) -> {loc, scale_tril} needs a multivariate '
                      f'normal posterior, got {type(posterior).__name__}.')
  module = _Exported(model, image_shape, latent_dim)
  signatures = {name: getattr(module, name).get_concrete_function()
                for name in ('encode', 'decode', 'sample', 'log_prob_bound')}
  tf.saved_model.save(module, export_dir, signatures=signatures)
