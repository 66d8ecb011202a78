"""A run whose workdir is on TensorFlow's in-memory filesystem (`ram://`,
which stands in for `gs://`): trained, resumed, evaluated, exported and reported with
every workdir read and write going through `tf.io.gfile`."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from elbo import config as config_lib
from elbo import evaluation
from elbo import export
from elbo import results
from elbo import train
from elbo import workdir_lock

pytestmark = pytest.mark.generated_data

_EVAL = evaluation.EvalConfig(num_samples=4, num_examples=32,
                              examples_per_call=8, save_every=16)


def _config(data_dir: str, max_steps: int) -> config_lib.Config:
  return config_lib.Config(
      model='iwae_mlp', data_dir=data_dir, epochs=1, batch_size=64,
      max_steps=max_steps, steps_per_call=2, log_every=2, image_every=4,
      checkpoint_every=2, eval_batch_size=64)


def _tensors(workdir: str):
  reader = tf.train.load_checkpoint(os.path.join(workdir, 'checkpoints'))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name != '_CHECKPOINTABLE_OBJECT_GRAPH'}


@pytest.fixture(scope='module')
def runs(data_dir, tmp_path_factory):
  """(ram workdir trained 4 steps then resumed to 6, local workdir trained
  6 steps at once)."""
  ram = 'ram://elbo-ramfs-test/run'
  train.train_and_evaluate(_config(data_dir, 4), ram)
  train.train_and_evaluate(_config(data_dir, 6), ram)
  local = str(tmp_path_factory.mktemp('local') / 'run')
  train.train_and_evaluate(_config(data_dir, 6), local)
  return ram, local


def test_a_resumed_ram_run_is_the_uninterrupted_local_one(runs):
  ram, local = runs
  ram_tensors, local_tensors = _tensors(ram), _tensors(local)
  assert sorted(ram_tensors) == sorted(local_tensors)
  for name, value in local_tensors.items():
    np.testing.assert_array_equal(ram_tensors[name], value, err_msg=name)


def test_the_run_files_are_on_ram(runs):
  ram, _ = runs
  names = {name.rstrip('/') for name in tf.io.gfile.listdir(ram)}
  assert {'config.json', 'run_history.json', 'checkpoints', 'train', 'test',
          'reconstructions.png', 'prior_samples.png'} <= names
  assert workdir_lock.LOCK_FILE not in names  # Released at the end.
  history = tf.io.gfile.GFile(os.path.join(ram, 'run_history.json')).read()
  assert '"start_step": 4' in history  # The second start resumed.
  assert tf.io.gfile.glob(os.path.join(ram, 'train', 'events.out.*'))


def test_the_results_record_of_a_ram_run_is_the_local_runs(runs):
  ram_run, local_run = (results.record_from_workdir(w)['runs'][0]
                        for w in runs)
  assert ram_run['last_step'] == 6 and ram_run['starts'] == 2
  assert ram_run['test'] == local_run['test']


def test_evaluation_on_ram_is_the_local_evaluation(runs):
  ram, local = runs
  ram_result = evaluation.evaluate_run(ram, _EVAL)
  local_result = evaluation.evaluate_run(local, _EVAL)
  for result in (ram_result, local_result):
    result.pop('workdir')
  assert ram_result == local_result and ram_result['step'] == 6
  assert {'evaluation_k4_n32.json', 'evaluation_k4.partial.npz'} <= {
      name.rstrip('/') for name in tf.io.gfile.listdir(ram)}
  # `listdir` on ram:// omits a directory never made explicitly (the
  # summary writer's `eval/`), so look for its event files themselves.
  assert tf.io.gfile.glob(os.path.join(ram, 'eval', 'events.out.*'))
  # A second evaluation with more samples reuses the first's draws there.
  more = dataclasses.replace(_EVAL, num_samples=8)
  assert (evaluation.evaluate_run(ram, more)['nll'] ==
          evaluation.evaluate_run(local, more)['nll'])


def test_export_to_ram_loads_and_computes_what_the_model_does(runs):
  ram, _ = runs
  model, _, _ = evaluation.restore_model(ram)
  export_dir = os.path.join(ram, 'saved_model')
  export.export(model, export_dir)
  loaded = tf.saved_model.load(export_dir)
  x = tf.cast(tf.random.stateless_uniform([3, 28, 28, 1], [1, 2]) > 0.5,
              tf.float32)
  k, seed = tf.constant(5), tf.constant(3)
  expected = export.log_prob_bound(model, x, k, seed)['log_prob_bound']
  got = loaded.log_prob_bound(x, k, seed)['log_prob_bound']
  np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6)
