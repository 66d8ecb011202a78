"""Shared test fixtures: real MNIST from ../shared/datasets when present,
otherwise small generated files in the same standard formats."""

import glob
import gzip
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from typing import Dict, Optional

import numpy as np
import pytest
import tensorflow as tf

from elbo import faults

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATASETS = os.path.join(os.path.dirname(REPO_ROOT), 'shared',
                               'datasets')




def have_real_data() -> bool:
  """ELBO_TESTS_FAKE_DATA=1 forces generated data, to test the fallback."""
  if os.environ.get('ELBO_TESTS_FAKE_DATA'):
    return False
  return os.path.isfile(
      os.path.join(SHARED_DATASETS, 'mnist', 'train-images-idx3-ubyte.gz'))


def write_idx_images(path: str, images: np.ndarray) -> None:
  header = struct.pack('>4I', 0x803, *images.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + images.astype(np.uint8).tobytes())


def write_amat(path: str, images: np.ndarray) -> None:
  lines = [' '.join(str(int(v)) for v in image.reshape(-1))
           for image in images]
  with gzip.open(path, 'wb') as f:
    f.write(('\n'.join(lines) + '\n').encode())


def make_fake_datasets(root: str, num_train: int = 512,
                       num_test: int = 128) -> str:
  """Writes the standard files with digit-like blobs, so that a model has
  something to learn."""
  rng = np.random.default_rng(0)

  def blobs(n):
    yy, xx = np.mgrid[:28, :28]
    centres = rng.uniform(8, 20, size=(n, 2, 1, 1))
    radius = rng.uniform(3, 7, size=(n, 1, 1))
    inside = ((yy - centres[:, 0]) ** 2 + (xx - centres[:, 1]) ** 2
              < radius ** 2)
    return (inside * rng.uniform(150, 255, size=(n, 28, 28))).astype(np.uint8)

  os.makedirs(os.path.join(root, 'mnist'))
  os.makedirs(os.path.join(root, 'binarized_mnist'))
  write_idx_images(os.path.join(root, 'mnist', 'train-images-idx3-ubyte.gz'),
                   blobs(num_train))
  write_idx_images(os.path.join(root, 'mnist', 't10k-images-idx3-ubyte.gz'),
                   blobs(num_test))
  for split, n in (('train', num_train), ('valid', num_test),
                   ('test', num_test)):
    write_amat(os.path.join(root, 'binarized_mnist',
                            f'binarized_mnist_{split}.amat.gz'),
               blobs(n) > 127)
  return root


@pytest.fixture(scope='session')
def generated_data_dir(tmp_path_factory) -> str:
  """Small generated files (`make_fake_datasets`): a test of mechanics
  (resumption, equality across strategies, files written) trains and
  evaluates on them in seconds; on real MNIST, loading 60,000 images and
  evaluating 10,000 made each run about 4 times slower."""
  return make_fake_datasets(str(tmp_path_factory.mktemp('datasets')))


@pytest.fixture(scope='module')
def real_data_dir() -> str:
  """../shared/datasets; the test is skipped (with the reason) without it:
  for claims about real MNIST, which generated blobs cannot check."""
  if not have_real_data():
    pytest.skip(f'real MNIST is not in {SHARED_DATASETS} (or '
                'ELBO_TESTS_FAKE_DATA is set)')
  return SHARED_DATASETS


@pytest.fixture(scope='module')
def data_dir(request, generated_data_dir) -> str:
  """Real MNIST when ../shared/datasets has it, else generated files; a
  module marked `pytest.mark.generated_data` (mechanics tests) always gets
  the generated files."""
  if request.node.get_closest_marker('generated_data') or not have_real_data():
    return generated_data_dir
  return SHARED_DATASETS


def write_untrained_run(workdir: str, config) -> None:
  """A seed-0 untrained model of `config` saved as a run would be:
  config.json and checkpoints/ckpt-1."""
  import keras  # pylint: disable=g-import-not-at-top
  from elbo import config as config_lib  # pylint: disable=g-import-not-at-top
  from elbo import factory  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  model = factory.build_model(config)
  os.makedirs(workdir)
  config_lib.save(workdir, config)
  tf.train.Checkpoint(model=model).save(
      os.path.join(workdir, 'checkpoints', 'ckpt'))


def binary_command(*flags: str, binary: str = 'train'):
  """argv and environment to run experiments/{binary}.py from the working
  tree."""
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  path = os.path.join(REPO_ROOT, 'experiments', binary + '.py')
  return [sys.executable, path, *flags], env


# Runs a binary with the loop's test-only fault point (elbo.faults)
# sending another signal than SIGKILL: SIGSTOP
# stops the process there (holding its workdir) until SIGCONT, SIGTERM and
# SIGINT stop it as a user would, each at a known step.
_SIGNAL_AT_STEP = """
import os, runpy, signal, sys
replacement = signal.Signals[sys.argv[1]]
kill = os.kill
os.kill = lambda pid, signum: kill(
    pid, replacement if signum == signal.SIGKILL else signum)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def signal_at_step_command(step: int, signum: signal.Signals, *flags: str,
                           binary: str = 'train'):
  """argv and environment: experiments/{binary}.py that sends itself
  `signum` right after the training call that ends at `step` (before the
  actions due at it)."""
  argv, env = binary_command(*flags, binary=binary)
  env[faults.KILL_AT_STEP] = str(step)
  if signum == signal.SIGKILL:
    return argv, env
  return [argv[0], '-c', _SIGNAL_AT_STEP, signum.name, *argv[1:]], env


def file_tree(directory: str) -> dict:
  """Every directory (None) and file (its bytes) under `directory`, by
  relative path: equal trees are byte-for-byte equal."""
  tree = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs:
      tree[os.path.relpath(os.path.join(root, name), directory)] = None
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        tree[os.path.relpath(path, directory)] = f.read()
  return tree


def checkpoint_tensors(path: str) -> dict:
  """Every tensor of a checkpoint (a prefix, or a directory: its latest)
  by name, without the object graph."""
  if os.path.isdir(path):
    path = tf.train.latest_checkpoint(path)
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not name.startswith('_CHECKPOINTABLE_OBJECT_GRAPH')}


def assert_same_tensors(actual: dict, expected: dict) -> None:
  """The same names, and every tensor bit for bit."""
  assert sorted(actual) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(actual[name], value, err_msg=name)


def run_binary(*flags: str, binary: str = 'train'
               ) -> subprocess.CompletedProcess:
  argv, env = binary_command(*flags, binary=binary)
  return subprocess.run(argv, env=env, capture_output=True, text=True,
                        timeout=600)


def copy_run(source: str, destination: str, **config_changes) -> str:
  """A copy of a run's workdir (without its evaluation results), with
  `config_changes` written into its config.json."""
  shutil.copytree(source, destination,
                  ignore=shutil.ignore_patterns('evaluation_*'))
  path = os.path.join(destination, 'config.json')
  with open(path) as f:
    config = json.load(f)
  with open(path, 'w') as f:
    json.dump({**config, **config_changes}, f)
  return destination


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def cluster_env(env: dict, workers: list, index: int) -> dict:
  """`env` with the TF_CONFIG of worker `index` of `workers`."""
  return dict(env, TF_CONFIG=json.dumps({
      'cluster': {'worker': workers},
      'task': {'type': 'worker', 'index': index}}))


def start_workers(*flags: str, binary: str = 'train', count: int = 2,
                  extra_env: Optional[Dict[int, Dict[str, str]]] = None
                  ) -> list:
  """`count` processes of experiments/{binary}.py, the workers of one
  cluster on localhost (worker 0 is the chief); stderr is piped.
  `extra_env` maps a worker's index to variables set for it alone."""
  workers = [f'127.0.0.1:{free_port()}' for _ in range(count)]
  argv, env = binary_command(*flags, binary=binary)
  extra_env = extra_env or {}
  return [subprocess.Popen(argv, env={**cluster_env(env, workers, index),
                                      **extra_env.get(index, {})},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
          for index in range(count)]


def read_events(directory: str):
  """(tag, step, value-or-None) for every summary in a TensorBoard dir, in
  the order written."""
  rows = []
  for path in sorted(glob.glob(os.path.join(directory, 'events.out.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tensor = tf.make_ndarray(value.tensor)
        scalar = (float(tensor) if tensor.ndim == 0 and
                  np.issubdtype(tensor.dtype, np.number) else None)
        rows.append((value.tag, event.step, scalar))
  return rows


def elbo_curve(workdir: str) -> dict:
  """Step -> logged training ELBO; where a resumed run logged a step
  again, its value."""
  return {step: value for tag, step, value in
          read_events(os.path.join(workdir, 'train')) if tag == 'elbo'}
