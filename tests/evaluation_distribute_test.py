"""evaluate.py under tf.distribute: mirrored replicas and two workers on
localhost give the per-image results of one process, for both KL
estimators; a worker killed mid-way resumes its own share.

Distributed cases run in subprocesses: logical devices and multi-worker
collectives must be configured before TensorFlow initializes.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from elbo import evaluation
from elbo import faults
from elbo import train
import conftest

# Mechanics, not learning: the small generated files (conftest.data_dir).
pytestmark = pytest.mark.generated_data


# 10 calls of 4 images, the last one of 2; 2 chunks of 50 samples each.
_FLAGS = {'num_samples': 100, 'num_examples': 38, 'examples_per_call': 4,
          'decoder_passes_per_call': 200, 'save_every': 4}
_TERMS = ('reconstruction', 'kl', 'elbo', 'log_likelihood')


@pytest.fixture(scope='module')
def trained_workdir(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(
      train.Config(model='iwae_mlp', data_dir=data_dir, batch_size=32,
                   max_steps=5, image_every=1000), workdir)
  return workdir


def _per_image(workdir: str):
  with np.load(os.path.join(
      workdir, f'evaluation_k{_FLAGS["num_samples"]}.partial.npz')) as saved:
    return {name: saved[name] for name in _TERMS}


@pytest.fixture(scope='module', params=['analytic', 'mc'])
def one_process(request, trained_workdir, tmp_path_factory):
  """(kl, the run's copy, its per-image results from one process)."""
  kl = request.param
  workdir = conftest.copy_run(
      trained_workdir, str(tmp_path_factory.mktemp('ref') / 'one'), kl=kl)
  evaluation.evaluate_run(workdir, evaluation.EvalConfig(**_FLAGS))
  return kl, workdir, _per_image(workdir)


def _assert_same(values, reference) -> None:
  """Bit for bit: each call is computed with the same shapes and draws on
  the same machine, and summed over chunks on the host in float64."""
  for name in _TERMS:
    np.testing.assert_array_equal(values[name], reference[name], err_msg=name)


_MIRRORED = textwrap.dedent('''
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from elbo import evaluation
    config = evaluation.EvalConfig(strategy='mirrored', **json.loads(
        sys.argv[2]))
    replicas = tf.distribute.MirroredStrategy().num_replicas_in_sync
    result = evaluation.evaluate_run(sys.argv[1], config)
    print(json.dumps({'replicas': replicas, 'nll': result['nll']}))
''')


def test_mirrored_matches_one_process(one_process, tmp_path):
  kl, reference_dir, reference = one_process
  workdir = conftest.copy_run(reference_dir, str(tmp_path / 'mirrored'),
                              kl=kl)
  env = dict(os.environ, PYTHONPATH=conftest.REPO_ROOT,
             TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(
      [sys.executable, '-c', _MIRRORED, workdir, json.dumps(_FLAGS)],
      env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out['replicas'] == 2
  _assert_same(_per_image(workdir), reference)


def _start_workers(workdir: str, extra_env=None):
  """Two evaluate.py workers on localhost (worker 0 is the chief)."""
  return conftest.start_workers(
      '--workdir', workdir, '--strategy=multiworker',
      *[f'--{name}={value}' for name, value in _FLAGS.items()],
      binary='evaluate', extra_env=extra_env)


def _finish(processes):
  """(return codes, stderr) of the workers."""
  outputs = [p.communicate(timeout=600)[1] for p in processes]
  return [p.returncode for p in processes], outputs


def test_two_workers_match_one_process(one_process, tmp_path):
  kl, reference_dir, reference = one_process
  if kl == 'analytic':
    pytest.skip('Covered, interrupted, by the next test.')
  workdir = conftest.copy_run(reference_dir, str(tmp_path / 'two'), kl=kl)
  codes, (chief, worker) = _finish(_start_workers(workdir))
  assert codes == [0, 0], (chief + worker)[-3000:]
  _assert_same(_per_image(workdir), reference)
  # The chief alone wrote the results; the shares are merged and gone.
  with open(os.path.join(workdir, 'evaluation_k100_n38.json')) as f:
    assert json.load(f)['num_examples'] == 38
  assert not [f for f in os.listdir(workdir) if '.worker' in f]
  # Progress of each worker's share, and of both on the chief.
  # Worker 0 has calls 0, 2, ..., 8; worker 1 calls 1, 3, ..., 9 (short).
  assert 'worker 1/2: 18/18 images' in worker
  assert 'worker 0/2: 20/20 images' in chief
  assert 'all workers: ' in chief
  tags = {tag for tag, _, _ in conftest.read_events(
      os.path.join(workdir, 'eval', 'worker_1'))}
  assert {'progress/decoder_passes_per_second',
          'progress/images_done'} <= tags


def test_a_killed_worker_resumes_its_share(one_process, tmp_path):
  kl, reference_dir, reference = one_process
  if kl == 'mc':
    pytest.skip('One estimator is enough for the interruption.')
  workdir = conftest.copy_run(reference_dir, str(tmp_path / 'killed'),
                              kl=kl)
  share = os.path.join(workdir, 'evaluation_k100.worker1of2.partial.npz')
  # Worker 1 dies hard right after its second save (one call each) of 5.
  codes, (chief, _) = _finish(_start_workers(
      workdir, {1: {faults.KILL_AFTER_SAVES: '2'}}))
  assert codes[1] == -signal.SIGKILL
  with np.load(share) as saved:
    saved_calls = len(saved['starts'])
  assert saved_calls == 2
  # The chief did its share, then found worker 1 gone.
  assert codes[0] != 0 and 'Another worker stopped' in chief, chief[-3000:]

  codes, (chief, worker) = _finish(_start_workers(workdir))
  assert codes == [0, 0], (chief + worker)[-3000:]
  assert 'nothing to compute on this worker' in chief
  assert '2 of 5 calls of this worker already done' in worker
  _assert_same(_per_image(workdir), reference)

  codes, outputs = _finish(_start_workers(workdir))  # After completion:
  assert codes == [0, 0]
  for stderr in outputs:
    assert 'nothing to compute on this worker' in stderr
    assert 'decoder passes/s' not in stderr.split('nothing to compute')[1]
  _assert_same(_per_image(workdir), reference)
