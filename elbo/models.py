"""Models: the interface the loop trains, and the built-in models.

A model is anything with the three methods of `Model` (a Keras model, so
that its variables can be trained and checkpointed). Training, evaluation and
the pictures use only those three; what else they need (the latent size, the
decoder's mean image) is derived from the distributions they return.

Built-in models, by `Config.model` (the table `MODELS`; `elbo.factory.build_model`):
  * `blog`: the encoder and decoder of the 2019 TFP blog post "Variational
    Autoencoders with TensorFlow Probability Layers", in Keras 3. The blog
    built them with `tfp.layers`, which needs `tf_keras`; here the networks
    are plain Keras 3 layers that output distribution parameters, and the
    heads are `tfp.distributions` built from those: the same 749,305
    trainable parameters, and it compiles under XLA.
  * `iwae_mlp`: the one-stochastic-layer MLP of Burda et al. (2015), Table 1:
    425,284 parameters.

#### References

[1]: Yuri Burda, Roger Grosse, Ruslan Salakhutdinov. Importance Weighted
     Autoencoders. https://arxiv.org/abs/1509.00519
"""

from typing import Any, Callable, Dict, Protocol, Sequence, runtime_checkable

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions
tfb = tfp.bijectors

__all__ = ['IMAGE_SHAPE', 'IWAEMLP', 'LATENT_DIM', 'MODELS', 'Model', 'ModelFn',
           'PRIORS', 'VAE', 'latent_size']

IMAGE_SHAPE = (28, 28, 1)
LATENT_DIM = 16
_BASE_DEPTH = 32
# Keeps the posterior's scale diagonal positive by construction, as
# tfp.layers.MultivariateNormalTriL does: softplus(x) + 1e-5.
_SCALE_DIAG_SHIFT = 1e-5
# 'normal': the blog's fixed N(0, I). 'mixture': a learned mixture of
# diagonal Gaussians, as in TFP's former examples/vae.py.
PRIORS = ('normal', 'mixture')


@runtime_checkable
class Model(Protocol):
  """What `elbo.train`, `elbo.evaluation` and `elbo.images` need of a model.

  Observations `x` have shape `[N] + event_shape`; latents `z` have shape
  `S + [N, D]` for any leading sample shape `S`.
  """

  def approx_posterior(self, x: tf.Tensor) -> tfd.Distribution:
    """q(z | x): batch shape `[N]`, event shape `[D]`, reparameterized."""

  def decoder_likelihood(self, z: tf.Tensor) -> tfd.Distribution:
    """p(x | z): batch shape `S + [N]`, one observation per event."""

  def latent_prior(self) -> tfd.Distribution:
    """p(z): batch shape `[]`, event shape `[D]`."""


def latent_size(model: Model) -> int:
  """D, from the prior's event shape."""
  return int(model.latent_prior().event_shape[-1])


def _num_tril_params(latent_dim: int) -> int:
  """Parameters of a full-covariance Gaussian: loc plus lower triangle."""
  return latent_dim + latent_dim * (latent_dim + 1) // 2


def make_encoder_network(image_shape: Sequence[int] = IMAGE_SHAPE,
                         latent_dim: int = LATENT_DIM,
                         base_depth: int = _BASE_DEPTH,
                         precision: str = 'float32') -> keras.Sequential:
  """Images centred at 0 -> parameters of q(z | x) (152 for 16 latents).

  `precision` is the Keras dtype policy of the convolutions, e.g.
  'mixed_bfloat16'; the head always computes in float32.
  """
  conv = lambda depth, kernel, strides=1, padding='same': Conv2D(
      depth, kernel, strides=strides, padding=padding,
      activation='leaky_relu', dtype=precision)
  return keras.Sequential([
      keras.Input(shape=image_shape),
      conv(base_depth, 5),
      conv(base_depth, 5, strides=2),
      conv(2 * base_depth, 5),
      conv(2 * base_depth, 5, strides=2),
      conv(4 * latent_dim, 7, padding='valid'),
      keras.layers.Flatten(),
      # The head stays float32 under mixed precision: it parameterizes a
      # Cholesky factor.
      keras.layers.Dense(_num_tril_params(latent_dim), dtype='float32'),
  ], name='encoder')


@tf.custom_gradient
def _add_bias(outputs: tf.Tensor, bias: tf.Tensor):
  """`outputs + bias` over the last axis; the bias gradient sums in float32.

  TF's CPU kernel for the gradient of a bfloat16 bias add (BiasAddGrad)
  accumulates in bfloat16: over 256 x 28 x 28 positions the sum stalls
  (a true 600 comes out as 32), and under mixed_bfloat16 the decoder's bias
  gradients were 40-98% off their float32 values. On CPUs with AVX-512,
  oneDNN fuses the encoder's Conv2D bias gradient into the weight gradient,
  in float32; on AVX2 alone (no oneDNN bfloat16 kernels) it does not, and
  the encoder's bias gradients were 10-41% off (batch 128).
  """

  def gradient(upstream):
    axes = list(range(len(upstream.shape) - 1))
    bias_gradient = tf.reduce_sum(tf.cast(upstream, tf.float32), axis=axes)
    return upstream, tf.cast(bias_gradient, bias.dtype)

  return tf.nn.bias_add(outputs, bias), gradient


class _BiasGradientInFloat32:
  """For a Keras convolution: the same variables and outputs, with a bias
  gradient that is right in bfloat16 (see `_add_bias`)."""

  def call(self, inputs):
    if (self.compute_dtype != 'bfloat16' or not self.use_bias or
        self.data_format != 'channels_last'):
      return super().call(inputs)
    # A tensor, not the variable: custom gradients take tensors.
    outputs = _add_bias(self._convolve(inputs),
                        tf.cast(self.bias, self.compute_dtype))
    return outputs if self.activation is None else self.activation(outputs)


class Conv2D(_BiasGradientInFloat32, keras.layers.Conv2D):
  """keras.layers.Conv2D, bias gradient in float32 under bfloat16."""

  def _convolve(self, inputs):
    return self.convolution_op(inputs, self.kernel)


class Conv2DTranspose(_BiasGradientInFloat32, keras.layers.Conv2DTranspose):
  """keras.layers.Conv2DTranspose, bias gradient in float32 under
  bfloat16."""

  def _convolve(self, inputs):
    return keras.ops.conv_transpose(
        inputs, self.kernel, strides=list(self.strides), padding=self.padding,
        output_padding=self.output_padding, dilation_rate=self.dilation_rate,
        data_format=self.data_format)


def make_decoder_network(image_shape: Sequence[int] = IMAGE_SHAPE,
                         latent_dim: int = LATENT_DIM,
                         base_depth: int = _BASE_DEPTH,
                         precision: str = 'float32') -> keras.Sequential:
  """Latents of shape [N, latent_dim] -> Bernoulli logits [N, 28, 28, 1].

  The last convolution, which makes the logits, computes in float32.
  """
  deconv = lambda depth, kernel, strides=1, padding='same': (
      Conv2DTranspose(depth, kernel, strides=strides, padding=padding,
                      activation='leaky_relu', dtype=precision))
  return keras.Sequential([
      keras.Input(shape=(latent_dim,)),
      keras.layers.Reshape((1, 1, latent_dim)),
      deconv(2 * base_depth, 7, padding='valid'),
      deconv(2 * base_depth, 5),
      deconv(2 * base_depth, 5, strides=2),
      deconv(base_depth, 5),
      deconv(base_depth, 5, strides=2),
      deconv(base_depth, 5),
      keras.layers.Conv2D(image_shape[-1], 5, padding='same', dtype='float32'),
  ], name='decoder')


class _BernoulliImageModel(keras.Model):
  """Shared by the built-in models: a `decoder` network from `[N,
  latent_dim]` latents to logits, read as independent Bernoulli pixels."""
  image_shape: Sequence[int]
  latent_dim: int
  decoder: keras.Model

  def decoder_likelihood(self, z: tf.Tensor) -> tfd.Distribution:
    """p(x | z) for latents of any leading shape `S + [latent_dim]`: event
    shape `image_shape`.

    The pixels are scored in the shape the decoder makes them. A dense
    decoder's flat vector is scored flat and reshaped to the image: on a
    CPU, XLA vectorizes along the minor dimension, 784 pixels this way
    and 1 channel the other (the IWAE MLP's step: 1.5 -> 1.1 ms).
    """
    leading_shape = tf.shape(z)[:-1]
    logits = self.decoder(tf.reshape(z, [-1, self.latent_dim]))
    if logits.shape.rank == 2:
      pixels = logits.shape[-1]
      logits = tf.reshape(logits, tf.concat([leading_shape, [pixels]], 0))
      return tfd.TransformedDistribution(
          tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32),
                          reinterpreted_batch_ndims=1),
          tfb.Reshape(event_shape_out=self.image_shape,
                      event_shape_in=[pixels]))
    logits = tf.reshape(
        logits, tf.concat([leading_shape, self.image_shape], axis=0))
    return tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32),
                           reinterpreted_batch_ndims=len(self.image_shape))

  def call(self, images: tf.Tensor) -> tf.Tensor:
    """Decoder mean at the posterior mean: a deterministic reconstruction."""
    z = self.approx_posterior(images).mean()
    return self.decoder_likelihood(z).mean()


class VAE(_BernoulliImageModel):
  """The blog's VAE: prior N(0, I), full-covariance Gaussian posterior,
  independent Bernoulli likelihood over pixels.

  The three distributions are exposed separately so the losses in
  `elbo.losses` can combine them; `call` is not used for training.
  `prior='mixture'` swaps the fixed prior for a learned mixture of
  `prior_components` diagonal Gaussians (KL to it has no closed form).
  `precision='mixed_bfloat16'` runs the convolutions in bfloat16 with
  float32 variables; the distributions are always float32.
  """

  def __init__(self,
               image_shape: Sequence[int] = IMAGE_SHAPE,
               latent_dim: int = LATENT_DIM,
               base_depth: int = _BASE_DEPTH,
               prior: str = 'normal',
               prior_components: int = 100,
               precision: str = 'float32',
               **kwargs):
    super().__init__(**kwargs)
    if prior not in PRIORS:
      raise ValueError(f'prior must be one of {PRIORS}, got {prior!r}.')
    self.image_shape = tuple(image_shape)
    self.latent_dim = latent_dim
    self.prior = prior
    self.encoder = make_encoder_network(image_shape, latent_dim, base_depth,
                                        precision)
    self.decoder = make_decoder_network(image_shape, latent_dim, base_depth,
                                        precision)
    self._fill_scale_tril = tfb.FillScaleTriL(diag_shift=_SCALE_DIAG_SHIFT)
    if prior == 'mixture':
      self.prior_logits = self.add_weight(
          shape=(prior_components,), initializer='zeros', name='prior_logits')
      self.prior_locs = self.add_weight(
          shape=(prior_components, latent_dim),
          initializer=keras.initializers.RandomNormal(seed=0),
          name='prior_locs')
      # softplus(0.5413) = 1: components start with unit scale.
      self.prior_raw_scales = self.add_weight(
          shape=(prior_components, latent_dim),
          initializer=keras.initializers.Constant(0.5413),
          name='prior_raw_scales')

  def latent_prior(self) -> tfd.Distribution:
    """p(z): N(0, I) as an MVN (so KL(q || p) has a closed form), or the
    learned mixture."""
    if self.prior == 'normal':
      return tfd.MultivariateNormalDiag(
          loc=tf.zeros([self.latent_dim]),
          scale_diag=tf.ones([self.latent_dim]))
    return tfd.MixtureSameFamily(
        mixture_distribution=tfd.Categorical(logits=self.prior_logits),
        components_distribution=tfd.MultivariateNormalDiag(
            loc=self.prior_locs,
            scale_diag=tf.nn.softplus(self.prior_raw_scales) +
            _SCALE_DIAG_SHIFT))

  def approx_posterior(self, images: tf.Tensor) -> tfd.MultivariateNormalTriL:
    """q(z | x) for images in [0, 1] of shape [N, 28, 28, 1]."""
    params = self.encoder(tf.cast(images, tf.float32) - 0.5)
    loc, tril = tf.split(params, [self.latent_dim, -1], axis=-1)
    return tfd.MultivariateNormalTriL(
        loc=loc, scale_tril=self._fill_scale_tril(tril))



class IWAEMLP(_BernoulliImageModel):
  """The IWAE paper's one-stochastic-layer model for MNIST [1, Table 1].

  Encoder 784-200-200 (tanh) to a diagonal Gaussian over 50 latents;
  decoder 50-200-200 (tanh) to 784 Bernoulli logits; prior N(0, I).
  The paper exponentiates the encoder's log standard deviations; here they
  go through softplus (+1e-5), as in `VAE`, which cannot overflow.
  """

  def __init__(self,
               image_shape: Sequence[int] = IMAGE_SHAPE,
               latent_dim: int = 50,
               hidden_units: int = 200,
               **kwargs):
    super().__init__(**kwargs)
    self.image_shape = tuple(image_shape)
    self.latent_dim = latent_dim
    pixels = 1
    for size in self.image_shape:
      pixels *= size
    dense = lambda units, activation='tanh': keras.layers.Dense(
        units, activation=activation)
    self.encoder = keras.Sequential([
        keras.Input(shape=(pixels,)), dense(hidden_units),
        dense(hidden_units), dense(2 * latent_dim, activation=None),
    ], name='encoder')
    self.decoder = keras.Sequential([
        keras.Input(shape=(latent_dim,)), dense(hidden_units),
        dense(hidden_units), dense(pixels, activation=None),
    ], name='decoder')

  def latent_prior(self) -> tfd.MultivariateNormalDiag:
    return tfd.MultivariateNormalDiag(
        loc=tf.zeros([self.latent_dim]), scale_diag=tf.ones([self.latent_dim]))

  def approx_posterior(self, images: tf.Tensor) -> tfd.MultivariateNormalDiag:
    """q(z | x) for binary images of shape `[N] + image_shape`."""
    flat = tf.reshape(tf.cast(images, tf.float32), [tf.shape(images)[0], -1])
    loc, raw_scale = tf.split(self.encoder(flat), 2, axis=-1)
    return tfd.MultivariateNormalDiag(
        loc=loc, scale_diag=tf.nn.softplus(raw_scale) + _SCALE_DIAG_SHIFT)


# `model_fn(config) -> model`: how a run builds its model (any object with
# the three methods of `Model`). The config is an `elbo.config.Config`.
ModelFn = Callable[[Any], Model]

# Config.model -> how to build it. A model of your own needs no entry here:
# pass `model_fn` to `elbo.train.train_and_evaluate`; an entry makes it a
# `--model` of the binaries. (`Config` checks that iwae_mlp runs with its
# prior and precision.)
MODELS: Dict[str, ModelFn] = {
    'blog': lambda config: VAE(prior=config.prior,
                               prior_components=config.prior_components,
                               precision=config.precision),
    'iwae_mlp': lambda config: IWAEMLP(),
}
