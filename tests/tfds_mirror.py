r"""A loopback HTTP mirror of the files TFDS downloads for MNIST datasets.

TFDS's `download_and_prepare` is the path every new user takes (`tfds.load`
without a prepared data dir), and `tfds.testing.mock_data` skips it. This
mirror lets it run for real on a machine without internet: an HTTP server on
127.0.0.1 (a free port; never any other address) serves the standard files,
and the builders' download URLs are pointed at it. Nothing in `elbo` knows
about it.

It serves, under `/<dataset>/`, the files of a directory laid out like
`--data_dir` (`mnist/*-ubyte.gz`, `binarized_mnist/*.amat.gz`): the real ones
from ../shared/datasets, or small generated ones (`write_files`). TFDS
downloads binarized MNIST's `.amat` uncompressed; a request for `x` is served
from `x.gz` when only that exists.

In a test:

  with tfds_mirror.Mirror(root) as mirror, mirror.patched_tfds():
    tfds.builder('mnist', data_dir=...).download_and_prepare()

Around a command (.ci/run), with a fresh TFDS_DATA_DIR, a `sitecustomize.py`
on PYTHONPATH that points every Python process of the command at the mirror,
and a check that the command downloaded every file of `--require`:

  python tests/tfds_mirror.py [--source=DIR] -- sh -c 'python train.py ...'

Only the standard library at module level: .ci/run starts it before
anything is installed.
"""

import argparse
import contextlib
import gzip
import http.server
import importlib.abc
import importlib.machinery
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

# dataset -> the files its TFDS builder downloads (as named in the request).
FILES = {
    'mnist': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
              't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
    'binarized_mnist': ('binarized_mnist_train.amat',
                        'binarized_mnist_valid.amat',
                        'binarized_mnist_test.amat'),
}
# The TFDS modules that hold each builder's download URL, and the attribute.
_MNIST_MODULE = 'tensorflow_datasets.image_classification.mnist'
_BINARIZED_MODULE = ('tensorflow_datasets.datasets.binarized_mnist.'
                     'binarized_mnist_dataset_builder')
_LOOPBACK = '127.0.0.1'


def write_files(root: str, num_train: int = 96, num_test: int = 64,
                seed: int = 0) -> str:
  """Writes small MNIST and binarized-MNIST files in the standard formats.

  Images are bright discs on black (something to learn), labels `i % 10`.
  binarized_mnist's three splits have `num_train`, `num_test`, `num_test`
  images: its pixels are the mnist discs thresholded at 128.

  Returns:
    `root`.
  """
  rng = random.Random(seed)

  def disc() -> bytes:
    cy, cx, r = rng.uniform(8, 20), rng.uniform(8, 20), rng.uniform(3, 7)
    return bytes(rng.randrange(150, 256)
                 if (y - cy) ** 2 + (x - cx) ** 2 < r * r else 0
                 for y in range(28) for x in range(28))

  os.makedirs(os.path.join(root, 'mnist'), exist_ok=True)
  os.makedirs(os.path.join(root, 'binarized_mnist'), exist_ok=True)
  for prefix, count in (('train', num_train), ('t10k', num_test)):
    pixels = b''.join(disc() for _ in range(count))
    _write_gz(os.path.join(root, 'mnist', f'{prefix}-images-idx3-ubyte.gz'),
              struct.pack('>4I', 0x803, count, 28, 28) + pixels)
    _write_gz(os.path.join(root, 'mnist', f'{prefix}-labels-idx1-ubyte.gz'),
              struct.pack('>2I', 0x801, count) +
              bytes(i % 10 for i in range(count)))
  for split, count in (('train', num_train), ('valid', num_test),
                       ('test', num_test)):
    lines = (' '.join('1' if v >= 128 else '0' for v in disc()) + '\n'
             for _ in range(count))
    _write_gz(os.path.join(root, 'binarized_mnist',
                           f'binarized_mnist_{split}.amat.gz'),
              ''.join(lines).encode())
  return root


def _write_gz(path: str, payload: bytes) -> None:
  with gzip.open(path, 'wb') as f:
    f.write(payload)


def idx_count(path: str) -> int:
  """The number of items an IDX file's header promises (gzip or not)."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    return struct.unpack('>2I', f.read(8))[1]


class Mirror:
  """Serves `root` on a free loopback port, in a background thread.

  Attributes:
    url: `http://127.0.0.1:<port>`.
    root: the directory served.
    requests: paths served so far (successful GETs), in order.
  """

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    self.requests: List[str] = []
    mirror = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):  # pylint: disable=invalid-name
        payload = mirror._read(self.path)
        if payload is None:
          self.send_error(404)
          return
        self.send_response(200)
        self.send_header('Content-Length', str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        mirror.requests.append(self.path)

      def log_message(self, *args):
        pass

    self._server = http.server.ThreadingHTTPServer((_LOOPBACK, 0), Handler)
    self.url = f'http://{_LOOPBACK}:{self._server.server_address[1]}'
    self._thread = threading.Thread(target=self._server.serve_forever,
                                    daemon=True)

  def _read(self, url_path: str) -> Optional[bytes]:
    path = os.path.normpath(os.path.join(self.root, url_path.lstrip('/')))
    if not path.startswith(self.root + os.sep):
      return None
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        return f.read()
    if os.path.isfile(path + '.gz'):
      with gzip.open(path + '.gz', 'rb') as f:
        return f.read()
    return None

  def __enter__(self) -> 'Mirror':
    self._thread.start()
    return self

  def __exit__(self, *exc_info) -> None:
    self._server.shutdown()
    self._server.server_close()
    self._thread.join()

  def mnist_examples(self) -> Tuple[int, int]:
    """(train, test) image counts of the mnist files served."""
    return tuple(idx_count(os.path.join(self.root, 'mnist', name))
                 for name in (FILES['mnist'][0], FILES['mnist'][2]))

  def patched_tfds(self) -> contextlib.AbstractContextManager:
    """In this process, TFDS's mnist and binarized_mnist download here."""
    return patched_tfds(self.url, self.mnist_examples())

  def sitecustomize(self, directory: str) -> str:
    """Writes `directory/sitecustomize.py`, which points the TFDS of every
    Python process with `directory` on PYTHONPATH at this mirror."""
    return write_sitecustomize(directory, self.url, self.mnist_examples())


# pylint: disable=protected-access
def patch_mnist_module(module, url: str,
                       examples: Optional[Tuple[int, int]]) -> None:
  """Points TFDS's MNIST builder at `url`/mnist/. MNIST reads exactly
  60,000 and 10,000 images from its files; `examples` says how many the
  mirror's files hold."""
  module.MNIST.URL = f'{url}/mnist/'
  if examples is not None:
    module._TRAIN_EXAMPLES, module._TEST_EXAMPLES = examples


def patch_binarized_module(module, url: str) -> None:
  module._URL = f'{url}/binarized_mnist/'


@contextlib.contextmanager
def patched_tfds(url: str, examples: Optional[Tuple[int, int]] = None
                 ) -> Iterator[None]:
  """Points TFDS's mnist and binarized_mnist downloads at `url`, then
  restores them."""
  mnist = importlib.import_module(_MNIST_MODULE)
  binarized = importlib.import_module(_BINARIZED_MODULE)
  saved = (mnist.MNIST.URL, mnist._TRAIN_EXAMPLES, mnist._TEST_EXAMPLES,
           binarized._URL)
  patch_mnist_module(mnist, url, examples)
  patch_binarized_module(binarized, url)
  try:
    yield
  finally:
    (mnist.MNIST.URL, mnist._TRAIN_EXAMPLES, mnist._TEST_EXAMPLES,
     binarized._URL) = saved
# pylint: enable=protected-access


class _PatchOnImport(importlib.abc.MetaPathFinder):
  """Runs a patch right after a module is first imported, so that the
  sitecustomize does not import TFDS (slow, and maybe not installed yet:
  .ci/run's command begins with `pip install`)."""

  def __init__(self, patches: Dict[str, Callable[[object], None]]):
    self._patches = patches

  def find_spec(self, name, path, target=None):
    if name not in self._patches:
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
      return spec
    exec_module = spec.loader.exec_module
    patch = self._patches[name]

    def exec_and_patch(module):
      exec_module(module)
      patch(module)

    spec.loader.exec_module = exec_and_patch
    return spec


def install_import_hook(url: str,
                        examples: Optional[Tuple[int, int]]) -> None:
  """What the sitecustomize calls: patch TFDS when it is imported."""
  sys.meta_path.insert(0, _PatchOnImport({
      _MNIST_MODULE: lambda m: patch_mnist_module(m, url, examples),
      _BINARIZED_MODULE: lambda m: patch_binarized_module(m, url),
  }))


_SITECUSTOMIZE = '''\
"""Written by {helper}: TFDS downloads MNIST from {url}."""
import importlib.util as _util
_spec = _util.spec_from_file_location('_elbo_tfds_mirror', {helper!r})
_mirror = _util.module_from_spec(_spec)
_spec.loader.exec_module(_mirror)
_mirror.install_import_hook({url!r}, {examples!r})
'''


def write_sitecustomize(directory: str, url: str,
                        examples: Optional[Tuple[int, int]] = None) -> str:
  """Writes `directory/sitecustomize.py` (see `Mirror.sitecustomize`)."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, 'sitecustomize.py')
  with open(path, 'w') as f:
    f.write(_SITECUSTOMIZE.format(helper=os.path.abspath(__file__), url=url,
                                  examples=examples))
  return path


def _main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      description='Runs a command with TFDS downloading MNIST from a '
      'loopback mirror into a fresh TFDS_DATA_DIR; fails if the command '
      'fails or did not download the files of every --require dataset.')
  parser.add_argument('--source', help='A directory laid out like '
                      '--data_dir (mnist/, binarized_mnist/); default: '
                      'small generated files.')
  parser.add_argument('--require', action='append', choices=sorted(FILES),
                      help='A dataset whose every file the command must '
                      'download (repeatable); default: mnist.')
  parser.add_argument('command', nargs=argparse.REMAINDER,
                      help='-- then the command and its arguments.')
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('no command given')
  with tempfile.TemporaryDirectory(prefix='tfds_mirror_') as tmp:
    root = args.source or write_files(os.path.join(tmp, 'files'),
                                      num_train=512, num_test=128)
    with Mirror(root) as mirror:
      site = os.path.join(tmp, 'site')
      mirror.sitecustomize(site)
      env = dict(os.environ, TFDS_DATA_DIR=os.path.join(tmp, 'tfds'))
      env['PYTHONPATH'] = os.pathsep.join(
          p for p in (site, os.environ.get('PYTHONPATH')) if p)
      print(f'tfds_mirror: serving {root} at {mirror.url}; '
            f'TFDS_DATA_DIR={env["TFDS_DATA_DIR"]}', flush=True)
      start = time.monotonic()
      status = subprocess.call(command, env=env)
      print(f'tfds_mirror: command exited with {status} after '
            f'{time.monotonic() - start:.0f} s', flush=True)
    missing = [f'/{dataset}/{name}' for dataset in args.require or ['mnist']
               for name in FILES[dataset]
               if f'/{dataset}/{name}' not in mirror.requests]
    if status == 0 and missing:
      print(f'tfds_mirror: the command did not download {missing}',
            file=sys.stderr)
      return 1
    shutil.rmtree(os.path.join(tmp, 'tfds'), ignore_errors=True)
  return status


if __name__ == '__main__':
  sys.exit(_main(sys.argv[1:]))
