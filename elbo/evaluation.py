"""Test-set evaluation of a trained run: the ELBO and log p(x) by importance
sampling, with standard errors, in resumable chunks.

k = 5000 importance samples over 10,000 test images is 50 million decoder
passes (hours on a CPU), so the work is done a few examples at a time and
the per-example results are saved after every chunk; a rerun continues
where the last one stopped.

For each test image x, from the same k samples z_s ~ q(z | x):

```none
reconstruction = mean_s log p(x | z_s)
kl             = KL(q || p) in closed form (config.kl == 'analytic'),
                 else mean_s [log q(z_s | x) - log p(z_s)]
elbo           = reconstruction - kl
log p(x) ~ L_k = log mean_s p(x | z_s) p(z_s) / q(z_s | x)    (a lower bound
                 that tightens as k grows [Burda et al. 2015])
```

The draws of an evaluation with k' samples are the first k' draws of one
with k > k' (same checkpoint, seed, precision and chunking), so a finished
smaller evaluation is reused: k = 5000 after k = 1000 draws only the 4000
new samples per image, and gives the same figures as without it.
"""

import dataclasses
import glob
import json
import math
import os
import re
from typing import Dict, Optional

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from elbo import config as config_lib
from elbo import data
from elbo import losses
from elbo import models

__all__ = ['EvalConfig', 'evaluate_run', 'importance_sampled_terms',
           'restore_model']

_PER_EXAMPLE = ('reconstruction', 'kl', 'elbo', 'log_likelihood')


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How to evaluate: k, how much of the test set, how to chunk the work."""
  num_samples: int = 5000  # k
  num_examples: int = 0  # 0: the whole test split.
  examples_per_call: int = 8
  decoder_passes_per_call: int = 2048  # Bounds memory: samples x examples.
  save_every: int = 256  # Examples between saves of partial results.
  seed: int = 0
  precision: str = 'float32'
  data_dir: Optional[str] = None  # None: the run's own.

  def __post_init__(self):
    for name in ('num_samples', 'examples_per_call',
                 'decoder_passes_per_call', 'save_every'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if self.num_examples < 0:
      raise ValueError(f'num_examples must be >= 0, got {self.num_examples}.')
    if self.precision not in config_lib.PRECISIONS:
      raise ValueError(f'precision must be one of {config_lib.PRECISIONS}.')


def restore_model(workdir: str, precision: str = 'float32',
                  **config_overrides):
  """Rebuilds a run's model from its config.json and latest checkpoint.

  Returns:
    (model, config, step): the model with restored weights, the run's
    Config, and the global step of the checkpoint.
  """
  config = config_lib.load(workdir, **config_overrides)
  model = config_lib.build_model(
      dataclasses.replace(config, precision=precision))
  path = tf.train.latest_checkpoint(os.path.join(workdir, 'checkpoints'))
  if path is None:
    raise FileNotFoundError(f'{workdir}/checkpoints: no checkpoint to '
                            'evaluate.')
  # Only the model: the optimizer and metric sums in the file are not needed.
  tf.train.Checkpoint(model=model).restore(
      path).expect_partial().assert_existing_objects_matched()
  return model, config, int(path.rsplit('-', 1)[1])


def importance_sampled_terms(model: models.VAE, config: config_lib.Config,
                             eval_config: EvalConfig):
  """Returns `fn(images, seed, reused=None) -> {name: [B] per-example
  values}` computing the terms of the module docstring with
  k = eval_config.num_samples, in chunks of samples so that at most
  `decoder_passes_per_call` decoder passes are in memory at once.

  Chunk i is drawn with seed `fold_in(seed, i)`, and a shorter draw is a
  prefix of a longer one, so the first k' draws are the same for every
  k >= k'. `reused`, the per-example results of the same call with k' < k
  samples (and `'num_samples': k'`), stands in for those first k' draws.
  """
  k = eval_config.num_samples
  chunk = max(1, min(k, eval_config.decoder_passes_per_call //
                     eval_config.examples_per_call))

  @tf.function
  def chunk_sums(images, seed, samples, skip):
    """Sums over draws [skip, samples) of the chunk."""
    log_likelihood, log_ratio = losses.log_likelihood_and_ratio(
        images, model.approx_posterior(images), model.decoder_likelihood,
        latent_prior=model.latent_prior(), num_samples=samples, seed=seed)
    log_likelihood, log_ratio = log_likelihood[skip:], log_ratio[skip:]
    return (tf.reduce_logsumexp(log_likelihood - log_ratio, axis=0),
            tf.reduce_sum(log_likelihood, axis=0),
            tf.reduce_sum(log_ratio, axis=0))

  def terms(images, seed, reused=None) -> Dict[str, np.ndarray]:
    log_sum_exp = np.full([len(images)], -np.inf)
    likelihood_sum = np.zeros([len(images)])
    ratio_sum = np.zeros([len(images)])
    done = 0
    if reused is not None:
      done = reused['num_samples']
      if not 0 < done < k:
        raise ValueError(f'Can only reuse 0 < k\' < {k} samples, not {done}.')
      log_sum_exp = reused['log_likelihood'] + math.log(done)
      likelihood_sum = reused['reconstruction'] * done
      ratio_sum = reused['kl'] * done  # Used only if the KL is sampled.
    for index, start in enumerate(range(0, k, chunk)):
      stop = min(start + chunk, k)
      if stop <= done:
        continue
      chunk_seed = tf.random.experimental.stateless_fold_in(seed, index)
      lse, likelihood, ratio = chunk_sums(images, chunk_seed, stop - start,
                                          max(0, done - start))
      log_sum_exp = np.logaddexp(log_sum_exp, lse.numpy())
      likelihood_sum += likelihood.numpy()
      ratio_sum += ratio.numpy()
    reconstruction = likelihood_sum / k
    if config.kl == 'analytic':
      kl = losses.kl_divergence(model.approx_posterior(images),
                                latent_prior=model.latent_prior()).numpy()
    else:
      kl = ratio_sum / k
    return {'reconstruction': reconstruction, 'kl': kl,
            'elbo': reconstruction - kl,
            'log_likelihood': log_sum_exp - math.log(k)}

  return terms


def _summary(values: Dict[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
  """Mean and standard error of the mean of each per-example quantity."""
  n = len(values['elbo'])
  return {name: {'mean': float(np.mean(v)),
                 'stderr': float(np.std(v, ddof=1) / math.sqrt(n))
                 if n > 1 else float('nan')}
          for name, v in values.items()}


def _save_partial(path: str, key: Dict[str, object], values) -> None:
  """Atomic: a kill mid-write leaves the previous partial file intact."""
  temporary = path + '.tmp.npz'
  np.savez(temporary, **key, **values)
  os.replace(temporary, path)


def _read_partial(path: str, key: Dict[str, object]):
  """(per-example results, None) if the file at `path` was computed with
  the same `key` (checkpoint step, seed, precision, chunking), else
  (None, the key it was computed with)."""
  with np.load(path) as saved:
    found = {name: saved[name].item() for name in key if name in saved}
    if found == key:
      return {name: saved[name] for name in _PER_EXAMPLE}, None
  return None, found


def _load_partial(path: str, key: Dict[str, object]) -> Dict[str, np.ndarray]:
  """The per-example results saved at `path` with the same `key`; else
  none."""
  if os.path.exists(path):
    values, found = _read_partial(path, key)
    if values is not None:
      return values
    logging.warning('%s was computed with %s, not %s: starting over.', path,
                    found, key)
  return {name: np.zeros([0]) for name in _PER_EXAMPLE}


def _whole_calls(values: Dict[str, np.ndarray],
                 per_call: int) -> Dict[str, np.ndarray]:
  """`values` without a last, shorter call: its draws differ from those of
  a whole call on the same images."""
  whole = len(values['elbo']) - len(values['elbo']) % per_call
  return {name: v[:whole] for name, v in values.items()}


def _reusable_draws(workdir: str, k: int, key: Dict[str, object],
                    per_call: int) -> Optional[Dict[str, np.ndarray]]:
  """The saved whole-call results with the most samples k' < k and the
  same `key`, plus `'num_samples': k'`; None if there are none."""
  smaller = []
  for path in glob.glob(os.path.join(workdir, 'evaluation_k*.partial.npz')):
    match = re.fullmatch(r'evaluation_k(\d+)\.partial\.npz',
                         os.path.basename(path))
    if match and int(match.group(1)) < k:
      smaller.append((int(match.group(1)), path))
  for samples, path in sorted(smaller, reverse=True):
    values, _ = _read_partial(path, key)
    if values is not None:
      values = _whole_calls(values, per_call)
      return {'num_samples': samples, **values} if len(values['elbo']) else None
  return None


def evaluate_run(workdir: str, eval_config: EvalConfig) -> Dict:
  """Evaluates the latest checkpoint in `workdir` on the test split.

  Writes `evaluation_k{k}[_n{N}].json` (and TensorBoard scalars under
  `workdir/eval`) and, as it goes, `evaluation_k{k}.partial.npz`: the
  per-example results, in test-set order, that a rerun continues from,
  whether it asks for the same subset, a larger one or the whole split.
  The saved results of an evaluation with fewer samples stand in for its
  draws (module docstring).

  Returns:
    The JSON's contents: step, k, number of examples, and for each of
    `elbo`, `reconstruction`, `kl`, `log_likelihood` the mean and standard
    error, plus the negated `neg_elbo` and `nll` for tables.
  """
  overrides = {'data_dir': eval_config.data_dir} if eval_config.data_dir else {}
  model, config, step = restore_model(workdir, eval_config.precision,
                                      **overrides)
  images = data.load_images(config.dataset, 'test', config.data_dir)
  # Binarized whole, then cut: the first N images are the same whatever N.
  binary = np.concatenate(list(data.eval_batches(images, 10_000)))
  if eval_config.num_examples:
    binary = binary[:eval_config.num_examples]
  k = eval_config.num_samples
  name = f'evaluation_k{k}' + (f'_n{len(binary)}'
                               if eval_config.num_examples else '')
  # One partial file per k, whatever the subset: evaluating the first 2000
  # images, then all, computes each image once.
  partial_path = os.path.join(workdir, f'evaluation_k{k}.partial.npz')
  # Everything the draws depend on.
  partial_key = {'step': step, 'seed': eval_config.seed,
                 'precision': eval_config.precision,
                 'examples_per_call': eval_config.examples_per_call,
                 'decoder_passes_per_call':
                     eval_config.decoder_passes_per_call}
  values = _load_partial(partial_path, partial_key)
  done = len(values['elbo'])
  per_call = eval_config.examples_per_call
  if done < len(binary):
    # Continue at a whole call: a call's draws depend on where it starts
    # and how many images it holds, so the results are the same however
    # the work was split.
    values = _whole_calls(values, per_call)
    done = len(values['elbo'])
  if done:
    logging.info('Continuing evaluation_k%d from example %d (of %d asked).',
                 k, done, len(binary))

  reusable = _reusable_draws(workdir, k, partial_key, per_call)
  if reusable is not None and done < len(reusable['elbo']):
    logging.info('Reusing the first %d draws of test images %d-%d from '
                 'evaluation_k%d.', reusable['num_samples'], done,
                 len(reusable['elbo']) - 1, reusable['num_samples'])

  terms_fn = importance_sampled_terms(model, config, eval_config)
  base_seed = tf.constant([eval_config.seed, 7], tf.int32)

  def call_terms(start: int, stop: int) -> Dict[str, np.ndarray]:
    """One call on test images [start, stop). Its draws are keyed on
    `start`, so a resumed evaluation draws the same."""
    seed = tf.random.experimental.stateless_fold_in(base_seed, start)
    reused = None
    if (reusable is not None and stop - start == per_call and
        stop <= len(reusable['elbo'])):
      reused = {name: v if name == 'num_samples' else v[start:stop]
                for name, v in reusable.items()}
    return terms_fn(tf.constant(binary[start:stop]), seed, reused)

  progress = keras.utils.Progbar(len(binary),
                                 stateful_metrics=('nll', 'neg_elbo'),
                                 unit_name='example')
  since_save = 0
  for start in range(done, len(binary), per_call):
    stop = min(start + per_call, len(binary))
    for term, value in call_terms(start, stop).items():
      values[term] = np.concatenate([values[term], value])
    since_save += stop - start
    progress.update(len(values['elbo']), [
        ('nll', -float(np.mean(values['log_likelihood']))),
        ('neg_elbo', -float(np.mean(values['elbo'])))])
    if since_save >= eval_config.save_every:
      _save_partial(partial_path, partial_key, values)
      since_save = 0
  _save_partial(partial_path, partial_key, values)

  per_example = {term: v[:len(binary)] for term, v in values.items()}
  cut = len(binary) % per_call
  if len(values['elbo']) > len(binary) and cut:
    # A larger evaluation was done before: a run of this subset alone ends
    # with a shorter call, whose draws differ. Redo that call (unsaved).
    start = len(binary) - cut
    for term, value in call_terms(start, len(binary)).items():
      per_example[term] = np.concatenate([per_example[term][:start], value])
  summary = _summary(per_example)
  result = {
      'workdir': workdir, 'step': step, 'num_samples': k,
      'num_examples': len(binary), 'dataset': config.dataset,
      'precision': eval_config.precision,
      'neg_elbo': -summary['elbo']['mean'],
      'nll': -summary['log_likelihood']['mean'],
      **summary,
  }
  with open(os.path.join(workdir, name + '.json'), 'w') as f:
    json.dump(result, f, indent=2)
  writer = tf.summary.create_file_writer(os.path.join(workdir, 'eval'))
  with writer.as_default(step=step):
    tf.summary.scalar('neg_elbo', result['neg_elbo'])
    tf.summary.scalar('reconstruction', summary['reconstruction']['mean'])
    tf.summary.scalar('kl', summary['kl']['mean'])
    tf.summary.scalar(f'nll/k{k}', result['nll'])
  writer.flush()
  return result
