"""Image grids for TensorBoard and PNG figures."""

import tensorflow as tf

__all__ = ['image_grid', 'write_png']


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
