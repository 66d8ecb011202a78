"""Test-set evaluation of a trained run: the ELBO and log p(x) by importance
sampling, with standard errors, in resumable chunks, on one device or many.

k = 5000 importance samples over 10,000 test images is 50 million decoder
passes (hours on a CPU), so the work is done a few examples at a time (a
"call") and the per-example results are saved every few hundred images; a
rerun continues where the last one stopped.

For each test image x, from the same k samples z_s ~ q(z | x):

```none
reconstruction = mean_s log p(x | z_s)
kl             = KL(q || p) in closed form (config.kl == 'analytic'),
                 else mean_s [log q(z_s | x) - log p(z_s)]
elbo           = reconstruction - kl
log p(x) ~ L_k = log mean_s p(x | z_s) p(z_s) / q(z_s | x)    (a lower bound
                 that tightens as k grows [Burda et al. 2015])
```

A call's draws are keyed by its first image (`fold_in(seed, start)`), so it
computes the same wherever it runs. Under a `tf.distribute` strategy each
replica computes whole calls: worker w of W takes calls w, w + W, w + 2W,
... and its R replicas R of those at a time. Each worker saves its share;
once all are in, the chief merges them into the file a single process
writes, and the figures are those of one process.

The draws of an evaluation with k' samples are the first k' draws of one
with k > k' (same checkpoint, seed, precision and chunking), so a finished
smaller evaluation is reused: k = 5000 after k = 1000 draws only the 4000
new samples per image, and gives the same figures as without it.
"""

import dataclasses
import datetime
import json
import math
import os
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from elbo import checkpoints
from elbo import config as config_lib
from elbo import data
from elbo import diagnostics
from elbo import distribute
from elbo import errors
from elbo import eval_store
from elbo import factory
from elbo import faults
from elbo import losses
from elbo import models
from elbo import run_record
from elbo import streams
from elbo import summaries

__all__ = ['EvalConfig', 'USER_ERRORS', 'WorkerLostError', 'evaluate_run',
           'importance_sampled_terms', 'restore_model']

_Call = eval_store.Call
_Values = eval_store.Values
ModelFn = models.ModelFn
# Seconds between progress lines (and scalars) between saves.
_LOG_EVERY_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How to evaluate: k, how much of the test set, how to chunk the work,
  where to run it."""
  num_samples: int = 5000  # k
  num_examples: int = 0  # 0: the whole test split.
  examples_per_call: int = 8
  decoder_passes_per_call: int = 2048  # Bounds memory: samples x examples.
  save_every: int = 256  # Examples between saves of partial results.
  seed: int = 0
  precision: str = 'float32'
  data_dir: Optional[str] = None  # None: the run's own.
  strategy: str = 'default'  # See elbo.distribute.STRATEGIES.
  tpu: str = 'local'  # strategy='tpu': a TPU name or grpc:// address.

  def __post_init__(self):
    for name in ('num_samples', 'examples_per_call',
                 'decoder_passes_per_call', 'save_every'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if self.num_examples < 0:
      raise ValueError(f'num_examples must be >= 0, got {self.num_examples}.')
    if self.precision not in config_lib.PRECISIONS:
      raise ValueError(f'precision must be one of {config_lib.PRECISIONS}.')
    if self.strategy not in distribute.STRATEGIES:
      raise ValueError(f'strategy must be one of {distribute.STRATEGIES}.')


WorkerLostError = errors.WorkerLostError
# What a binary reports as one line (`Error: ...`): `elbo.errors.USER_ERRORS`.
USER_ERRORS = errors.USER_ERRORS


def restore_model(workdir: str, precision: str = 'float32',
                  model_fn: Optional[ModelFn] = None, **config_overrides):
  """Rebuilds a run's model from its config.json and latest checkpoint.

  Create it under `strategy.scope()` to evaluate under a strategy.

  Args:
    workdir: a training workdir.
    precision: the dtype policy to compute in; the checkpoint's variables
      are float32 either way. Default value: `'float32'`.
    model_fn: `model_fn(config) -> model`, for a model of your own trained
      by `elbo.train`; None: the built-in VAE. It receives the run's config
      with `precision` in place of the run's own.
    **config_overrides: replace values of the saved config (e.g. a
      `data_dir` on this machine).

  Returns:
    (model, config, step): the model with restored weights, the config it
    was built from, and the global step of the checkpoint.

  Raises:
    FileNotFoundError: no config.json or no checkpoint.
    checkpoints.CheckpointError: no checkpoint reads, or the newest that
      reads holds another model (unreadable newer ones are skipped with a
      warning, as when training resumes).
  """
  config = dataclasses.replace(config_lib.load(workdir, **config_overrides),
                               precision=precision)
  model = (model_fn or factory.build_model)(config)
  # Only the model: the optimizer and metric sums in the file are not needed.
  path = checkpoints.restore_newest_readable(
      tf.train.Checkpoint(model=model), os.path.join(workdir, 'checkpoints'),
      partial=True)
  if path is None:
    raise FileNotFoundError(f'{workdir}/checkpoints: no checkpoint to '
                            'evaluate.')
  return model, config, checkpoints.step_of(path)


def _local_replicas(strategy: tf.distribute.Strategy) -> int:
  """Replicas in this process (the default strategy has one)."""
  try:
    return len(strategy.extended.worker_devices)
  except RuntimeError:  # The default strategy: one.
    return 1


def importance_sampled_terms(
    model: models.VAE, config: config_lib.Config, eval_config: EvalConfig,
    strategy: Optional[tf.distribute.Strategy] = None):
  """Returns `fn(images, seed, reused=None) -> {name: per-example values}`
  computing the terms of the module docstring with k =
  eval_config.num_samples, in chunks of samples so that at most
  `decoder_passes_per_call` decoder passes are in memory at once.

  Chunk i is drawn with seed `fold_in(seed, i)`, and a shorter draw is a
  prefix of a longer one, so the first k' draws are the same for every
  k >= k'. `reused`, the per-example results of the same call with k' < k
  samples (and `'num_samples': k'`), stands in for those first k' draws.

  Without `strategy`, `images` is one call ([B, ...]), `seed` [2] and the
  values [B]. Under `strategy` (R replicas in this process) `images` is
  [R, B, ...], one call per replica, `seed` [R, 2], the reused and returned
  values [R, B]. The sums over chunks are taken on the host in float64, so
  a call's figures do not depend on the replica that computed it.
  """
  return _ImportanceSampler(model, config, eval_config, strategy)


class _ImportanceSampler:
  """The function `importance_sampled_terms` returns: compiled sums over
  each chunk of draws, per replica, added up on the host."""

  def __init__(self, model: models.VAE, config: config_lib.Config,
               eval_config: EvalConfig,
               strategy: Optional[tf.distribute.Strategy]):
    self._model, self._analytic = model, config.kl == 'analytic'
    self._k = eval_config.num_samples
    self._chunk = max(1, min(self._k, eval_config.decoder_passes_per_call //
                             eval_config.examples_per_call))
    self._replicated = strategy is not None
    self._strategy = strategy or tf.distribute.get_strategy()
    self._local = _local_replicas(self._strategy)
    self._chunk_sums = tf.function(self._chunk_sums_per_replica)
    self._analytic_kl = tf.function(lambda images: self._strategy.run(
        lambda x: losses.kl_divergence(
            model.approx_posterior(x), latent_prior=model.latent_prior()),
        args=(images,)))

  def _chunk_sums_per_replica(self, images, seeds, samples, skip):
    """Per replica: sums over draws [skip, samples) of the chunk."""
    model = self._model

    def replica_fn(images, seed):
      log_likelihood, log_ratio = losses.log_likelihood_and_ratio(
          images, model.approx_posterior(images), model.decoder_likelihood,
          latent_prior=model.latent_prior(), num_samples=samples, seed=seed)
      log_likelihood, log_ratio = log_likelihood[skip:], log_ratio[skip:]
      return (tf.reduce_logsumexp(log_likelihood - log_ratio, axis=0),
              tf.reduce_sum(log_likelihood, axis=0),
              tf.reduce_sum(log_ratio, axis=0))

    return self._strategy.run(replica_fn, args=(images, seeds))

  def _per_replica(self, values: np.ndarray):
    return self._strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(
            values[context.replica_id_in_sync_group % self._local]))

  def _on_host(self, output) -> np.ndarray:
    """[R, ...] float64, from a per-replica result."""
    return np.stack([np.asarray(v, np.float64) for v in
                     self._strategy.experimental_local_results(output)])

  def _reused_sums(self, shape, reused: Optional[Dict]):
    """(log-sum-exp, likelihood sum, ratio sum, draws done) of the reused
    draws; of none if `reused` is None."""
    if reused is None:
      return np.full(shape, -np.inf), np.zeros(shape), np.zeros(shape), 0
    done = reused['num_samples']
    if not 0 < done < self._k:
      raise ValueError(f'Can only reuse 0 < k\' < {self._k} samples, not '
                       f'{done}.')
    return (reused['log_likelihood'] + math.log(done),
            reused['reconstruction'] * done,
            reused['kl'] * done,  # Used only if the KL is sampled.
            done)

  def __call__(self, images, seed, reused=None) -> _Values:
    if not self._replicated:
      images, seed = np.asarray(images)[None], np.asarray(seed)[None]
      if reused is not None:
        reused = {name: v if name == 'num_samples' else np.asarray(v)[None]
                  for name, v in reused.items()}
    images, seed = np.asarray(images), np.asarray(seed)
    if len(images) != self._local:
      raise ValueError(f'{len(images)} calls for {self._local} replicas.')
    k = self._k
    log_sum_exp, likelihood_sum, ratio_sum, done = self._reused_sums(
        images.shape[:2], reused)
    images_per_replica = self._per_replica(images)
    for index, start in enumerate(range(0, k, self._chunk)):
      stop = min(start + self._chunk, k)
      if stop <= done:
        continue
      seeds = np.stack([tf.random.experimental.stateless_fold_in(
          s, index).numpy() for s in seed])
      outputs = self._chunk_sums(images_per_replica, self._per_replica(seeds),
                                 stop - start, max(0, done - start))
      lse, likelihood, ratio = [self._on_host(output) for output in outputs]
      log_sum_exp = np.logaddexp(log_sum_exp, lse)
      likelihood_sum += likelihood
      ratio_sum += ratio
    reconstruction = likelihood_sum / k
    kl = (self._on_host(self._analytic_kl(images_per_replica))
          if self._analytic else ratio_sum / k)
    values = {'reconstruction': reconstruction, 'kl': kl,
              'elbo': reconstruction - kl,
              'log_likelihood': log_sum_exp - math.log(k)}
    return (values if self._replicated
            else {n: v[0] for n, v in values.items()})


def _summary(values: _Values) -> Dict[str, Dict[str, float]]:
  """Mean and standard error of the mean of each per-example quantity."""
  n = len(values['elbo'])
  return {name: {'mean': float(np.mean(v)),
                 'stderr': float(np.std(v, ddof=1) / math.sqrt(n))
                 if n > 1 else float('nan')}
          for name, v in values.items()}


def _worker(strategy: tf.distribute.Strategy) -> Tuple[int, int]:
  """(index, number) of this worker: the chief first, then the workers."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 0, 1
  resolver = strategy.cluster_resolver
  spec = resolver.cluster_spec().as_dict()
  tasks = [(job, index) for job in ('chief', 'worker')
           for index in range(len(spec.get(job, [])))]
  return tasks.index((resolver.task_type, resolver.task_id)), len(tasks)


def _sum_over_workers(strategy: tf.distribute.Strategy,
                      value: float) -> float:
  """`value` summed over the workers: a collective, so it also waits for
  them all, and fails if one has stopped."""
  local = _local_replicas(strategy)
  values = strategy.experimental_distribute_values_from_function(
      lambda context: tf.constant(
          value if context.replica_id_in_sync_group % local == 0 else 0.,
          tf.float64))
  total = tf.function(lambda v: strategy.reduce(
      tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(v,)),
      axis=None))
  return float(total(values))


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  return str(datetime.timedelta(seconds=round(seconds)))


class _Restored(NamedTuple):
  """A run's model at its latest checkpoint and the test images."""
  model: models.VAE
  config: config_lib.Config
  step: int
  binary: np.ndarray  # The binarized test images to evaluate.


@dataclasses.dataclass
class _Plan:
  """What this worker computes of an evaluation, and what it reuses."""
  k: int
  per_call: int
  calls: List[_Call]  # All calls, in test-set order.
  mine: List[_Call]  # This worker's: calls w, w + W, w + 2W, ...
  todo: List[_Call]  # Those of `mine` not saved yet.
  known: Dict[_Call, _Values]  # Saved or computed: grows as calls finish.
  reusable: Optional[_Values]  # A smaller k's draws, from `EvalStore`.
  worker: int
  num_workers: int

  def reuses(self, call: _Call) -> bool:
    """Whether the saved draws of a smaller k stand in for the call's
    first draws: a whole call that the smaller evaluation finished."""
    return (self.reusable is not None and
            call[1] - call[0] == self.per_call and
            call[1] <= len(self.reusable['elbo']))

  def passes(self, call: _Call) -> int:
    """Decoder passes the call still costs."""
    draws = self.k - (self.reusable['num_samples'] if self.reuses(call)
                      else 0)
    return (call[1] - call[0]) * draws

  def groups(self, local: int) -> List[List[_Call]]:
    """`todo` in groups of calls, one per replica, alike in size and
    reuse: a group's replicas draw the same number of samples in
    lockstep."""
    alike = lambda call: (call[1] - call[0], self.reuses(call))
    groups = []
    for call in self.todo:
      if (groups and len(groups[-1]) < local and
          alike(call) == alike(groups[-1][0])):
        groups[-1].append(call)
      else:
        groups.append([call])
    return groups

  def own_values(self) -> _Values:
    """This worker's finished calls' per-example values."""
    return eval_store.concatenate(
        [self.known[call] for call in self.mine if call in self.known])


class _Progress:
  """Images done, decoder passes per second and the time left, of this
  worker's share and, on the chief, of all workers (from their saved
  shares): on the terminal and as TensorBoard scalars `progress/*` (this
  worker's in `eval/worker_{w}` when there are several, all workers' in
  `eval/`)."""

  def __init__(self, store: eval_store.EvalStore, plan: _Plan, chief: bool,
               total_images: int):
    self._store, self._k = store, plan.k
    self._worker, self._num_workers, self._chief = (
        plan.worker, plan.num_workers, chief)
    self._total_images = total_images
    self.share_images = sum(e - s for s, e in plan.mine)
    self.done_images = sum(e - s for s, e in plan.mine if (s, e) in plan.known)
    self.remaining_passes = sum(map(plan.passes, plan.todo))
    self._passes, self._seconds = 0, 0.
    self._last_log = time.perf_counter()
    make = lambda name: summaries.SummaryWriter(
        os.path.join(store.workdir, name))
    self._own_writer = make(f'eval/worker_{plan.worker}') if (
        plan.num_workers > 1) else None
    self._total_writer = make('eval') if chief else None

  def add(self, images: int, passes: int, seconds: float) -> None:
    self.done_images += images
    self._passes += passes
    self._seconds += seconds
    self.remaining_passes -= passes

  def rate(self) -> float:
    return self._passes / self._seconds if self._seconds else float('nan')

  def as_saved(self) -> Dict[str, float]:
    """What the chief reads of this worker's share file."""
    return {'progress_images': self.done_images,
            'progress_share_images': self.share_images,
            'progress_passes_per_second': self.rate(),
            'progress_remaining_passes': self.remaining_passes}

  def _totals(self) -> Tuple[int, float, float]:
    """(images done, passes per second, seconds left) of all workers, from
    the shares they saved last; the time left is unknown ('?') until every
    worker has saved once."""
    shares = [self.as_saved()]
    for other in range(self._num_workers):
      if other != self._worker:
        shares.append(self._store.share_progress(other, self._num_workers,
                                                 list(shares[0])))
    known = [share for share in shares if share is not None]
    busy = [share for share in known
            if share['progress_remaining_passes'] > 0]
    rate = sum(share['progress_passes_per_second'] for share in known
               if math.isfinite(share['progress_passes_per_second']))
    left = max([share['progress_remaining_passes'] /
                share['progress_passes_per_second'] for share in busy],
               default=0.)
    if len(known) < len(shares):
      left = float('nan')
    return (int(sum(share['progress_images'] for share in known)),
            rate or float('nan'), left)

  def log(self, values: _Values, force: bool = False) -> None:
    """Every `_LOG_EVERY_SECONDS`, or now if `force`."""
    now = time.perf_counter()
    if not force and now - self._last_log < _LOG_EVERY_SECONDS:
      return
    self._last_log = now
    rate = self.rate()
    left = self.remaining_passes / rate if self.remaining_passes else 0.
    line = (f'{self.done_images}/{self.share_images} images, '
            f'{rate:.0f} decoder passes/s, ETA {_duration(left)}')
    if self._num_workers > 1:
      line = f'worker {self._worker}/{self._num_workers}: {line}'
    if self._own_writer is not None:
      self._write(self._own_writer, self.done_images, rate, left)
    if self._chief:
      done, total_rate, total_left = self._totals()
      if self._num_workers > 1:
        line += (f'; all workers: {done}/{self._total_images} images, '
                 f'{total_rate:.0f} decoder passes/s, ETA '
                 f'{_duration(total_left)}')
      self._write(self._total_writer, done, total_rate, total_left)
    if len(values['elbo']):
      line += (f'; -ELBO {-np.mean(values["elbo"]):.2f}, -log p(x) '
               f'{-np.mean(values["log_likelihood"]):.2f} so far')
    logging.info('evaluation_k%d: %s', self._k, line)

  @staticmethod
  def _write(writer: summaries.SummaryWriter, step: int, rate: float,
             left: float) -> None:
    values = {'progress/images_done': step,
              'progress/decoder_passes_per_second': rate,
              'progress/hours_left': left / 3600}
    writer.scalars(step, {name: value for name, value in values.items()
                          if math.isfinite(value)})


def evaluate_run(workdir: str, eval_config: EvalConfig,
                 model_fn: Optional[ModelFn] = None) -> Optional[Dict]:
  """Evaluates the latest checkpoint in `workdir` on the test split.

  Writes `evaluation_k{k}[_n{N}].json` (and TensorBoard scalars under
  `workdir/eval`) and, as it goes, `evaluation_k{k}.partial.npz`: the
  per-example results, in test-set order, that a rerun continues from,
  whether it asks for the same subset, a larger one or the whole split.
  The saved results of an evaluation with fewer samples stand in for its
  draws (module docstring). The workdir may be on any filesystem
  TensorFlow reads (`gs://...`).

  Under `eval_config.strategy` the calls are shared out (module
  docstring). With several workers each saves its share as
  `evaluation_k{k}.worker{w}of{W}.partial.npz` and continues from it when
  rerun; the chief waits for all, merges them into the single-process file
  and writes the JSON and scalars. Any number of workers (or a single
  process) can continue what any other number saved.

  Args:
    workdir: a training workdir.
    eval_config: what to compute, and where.
    model_fn: `model_fn(config) -> model`, as for `restore_model`.

  Returns:
    On the chief, the JSON's contents: step, k, number of examples, and for
    each of `elbo`, `reconstruction`, `kl`, `log_likelihood` the mean and
    standard error, plus the negated `neg_elbo` and `nll` for tables. None
    on the other workers.

  Raises:
    WorkerLostError: another worker stopped before its share was done.
    distribute.StrategyError: the strategy cannot run here.
  """
  # First, before any other TF op: multi-worker collectives need it.
  strategy = distribute.make_strategy(eval_config.strategy, eval_config.tpu)
  run = _restore(workdir, eval_config, model_fn, strategy)
  store = eval_store.EvalStore(workdir, eval_config.num_samples,
                               _key(run.step, eval_config),
                               eval_config.examples_per_call)
  plan = _plan(store, len(run.binary), strategy)
  _compute(plan, store, run, eval_config, strategy)
  per_example = _gather(plan, store, strategy)
  if per_example is None:
    return None
  return _report(workdir, eval_config, run, per_example)


def _restore(workdir: str, eval_config: EvalConfig,
             model_fn: Optional[ModelFn],
             strategy: tf.distribute.Strategy) -> _Restored:
  """The run's model (made under `strategy`) and the test images."""
  overrides = {'data_dir': eval_config.data_dir} if eval_config.data_dir else {}
  with strategy.scope():
    model, config, step = restore_model(workdir, eval_config.precision,
                                        model_fn, **overrides)
  images = data.load_images(config.dataset, 'test', config.data_dir)
  # Binarized whole, then cut: the first N images are the same whatever N.
  binary = np.concatenate(list(data.eval_batches(images, 10_000)))
  if eval_config.num_examples:
    binary = binary[:eval_config.num_examples]
  return _Restored(model, config, step, binary)


def _key(step: int, eval_config: EvalConfig) -> Dict[str, object]:
  """Everything the draws depend on: saved results with another key are
  not reused."""
  return {'step': step, 'seed': eval_config.seed,
          'precision': eval_config.precision,
          'examples_per_call': eval_config.examples_per_call,
          'decoder_passes_per_call': eval_config.decoder_passes_per_call}


def _plan(store: eval_store.EvalStore, num_examples: int,
          strategy: tf.distribute.Strategy) -> _Plan:
  """This worker's calls, those already saved, and the draws of a smaller
  finished evaluation that can stand in for the first ones."""
  worker, num_workers = _worker(strategy)
  known = store.load_known()
  calls = eval_store.calls(num_examples, store.per_call)
  mine = calls[worker::num_workers]
  plan = _Plan(k=store.k, per_call=store.per_call, calls=calls, mine=mine,
               todo=[call for call in mine if call not in known],
               known=known, reusable=store.reusable_draws(), worker=worker,
               num_workers=num_workers)
  if len(plan.todo) < len(mine):
    logging.info('evaluation_k%d: %d of %d calls of this worker already '
                 'done.', plan.k, len(mine) - len(plan.todo), len(mine))
  if any(map(plan.reuses, plan.todo)):
    logging.info('Reusing the first %d draws of %d calls from '
                 'evaluation_k%d.', plan.reusable['num_samples'],
                 sum(map(plan.reuses, plan.todo)),
                 plan.reusable['num_samples'])
  return plan


def _compute(plan: _Plan, store: eval_store.EvalStore, run: _Restored,
             eval_config: EvalConfig,
             strategy: tf.distribute.Strategy) -> None:
  """Computes this worker's calls not yet saved, one group of calls (one
  per replica) at a time, saving every `save_every` images."""
  terms_fn = importance_sampled_terms(run.model, run.config, eval_config,
                                      strategy)
  base_seed = streams.seed(eval_config.seed, streams.EVAL_IMPORTANCE)
  progress = _Progress(store, plan, distribute.is_chief(strategy),
                       len(run.binary))
  local = _local_replicas(strategy)
  groups = plan.groups(local)
  if not groups:
    logging.info('evaluation_k%d: nothing to compute on this worker.',
                 plan.k)
  since_save = saves = 0
  for group in groups:
    began = time.perf_counter()
    _compute_group(plan, group, terms_fn, run.binary, base_seed, local)
    images = sum(e - s for s, e in group)
    progress.add(images, sum(map(plan.passes, group)),
                 time.perf_counter() - began)
    since_save += images
    if since_save >= eval_config.save_every:
      saves = _save(plan, store, progress, saves)
      since_save = 0
    progress.log(plan.own_values(), force=since_save == 0)  # After a save.
  if since_save:
    _save(plan, store, progress, saves)
    progress.log(plan.own_values(), force=True)


def _compute_group(plan: _Plan, group: List[_Call], terms_fn,
                   binary: np.ndarray, base_seed: tf.Tensor,
                   local: int) -> None:
  """The group's calls, one per replica, into `plan.known`; a call's draws
  are keyed by its first image."""
  padded = group + [group[0]] * (local - len(group))  # Results unused.
  seeds = [tf.random.experimental.stateless_fold_in(base_seed, s).numpy()
           for s, _ in padded]
  reused = None
  if plan.reuses(group[0]):
    reused = {n: np.stack([plan.reusable[n][s:e] for s, e in padded])
              for n in eval_store.PER_EXAMPLE}
    reused['num_samples'] = plan.reusable['num_samples']
  values = terms_fn(np.stack([binary[s:e] for s, e in padded]),
                    np.stack(seeds), reused)
  for index, call in enumerate(group):
    plan.known[call] = {n: values[n][index] for n in eval_store.PER_EXAMPLE}


def _save(plan: _Plan, store: eval_store.EvalStore, progress: _Progress,
          saves: int) -> int:
  """A single process's calls from image 0, or a worker's share; the
  number of saves this process has made."""
  if plan.num_workers == 1:
    store.save_prefix(plan.known)
  else:
    store.save_share(plan.worker, plan.num_workers,
                     {c: plan.known[c] for c in plan.mine if c in plan.known},
                     progress.as_saved())
  faults.kill_if(faults.KILL_AFTER_SAVES, saves + 1)
  return saves + 1


def _gather(plan: _Plan, store: eval_store.EvalStore,
            strategy: tf.distribute.Strategy) -> Optional[_Values]:
  """The per-example results of every call, in test-set order, on the
  chief once all workers have saved their shares (merged into the
  single-process file); None on the other workers."""
  k = plan.k
  if plan.num_workers > 1:
    logging.info('evaluation_k%d: worker %d/%d done; waiting for the '
                 'others.', k, plan.worker, plan.num_workers)
    try:
      _sum_over_workers(strategy, len(plan.todo))
    except tf.errors.OpError as e:
      detail = ' '.join(str(e).split())[:200]
      raise WorkerLostError(
          f'Another worker stopped before its share of evaluation_k{k} was '
          f'saved; run all workers again to continue ({detail}).') from e
    if not distribute.is_chief(strategy):
      return None
    plan.known.update(store.load_known())
    missing = [call for call in plan.calls if call not in plan.known]
    if missing:
      raise WorkerLostError(f'{len(missing)} calls of evaluation_k{k} are '
                            'not saved; run all workers again.')
  store.merge_shares(plan.known)
  return {n: np.concatenate([plan.known[c][n] for c in plan.calls])
          for n in eval_store.PER_EXAMPLE}


def _report(workdir: str, eval_config: EvalConfig, run: _Restored,
            per_example: _Values) -> Dict:
  """The figures and latent diagnostics: as the JSON file (returned) and
  as TensorBoard scalars under `eval/`."""
  k = eval_config.num_samples
  summary = _summary(per_example)
  # Active units, I(x; z), KL per dimension (elbo.diagnostics).
  latent = diagnostics.diagnostics_summary(
      run.model, tf.constant(run.binary[:streams.NUM_DIAGNOSTIC_IMAGES]),
      streams.seed(eval_config.seed, streams.EVAL_DIAGNOSTIC))
  result = {
      'workdir': workdir, 'step': run.step, 'num_samples': k,
      'num_examples': len(run.binary), 'dataset': run.config.dataset,
      'precision': eval_config.precision,
      'neg_elbo': -summary['elbo']['mean'],
      'nll': -summary['log_likelihood']['mean'],
      **summary,
      'latent': {name: v.tolist() if isinstance(v, np.ndarray) else v
                 for name, v in latent.items()},
  }
  name = f'evaluation_k{k}' + (f'_n{len(run.binary)}'
                               if eval_config.num_examples else '')
  run_record.write_file(os.path.join(workdir, name + '.json'),
                        json.dumps(result, indent=2))
  writer = summaries.SummaryWriter(os.path.join(workdir, 'eval'))
  writer.scalars(run.step, {
      'neg_elbo': result['neg_elbo'],
      'reconstruction': summary['reconstruction']['mean'],
      'kl': summary['kl']['mean'], f'nll/k{k}': result['nll']})
  diagnostics.write_summaries(writer, run.step, latent)
  return result
