"""Smoke test of the train binary: a few steps on tiny generated data.

Under Bazel it runs the `:train` py_binary from the runfiles (so a
dependency missing from that target fails here); under plain pytest it runs
experiments/train.py.
"""

import os
import subprocess
import sys

import conftest


def _train_command() -> list:
  bazel_binary = os.path.join(conftest.REPO_ROOT, 'train')
  if os.environ.get('TEST_SRCDIR') and os.path.isfile(bazel_binary):
    return [bazel_binary]
  return [sys.executable,
          os.path.join(conftest.REPO_ROOT, 'experiments', 'train.py')]


def test_train_binary_runs_a_few_steps(tmp_path):
  data_dir = conftest.make_fake_datasets(str(tmp_path / 'data'),
                                         num_train=64, num_test=32)
  workdir = tmp_path / 'run'
  env = dict(os.environ, PYTHONPATH=conftest.REPO_ROOT,
             TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(
      [*_train_command(), f'--workdir={workdir}', f'--data_dir={data_dir}',
       '--batch_size=16', '--max_steps=5', '--log_every=1',
       '--image_every=5', '--checkpoint_every=5', '--eval_batch_size=32'],
      env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / 'checkpoints' / 'ckpt-5.index').is_file()
  assert (workdir / 'reconstructions.png').is_file()
  assert (workdir / 'prior_samples.png').is_file()
