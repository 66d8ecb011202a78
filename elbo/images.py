"""The blog's pictures, and pictures of the latent space: image grids for
TensorBoard and PNG figures.

The latent figures use only a model's `approx_posterior`,
`decoder_likelihood` and `latent_prior`, so any model offering them works;
images are decoder means (pixel probabilities) unless said otherwise.
"""

import os
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from elbo import diagnostics
from elbo import models
from elbo import summaries

__all__ = ['blog_pictures', 'image_grid', 'interpolations',
           'latent_figures', 'pca_embedding', 'traversals', 'write_figures',
           'write_image_summaries', 'write_latent_figures',
           'write_latent_summaries', 'write_png']

# Matplotlib's 'tab10' colours, one per digit.
_PALETTE = np.array([
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40],
    [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127],
    [188, 189, 34], [23, 190, 207]]) / 255.
# 3x5 bitmaps of the digits 0-9, for the embedding's legend.
_GLYPHS = [
    ('111', '101', '101', '101', '111'), ('010', '110', '010', '010', '111'),
    ('111', '001', '111', '100', '111'), ('111', '001', '111', '001', '111'),
    ('101', '101', '111', '001', '001'), ('111', '100', '111', '001', '111'),
    ('111', '100', '111', '101', '111'), ('111', '001', '010', '010', '010'),
    ('111', '101', '111', '101', '111'), ('111', '101', '111', '001', '111')]
_ENCODE_BATCH = 500  # Images per encoder pass: bounds the activations.


def image_grid(images: tf.Tensor, columns: int) -> tf.Tensor:
  """Tiles `[N, H, W, C]` images in [0, 1] into one `[1, rows*H, cols*W, C]`
  image (the last row padded with black), ready for `SummaryWriter.images`."""
  images = tf.convert_to_tensor(images, tf.float32)
  n, height, width, channels = images.shape
  rows = -(-n // columns)
  images = tf.pad(images, [[0, rows * columns - n], [0, 0], [0, 0], [0, 0]])
  grid = tf.reshape(images, [rows, columns, height, width, channels])
  grid = tf.transpose(grid, [0, 2, 1, 3, 4])
  return tf.reshape(grid, [1, rows * height, columns * width, channels])


def write_png(path: str, grid: tf.Tensor) -> None:
  """Writes a `[1, H, W, C]` grid in [0, 1] as an 8-bit PNG."""
  pixels = tf.cast(tf.round(tf.clip_by_value(grid[0], 0., 1.) * 255), tf.uint8)
  tf.io.write_file(path, tf.io.encode_png(pixels))


def blog_pictures(model: models.VAE, test_images: tf.Tensor,
                  prior_z: tf.Tensor, seed: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Test images, decoder mode and mean of their encodings (one posterior
  sample each), and decoder mode and mean of the given prior samples."""
  z = model.approx_posterior(test_images).sample(seed=seed)
  reconstruction = model.decoder_likelihood(z)
  prior_sample = model.decoder_likelihood(prior_z)
  return {
      'input': test_images,
      'reconstruction/mode': reconstruction.mode(),
      'reconstruction/mean': reconstruction.mean(),
      'prior_sample/mode': prior_sample.mode(),
      'prior_sample/mean': prior_sample.mean(),
  }


def write_image_summaries(writer: summaries.SummaryWriter, step: int,
                          pictures: Dict[str, tf.Tensor]) -> None:
  """Each batch as one grid image of its name."""
  writer.images(step, {name: image_grid(batch, columns=4)
                       for name, batch in pictures.items()})


def write_figures(workdir: str, pictures: Dict[str, tf.Tensor]) -> None:
  """The blog's two figures as PNGs: `reconstructions.png` (inputs, then
  decoder modes, then means) and `prior_samples.png` (modes, then means)."""
  columns = len(pictures['input'])
  reconstructions = tf.concat([pictures['input'],
                               pictures['reconstruction/mode'],
                               pictures['reconstruction/mean']], axis=0)
  write_png(os.path.join(workdir, 'reconstructions.png'),
            image_grid(reconstructions, columns))
  samples = tf.concat([pictures['prior_sample/mode'],
                       pictures['prior_sample/mean']], axis=0)
  write_png(os.path.join(workdir, 'prior_samples.png'),
            image_grid(samples, columns))


def _decoder_means(model, z) -> np.ndarray:
  return model.decoder_likelihood(tf.constant(z, tf.float32)).mean().numpy()


def interpolations(model, images: np.ndarray, num_pairs: int = 8,
                   steps: int = 10) -> tf.Tensor:
  """Rows of [x_a, decoded (1 - t) z_a + t z_b for `steps` t from 0 to 1,
  x_b], z the posterior means of the test-image pairs (0, 1), (2, 3), ...

  Returns:
    A `[1, H', W', C]` grid.
  """
  num_pairs = min(num_pairs, len(images) // 2)
  pairs = np.asarray(images[:2 * num_pairs], np.float32)
  z = model.approx_posterior(pairs).mean().numpy()
  t = np.linspace(0., 1., steps)[None, :, None]
  line = (1 - t) * z[0::2, None] + t * z[1::2, None]  # [pairs, steps, D]
  decoded = _decoder_means(model, line)
  rows = np.concatenate([pairs[0::2, None], decoded, pairs[1::2, None]],
                        axis=1)
  return image_grid(rows.reshape((-1,) + rows.shape[2:]), steps + 2)


def traversals(model, base_image: np.ndarray, means: np.ndarray,
               ranking: np.ndarray, num_dims: int = 8,
               steps: int = 11) -> tf.Tensor:
  """One row per latent dimension u of the `num_dims` first in `ranking`:
  the posterior mean of `base_image` with z_u set to `steps` values from
  m_u - 3 s_u to m_u + 3 s_u, m_u and s_u the mean and standard deviation of
  the posterior means `means` `[N, D]` (where the decoder was trained).

  Returns:
    A `[1, H', W', C]` grid.
  """
  dims = np.asarray(ranking)[:num_dims]
  base = model.approx_posterior(base_image[None]).mean().numpy()[0]
  values = (means.mean(0)[dims, None] + means.std(0)[dims, None] *
            np.linspace(-3., 3., steps))  # [dims, steps]
  z = np.tile(base, [len(dims), steps, 1])
  z[np.arange(len(dims)), :, dims] = values
  decoded = _decoder_means(model, z)
  return image_grid(decoded.reshape((-1,) + decoded.shape[2:]), steps)


def pca_embedding(means: np.ndarray, labels: Optional[np.ndarray] = None,
                  size: int = 320, seed: int = 0) -> tf.Tensor:
  """The posterior means projected on their first two principal axes, one
  dot each, coloured by label (grey without labels), with a legend of the
  ten digit colours below.

  The axes span the 0.5th to 99.5th percentiles (points outside are not
  drawn); points are drawn in a random order, so that no class
  systematically covers another.

  Returns:
    An RGB `[1, H, size, 3]` image in [0, 1], on white.
  """
  centred = means - means.mean(0)
  _, _, axes = np.linalg.svd(centred, full_matrices=False)
  coords = centred @ axes[:2].T
  margin, dot = 8, 2 if len(means) > 3000 else 3
  low, high = np.percentile(coords, [0.5, 99.5], axis=0)
  scaled = (coords - low) / np.maximum(high - low, 1e-12)
  pixels = scaled * (size - 2 * margin - dot) + margin
  x, y = pixels[:, 0].astype(int), (size - dot - pixels[:, 1]).astype(int)
  colours = (_PALETTE[np.asarray(labels) % 10] if labels is not None
             else np.full([len(means), 3], 0.3))
  order = np.random.default_rng(seed).permutation(len(means))
  order = order[np.all((scaled[order] >= 0) & (scaled[order] <= 1), axis=1)]
  canvas = np.ones([size, size, 3])
  for dy in range(dot):
    for dx in range(dot):
      canvas[y[order] + dy, x[order] + dx] = colours[order]
  if labels is not None:
    canvas = np.concatenate([canvas, _legend(size)], axis=0)
  return tf.constant(canvas[None], tf.float32)


def _legend(width: int) -> np.ndarray:
  """A white strip with, for each digit, its colour swatch and the digit."""
  strip = np.ones([22, width, 3])
  pitch = width // 10  # At least 18: a swatch, a gap and a glyph.
  for digit in range(10):
    left = digit * pitch + 2
    strip[6:16, left:left + 8] = _PALETTE[digit]
    glyph = np.array([[c == '1' for c in row] for row in _GLYPHS[digit]])
    glyph = np.kron(glyph, np.ones([2, 2], bool))  # 10 x 6 pixels.
    strip[6:16, left + 10:left + 16][glyph] = 0.
  return strip


def latent_figures(model, images: np.ndarray,
                   labels: Optional[np.ndarray], seed) -> Dict[str, tf.Tensor]:
  """The pictures of the latent space, from test images.

  Posterior means and the KL per dimension (`elbo.diagnostics`) are computed
  over all `images`, in batches; the dimensions are ranked by that KL.

  Args:
    model: has `approx_posterior`, `decoder_likelihood`, `latent_prior`.
    images: test images `[N, ...]` as the encoder takes them (binarized);
      N >= 64 fills the 8x8 grids.
    labels: their digit labels `[N]`, or None (a grey embedding).
    seed: stateless PRNG seed, shape `[2]`.

  Returns:
    `[1, H, W, C]` images in [0, 1]: `interpolations`, `traversals` (the 8
    dimensions of largest KL), `latent_pca`, `kl_per_dimension` (a bar
    chart, largest first), `reconstructions_8x8` (inputs and decoder means
    at their posterior means, in alternate columns) and `prior_samples_8x8`
    (decoder means).
  """
  prior_seed, kl_seed = tfp.random.split_seed(seed, 2)
  images = np.asarray(images, np.float32)
  means, kl_sums = [], 0.
  prior = model.latent_prior()
  for start in range(0, len(images), _ENCODE_BATCH):
    posterior = model.approx_posterior(images[start:start + _ENCODE_BATCH])
    means.append(posterior.mean().numpy())
    kl_sums += tf.reduce_sum(diagnostics.kl_per_dimension(
        posterior, prior, seed=tf.random.experimental.stateless_fold_in(
            kl_seed, start)), axis=0).numpy()
  means = np.concatenate(means)
  kl = kl_sums / len(images)
  grid_images = images[:64]
  reconstructed = _decoder_means(model, means[:64])
  pairs = np.stack([grid_images, reconstructed], axis=1)
  prior_z = prior.sample(64, seed=prior_seed)
  return {
      'interpolations': interpolations(model, images),
      'traversals': traversals(model, images[0], means, np.argsort(-kl)),
      'latent_pca': pca_embedding(means, labels,
                                  seed=int(tf.reduce_sum(seed))),
      'kl_per_dimension': diagnostics.bar_chart(kl),
      'reconstructions_8x8': image_grid(
          pairs.reshape((-1,) + pairs.shape[2:]), 16),
      'prior_samples_8x8': image_grid(_decoder_means(model, prior_z), 8),
  }


def write_latent_figures(directory: str,
                         figures: Dict[str, tf.Tensor]) -> None:
  """Each figure as `directory/{name}.png`."""
  for name, figure in figures.items():
    write_png(os.path.join(directory, name + '.png'), figure)


def write_latent_summaries(writer: summaries.SummaryWriter, step: int,
                           figures: Dict[str, tf.Tensor]) -> None:
  """Each figure as the TensorBoard image `latent/{name}`."""
  writer.images(step, {'latent/' + name: figure
                       for name, figure in figures.items()})
