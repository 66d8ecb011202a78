"""The figures binary on a run's checkpoint: PNGs, TensorBoard images and
diagnostics.json."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from elbo import config as config_lib
import conftest

# Mechanics, not learning: the small generated files (conftest.data_dir).
pytestmark = pytest.mark.generated_data


_NAMES = ('interpolations', 'traversals', 'latent_pca', 'kl_per_dimension',
          'reconstructions_8x8', 'prior_samples_8x8')


def test_writes_figures_and_diagnostics(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  conftest.write_untrained_run(workdir, config_lib.Config(data_dir=data_dir))

  result = conftest.run_binary(f'--workdir={workdir}', '--num_examples=100',
                               '--diagnostic_examples=50', binary='figures')
  assert result.returncode == 0, result.stderr[-3000:]
  for name in _NAMES:
    png = tf.io.decode_png(tf.io.read_file(
        os.path.join(workdir, name + '.png')))
    assert png.shape[0] > 100 and png.shape[1] > 100, name
  with open(os.path.join(workdir, 'diagnostics.json')) as f:
    diagnostics = json.load(f)
  assert diagnostics['step'] == 1 and diagnostics['num_examples'] == 50
  np.testing.assert_allclose(diagnostics['log_num_examples'], np.log(50))
  assert diagnostics['mutual_information'] <= np.log(50) + 1e-5
  assert len(diagnostics['kl_per_dimension']) == 16
  tags = set()
  for path in tf.io.gfile.glob(os.path.join(workdir, 'figures', 'events*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value
                  if event.step == 1)
  assert tags == {'latent/' + name for name in _NAMES}


def test_missing_run_is_a_one_line_error(tmp_path):
  result = conftest.run_binary(f'--workdir={tmp_path}', binary='figures')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'Error: {tmp_path}/config.json: not found')
