"""Tests of the latent figures in elbo.images, on a model whose decoder draws
each latent into its own band of pixels."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from elbo import images
from elbo import models

tfd = tfp.distributions


class _BandModel:
  """D = 4 latents; the decoder's logits in pixel column c are
  z[c // 7], so latent u shows in columns 7u..7u+6 only. The encoder reads
  z back from the mean of each band (an exact inverse, in logits)."""

  def latent_prior(self):
    return tfd.MultivariateNormalDiag(tf.zeros(4), tf.ones(4))

  def approx_posterior(self, x):
    bands = tf.reshape(tf.cast(x, tf.float32), [-1, 28, 4, 7])
    loc = tf.reduce_mean(bands, axis=[1, 3])
    return tfd.MultivariateNormalDiag(loc, tf.fill(tf.shape(loc), 0.5))

  def decoder_likelihood(self, z):
    logits = tf.repeat(z, 7, axis=-1)[..., None, :, None]  # [..., 1, 28, 1]
    logits = tf.broadcast_to(logits, tf.concat(
        [tf.shape(z)[:-1], [28, 28, 1]], axis=0))
    return tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 3)


def _band_images(z):
  """Images whose bands hold the values z (so the posterior mean is z)."""
  return np.repeat(np.asarray(z, np.float32), 7, axis=-1)[:, None, :, None] * (
      np.ones([1, 28, 28, 1], np.float32))


def _cells(grid, columns, size=28):
  """The [rows, columns, size, size, C] cells of a `[1, H, W, C]` grid."""
  grid = np.asarray(grid)[0]
  rows = grid.shape[0] // size
  return grid.reshape(rows, size, columns, size, -1).transpose(0, 2, 1, 3, 4)


def test_interpolations_decode_points_on_the_line():
  z = np.array([[0., 1., -1., 2.], [2., -1., 1., 0.], [1., 1., 1., 1.],
                [-1., -1., -1., -1.]])
  x = _band_images(z)
  cells = _cells(images.interpolations(_BandModel(), x, steps=5), 7)
  assert cells.shape[:2] == (2, 7)
  np.testing.assert_array_equal(cells[:, 0], x[0::2])
  np.testing.assert_array_equal(cells[:, -1], x[1::2])
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  for step, t in enumerate(np.linspace(0, 1, 5)):
    expected = sigmoid(_band_images((1 - t) * z[0::2] + t * z[1::2]))
    np.testing.assert_allclose(cells[:, 1 + step], expected, rtol=1e-5)


def test_traversals_move_the_ranked_dimensions_only():
  rng = np.random.default_rng(0)
  means = rng.standard_normal([100, 4]) * [1., 2., 0.5, 3.]
  base = _band_images(means[:1])[0]
  ranking = np.array([3, 1])
  grid = images.traversals(_BandModel(), base, means, ranking, steps=7)
  cells = _cells(grid, 7)[..., 0]  # [dims, steps, 28, 28]
  assert cells.shape[:2] == (2, 7)
  for row, u in enumerate(ranking):
    band = cells[row, :, 0, 7 * u]  # One pixel of the traversed band.
    expected = means[:, u].mean() + means[:, u].std() * np.linspace(-3, 3, 7)
    np.testing.assert_allclose(band, 1 / (1 + np.exp(-expected)), rtol=1e-5)
    others = np.delete(cells[row], np.s_[7 * u:7 * u + 7], axis=-1)
    assert np.all(others == others[:1])  # The other bands stay put.


def test_pca_embedding_separates_labels_along_the_first_axis():
  rng = np.random.default_rng(0)
  labels = np.repeat([0, 3], 200)
  direction = np.array([3., 4., 0.]) / 5
  means = (np.where(labels[:, None] == 0, 5., -5.) * direction +
           0.3 * rng.standard_normal([400, 3]))
  picture = np.asarray(images.pca_embedding(means, labels, size=200))[0]
  assert picture.shape == (222, 200, 3)  # With the legend below.
  plot = picture[:200]
  colour = lambda label: np.all(
      np.abs(plot - images._PALETTE[label]) < 1e-6, axis=-1)
  columns_0 = np.nonzero(colour(0))[1]
  columns_3 = np.nonzero(colour(3))[1]
  assert len(columns_0) > 100 and len(columns_3) > 100
  # The first principal axis is the class direction, up to its sign.
  assert columns_0.max() < columns_3.min() or columns_3.max() < columns_0.min()
  # Without labels: grey points and no legend.
  grey = np.asarray(images.pca_embedding(means, None, size=200))[0]
  assert grey.shape == (200, 200, 3)
  assert set(np.unique(grey)) == {np.float32(0.3), np.float32(1.0)}


@pytest.mark.parametrize('prior', models.PRIORS)
def test_latent_figures_of_the_vae(tmp_path, prior):
  model = models.VAE(prior=prior, prior_components=3)
  rng = np.random.default_rng(0)
  x = (rng.uniform(size=[70, 28, 28, 1]) < 0.2).astype(np.float32)
  labels = np.arange(70) % 10
  seed = tf.constant([1, 2])
  figures = images.latent_figures(model, x, labels, seed)
  shapes = {name: tuple(figure.shape) for name, figure in figures.items()}
  assert shapes == {
      'interpolations': (1, 8 * 28, 12 * 28, 1),
      'traversals': (1, 8 * 28, 11 * 28, 1),
      'latent_pca': (1, 342, 320, 3),
      'kl_per_dimension': (1, 128, 16 * 20 + 8, 1),
      'reconstructions_8x8': (1, 8 * 28, 16 * 28, 1),
      'prior_samples_8x8': (1, 8 * 28, 8 * 28, 1),
  }
  reconstructions = _cells(figures['reconstructions_8x8'], 16)
  np.testing.assert_array_equal(
      reconstructions[:, 0::2].reshape(64, 28, 28, 1), x[:64])
  np.testing.assert_allclose(
      reconstructions[:, 1::2].reshape(64, 28, 28, 1),
      model.decoder_likelihood(model.approx_posterior(x[:64]).mean()).mean(),
      atol=1e-6)
  again = images.latent_figures(model, x, labels, seed)
  np.testing.assert_array_equal(again['prior_samples_8x8'],
                                figures['prior_samples_8x8'])

  images.write_latent_figures(str(tmp_path), figures)
  for name, figure in figures.items():
    png = tf.io.decode_png(tf.io.read_file(
        os.path.join(tmp_path, name + '.png'))).numpy()
    np.testing.assert_array_equal(
        png, np.round(np.clip(figure[0], 0, 1) * 255).astype(np.uint8))
