"""Tests of elbo.data: local files, TFDS, binarization, batching, errors."""

import gzip
import struct

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from elbo import data
import conftest


@pytest.mark.skipif(not conftest.have_real_data(),
                    reason='needs ../shared/datasets')
@pytest.mark.parametrize('dataset,split,count', [
    ('mnist', 'train', 60_000),
    ('mnist', 'test', 10_000),
    ('binarized_mnist', 'train', 50_000),
    ('binarized_mnist', 'validation', 10_000),
    ('binarized_mnist', 'test', 10_000),
])
def test_real_files_parse(dataset, split, count):
  images = data.load_images(dataset, split, conftest.SHARED_DATASETS)
  assert images.shape == (count, 28, 28, 1)
  assert images.dtype == np.uint8
  if dataset == 'binarized_mnist':
    assert set(np.unique(images)) == {0, 255}
    # About 13% of binarized MNIST pixels are on.
    assert 0.10 < np.mean(images == 255) < 0.16
  else:
    assert images.max() == 255 and images.min() == 0
    # Digits are white on black: the border is background, i.e. dark.
    assert images[:, 0, :, :].mean() < 1


@pytest.mark.skipif(not conftest.have_real_data(),
                    reason='needs ../shared/datasets')
@pytest.mark.parametrize('split,count', [('train', 60_000), ('test', 10_000)])
def test_real_labels_parse(split, count):
  labels = data.load_labels('mnist', split, conftest.SHARED_DATASETS)
  assert labels.shape == (count,) and labels.dtype == np.int64
  # Every digit, each about a tenth of the split.
  np.testing.assert_allclose(np.bincount(labels) / count, 0.1, atol=0.015)


def _write_idx_labels(path, labels) -> None:
  with gzip.open(path, 'wb') as f:
    f.write(struct.pack('>2I', 0x801, len(labels)) +
            np.asarray(labels, np.uint8).tobytes())


@pytest.mark.parametrize('dataset', ['fashion_mnist', 'kmnist', 'mnist'])
@pytest.mark.parametrize('in_subdir', [True, False])
def test_idx_datasets_load_images_and_labels(tmp_path, dataset, in_subdir):
  directory = tmp_path / dataset if in_subdir else tmp_path
  directory.mkdir(exist_ok=True)
  rng = np.random.default_rng(1)
  written = {}
  for split, prefix, count in (('train', 'train', 7), ('test', 't10k', 3)):
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count)
    conftest.write_idx_images(str(directory / f'{prefix}-images-idx3-ubyte.gz'),
                              images)
    _write_idx_labels(directory / f'{prefix}-labels-idx1-ubyte.gz', labels)
    written[split] = images, labels
  for split, (images, labels) in written.items():
    loaded = data.load_images(dataset, split, str(tmp_path))
    assert loaded.shape == images.shape + (1,) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded[..., 0], images)  # Grey levels kept.
    loaded_labels = data.load_labels(dataset, split, str(tmp_path))
    assert loaded_labels.dtype == np.int64
    np.testing.assert_array_equal(loaded_labels, labels)


def test_the_dataset_sub_directory_comes_before_the_directory(tmp_path):
  (tmp_path / 'kmnist').mkdir()
  for directory, value in ((tmp_path, 1), (tmp_path / 'kmnist', 2)):
    conftest.write_idx_images(str(directory / 't10k-images-idx3-ubyte.gz'),
                              np.full((2, 28, 28), value, np.uint8))
  assert data.load_images('kmnist', 'test', str(tmp_path)).max() == 2
  assert data.load_images('mnist', 'test', str(tmp_path)).max() == 1


def test_every_dataset_is_one_complete_entry():
  assert data.DATASETS == tuple(data.SPECS)
  assert {'mnist', 'binarized_mnist', 'fashion_mnist', 'kmnist'} <= set(
      data.DATASETS)
  for spec in data.SPECS.values():
    assert spec.binarization in ('dynamic', 'static')
    assert spec.label_files is None or set(spec.label_files) == set(
        spec.image_files)
    assert {'train', 'test'} <= set(spec.image_files)


def test_binarized_mnist_has_no_labels(tmp_path):
  with pytest.raises(data.DataError,
                     match='binarized_mnist has no labels; labelled datasets: '
                     r"\('mnist', 'fashion_mnist', 'kmnist'\)"):
    data.load_labels('binarized_mnist', 'train', str(tmp_path))
  with pytest.raises(data.DataError, match='binarized_mnist has no labels'):
    data.load_labels('binarized_mnist', 'test')  # Before any TFDS work.


def test_any_number_of_images(tmp_path):
  root = conftest.make_fake_datasets(str(tmp_path), num_train=37, num_test=5)
  assert data.load_images('mnist', 'train', root).shape == (37, 28, 28, 1)
  assert data.load_images('binarized_mnist', 'validation',
                          root).shape == (5, 28, 28, 1)


def test_files_directly_in_data_dir_and_uncompressed(tmp_path):
  images = np.arange(3 * 784, dtype=np.uint32).reshape(3, 28, 28) % 256
  raw = struct.pack('>4I', 0x803, 3, 28, 28) + images.astype(np.uint8).tobytes()
  (tmp_path / 't10k-images-idx3-ubyte').write_bytes(raw)
  loaded = data.load_images('mnist', 'test', str(tmp_path))
  np.testing.assert_array_equal(loaded[..., 0], images)


def test_binarization_mean_matches_intensity():
  intensities = np.tile(np.arange(0, 256, 17, dtype=np.uint8), 40)  # 16 levels
  images = np.broadcast_to(intensities, (5000, intensities.size))
  binary = data.binarize(tf.constant(images), tf.constant([1, 2])).numpy()
  assert set(np.unique(binary)) == {0., 1.}
  mean = binary.mean(axis=0)
  p = intensities / 255.
  standard_error = np.sqrt(p * (1 - p) / 5000)
  assert np.all(np.abs(mean - p) <= 5 * standard_error + 1e-9)
  assert np.all(binary[:, intensities == 0] == 0)
  assert np.all(binary[:, intensities == 255] == 1)


def _epoch(images, batch_size, epoch, seed=0):
  """All batches of one epoch from the resident pipeline, concatenated."""
  num_steps = data.steps_per_epoch(len(images), batch_size)
  resident = data.resident_images(images)
  make_batch = tf.function(
      lambda step: data.training_batch(resident, batch_size, seed, step))
  return np.concatenate([
      make_batch(tf.constant(epoch * num_steps + i, tf.int64)).numpy()
      for i in range(num_steps)])


def test_epochs_reshuffle_and_rebinarize(data_dir):
  images = data.load_images('mnist', 'train', data_dir)[:512]
  epoch0, epoch0_again, epoch1 = (_epoch(images, 64, e) for e in (0, 0, 1))
  assert epoch0.shape == (512, 28, 28, 1)
  np.testing.assert_array_equal(epoch0, epoch0_again)  # Deterministic.
  assert not np.array_equal(epoch0, epoch1)
  # Same images, new order and new draws: the mean stays the intensity's.
  np.testing.assert_allclose(epoch0.mean(), images.mean() / 255, atol=0.01)
  np.testing.assert_allclose(epoch1.mean(), images.mean() / 255, atol=0.01)


def _numbered_images(count):
  """Image i shows the bits of i as pixels of intensity 0 or 255, which
  binarization keeps as they are: a batch says which images it holds."""
  bits = (np.arange(count)[:, None] >> np.arange(784)) & 1
  return (bits * 255).astype(np.uint8).reshape(count, 28, 28, 1)


def _numbers(batch):
  """Inverse of `_numbered_images` (for fewer than 2**20 images)."""
  return batch.reshape(len(batch), 784)[:, :20].astype(np.int64) @ (
      1 << np.arange(20))


@pytest.mark.parametrize('count,batch_size', [(1000, 100), (1030, 100)])
def test_resident_pipeline_yields_every_image_once_per_epoch(count,
                                                            batch_size):
  images = _numbered_images(count)
  for epoch in range(3):
    seen = _numbers(_epoch(images, batch_size, epoch))
    full = count // batch_size * batch_size
    assert len(seen) == full and len(set(seen)) == full  # No repeats.
    assert set(seen) <= set(range(count))
    if count == full:
      assert sorted(seen) == list(range(count))  # Every image, once.
  # A different order every epoch.
  assert not np.array_equal(_numbers(_epoch(images, batch_size, 0)),
                            _numbers(_epoch(images, batch_size, 1)))


def test_a_step_is_the_same_batch_wherever_the_epoch_resumes():
  images = _numbered_images(10)
  epoch = _epoch(images, 3, epoch=4)
  # Step 2 of epoch 4, made on its own (as after a restart), eagerly.
  alone = data.training_batch(images, 3, 0, 4 * 3 + 2).numpy()
  np.testing.assert_array_equal(alone, epoch[6:9])
  assert len(set(_numbers(epoch))) == 9  # 3 full batches of distinct images.


def test_batch_size_larger_than_the_data_is_an_error():
  with pytest.raises(ValueError, match='exceeds the 10 training images'):
    data.batch_indices(10, 11, 0, 0)


def test_eval_batches_are_fixed_and_complete(data_dir):
  images = data.load_images('mnist', 'test', data_dir)[:120]
  first = np.concatenate(list(data.eval_batches(images, 50)))
  second = np.concatenate(list(data.eval_batches(images, 50)))
  assert first.shape == (120, 28, 28, 1)
  np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize('dataset,split', [
    ('mnist', 'train'), ('binarized_mnist', 'validation'),
    ('fashion_mnist', 'test'), ('kmnist', 'train')])
def test_tfds_source(dataset, split):
  with tfds.testing.mock_data(num_examples=12):
    images = data.load_images(dataset, split)
    labels = (data.load_labels(dataset, split)
              if data.SPECS[dataset].label_files else None)
  assert images.shape == (12, 28, 28, 1)
  assert images.dtype == np.uint8
  if dataset == 'binarized_mnist':
    assert set(np.unique(images)) <= {0, 255}
  else:
    assert labels.shape == (12,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() <= 9


def _gz(path, payload: bytes) -> str:
  with gzip.open(path, 'wb') as f:
    f.write(payload)
  return str(path)


_GOOD_HEADER = struct.pack('>4I', 0x803, 2, 28, 28)
_CANONICAL_LINE = ' '.join(['0'] * 784)


@pytest.mark.parametrize('name,payload,message', [
    ('train-images-idx3-ubyte.gz',
     struct.pack('>4I', 0x801, 2, 28, 28) + bytes(2 * 784),
     'bad magic number 0x00000801'),
    ('train-images-idx3-ubyte.gz', _GOOD_HEADER + bytes(784 + 10),
     'truncated: header promises 2 images'),
    ('train-images-idx3-ubyte.gz', _GOOD_HEADER + bytes(3 * 784),
     'trailing bytes'),
    ('train-images-idx3-ubyte.gz', struct.pack('>4I', 0x803, 2, 32, 32),
     'images are 32x32, expected 28x28'),
    ('train-images-idx3-ubyte.gz', b'\x00\x00', 'truncated: 2 bytes'),
    ('binarized_mnist_train.amat.gz',
     (_CANONICAL_LINE + '\n' + ' '.join(['0'] * 783) + '\n').encode(),
     'line 2 has 783 values, expected 784'),
    ('binarized_mnist_train.amat.gz',
     (' '.join(['0'] * 783 + ['2']) + '\n').encode(),
     "line 1 has value '2'"),
    ('binarized_mnist_train.amat.gz', b'\n\n', 'empty file'),
    ('train-labels-idx1-ubyte.gz', struct.pack('>2I', 0x803, 2) + bytes(2),
     'bad magic number 0x00000803; an IDX1 label file'),
    ('train-labels-idx1-ubyte.gz', struct.pack('>2I', 0x801, 3) + bytes(2),
     'truncated: header promises 3 labels (11 bytes), file has 10 bytes'),
    ('train-labels-idx1-ubyte.gz', b'\x00\x00\x08', 'truncated: 3 bytes'),
])
def test_malformed_files_give_one_line_errors(tmp_path, name, payload,
                                              message):
  path = _gz(tmp_path / name, payload)
  dataset = 'binarized_mnist' if 'amat' in name else 'mnist'
  load = data.load_labels if 'labels' in name else data.load_images
  with pytest.raises(data.DataError) as error:
    load(dataset, 'train', str(tmp_path))
  assert message in str(error.value)
  assert str(error.value).startswith(path)
  assert '\n' not in str(error.value)


def test_not_gzip_and_missing_files(tmp_path):
  (tmp_path / 'train-images-idx3-ubyte.gz').write_bytes(b'not a gzip file')
  with pytest.raises(data.DataError, match='cannot read'):
    data.load_images('mnist', 'train', str(tmp_path))
  with pytest.raises(data.DataError, match='t10k-images-idx3-ubyte.*not found'):
    data.load_images('mnist', 'test', str(tmp_path))


def test_unknown_dataset_and_split():
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.load_images('cifar10', 'train', '/nonexistent')
  with pytest.raises(ValueError, match='Unknown split'):
    data.load_images('mnist', 'validation', '/nonexistent')
  with pytest.raises(ValueError, match="Unknown split 'validation' of kmnist"):
    data.load_labels('kmnist', 'validation', '/nonexistent')
