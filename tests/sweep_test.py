"""The seed sweep binary: one run per seed, a summary of their test metrics."""

import json
import os
import subprocess

import numpy as np
import tensorflow as tf

from elbo import run_record
import conftest

_KEYS = ('neg_elbo', 'neg_reconstruction', 'kl')


def _final_test_metrics(run_dir):
  """-ELBO, -reconstruction, KL: the last test scalars the run logged."""
  last = {tag: value for tag, _, value in
          conftest.read_events(os.path.join(run_dir, 'test'))}
  return [-last['elbo'], -last['reconstruction'], last['kl']]


def _train_steps_logged(run_dir):
  return sorted(step for tag, step, _ in
                conftest.read_events(os.path.join(run_dir, 'train'))
                if tag == 'elbo')


def test_sweep_trains_each_seed_once_and_summarizes(tmp_path):
  data_dir = conftest.make_fake_datasets(str(tmp_path / 'data'))
  workdir = str(tmp_path / 'sweep')
  common = ['--workdir', workdir, '--data_dir', data_dir, '--model=iwae_mlp',
            '--batch_size=16',
            '--max_steps=4', '--log_every=2', '--image_every=1000',
            '--eval_batch_size=128']
  first = conftest.run_binary(*common, '--seeds=0', binary='sweep')
  assert first.returncode == 0, first.stderr[-3000:]
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert [run['seed'] for run in summary['runs']] == [0]
  assert summary['sd'] == {key: None for key in _KEYS}  # One run.
  seed_0 = os.path.join(workdir, 'seed_0')
  logged = _train_steps_logged(seed_0)
  assert logged == [2, 4]

  # Seed 0 is finished and not trained again; seed 1 is new.
  second = conftest.run_binary(*common, '--seeds=0,1', binary='sweep')
  assert second.returncode == 0, second.stderr[-3000:]
  assert _train_steps_logged(seed_0) == logged
  # Not even started again (once elbo.train records its starts).
  assert len(run_record.read(seed_0)) == 1  # The first sweep's start.
  for seed in (0, 1):
    assert tf.train.latest_checkpoint(os.path.join(
        workdir, f'seed_{seed}', 'checkpoints')).endswith('ckpt-4')
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  runs = summary['runs']
  assert [run['seed'] for run in runs] == [0, 1]
  values = np.array([_final_test_metrics(run['workdir']) for run in runs])
  np.testing.assert_allclose([[run[key] for key in _KEYS] for run in runs],
                             values, rtol=1e-6)
  assert not np.allclose(values[0], values[1])  # Other seeds, other runs.
  try:
    commit = subprocess.run(['git', '-C', conftest.REPO_ROOT, 'rev-parse',
                             'HEAD'], capture_output=True, text=True,
                            check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = None
  assert [run['git_commit'] for run in runs] == [commit, commit]
  np.testing.assert_allclose([summary['mean'][key] for key in _KEYS],
                             values.sum(axis=0) / 2, rtol=1e-6)
  # Sample sd of two values: |a - b| / sqrt(2).
  np.testing.assert_allclose([summary['sd'][key] for key in _KEYS],
                             np.abs(values[0] - values[1]) / np.sqrt(2),
                             rtol=1e-6)
  with open(os.path.join(workdir, 'summary.md')) as f:
    table = f.read().splitlines()
  assert len(table) == 2 + 2 + 1  # Header, rule, two runs, mean ± sd.
  assert table[-1].startswith('| mean ± sd (2 runs) | '
                              f'{summary["mean"]["neg_elbo"]:.2f} ± '
                              f'{summary["sd"]["neg_elbo"]:.2f} |')


def test_sweep_refuses_a_seed_flag(tmp_path):
  workdir = str(tmp_path / 'sweep')
  result = conftest.run_binary('--workdir', workdir, '--seeds=0,1',
                               '--seed=3', binary='sweep')
  assert result.returncode != 0
  assert 'Error: --seed and --seeds' in result.stderr.splitlines()[-1]
  assert not os.path.exists(workdir)
