"""MNIST-like datasets for VAEs: loading from TFDS or local files, batches.

The datasets are a table, `SPECS` (one `DatasetSpec` each; a new dataset is
one entry):
  * `mnist`, `fashion_mnist`, `kmnist`: grey levels, dynamically binarized:
    every pixel is a Bernoulli draw with probability intensity / 255, redrawn
    every epoch. Digits stay white on black (the blog's notebook inverted
    them).
  * `binarized_mnist`: the static binarization of Larochelle & Murray (2011),
    50k train / 10k validation / 10k test, without labels.

Two sources for each: TFDS (the default; it downloads and prepares a dataset
on first use), or a local directory with the standard files
(`*-idx3-ubyte[.gz]`, `*-idx1-ubyte[.gz]`, `binarized_mnist_*.amat[.gz]`), in
a sub-directory named after the dataset or in the directory itself.

Images are held in memory as uint8 intensities `[N, 28, 28, 1]` (a
statically binarized pixel is 0 or 255), so one binarization rule, `u < p`,
serves every dataset. Every random draw is stateless and keyed on
(seed, epoch, step): an epoch can be replayed from any step, so a resumed run
sees exactly the batches an uninterrupted one would.
"""

import contextlib
import dataclasses
import gzip
import os
import struct
import sys
from typing import Callable, Iterator, Mapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from elbo import streams

__all__ = [
    'DATASETS',
    'DataError',
    'DatasetSpec',
    'SPECS',
    'batch_indices',
    'binarize',
    'epoch_order',
    'eval_batches',
    'load_images',
    'load_labels',
    'load_labels_or_none',
    'read_amat',
    'read_idx_images',
    'read_idx_labels',
    'resident_images',
    'steps_per_epoch',
    'training_batch',
    'training_batches',
]

_MNIST_SHAPE = (28, 28)
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
# TFDS retries a failed request 10 times with exponential backoff (0.2 s,
# doubling): offline, its error comes after about 3.5 minutes, behind
# urllib3's warnings. Without retries it comes at once, alone (the other
# downloads, still in flight, would log theirs after it); running again
# retries, and reuses the files already downloaded.
_TFDS_DOWNLOAD_RETRIES = 0


class DataError(ValueError):
  """A data file is missing, truncated or malformed, or TFDS cannot
  download a dataset. The message is one line naming the file (or dataset)
  and what is wrong."""


def _read_bytes(path: str) -> bytes:
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      raw = f.read()
    return gzip.decompress(raw) if path.endswith('.gz') else raw
  except (OSError, EOFError, gzip.BadGzipFile, tf.errors.OpError) as e:
    raise DataError(f'{path}: cannot read: {e}.') from e


def _check_idx_size(path: str, data: bytes, header: int, count: int,
                    item_size: int, items: str) -> None:
  expected = header + count * item_size
  if len(data) != expected:
    problem = 'truncated' if len(data) < expected else 'trailing bytes'
    raise DataError(f'{path}: {problem}: header promises {count} {items} '
                    f'({expected} bytes), file has {len(data)} bytes.')


def read_idx_images(path: str,
                    image_shape: Tuple[int, int] = _MNIST_SHAPE
                    ) -> np.ndarray:
  """Reads an IDX3 image file (MNIST format) into uint8 `[N, rows, cols]`.

  Args:
    path: the file; gzip-compressed if it ends in `.gz`.
    image_shape: the (rows, cols) the file must hold.

  Raises:
    DataError: the file is unreadable, malformed or of another shape.
  """
  data = _read_bytes(path)
  if len(data) < 16:
    raise DataError(f'{path}: truncated: {len(data)} bytes, shorter than the '
                    '16-byte IDX3 header.')
  magic, count, rows, cols = struct.unpack('>4I', data[:16])
  if magic != _IDX_IMAGES_MAGIC:
    raise DataError(f'{path}: bad magic number 0x{magic:08x}; an IDX3 image '
                    f'file starts with 0x{_IDX_IMAGES_MAGIC:08x}.')
  if (rows, cols) != tuple(image_shape):
    raise DataError(f'{path}: images are {rows}x{cols}, expected '
                    f'{image_shape[0]}x{image_shape[1]}.')
  _check_idx_size(path, data, 16, count, rows * cols, 'images')
  return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)


def read_idx_labels(path: str) -> np.ndarray:
  """Reads an IDX1 label file (MNIST format) into int64 `[N]`.

  Raises:
    DataError: the file is unreadable or malformed.
  """
  data = _read_bytes(path)
  if len(data) < 8:
    raise DataError(f'{path}: truncated: {len(data)} bytes, shorter than the '
                    '8-byte IDX1 header.')
  magic, count = struct.unpack('>2I', data[:8])
  if magic != _IDX_LABELS_MAGIC:
    raise DataError(f'{path}: bad magic number 0x{magic:08x}; an IDX1 label '
                    f'file starts with 0x{_IDX_LABELS_MAGIC:08x}.')
  _check_idx_size(path, data, 8, count, 1, 'labels')
  return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


def read_amat(path: str,
              image_shape: Tuple[int, int] = _MNIST_SHAPE) -> np.ndarray:
  """Reads a binarized-MNIST `.amat` file into uint8 `[N, rows, cols]` of 0/1.

  Args:
    path: the file; gzip-compressed if it ends in `.gz`.
    image_shape: the (rows, cols) of an image; a line holds rows * cols
      values.

  Raises:
    DataError: the file is unreadable or malformed.
  """
  data = _read_bytes(path)
  num_pixels = image_shape[0] * image_shape[1]
  fast = _parse_canonical_amat(data, num_pixels)
  if fast is not None:
    return fast.reshape((-1,) + tuple(image_shape))
  lines = data.splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  if not lines:
    raise DataError(f'{path}: empty file.')
  images = np.empty((len(lines), num_pixels), np.uint8)
  for i, line in enumerate(lines):
    values = line.split()
    if len(values) != num_pixels:
      raise DataError(f'{path}: line {i + 1} has {len(values)} values, '
                      f'expected {num_pixels}.')
    row = np.array(values, dtype=np.bytes_)
    if not np.all((row == b'0') | (row == b'1')):
      bad = row[(row != b'0') & (row != b'1')][0].decode(errors='replace')
      raise DataError(f'{path}: line {i + 1} has value {bad!r}; pixels of '
                      'binarized MNIST are 0 or 1.')
    images[i] = row == b'1'
  return images.reshape((-1,) + tuple(image_shape))


def _parse_canonical_amat(data: bytes, num_pixels: int) -> Optional[np.ndarray]:
  """Vectorized parse of the canonical layout ('0 1 ... 0\\n' per line) into
  `[N, num_pixels]`; None for anything else, which the line-by-line parser
  then checks."""
  width = 2 * num_pixels
  raw = np.frombuffer(data, np.uint8)
  if raw.size == 0 or raw.size % width:
    return None
  rows = raw.reshape(-1, width)
  pixels = rows[:, ::2] - np.uint8(ord('0'))
  if (np.all(rows[:, 1:-1:2] == ord(' ')) and np.all(rows[:, -1] == ord('\n'))
      and np.all(pixels <= 1)):
    return pixels
  return None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset: where its images and labels are, and how to read them.

  Attributes:
    tfds_name: the TFDS builder, with features 'image' and (if labelled)
      'label'.
    image_files: split -> local image file name (without `.gz`); the keys
      are the splits, named as in TFDS.
    label_files: split -> local IDX1 label file name (without `.gz`), or
      None: no labels.
    reader: reads an image file: `(path, image_shape)` -> uint8
      `[N, rows, cols]` (`read_idx_images` or `read_amat`).
    image_shape: (rows, cols).
    binarization: 'dynamic': grey levels 0..255, redrawn as Bernoulli
      pixels every epoch; 'static': pixels stored as 0/1 (held as 0/255, so
      that the same draw keeps them).
  """
  tfds_name: str
  image_files: Mapping[str, str]
  label_files: Optional[Mapping[str, str]]
  reader: Callable[[str, Tuple[int, int]], np.ndarray]
  image_shape: Tuple[int, int] = _MNIST_SHAPE
  binarization: str = 'dynamic'


def _mnist_format(tfds_name: str) -> DatasetSpec:
  """The four standard files of MNIST and its drop-in replacements."""
  return DatasetSpec(
      tfds_name=tfds_name,
      image_files={'train': 'train-images-idx3-ubyte',
                   'test': 't10k-images-idx3-ubyte'},
      label_files={'train': 'train-labels-idx1-ubyte',
                   'test': 't10k-labels-idx1-ubyte'},
      reader=read_idx_images)


SPECS = {
    'mnist': _mnist_format('mnist'),
    'binarized_mnist': DatasetSpec(
        tfds_name='binarized_mnist',
        image_files={'train': 'binarized_mnist_train.amat',
                     'validation': 'binarized_mnist_valid.amat',
                     'test': 'binarized_mnist_test.amat'},
        label_files=None,
        reader=read_amat,
        binarization='static'),
    'fashion_mnist': _mnist_format('fashion_mnist'),
    'kmnist': _mnist_format('kmnist'),
}
DATASETS = tuple(SPECS)


def _spec(dataset: str, split: str) -> DatasetSpec:
  if dataset not in SPECS:
    raise ValueError(f'Unknown dataset {dataset!r}; choose from {DATASETS}.')
  spec = SPECS[dataset]
  if split not in spec.image_files:
    raise ValueError(f'Unknown split {split!r} of {dataset}; choose from '
                     f'{tuple(spec.image_files)}.')
  return spec


def load_images(dataset: str, split: str,
                data_dir: Optional[str] = None) -> np.ndarray:
  """Returns uint8 intensities `[N, rows, cols, 1]` of one split.

  Args:
    dataset: one of `DATASETS`.
    split: `'train'`, `'test'`, and for `binarized_mnist` `'validation'`.
    data_dir: a local directory with the standard files; `None` loads
      through TFDS (which downloads and prepares the dataset on first use).

  Raises:
    ValueError: unknown dataset or split.
    DataError: a local file is missing or malformed, or TFDS cannot
      download the dataset.
  """
  spec = _spec(dataset, split)
  if data_dir is None:
    raw = _load_tfds(dataset, split, 'image')
    raw = raw.astype(np.uint8).reshape((-1,) + tuple(spec.image_shape))
  else:
    path = _find_local_file(data_dir, dataset, spec.image_files[split])
    raw = spec.reader(path, spec.image_shape)
  if spec.binarization == 'static':
    raw = np.minimum(raw, 1) * np.uint8(255)
  return raw[..., np.newaxis]


def load_labels(dataset: str, split: str,
                data_dir: Optional[str] = None) -> np.ndarray:
  """Returns the int64 class labels `[N]` of one split, in image order.

  Args:
    dataset: one of `DATASETS` with labels (not `binarized_mnist`).
    split: as for `load_images`.
    data_dir: a local directory with the standard IDX1 label files
      (`*-labels-idx1-ubyte[.gz]`); `None` loads TFDS's 'label' feature.

  Raises:
    ValueError: unknown dataset or split.
    DataError: the dataset has no labels, a local file is missing or
      malformed, or TFDS cannot download the dataset.
  """
  spec = _spec(dataset, split)
  if spec.label_files is None:
    raise DataError(f'{dataset} has no labels; labelled datasets: '
                    f'{tuple(d for d in DATASETS if SPECS[d].label_files)}.')
  if data_dir is None:
    return _load_tfds(dataset, split, 'label').astype(np.int64)
  return read_idx_labels(
      _find_local_file(data_dir, dataset, spec.label_files[split]))


def load_labels_or_none(dataset: str, split: str,
                        data_dir: Optional[str] = None
                        ) -> Optional[np.ndarray]:
  """`load_labels`, or None (with a warning) where there are none: for
  pictures that colour by label and can do without."""
  try:
    return load_labels(dataset, split, data_dir)
  except DataError as e:
    logging.warning('No labels (%s).', e)
    return None


def _load_tfds(dataset: str, split: str, feature: str) -> np.ndarray:
  import tensorflow_datasets as tfds  # Heavy; only this source needs it.
  spec = SPECS[dataset]
  builder = tfds.builder(spec.tfds_name)
  with _fail_fast_downloads():
    try:
      builder.download_and_prepare()
    except (OSError, tfds.download.DownloadError) as e:
      raise _download_error(dataset, e) from e
  examples = builder.as_dataset(split=split).map(lambda e: e[feature])
  # Batches rather than batch_size=-1, which aborts under tfds.testing.
  return np.concatenate(list(tfds.as_numpy(examples.batch(10_000))))


@contextlib.contextmanager
def _fail_fast_downloads() -> Iterator[None]:
  """TFDS does not retry (see `_TFDS_DOWNLOAD_RETRIES`) and shows its
  progress bars only on a terminal: a failed download ends in one line."""
  # pylint: disable=g-import-not-at-top,protected-access
  from tensorflow_datasets.core.download import downloader
  from tensorflow_datasets.core.utils import tqdm_utils
  saved = downloader.MAX_RETRIES, tqdm_utils._active
  downloader.MAX_RETRIES = _TFDS_DOWNLOAD_RETRIES
  tqdm_utils._active = saved[1] and sys.stderr.isatty()
  try:
    yield
  finally:
    downloader.MAX_RETRIES, tqdm_utils._active = saved


def _download_error(dataset: str, error: Exception) -> DataError:
  """One line: what failed (the URL and the innermost cause), and the two
  ways to run offline."""
  cause = error
  while cause.__cause__ or cause.__context__:
    cause = cause.__cause__ or cause.__context__
  url = getattr(getattr(error, 'request', None), 'url', None)
  what = ' '.join(str(cause).split()).rstrip('.')
  if url and url not in what:
    what = f'{url}: {what}'
  spec = SPECS[dataset]
  files = ', '.join(name + '.gz' for name in spec.image_files.values())
  return DataError(
      f'TFDS cannot download {spec.tfds_name} ({what}). Offline, use '
      f'--data_dir=DIR with the standard files ({files}; in DIR/{dataset} or '
      f'DIR), or set TFDS_DATA_DIR to a TFDS data dir where {spec.tfds_name} '
      'is prepared.')


def _find_local_file(data_dir: str, dataset: str, name: str) -> str:
  """The sub-directory first: several datasets share MNIST's file names."""
  candidates = [os.path.join(directory, name + suffix)
                for directory in (os.path.join(data_dir, dataset), data_dir)
                for suffix in ('.gz', '')]
  for path in candidates:
    if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
      return path
  raise DataError(f'{os.path.join(data_dir, dataset, name)}[.gz]: file not '
                  f'found (also looked in {data_dir}).')


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
      tf.constant([seed, streams.DATA], tf.int64), tf.cast(epoch, tf.int32))


def epoch_order(num_images: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
  """The permutation of the training images in epoch `epoch` (int64
  `[num_images]`), keyed on (seed, epoch)."""
  return tf.random.experimental.stateless_shuffle(
      tf.range(num_images, dtype=tf.int64), seed=_epoch_seed(seed, epoch))


def batch_indices(num_images: int, batch_size: int, seed: int,
                  step: tf.Tensor) -> tf.Tensor:
  """Which images make up the global batch of training step `step`.

  Each epoch is a permutation keyed on (seed, epoch), cut into
  `steps_per_epoch` full batches; a pure function of the step, so a resumed
  run picks up exactly where the interrupted one was.

  Returns:
    int64 indices `[batch_size]`.
  """
  num_steps = _checked_steps_per_epoch(num_images, batch_size)
  step = tf.convert_to_tensor(step, tf.int64)
  order = epoch_order(num_images, seed, step // num_steps)
  return _slice_batch(order, batch_size, step % num_steps)


def training_batch(images: tf.Tensor, batch_size: int, seed: int,
                   step: tf.Tensor) -> tf.Tensor:
  """The freshly binarized global batch of training step `step`.

  Runs in the graph, next to the model, on images already on the device
  (see `resident_images`): no Python iterator and no per-step copy from the
  host. Binarization is keyed on (seed, epoch, step in epoch), and a batch
  split across replicas keeps its pixels. `training_batches` makes the same
  batches for many steps at once.

  Args:
    images: intensities in [0, 255], `[N, 28, 28, 1]`.
    batch_size: the global batch size.
    seed: the run's seed.
    step: the global training step, a scalar.

  Returns:
    float32 pixels in {0, 1}, `[batch_size, 28, 28, 1]`.
  """
  num_steps = steps_per_epoch(images.shape[0], batch_size)
  step = tf.convert_to_tensor(step, tf.int64)
  order = epoch_order(images.shape[0], seed, step // num_steps)
  return _binarized_batch(images, order, batch_size, seed, step, num_steps)


def training_batches(images: tf.Tensor, batch_size: int, seed: int,
                     first_step: tf.Tensor, num_steps: tf.Tensor
                     ) -> tf.Tensor:
  """The batches of steps first_step, ..., first_step + num_steps - 1,
  stacked: `[num_steps, batch_size, 28, 28, 1]`, each equal to
  `training_batch` of its step.

  The epoch's permutation of all training images costs more than a small
  model's step (1.5 ms for 60,000 images), so it is drawn once per epoch
  the steps touch, not once per step.
  """
  per_epoch = _checked_steps_per_epoch(images.shape[0], batch_size)
  first_step = tf.convert_to_tensor(first_step, tf.int64)
  num_steps = tf.convert_to_tensor(num_steps, tf.int64)
  order = epoch_order(images.shape[0], seed, first_step // per_epoch)
  batches = tf.TensorArray(images.dtype, size=tf.cast(num_steps, tf.int32),
                           element_shape=[batch_size, *images.shape[1:]])
  for index in tf.range(num_steps):
    step = first_step + index
    if index > 0 and step % per_epoch == 0:
      order = epoch_order(images.shape[0], seed, step // per_epoch)
    batches = batches.write(
        tf.cast(index, tf.int32),
        _binarized_batch(images, order, batch_size, seed, step, per_epoch))
  return batches.stack()


def _checked_steps_per_epoch(num_images: int, batch_size: int) -> int:
  num_steps = steps_per_epoch(num_images, batch_size)
  if num_steps == 0:
    raise ValueError(f'batch_size {batch_size} exceeds the {num_images} '
                     'training images.')
  return num_steps


def _slice_batch(order: tf.Tensor, batch_size: int,
                 step_in_epoch: tf.Tensor) -> tf.Tensor:
  return tf.slice(order, [step_in_epoch * batch_size], [batch_size])


def _binarized_batch(images, order, batch_size, seed, step, per_epoch):
  """Step `step`'s batch, cut from its epoch's `order`, binarized with the
  seed of (seed, epoch, step in epoch)."""
  step_seed = tf.random.experimental.stateless_fold_in(
      _epoch_seed(seed, step // per_epoch), step % per_epoch)
  indices = _slice_batch(order, batch_size, step % per_epoch)
  return binarize(tf.gather(images, indices), step_seed)


def resident_images(images: np.ndarray) -> tf.Variable:
  """The training images as a variable on the default device (the GPU or
  TPU host, if any), for `training_batch`. float32, which every device
  supports for variables and gathers (uint8 is not), holds 0..255 exactly.
  Not trainable, and not part of any checkpoint."""
  return tf.Variable(images.astype(np.float32), trainable=False,
                     name='train_images')


def eval_batches(images: np.ndarray, batch_size: int,
                 seed: Sequence[int] = streams.EVAL_BINARIZATION_SEED
                 ) -> tf.data.Dataset:
  """All images, binarized once with a fixed seed, in order; the last batch
  may be smaller."""
  binary = binarize(tf.constant(images), tf.constant(seed, tf.int64))
  return tf.data.Dataset.from_tensor_slices(binary).batch(batch_size)
