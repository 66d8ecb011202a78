"""MNIST for VAEs: loading from TFDS or local files, and binarized batches.

Two datasets:
  * `mnist`: grey-level digits, dynamically binarized: every pixel is a
    Bernoulli draw with probability intensity / 255, redrawn every epoch.
    Digits stay white on black (the blog's notebook inverted them).
  * `binarized_mnist`: the static binarization of Larochelle & Murray (2011),
    50k train / 10k validation / 10k test.

Two sources for each: TFDS (the default), or a local directory with the
standard files (`*-idx3-ubyte[.gz]`, `binarized_mnist_*.amat[.gz]`), either
in the directory itself or in a sub-directory named after the dataset.

Images are held in memory as uint8 intensities `[N, 28, 28, 1]` (a
statically binarized pixel is 0 or 255), so one binarization rule, `u < p`,
serves both datasets. Every random draw is stateless and keyed on
(seed, epoch, step): an epoch can be replayed from any step, so a resumed run
sees exactly the batches an uninterrupted one would.
"""

import gzip
import os
import struct
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

__all__ = [
    'DATASETS',
    'DataError',
    'batch_indices',
    'binarize',
    'eval_batches',
    'load_images',
    'read_amat',
    'read_idx_images',
    'resident_images',
    'steps_per_epoch',
    'training_batch',
]

# dataset -> split -> local file name (without .gz).
_LOCAL_FILES = {
    'mnist': {
        'train': 'train-images-idx3-ubyte',
        'test': 't10k-images-idx3-ubyte',
    },
    'binarized_mnist': {
        'train': 'binarized_mnist_train.amat',
        'validation': 'binarized_mnist_valid.amat',
        'test': 'binarized_mnist_test.amat',
    },
}
DATASETS = tuple(_LOCAL_FILES)
_IMAGE_SHAPE = (28, 28)
_IDX_IMAGES_MAGIC = 0x00000803
_AMAT_PIXELS = _IMAGE_SHAPE[0] * _IMAGE_SHAPE[1]
# Test images are binarized once with this seed, whatever the run's seed, so
# that evaluations of different runs compare.
EVAL_BINARIZATION_SEED = (2019, 0)


class DataError(ValueError):
  """A data file is missing, truncated or malformed. The message is one line
  naming the file and what is wrong."""


def load_images(dataset: str, split: str,
                data_dir: Optional[str] = None) -> np.ndarray:
  """Returns uint8 intensities `[N, 28, 28, 1]` of one split.

  Args:
    dataset: one of `DATASETS`.
    split: `'train'`, `'test'`, and for `binarized_mnist` `'validation'`.
    data_dir: a local directory with the standard files; `None` loads
      through TFDS (which downloads on first use).

  Raises:
    ValueError: unknown dataset or split.
    DataError: a local file is missing or malformed.
  """
  if dataset not in _LOCAL_FILES:
    raise ValueError(f'Unknown dataset {dataset!r}; choose from {DATASETS}.')
  if split not in _LOCAL_FILES[dataset]:
    raise ValueError(f'Unknown split {split!r} of {dataset}; choose from '
                     f'{tuple(_LOCAL_FILES[dataset])}.')
  if data_dir is None:
    images = _load_tfds(dataset, split)
  else:
    path = _find_local_file(data_dir, dataset, _LOCAL_FILES[dataset][split])
    if dataset == 'mnist':
      images = read_idx_images(path)
    else:
      images = read_amat(path) * np.uint8(255)
  return images[..., np.newaxis]


def _load_tfds(dataset: str, split: str) -> np.ndarray:
  import tensorflow_datasets as tfds  # Heavy; only this source needs it.
  # Batches rather than batch_size=-1, which aborts under tfds.testing.
  batches = tfds.load(dataset, split=split).map(lambda e: e['image'])
  images = np.concatenate(list(tfds.as_numpy(batches.batch(10_000))))
  images = images.astype(np.uint8).reshape((-1,) + _IMAGE_SHAPE)
  if dataset == 'binarized_mnist':
    images = np.minimum(images, 1) * np.uint8(255)
  return images


def _find_local_file(data_dir: str, dataset: str, name: str) -> str:
  candidates = [os.path.join(directory, name + suffix)
                for directory in (data_dir, os.path.join(data_dir, dataset))
                for suffix in ('.gz', '')]
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise DataError(f'{os.path.join(data_dir, name)}[.gz]: file not found '
                  f'(also looked in {os.path.join(data_dir, dataset)}).')


def _read_bytes(path: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      raw = f.read()
    return gzip.decompress(raw) if path.endswith('.gz') else raw
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(f'{path}: cannot read: {e}.') from e


def read_idx_images(path: str) -> np.ndarray:
  """Reads an IDX3 image file (MNIST format) into uint8 `[N, 28, 28]`."""
  data = _read_bytes(path)
  if len(data) < 16:
    raise DataError(f'{path}: truncated: {len(data)} bytes, shorter than the '
                    '16-byte IDX3 header.')
  magic, count, rows, cols = struct.unpack('>4I', data[:16])
  if magic != _IDX_IMAGES_MAGIC:
    raise DataError(f'{path}: bad magic number 0x{magic:08x}; an IDX3 image '
                    f'file starts with 0x{_IDX_IMAGES_MAGIC:08x}.')
  if (rows, cols) != _IMAGE_SHAPE:
    raise DataError(f'{path}: images are {rows}x{cols}, expected 28x28.')
  expected = 16 + count * rows * cols
  if len(data) != expected:
    problem = 'truncated' if len(data) < expected else 'trailing bytes'
    raise DataError(f'{path}: {problem}: header promises {count} images '
                    f'({expected} bytes), file has {len(data)} bytes.')
  return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)


def read_amat(path: str) -> np.ndarray:
  """Reads a binarized-MNIST `.amat` file into uint8 `[N, 28, 28]` of 0/1."""
  data = _read_bytes(path)
  fast = _parse_canonical_amat(data)
  if fast is not None:
    return fast
  lines = data.splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  if not lines:
    raise DataError(f'{path}: empty file.')
  images = np.empty((len(lines), _AMAT_PIXELS), np.uint8)
  for i, line in enumerate(lines):
    values = line.split()
    if len(values) != _AMAT_PIXELS:
      raise DataError(f'{path}: line {i + 1} has {len(values)} values, '
                      f'expected {_AMAT_PIXELS}.')
    row = np.array(values, dtype=np.bytes_)
    if not np.all((row == b'0') | (row == b'1')):
      bad = row[(row != b'0') & (row != b'1')][0].decode(errors='replace')
      raise DataError(f'{path}: line {i + 1} has value {bad!r}; pixels of '
                      'binarized MNIST are 0 or 1.')
    images[i] = row == b'1'
  return images.reshape((-1,) + _IMAGE_SHAPE)


def _parse_canonical_amat(data: bytes) -> Optional[np.ndarray]:
  """Vectorized parse of the canonical layout ('0 1 ... 0\\n' per line);
  None for anything else, which the line-by-line parser then checks."""
  width = 2 * _AMAT_PIXELS
  raw = np.frombuffer(data, np.uint8)
  if raw.size == 0 or raw.size % width:
    return None
  rows = raw.reshape(-1, width)
  pixels = rows[:, ::2] - np.uint8(ord('0'))
  if (np.all(rows[:, 1:-1:2] == ord(' ')) and np.all(rows[:, -1] == ord('\n'))
      and np.all(pixels <= 1)):
    return pixels.reshape((-1,) + _IMAGE_SHAPE)
  return None


def binarize(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Pixel ~ Bernoulli(intensity / 255), as float32 in {0, 1}.

  Args:
    images: intensities in [0, 255] (uint8, or float holding integers).
    seed: a stateless seed, shape `[2]`.
  """
  uniform = tf.random.stateless_uniform(tf.shape(images), seed)
  return tf.cast(uniform * 255.0 < tf.cast(images, tf.float32), tf.float32)


def steps_per_epoch(num_images: int, batch_size: int) -> int:
  """Full batches per epoch; the remainder is dropped (different images each
  epoch), which keeps shapes static for XLA."""
  return num_images // batch_size


def _epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
  # int32 epoch: the seeds of runs written before this code stay the same.
  return tf.random.experimental.stateless_fold_in(
      tf.constant([seed, 0], tf.int64), tf.cast(epoch, tf.int32))


def batch_indices(num_images: int, batch_size: int, seed: int,
                  step: tf.Tensor) -> tf.Tensor:
  """Which images make up the global batch of training step `step`.

  Each epoch is a permutation keyed on (seed, epoch), cut into
  `steps_per_epoch` full batches; a pure function of the step, so a resumed
  run picks up exactly where the interrupted one was.

  Returns:
    int64 indices `[batch_size]`.
  """
  num_steps = steps_per_epoch(num_images, batch_size)
  if num_steps == 0:
    raise ValueError(f'batch_size {batch_size} exceeds the {num_images} '
                     'training images.')
  step = tf.convert_to_tensor(step, tf.int64)
  order = tf.random.experimental.stateless_shuffle(
      tf.range(num_images, dtype=tf.int64),
      seed=_epoch_seed(seed, step // num_steps))
  return tf.slice(order, [step % num_steps * batch_size], [batch_size])


def training_batch(images: tf.Tensor, batch_size: int, seed: int,
                   step: tf.Tensor) -> tf.Tensor:
  """The freshly binarized global batch of training step `step`.

  Runs in the graph, next to the model, on images already on the device
  (see `resident_images`): no Python iterator and no per-step copy from the
  host. Binarization is keyed on (seed, epoch, step in epoch), and a batch
  split across replicas keeps its pixels.

  Args:
    images: intensities in [0, 255], `[N, 28, 28, 1]`.
    batch_size: the global batch size.
    seed: the run's seed.
    step: the global training step, a scalar.

  Returns:
    float32 pixels in {0, 1}, `[batch_size, 28, 28, 1]`.
  """
  num_steps = steps_per_epoch(images.shape[0], batch_size)
  indices = batch_indices(images.shape[0], batch_size, seed, step)
  step = tf.convert_to_tensor(step, tf.int64)
  step_seed = tf.random.experimental.stateless_fold_in(
      _epoch_seed(seed, step // num_steps), step % num_steps)
  return binarize(tf.gather(images, indices), step_seed)


def resident_images(images: np.ndarray) -> tf.Variable:
  """The training images as a variable on the default device (the GPU or
  TPU host, if any), for `training_batch`. float32, which every device
  supports for variables and gathers (uint8 is not), holds 0..255 exactly.
  Not trainable, and not part of any checkpoint."""
  return tf.Variable(images.astype(np.float32), trainable=False,
                     name='train_images')


def eval_batches(images: np.ndarray, batch_size: int,
                 seed: Sequence[int] = EVAL_BINARIZATION_SEED
                 ) -> tf.data.Dataset:
  """All images, binarized once with a fixed seed, in order; the last batch
  may be smaller."""
  binary = binarize(tf.constant(images), tf.constant(seed, tf.int64))
  return tf.data.Dataset.from_tensor_slices(binary).batch(batch_size)
