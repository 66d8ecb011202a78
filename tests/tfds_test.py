"""The TFDS path of a new user, for real: TFDS's own download_and_prepare
against a loopback mirror of the standard files (tests/tfds_mirror.py), and
what happens when TFDS cannot download."""

import contextlib
import datetime
import http.server
import os
import re
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from elbo import data
import conftest
import tfds_mirror

_SPLITS = {'mnist': ('train', 'test'),
           'binarized_mnist': ('train', 'validation', 'test')}
# A line of TF's or absl's logging, e.g. 'I1201 21:52:58.05 123 file.py:7] ...'
# or 'W0000 00:00:...'; anything else on stderr is the binary's own.
_LOG_LINE = re.compile(r'^([IWEF]\d{4} |WARNING: All log messages before )')


def _closed_port_url() -> str:
  """A loopback URL where nothing listens: connections are refused."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return f'http://127.0.0.1:{s.getsockname()[1]}'


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> str:
  return tfds_mirror.write_files(str(tmp_path_factory.mktemp('files')),
                                 num_train=96, num_test=64)


@pytest.fixture(scope='module')
def tfds_data_dir(files, tmp_path_factory):
  """A TFDS data dir where `load_images`, through TFDS's download_and_prepare,
  made mnist and binarized_mnist from the mirror."""
  tfds_dir = str(tmp_path_factory.mktemp('tfds'))
  with tfds_mirror.Mirror(files) as mirror, mirror.patched_tfds(), \
      pytest.MonkeyPatch.context() as patch:
    patch.setattr(tfds.core.constants, 'DATA_DIR', tfds_dir)
    for dataset in _SPLITS:
      assert not tfds.builder(dataset).is_prepared()
      data.load_images(dataset, 'train')  # Downloads and prepares.
  assert sorted(mirror.requests) == sorted(
      f'/{dataset}/{name}' for dataset in _SPLITS
      for name in tfds_mirror.FILES[dataset])
  yield tfds_dir


def _examples(images, labels=None) -> list:
  """Sorted (image bytes, label): TFDS shuffles examples as it prepares."""
  labels = [None] * len(images) if labels is None else labels.tolist()
  return sorted(zip((image.tobytes() for image in images), labels))


def test_prepared_by_tfds_equals_the_files_served(files, tfds_data_dir,
                                                  monkeypatch):
  tfds_dir = tfds_data_dir
  monkeypatch.setattr(tfds.core.constants, 'DATA_DIR', tfds_dir)
  with tfds_mirror.patched_tfds(_closed_port_url()):  # No new download.
    for split in _SPLITS['binarized_mnist']:
      images = data.load_images('binarized_mnist', split)
      assert images.shape == (96 if split == 'train' else 64, 28, 28, 1)
      assert set(np.unique(images)) == {0, 255}
      assert _examples(images) == _examples(
          data.load_images('binarized_mnist', split, files))
    for split in _SPLITS['mnist']:
      labels = data.load_labels('mnist', split)
      assert labels.dtype == np.int64
      assert _examples(data.load_images('mnist', split), labels) == _examples(
          data.load_images('mnist', split, files),
          data.load_labels('mnist', split, files))


def _run_train(tfds_dir: str, site: str, *flags: str,
               timeout: float = 300) -> subprocess.CompletedProcess:
  """experiments/train.py with no --data_dir, TFDS_DATA_DIR=tfds_dir, and
  the sitecustomize in `site` pointing TFDS's downloads somewhere."""
  argv, env = conftest.binary_command(*flags)
  env['PYTHONPATH'] = os.pathsep.join((site, env['PYTHONPATH']))
  env['TFDS_DATA_DIR'] = tfds_dir
  return subprocess.run(argv, env=env, capture_output=True, text=True,
                        timeout=timeout)


def test_train_binary_trains_from_a_prepared_tfds_data_dir(tfds_data_dir,
                                                          tmp_path):
  tfds_dir = tfds_data_dir
  site = str(tmp_path / 'site')
  tfds_mirror.write_sitecustomize(site, _closed_port_url())
  workdir = str(tmp_path / 'run')
  result = _run_train(tfds_dir, site, f'--workdir={workdir}',
                      '--max_steps=3', '--batch_size=16',
                      '--eval_batch_size=32')
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.isfile(os.path.join(workdir, 'checkpoints', 'ckpt-3.index'))
  # The test set (64 images) was evaluated.
  events = conftest.read_events(workdir) + conftest.read_events(
      os.path.join(workdir, 'test'))
  assert any(tag.startswith('elbo') and step == 3 for tag, step, _ in events)


class _FailingHandler(http.server.BaseHTTPRequestHandler):
  """Answers every request with 503, which TFDS retries; counts them."""
  requests = []

  def do_GET(self):  # pylint: disable=invalid-name
    self.requests.append(self.path)
    self.send_error(503)

  def log_message(self, *args):
    pass


@contextlib.contextmanager
def _closed_port():
  """(url, what the error says, the requests received: None, unknown)."""
  yield _closed_port_url(), '[Errno 111] Connection refused', None


@contextlib.contextmanager
def _failing_server():
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _FailingHandler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    _FailingHandler.requests = []
    yield (f'http://127.0.0.1:{server.server_address[1]}',
           'too many 503 error responses', _FailingHandler.requests)
  finally:
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize('unreachable', [_closed_port, _failing_server])
@pytest.mark.parametrize('dataset', ['mnist', 'binarized_mnist'])
def test_no_download_is_a_one_line_error_without_tfds_retries(
    tmp_path, monkeypatch, unreachable, dataset):
  """TFDS's own retries (3.5 minutes) are off: the failing server gets
  each file's request once (counted; the timing test times it)."""
  monkeypatch.setattr(tfds.core.constants, 'DATA_DIR', str(tmp_path))
  with unreachable() as (url, cause, requests), tfds_mirror.patched_tfds(url):
    with pytest.raises(data.DataError) as error:
      data.load_images(dataset, 'test')
  if requests is not None:
    assert requests and len(set(requests)) == len(requests), requests
    assert all(r.startswith(f'/{dataset}/') for r in requests), requests
  assert re.fullmatch(
      rf'TFDS cannot download {dataset} \({re.escape(url)}/{dataset}/\S+: '
      rf'{re.escape(cause)}\)\. Offline, use --data_dir=DIR with the '
      r'standard files \(.*\), or set TFDS_DATA_DIR to a TFDS data dir '
      rf'where {dataset} is prepared\.', str(error.value)), str(error.value)


@pytest.mark.timing
def test_no_download_fails_within_seconds(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds.core.constants, 'DATA_DIR', str(tmp_path))
  with _failing_server() as (url, _, _), tfds_mirror.patched_tfds(url):
    start = time.monotonic()
    with pytest.raises(data.DataError):
      data.load_images('mnist', 'test')
    seconds = time.monotonic() - start
  assert seconds < 15  # With TFDS's own retries: 3.5 minutes.


def _seconds_since_log_line(stderr: str, text: str) -> float:
  """Seconds from the first log record containing `text` (absl's 'I1201
  21:52:58.059601 ...' stamps, local time) to now."""
  line = next(line for line in stderr.splitlines() if text in line)
  stamp = datetime.datetime.strptime(line.split()[1], '%H:%M:%S.%f')
  now = datetime.datetime.now()
  stamp = datetime.datetime.combine(now.date(), stamp.time())
  return (now - stamp).total_seconds() % 86_400


def _offline_train(tmp_path):
  site = str(tmp_path / 'site')
  url = _closed_port_url()
  tfds_mirror.write_sitecustomize(site, url)
  result = _run_train(str(tmp_path / 'tfds'), site,
                      f'--workdir={tmp_path / "run"}', '--max_steps=3',
                      timeout=180)
  return url, result


@pytest.mark.timing
def test_train_binary_without_network_fails_within_seconds(tmp_path):
  start = time.monotonic()
  _, result = _offline_train(tmp_path)
  seconds = time.monotonic() - start
  tfds_seconds = _seconds_since_log_line(result.stderr, 'Generating dataset')
  print(f'train.py offline: exit {result.returncode} after {seconds:.1f} s, '
        f'{tfds_seconds:.1f} s after TFDS began')
  assert result.returncode == 1
  # TFDS's own retries took 3.5 minutes. Importing TensorFlow takes 10 s
  # on an idle machine, a minute on a busy one: the whole run is bounded
  # loosely, the part after TFDS began tightly.
  assert tfds_seconds < 15 and seconds < 120


def test_train_binary_without_network_fails_with_one_line(tmp_path):
  """No TFDS retries ('Retrying' in its log), one line; the timing test
  times it."""
  url, result = _offline_train(tmp_path)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr and 'Retrying' not in result.stderr
  # Besides log records, stderr is one line: no progress bars, no retries.
  own = [line for line in result.stderr.splitlines()
         if line.strip() and not _LOG_LINE.match(line)]
  assert len(own) == 1, result.stderr[-3000:]
  assert re.fullmatch(
      rf'Error: TFDS cannot download mnist \({re.escape(url)}/mnist/'
      r'[a-z0-9-]+\.gz: \[Errno 111\] Connection refused\)\. Offline, use '
      r'--data_dir=DIR with the standard files \(train-images-idx3-ubyte\.gz, '
      r't10k-images-idx3-ubyte\.gz; in DIR/mnist or DIR\), or set '
      r'TFDS_DATA_DIR to a TFDS data dir where mnist is prepared\.', own[0])
