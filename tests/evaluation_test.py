"""Tests of elbo.evaluation and the evaluate binary."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from elbo import checkpoints
from elbo import config as config_lib
from elbo import diagnostics
from elbo import evaluation
from elbo import factory
from elbo import train
import conftest

# Mechanics, not learning: the small generated files (conftest.data_dir).
pytestmark = pytest.mark.generated_data


tfd = tfp.distributions


class _LinearGaussian:
  """z ~ N(0, I), x | z ~ N(z, s^2 I): log p(x) = log N(x; 0, (1 + s^2) I).
  The posterior is deliberately off, so that the bounds are loose."""

  noise = 0.5

  def latent_prior(self):
    return tfd.MultivariateNormalDiag(tf.zeros(4), tf.ones(4))

  def approx_posterior(self, x):
    return tfd.MultivariateNormalDiag(0.5 * x, tf.fill(tf.shape(x), 0.8))

  def decoder_likelihood(self, z):
    return tfd.MultivariateNormalDiag(z, tf.fill(tf.shape(z), self.noise))

  def log_evidence(self, x):
    scale = np.float32(np.sqrt(1 + self.noise**2))
    return tfd.MultivariateNormalDiag(
        tf.zeros(4), tf.fill([4], scale)).log_prob(x).numpy()


@pytest.mark.parametrize('kl', ['analytic', 'mc'])
def test_log_likelihood_estimate_converges_to_the_evidence(kl):
  model = _LinearGaussian()
  x = tf.constant([[0.3, -1.2, 2.0, 0.1], [1.0, 0.5, -0.5, 0.0]])
  truth = model.log_evidence(x)
  repeats = 40  # Independent estimates per example, averaged.
  x_repeated = tf.tile(x, [repeats, 1])
  estimates, errors, elbos = [], [], []
  for k in (1, 10, 100, 2000):
    # Few decoder passes per call, so large k is summed over many chunks.
    eval_config = evaluation.EvalConfig(
        num_samples=k, examples_per_call=2 * repeats,
        decoder_passes_per_call=4000)
    terms = evaluation.importance_sampled_terms(
        model, train.Config(kl=kl), eval_config)(x_repeated,
                                                 tf.constant([k, 0]))
    np.testing.assert_allclose(terms['elbo'],
                               terms['reconstruction'] - terms['kl'],
                               rtol=1e-6)
    if kl == 'mc':  # Same samples: mean <= log-mean-exp, always.
      assert np.all(terms['elbo'] <= terms['log_likelihood'] + 1e-4)
    per_repeat = terms['log_likelihood'].reshape(repeats, 2)
    estimates.append(per_repeat.mean(0))
    errors.append(per_repeat.std(0) / np.sqrt(repeats))
    elbos.append(terms['elbo'].reshape(repeats, 2).mean(0))
  estimates = np.array(estimates)  # [k, example]
  print('log p(x):', truth, 'L_k for k = 1, 10, 100, 2000:', estimates)
  assert np.all(truth - np.mean(elbos, axis=0) > 1)  # From a loose ELBO
  assert np.all(estimates[1] > estimates[0] + 1)  # the bound tightens,
  # stays below log p(x) (up to its Monte Carlo error), and converges to it:
  assert np.all(estimates <= truth + 4 * np.array(errors) + 1e-3)
  assert np.all(np.abs(truth - estimates[-1]) < 0.02)


@pytest.fixture(scope='module')
def trained_workdir(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  config = train.Config(data_dir=data_dir, batch_size=32, max_steps=5,
                        image_every=1000)
  train.train_and_evaluate(config, workdir)
  return workdir


def test_interrupted_evaluation_continues_to_the_same_result(
    trained_workdir, monkeypatch):
  eval_config = evaluation.EvalConfig(num_samples=20, num_examples=24,
                                      examples_per_call=4, save_every=8)
  clean = evaluation.importance_sampled_terms
  calls = []

  def failing_after_four_calls(*args):
    fn = clean(*args)

    def wrapped(*inner):
      calls.append(1)
      if len(calls) == 4:
        raise KeyboardInterrupt
      return fn(*inner)

    return wrapped

  monkeypatch.setattr(evaluation, 'importance_sampled_terms',
                      failing_after_four_calls)
  with pytest.raises(KeyboardInterrupt):
    evaluation.evaluate_run(trained_workdir, eval_config)
  partial = np.load(os.path.join(trained_workdir,
                                 'evaluation_k20.partial.npz'))
  assert len(partial['elbo']) == 8  # Saved after 8 examples, died at 12.
  monkeypatch.setattr(evaluation, 'importance_sampled_terms', clean)
  resumed = evaluation.evaluate_run(trained_workdir, eval_config)
  os.remove(os.path.join(trained_workdir, 'evaluation_k20.partial.npz'))
  fresh = evaluation.evaluate_run(trained_workdir, eval_config)
  assert resumed['num_examples'] == 24
  for name in ('elbo', 'log_likelihood', 'kl', 'reconstruction'):
    np.testing.assert_allclose(resumed[name]['mean'], fresh[name]['mean'],
                               rtol=1e-6)
  assert fresh['nll'] <= fresh['neg_elbo']
  assert 0 < fresh['kl']['mean'] and fresh['elbo']['stderr'] > 0


def test_a_subset_then_more_computes_each_image_once(trained_workdir,
                                                     monkeypatch):
  """The first 12 images, then the first 24, then 12 again: each run
  computes only what is not saved yet (from image 8, the start of the call
  that 12 cut short), and each equals a fresh evaluation of its subset."""
  config = lambda n: evaluation.EvalConfig(num_samples=10, num_examples=n,
                                           examples_per_call=8)
  partial = os.path.join(trained_workdir, 'evaluation_k10.partial.npz')
  fresh = {}
  for n in (12, 24):
    fresh[n] = evaluation.evaluate_run(trained_workdir, config(n))
    os.remove(partial)
  clean = evaluation.importance_sampled_terms
  computed = []

  def counting(*args):
    fn = clean(*args)
    # images: [replicas, images of the call, ...].
    return lambda images, *rest: (computed.append(images.shape[1]),
                                  fn(images, *rest))[1]

  monkeypatch.setattr(evaluation, 'importance_sampled_terms', counting)
  first = evaluation.evaluate_run(trained_workdir, config(12))
  second = evaluation.evaluate_run(trained_workdir, config(24))
  # Then a subset of what is done: only the call that 12 cuts short again.
  third = evaluation.evaluate_run(trained_workdir, config(12))
  os.remove(partial)
  assert computed == [8, 4, 8, 8, 4]  # 0-7, 8-11; 8-15, 16-23; 8-11.
  for result, n in ((first, 12), (second, 24), (third, 12)):
    assert result['num_examples'] == n
    for name in ('elbo', 'log_likelihood'):
      np.testing.assert_allclose(result[name]['mean'],
                                 fresh[n][name]['mean'], rtol=1e-6)


@pytest.mark.parametrize('kl', ['analytic', 'mc'])
def test_more_samples_reuse_the_draws_of_fewer(trained_workdir, tmp_path, kl,
                                               monkeypatch):
  """k = 9 after k = 5 draws only the 4 new samples of each whole call of
  the k = 5 evaluation (chunks of 2: the third is split), and gives what
  k = 9 gives alone."""
  workdir = conftest.copy_run(trained_workdir, str(tmp_path / 'run'), kl=kl)
  eval_config = lambda k, n: evaluation.EvalConfig(
      num_samples=k, num_examples=n, examples_per_call=4,
      decoder_passes_per_call=8)
  partial = lambda k: os.path.join(workdir, f'evaluation_k{k}.partial.npz')
  evaluation.evaluate_run(workdir, eval_config(9, 14))
  with np.load(partial(9)) as saved:
    alone = {name: saved[name] for name in ('log_likelihood', 'elbo', 'kl')}
  os.remove(partial(9))
  evaluation.evaluate_run(workdir, eval_config(5, 10))  # Whole calls: 0-7.

  clean = evaluation.importance_sampled_terms
  reused = []

  def recording(*args):
    fn = clean(*args)
    return lambda images, seed, reuse=None: (
        reused.append(None if reuse is None else reuse['num_samples']),
        fn(images, seed, reuse))[1]

  monkeypatch.setattr(evaluation, 'importance_sampled_terms', recording)
  evaluation.evaluate_run(workdir, eval_config(9, 14))
  assert reused == [5, 5, None, None]  # Images 0-3, 4-7; 8-11, 12-13.
  with np.load(partial(9)) as saved:
    for name, values in alone.items():
      np.testing.assert_allclose(saved[name], values, rtol=1e-5, atol=1e-4)


def test_evaluate_binary_end_to_end(trained_workdir):
  result = conftest.run_binary('--workdir', trained_workdir,
                               '--num_samples=50', '--num_examples=16',
                               binary='evaluate')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(trained_workdir, 'evaluation_k50_n16.json')) as f:
    saved = json.load(f)
  assert saved['step'] == 5 and saved['num_examples'] == 16
  assert np.isfinite(saved['nll']) and saved['nll'] <= saved['neg_elbo']
  assert f"-log p(x) (k=50) {saved['nll']:.2f}" in result.stderr
  # Progress: images done, decoder passes per second, time left.
  assert 'evaluation_k50: 16/16 images, ' in result.stderr
  assert 'decoder passes/s, ETA 0:00:00' in result.stderr
  events = conftest.read_events(os.path.join(trained_workdir, 'eval'))
  tags = {tag for tag, _, _ in events}
  assert {'neg_elbo', 'reconstruction', 'kl', 'nll/k50',
          'progress/decoder_passes_per_second',
          'progress/hours_left'} <= tags
  assert 16 in [step for tag, step, _ in events
                if tag == 'progress/images_done']
  # The latent diagnostics of the same 16 images: in the JSON and in eval/.
  latent = saved['latent']
  # Active units: the dimensions whose posterior mean varies over the images.
  assert latent['active_units'] == np.sum(
      np.array(latent['posterior_mean_variance']) >
      diagnostics.ACTIVE_UNIT_THRESHOLD)
  assert len(latent['kl_per_dimension']) == 16
  assert 0 <= latent['mutual_information'] <= np.log(16) + 1e-6
  assert {'latent/active_units', 'latent/mutual_information'} <= tags


def test_model_fn_builds_the_model_in_the_asked_precision(trained_workdir):
  """A model of one's own goes through the real evaluation; it is built
  from the run's config with the evaluation's precision."""
  built = []

  def model_fn(config):
    built.append(config.precision)
    return factory.build_model(config)

  eval_config = lambda precision: evaluation.EvalConfig(
      num_samples=4, num_examples=8, precision=precision)
  half = evaluation.evaluate_run(trained_workdir,
                                 eval_config('mixed_bfloat16'), model_fn)
  full = evaluation.evaluate_run(trained_workdir, eval_config('float32'),
                                 model_fn)
  assert built == ['mixed_bfloat16', 'float32']
  assert (half['precision'], full['precision']) == ('mixed_bfloat16',
                                                    'float32')
  # Same weights and draws: bf16 rounding only, but not nothing.
  assert 0 < abs(half['nll'] - full['nll']) < 0.5


def test_evaluate_binary_errors(tmp_path):
  result = conftest.run_binary('--workdir', str(tmp_path), binary='evaluate')
  assert result.returncode != 0
  assert 'config.json: not found' in result.stderr
  result = conftest.run_binary('--workdir', str(tmp_path), '--num_samples=0',
                               binary='evaluate')
  assert 'num_samples must be >= 1' in result.stderr


def test_an_unreadable_checkpoint_is_a_one_line_error(trained_workdir,
                                                      tmp_path):
  """Not a traceback from TF's reader (the newest readable one would be
  used: tests/checkpoints_test.py)."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained_workdir, workdir)
  (data_file,) = glob.glob(os.path.join(workdir, 'checkpoints', '*.data-*'))
  with open(data_file, 'r+b') as f:
    f.truncate(os.path.getsize(data_file) // 2)
  with pytest.raises(checkpoints.CheckpointReadError) as raised:
    evaluation.restore_model(workdir)
  assert '\n' not in str(raised.value)
  assert 'ckpt-5.data-00000-of-00001: Read less bytes' in str(raised.value)
