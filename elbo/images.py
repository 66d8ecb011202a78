"""The blog's pictures: image grids for TensorBoard and the two PNG figures."""

import os
from typing import Dict

import tensorflow as tf

from elbo import models

__all__ = ['blog_pictures', 'image_grid', 'write_figures',
           'write_image_summaries', 'write_png']


def image_grid(images: tf.Tensor, columns: int) -> tf.Tensor:
  """Tiles `[N, H, W, C]` images in [0, 1] into one `[1, rows*H, cols*W, C]`
  image (the last row padded with black), ready for `tf.summary.image`."""
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


def write_image_summaries(writer: tf.summary.SummaryWriter, step: int,
                          pictures: Dict[str, tf.Tensor]) -> None:
  with writer.as_default(step=step):
    for name, batch in pictures.items():
      tf.summary.image(name, image_grid(batch, columns=4))
  writer.flush()


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
