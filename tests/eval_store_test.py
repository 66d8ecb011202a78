"""Tests of elbo.eval_store: saved calls read back, on the local disk and on
TensorFlow's in-memory filesystem."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from elbo import eval_store

_KEY = {'step': 8, 'seed': 0, 'precision': 'float32', 'examples_per_call': 4,
        'decoder_passes_per_call': 64}
_RAM_RUNS = itertools.count()


@pytest.fixture(params=['local', 'ram'])
def workdir(request, tmp_path) -> str:
  if request.param == 'local':
    return str(tmp_path)
  path = f'ram://eval-store-test-{next(_RAM_RUNS)}'
  tf.io.gfile.makedirs(path)
  return path


def _values(start: int, stop: int):
  """Distinct per-example values for images [start, stop)."""
  return {name: np.arange(start, stop, dtype=np.float64) + 1000 * i
          for i, name in enumerate(eval_store.PER_EXAMPLE)}


def _known(calls):
  return {call: _values(*call) for call in calls}


def test_calls_cover_the_images_with_a_shorter_last_call():
  assert eval_store.calls(10, 4) == [(0, 4), (4, 8), (8, 10)]
  assert eval_store.calls(0, 4) == []


def test_prefix_stops_at_the_first_gap_and_after_a_short_call():
  known = _known([(0, 4), (4, 8), (12, 16)])
  assert eval_store.prefix(known, 4)['elbo'].tolist() == list(
      range(2000, 2008))
  known = _known([(0, 4), (4, 6), (6, 10)])
  assert len(eval_store.prefix(known, 4)['elbo']) == 6


def test_saved_prefix_reads_back_as_its_calls(workdir):
  store = eval_store.EvalStore(workdir, 16, _KEY, 4)
  store.save_prefix(_known([(0, 4), (4, 8), (8, 10)]))
  known = store.load_known()
  assert sorted(known) == [(0, 4), (4, 8), (8, 10)]
  for call, values in known.items():
    for name in eval_store.PER_EXAMPLE:
      np.testing.assert_array_equal(values[name], _values(*call)[name])
  # Atomic: the temporary file was renamed away.
  assert tf.io.gfile.listdir(workdir) == ['evaluation_k16.partial.npz']


def test_results_of_another_key_are_not_used(workdir):
  eval_store.EvalStore(workdir, 16, _KEY, 4).save_prefix(_known([(0, 4)]))
  other = eval_store.EvalStore(workdir, 16, {**_KEY, 'seed': 1}, 4)
  assert not other.load_known()
  assert other.reusable_draws() is None


def test_shares_merge_into_the_single_process_file(workdir):
  store = eval_store.EvalStore(workdir, 16, _KEY, 4)
  progress = {'progress_images': 4., 'progress_share_images': 8.,
              'progress_passes_per_second': 10.,
              'progress_remaining_passes': 64.}
  store.save_share(0, 2, _known([(0, 4), (8, 10)]), progress)
  store.save_share(1, 2, _known([(4, 8)]), progress)
  assert store.share_progress(1, 2, list(progress)) == progress
  assert store.share_progress(1, 3, list(progress)) is None  # Not saved.
  known = store.load_known()
  assert sorted(known) == [(0, 4), (4, 8), (8, 10)]
  store.merge_shares(known)
  assert tf.io.gfile.listdir(workdir) == ['evaluation_k16.partial.npz']
  merged = eval_store.EvalStore(workdir, 16, _KEY, 4).load_known()
  assert sorted(merged) == sorted(known)


def test_reusable_draws_are_the_largest_smaller_k_whole_calls(workdir):
  for k, calls in ((4, [(0, 4), (4, 8)]), (8, [(0, 4), (4, 6)]),
                   (32, [(0, 4), (4, 8)])):
    eval_store.EvalStore(workdir, k, _KEY, 4).save_prefix(_known(calls))
  reusable = eval_store.EvalStore(workdir, 16, _KEY, 4).reusable_draws()
  # k' = 8 is the largest below 16; its short last call is not whole.
  assert reusable['num_samples'] == 8
  assert reusable['elbo'].tolist() == list(range(2000, 2004))
