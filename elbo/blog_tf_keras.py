"""The 2019 blog's VAE as its notebook wrote it: tf_keras and tfp.layers.

The TFP blog post [1] built the model in a few dozen lines: `tfp.layers`
heads on Keras Sequentials, the KL term as an activity regularizer on the
posterior layer, and `model.fit` with the negative log-likelihood as the
loss. `tfp.layers` needs `tf_keras` (Keras 2). `elbo.models` is the same
architecture (749,305 trainable parameters) in Keras 3 with explicit
distributions; this copy is kept, verbatim but for where its shapes come from,
so that `experiments/benchmark.py` can time the blog's own way of training
against ours. Nothing global is set (no `TF_USE_LEGACY_KERAS`), so Keras 3
in the same process is unaffected.

#### References

[1]: Ian Fischer, Alex Alemi, Joshua V. Dillon, and the TFP team.
     Variational Autoencoders with TensorFlow Probability Layers. 2019.
     https://blog.tensorflow.org/2019/03/variational-autoencoders-with.html
"""

import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from elbo import models

__all__ = ['build_vae']

tfd = tfp.distributions
tfpl = tfp.layers
tfk = tf_keras
tfkl = tf_keras.layers


def build_vae() -> tf_keras.Model:
  """The blog's VAE, compiled as the blog compiles it.

  ```none
  loss = -log p(x | z) + KL(q(z | x) || p(z)),   z ~ q(z | x), one draw
  ```

  the first term the model's loss (`negloglik`), the second the
  `KLDivergenceRegularizer` on the posterior layer (a Monte Carlo estimate
  with the same draw). Adam, learning rate 1e-3.

  Returns:
    vae: a compiled `tf_keras.Model` from binarized images
      `[N, 28, 28, 1]` (pixels 0 or 1) to an `Independent(Bernoulli)` over
      them; train it with `vae.fit` on `(x, x)` pairs.
  """
  encoded_size, base_depth = models.LATENT_DIM, 32
  input_shape = models.IMAGE_SHAPE
  prior = tfd.Independent(tfd.Normal(loc=tf.zeros(encoded_size), scale=1),
                          reinterpreted_batch_ndims=1)
  act = tf.nn.leaky_relu
  encoder = tfk.Sequential([
      tfkl.InputLayer(input_shape=input_shape),
      tfkl.Lambda(lambda x: tf.cast(x, tf.float32) - 0.5),
      tfkl.Conv2D(base_depth, 5, strides=1, padding='same', activation=act),
      tfkl.Conv2D(base_depth, 5, strides=2, padding='same', activation=act),
      tfkl.Conv2D(2 * base_depth, 5, strides=1, padding='same',
                  activation=act),
      tfkl.Conv2D(2 * base_depth, 5, strides=2, padding='same',
                  activation=act),
      tfkl.Conv2D(4 * encoded_size, 7, strides=1, padding='valid',
                  activation=act),
      tfkl.Flatten(),
      tfkl.Dense(tfpl.MultivariateNormalTriL.params_size(encoded_size),
                 activation=None),
      tfpl.MultivariateNormalTriL(
          encoded_size,
          activity_regularizer=tfpl.KLDivergenceRegularizer(prior)),
  ])
  decoder = tfk.Sequential([
      tfkl.InputLayer(input_shape=[encoded_size]),
      tfkl.Reshape([1, 1, encoded_size]),
      tfkl.Conv2DTranspose(2 * base_depth, 7, strides=1, padding='valid',
                           activation=act),
      tfkl.Conv2DTranspose(2 * base_depth, 5, strides=1, padding='same',
                           activation=act),
      tfkl.Conv2DTranspose(2 * base_depth, 5, strides=2, padding='same',
                           activation=act),
      tfkl.Conv2DTranspose(base_depth, 5, strides=1, padding='same',
                           activation=act),
      tfkl.Conv2DTranspose(base_depth, 5, strides=2, padding='same',
                           activation=act),
      tfkl.Conv2DTranspose(base_depth, 5, strides=1, padding='same',
                           activation=act),
      tfkl.Conv2D(filters=1, kernel_size=5, strides=1, padding='same',
                  activation=None),
      tfkl.Flatten(),
      tfpl.IndependentBernoulli(input_shape, tfd.Bernoulli.logits),
  ])
  vae = tfk.Model(inputs=encoder.inputs,
                  outputs=decoder(encoder.outputs[0]))
  negloglik = lambda x, rv_x: -rv_x.log_prob(x)
  vae.compile(optimizer=tfk.optimizers.Adam(learning_rate=1e-3),
              loss=negloglik)
  return vae

