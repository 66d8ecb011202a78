"""The resumable state of an evaluation: per-call results saved in the
workdir, on any filesystem TensorFlow reads (local, `gs://`, `ram://`).

An evaluation of k samples per image is cut into calls (`(start, stop)`,
the test images of one compiled call). A single process saves the calls
from image 0 on, in test-set order, as `evaluation_k{k}.partial.npz`; a
worker of several saves its own calls, with their bounds and its progress,
as `evaluation_k{k}.worker{w}of{W}.partial.npz`. Every file also holds the
`key` its draws depend on (checkpoint step, seed, precision, chunking): a
file with another key is not used. Writes are atomic (a temporary file,
then a rename), so a kill mid-write leaves the previous file intact.
"""

import io
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

__all__ = ['PER_EXAMPLE', 'EvalStore', 'calls', 'concatenate', 'prefix']

# The per-example quantities saved for each test image.
PER_EXAMPLE = ('reconstruction', 'kl', 'elbo', 'log_likelihood')
Call = Tuple[int, int]  # (start, stop): the test images of one call.
Values = Dict[str, np.ndarray]


def calls(num_examples: int, per_call: int) -> List[Call]:
  """The calls of an evaluation of the first `num_examples` test images:
  whole calls of `per_call` images, the last one possibly shorter."""
  return [(start, min(start + per_call, num_examples))
          for start in range(0, num_examples, per_call)]


def concatenate(parts: List[Values]) -> Values:
  """The per-example values of `parts`, one after the other."""
  return {name: np.concatenate([np.zeros([0])] + [p[name] for p in parts])
          for name in PER_EXAMPLE}


def prefix(known: Mapping[Call, Values], per_call: int) -> Values:
  """The longest run of `known` calls from image 0 that a single process
  could have saved: whole calls, then at most one shorter last one."""
  stops = {}
  for start, stop in known:
    stops.setdefault(start, []).append(stop)
  parts, start = [], 0
  while start in stops:
    stop = max(stops[start])
    parts.append(known[(start, stop)])
    if stop - start < per_call:
      break
    start = stop
  return concatenate(parts)


def _prefix_calls(values: Values, per_call: int) -> Dict[Call, Values]:
  """The calls held by per-example results in test-set order."""
  return {(start, stop): {name: values[name][start:stop]
                          for name in PER_EXAMPLE}
          for start, stop in calls(len(values['elbo']), per_call)}


def _write(path: str, arrays: Mapping[str, object]) -> None:
  """`arrays` as an .npz file at `path`, atomically."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  temporary = path + '.tmp'
  with tf.io.gfile.GFile(temporary, 'wb') as f:
    f.write(buffer.getvalue())
  tf.io.gfile.rename(temporary, path, overwrite=True)


def _load(path: str) -> Dict[str, np.ndarray]:
  with tf.io.gfile.GFile(path, 'rb') as f:
    with np.load(io.BytesIO(f.read())) as saved:
      return {name: saved[name] for name in saved.files}


class EvalStore:
  """The saved calls of the evaluation with `k` samples of `workdir`
  computed with `key`, in calls of `per_call` images."""

  def __init__(self, workdir: str, k: int, key: Mapping[str, object],
               per_call: int):
    self.workdir, self.k, self.key = workdir, k, dict(key)
    self.per_call = per_call

  @property
  def merged_path(self) -> str:
    """The file a single process writes."""
    return os.path.join(self.workdir, f'evaluation_k{self.k}.partial.npz')

  def share_path(self, worker: int, num_workers: int) -> str:
    return os.path.join(self.workdir, f'evaluation_k{self.k}.worker{worker}'
                        f'of{num_workers}.partial.npz')

  def share_paths(self) -> List[str]:
    """The workers' shares on disk, whatever the number of workers."""
    return tf.io.gfile.glob(os.path.join(
        self.workdir, f'evaluation_k{self.k}.worker*of*.partial.npz'))

  def _read(self, path: str) -> Tuple[Optional[Dict], Dict]:
    """(the file's arrays, None) if it was computed with `self.key`, else
    (None, the key it was computed with)."""
    saved = _load(path)
    found = {name: saved[name].item() for name in self.key if name in saved}
    return (saved, None) if found == self.key else (None, found)

  def load_known(self) -> Dict[Call, Values]:
    """Every call saved with this key: the single-process file's, then the
    workers' shares'."""
    known = {}
    if tf.io.gfile.exists(self.merged_path):
      values, found = self._read(self.merged_path)
      if values is None:
        logging.warning('%s was computed with %s, not %s: starting over.',
                        self.merged_path, found, self.key)
      else:
        known.update(_prefix_calls(values, self.per_call))
    for path in self.share_paths():
      values, _ = self._read(path)
      if values is not None:
        for start, stop, offset in zip(values['starts'], values['stops'],
                                       values['offsets']):
          known[(int(start), int(stop))] = {
              name: values[name][offset:offset + stop - start]
              for name in PER_EXAMPLE}
    return known

  def reusable_draws(self) -> Optional[Values]:
    """The saved whole calls (single-process file) with the most samples
    k' < k and this key, plus `'num_samples': k'`; None if there are
    none."""
    smaller = []
    for path in tf.io.gfile.glob(
        os.path.join(self.workdir, 'evaluation_k*.partial.npz')):
      match = re.fullmatch(r'evaluation_k(\d+)\.partial\.npz',
                           os.path.basename(path))
      if match and int(match.group(1)) < self.k:
        smaller.append((int(match.group(1)), path))
    for samples, path in sorted(smaller, reverse=True):
      values, _ = self._read(path)
      if values is not None:
        n = len(values['elbo'])
        whole = n - n % self.per_call
        if not whole:
          return None
        return {'num_samples': samples,
                **{name: values[name][:whole] for name in PER_EXAMPLE}}
    return None

  def save_prefix(self, known: Mapping[Call, Values]) -> None:
    """The single-process file: the calls from image 0 on."""
    _write(self.merged_path, {**self.key, **prefix(known, self.per_call)})

  def save_share(self, worker: int, num_workers: int,
                 share: Mapping[Call, Values],
                 progress: Mapping[str, float]) -> None:
    """A worker's calls, with their bounds, and its progress."""
    ordered = sorted(share)
    sizes = [stop - start for start, stop in ordered]
    _write(self.share_path(worker, num_workers), {
        **self.key, **progress,
        **concatenate([share[call] for call in ordered]),
        'starts': np.array([s for s, _ in ordered], np.int64),
        'stops': np.array([e for _, e in ordered], np.int64),
        'offsets': np.cumsum([0] + sizes[:-1]).astype(np.int64)})

  def share_progress(self, worker: int, num_workers: int,
                     names: List[str]) -> Optional[Dict[str, float]]:
    """The progress another worker saved last; None before it saved."""
    try:
      saved = _load(self.share_path(worker, num_workers))
      return {name: float(saved[name]) for name in names}
    except (OSError, KeyError, ValueError, tf.errors.OpError):
      return None

  def merge_shares(self, known: Mapping[Call, Values]) -> None:
    """If workers saved shares: the single-process file as one process
    would have written it, then the shares (now redundant) removed."""
    shares = self.share_paths()
    if shares:
      self.save_prefix(known)
      for path in shares:
        tf.io.gfile.remove(path)
