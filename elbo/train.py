"""The training loop: an explicit GradientTape step, TensorBoard, checkpoints.

`train_and_evaluate(config, workdir)` is the whole job. Re-running it with the
same workdir resumes from the latest checkpoint: model, optimizer (whose
`iterations` is the global step), and the running metric sums; the data
position follows from the step, because batches and latent draws are keyed on
(seed, epoch, step) (see `elbo.data`). So an interrupted and resumed run
computes what an uninterrupted one would.

Safety: SIGTERM / SIGINT end the run with a checkpoint after the steps in
flight (`TrainingInterrupted`), on every worker at the same step
(`elbo.interrupts`); a non-finite loss term or gradient stops it
(`NonFiniteError`) before any checkpoint of the bad state is written.
"""

import os
import time
from typing import Dict, List, Optional, Sequence

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from elbo import checkpoints
from elbo import config as config_lib
from elbo import data
from elbo import distribute
from elbo import images
from elbo import interrupts
from elbo import losses
from elbo import models

__all__ = ['Config', 'NonFiniteError', 'NonFiniteGuard',
           'TrainingInterrupted', 'clip_by_global_norm', 'evaluate',
           'make_eval_step', 'make_train_loop', 'make_train_step',
           'resolve_jit_compile', 'steps_to_next_event', 'train_and_evaluate']

Config = config_lib.Config
_TERMS = losses.ElboTerms._fields  # ('elbo', 'reconstruction', 'kl')
# Logged during training: the ELBO terms and the objective maximized (the
# ELBO itself, beta-weighted during KL warm-up, or the IWAE bound).
_TRAIN_METRICS = _TERMS + ('objective',)
_GUARDED = _TRAIN_METRICS + ('gradients',)
_NUM_GRID_IMAGES = 16
# Stream ids folded into the run seed, so each random use has its own stream.
_LATENT_STREAM, _EVAL_STREAM, _FIGURE_STREAM = 1, 2, 3


def resolve_jit_compile(jit_compile: str) -> bool:
  """'auto' means XLA exactly when an accelerator is present: on CPU, TF's
  oneDNN kernels run this model about 2x faster than XLA's."""
  if jit_compile == 'auto':
    return bool(tf.config.list_physical_devices('GPU') or
                tf.config.list_physical_devices('TPU'))
  return jit_compile == 'true'


class TrainingInterrupted(Exception):
  """A stop signal arrived; a checkpoint of `step` was written.

  `signum` is None on a worker that stopped because another one got it.
  """

  def __init__(self, step: int, signum: Optional[int]):
    cause = (f'signal {signum}' if signum is not None
             else 'a signal to another worker')
    super().__init__(f'Stopped by {cause} after step {step}; '
                     f'checkpoint ckpt-{step} written. Run again to resume.')
    self.step = step
    self.signum = signum


class NonFiniteError(FloatingPointError):
  """A loss term or the gradients became NaN or infinite."""


class NonFiniteGuard(tf.Module):
  """Remembers the first step whose loss terms or gradients are not finite.

  Recording happens inside the compiled step; the host reads it only at
  `check()` (before logging and before every checkpoint), so the guard costs
  no per-step synchronization, and a bad state is never saved.
  """

  def __init__(self):
    super().__init__()
    self.first_bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
    self.bad = tf.Variable(tf.zeros([len(_GUARDED)], tf.bool),
                           trainable=False)

  def observe(self, step: tf.Tensor, metrics: tf.Tensor,
              gradients_finite: tf.Tensor) -> None:
    finite = tf.concat([tf.math.is_finite(metrics), [gradients_finite]],
                       axis=0)

    def record():
      self.first_bad_step.assign(step)
      self.bad.assign(tf.logical_not(finite))
      return tf.constant(0)

    tf.cond(tf.logical_and(tf.logical_not(tf.reduce_all(finite)),
                           self.first_bad_step < 0),
            record, lambda: tf.constant(0))

  def check(self) -> None:
    """Raises NonFiniteError naming the first bad step and what was bad."""
    step = int(self.first_bad_step.numpy())
    if step >= 0:
      names = [n for n, bad in zip(_GUARDED, self.bad.numpy()) if bad]
      raise NonFiniteError(
          f'Non-finite {", ".join(names)} at step {step + 1}; training '
          'stopped and the last checkpoint (before it) was kept.')


def _batch_elbo(model: models.VAE, batch: tf.Tensor, config: Config,
                seed: tf.Tensor) -> losses.ElboTerms:
  return losses.elbo(batch, model.approx_posterior(batch),
                     model.decoder_likelihood, model.latent_prior(),
                     num_samples=config.num_samples, kl_method=config.kl,
                     seed=seed)


def _objective(model: models.VAE, batch: tf.Tensor, config: Config,
               seed: tf.Tensor, step: tf.Tensor):
  """Per-example ELBO terms and the objective to maximize."""
  if config.objective == 'iwae':
    return losses.elbo_and_importance_weighted_bound(
        batch, model.approx_posterior(batch), model.decoder_likelihood,
        model.latent_prior(), num_samples=config.num_samples, seed=seed)
  terms = _batch_elbo(model, batch, config, seed)
  beta = losses.kl_weight(step, config.kl_weight, config.kl_warmup_steps)
  return terms, terms.reconstruction - beta * terms.kl


def clip_by_global_norm(
    gradients: Sequence[tf.Tensor], clip_norm: float,
    context: tf.distribute.ReplicaContext) -> List[tf.Tensor]:
  """Scales this replica's part of the gradient so that the sum over
  replicas, the global-batch gradient the optimizer applies, has norm at
  most `clip_norm`.

  Keras's own `global_clipnorm` clips each replica's part before the
  optimizer sums them, which bounds another norm on several replicas.
  """
  total = gradients
  if context.num_replicas_in_sync > 1:
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
  norm = tf.linalg.global_norm(total)
  scale = clip_norm / tf.maximum(norm, clip_norm)
  return [g * tf.cast(scale, g.dtype) for g in gradients]


def make_train_step(model: models.VAE, optimizer: keras.optimizers.Optimizer,
                    config: Config, jit_compile: bool,
                    guard: Optional[NonFiniteGuard] = None,
                    strategy: Optional[tf.distribute.Strategy] = None):
  """Returns `train_step(batch, step) -> [elbo, reconstruction, kl,
  objective]`, means over the global batch.

  `batch` is the global batch; under `strategy`, replica r of R trains on
  its part r of R. Each replica's loss is minus its objective summed and
  divided by the global batch size, so the all-reduced (summed) gradients
  are those of the global mean, whatever the number of replicas. The
  ELBO's terms come back separately for logging. With `config.clip_norm`,
  the global-batch gradient is clipped to that norm. `step` (int64 scalar, the
  global step) keys the latent draws, so a step computes the same thing
  whenever it runs. XLA (`jit_compile`) compiles each replica's loss and
  gradients, and on a single replica the update too.
  """
  strategy = strategy or tf.distribute.get_strategy()
  latent_seed = tf.constant([config.seed, _LATENT_STREAM], tf.int32)

  @tf.function(jit_compile=jit_compile)
  def loss_and_gradients(batch, step, seed, global_size):
    with tf.GradientTape() as tape:
      terms, objective = _objective(model, batch, config, seed, step)
      loss = -tf.reduce_sum(objective) / global_size
    gradients = tape.gradient(loss, model.trainable_variables)
    sums = tf.stack([tf.reduce_sum(t) for t in (*terms, objective)])
    finite = tf.math.is_finite(tf.linalg.global_norm(gradients))
    return gradients, sums, finite

  def replica_step(global_batch, step):
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    replica = context.replica_id_in_sync_group
    batch = tf.reshape(global_batch,
                       [replicas, -1, *global_batch.shape[1:]])[replica]
    seed = tf.random.experimental.stateless_fold_in(
        latent_seed, tf.cast(step, tf.int32) * replicas + replica)
    global_size = tf.cast(tf.shape(global_batch)[0], tf.float32)
    gradients, sums, finite = loss_and_gradients(batch, step, seed,
                                                 global_size)
    if config.clip_norm:
      gradients = clip_by_global_norm(gradients, config.clip_norm, context)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    size = tf.cast(tf.shape(batch)[0], tf.float32)
    return sums, size, 1. - tf.cast(finite, tf.float32)

  if jit_compile and strategy.num_replicas_in_sync == 1:
    # On one device XLA also fuses the optimizer's update into the step;
    # across replicas the update all-reduces, which stays outside XLA.
    replica_step = tf.function(replica_step, jit_compile=True)

  @tf.function
  def train_step(batch, step):
    sums, size, nonfinite = [
        strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
        for value in strategy.run(replica_step, args=(batch, step))]
    metrics = sums / size
    if guard is not None:
      guard.observe(step, metrics, nonfinite == 0)
    return metrics

  return train_step


def make_train_loop(train_step, images: tf.Variable, batch_size: int,
                    seed: int):
  """Returns `train_steps(first_step, num_steps) -> metric sums`: runs
  `train_step` on steps first_step, ..., first_step + num_steps - 1 in one
  `tf.function` call, making each batch in the graph from the resident
  `images` (`data.training_batch`). Several steps per call cut Python
  dispatch, which matters on accelerators. Returns the sum over the steps
  of `train_step`'s per-step means.
  """

  @tf.function
  def train_steps(first_step, num_steps):
    sums = tf.zeros([len(_TRAIN_METRICS)])
    for step in tf.range(first_step, first_step + num_steps):
      batch = data.training_batch(images, batch_size, seed, step)
      sums += train_step(batch, step)
    return sums

  return train_steps


def steps_to_next_event(step: int, config: Config, steps_per_epoch: int,
                        total_steps: int) -> int:
  """How many steps one call may run: up to `config.steps_per_call`, but
  never past the next log, image, checkpoint, end of epoch or of training,
  so that every one of these happens at exactly the step it would with one
  step per call."""
  boundaries = [step + config.steps_per_call, total_steps]
  for every in (config.log_every, config.image_every,
                config.checkpoint_every, steps_per_epoch):
    boundaries.append((step // every + 1) * every)
  return min(boundaries) - step


def make_eval_step(model: models.VAE, config: Config, jit_compile: bool):
  """Returns `eval_step(batch, seed) -> [elbo, reconstruction, kl]` sums."""

  @tf.function(jit_compile=jit_compile)
  def eval_step(batch, seed):
    terms = _batch_elbo(model, batch, config, seed)
    return tf.stack([tf.reduce_sum(t) for t in terms])

  return eval_step


def evaluate(eval_step, batches: tf.data.Dataset,
             seed: int) -> Dict[str, float]:
  """Mean ELBO terms over a whole split, with a fixed latent seed per batch
  so that repeated evaluations of the same model agree."""
  sums, count = np.zeros(len(_TERMS)), 0
  base_seed = tf.constant([seed, _EVAL_STREAM], tf.int32)
  for index, batch in enumerate(batches):
    batch_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
    sums += eval_step(batch, batch_seed).numpy()
    count += int(batch.shape[0])
  return dict(zip(_TERMS, (sums / count).tolist()))


def _write_scalars(writer, step: int, values: Dict[str, float]) -> None:
  """Writes and flushes, so a killed run still shows its curves."""
  with writer.as_default(step=step):
    for name, value in values.items():
      tf.summary.scalar(name, value)
  writer.flush()


def _format(metrics: Dict[str, float]) -> str:
  return ', '.join(f'{k} {v:.2f}' for k, v in metrics.items())


def train_and_evaluate(config: Config,
                       workdir: str) -> Dict[str, Dict[str, float]]:
  """Trains (or resumes) the blog's VAE and evaluates it each epoch.

  Writes to `workdir`: `checkpoints/`, TensorBoard events in `train/` and
  `test/`, `config.json`, and at the end `reconstructions.png` and
  `prior_samples.png`. Nothing is created before the data has loaded.

  Returns:
    The mean ELBO terms of the last train interval and of the last test
    evaluation: `{'train': {...}, 'test': {...}}`.

  Raises:
    TrainingInterrupted: SIGTERM or SIGINT, here or at another worker; a
      checkpoint was written.
    NonFiniteError: NaN/Inf in a loss term or the gradients.
    checkpoints.CheckpointMismatchError: the workdir holds another model.
    data.DataError: a data file is missing or malformed.
    config_lib.ConfigError: the workdir is a file, or the batch is larger
      than the training set or not divisible by the replicas.
    distribute.StrategyError: the strategy cannot run here.
  """
  # First, before any other TF op: multi-worker collectives need it.
  strategy = distribute.make_strategy(config.strategy, config.tpu)
  chief = distribute.is_chief(strategy)
  if tf.io.gfile.exists(workdir) and not tf.io.gfile.isdir(workdir):
    raise config_lib.ConfigError(
        f'workdir {workdir!r} exists and is not a directory.')
  if config.batch_size % strategy.num_replicas_in_sync:
    raise config_lib.ConfigError(
        f'batch_size {config.batch_size} is not divisible by the '
        f'{strategy.num_replicas_in_sync} replicas.')
  train_images = data.load_images(config.dataset, 'train', config.data_dir)
  test_images = data.load_images(config.dataset, 'test', config.data_dir)
  steps_per_epoch = data.steps_per_epoch(len(train_images), config.batch_size)
  if steps_per_epoch == 0:
    raise config_lib.ConfigError(
        f'batch_size {config.batch_size} exceeds the {len(train_images)} '
        'training images.')
  total_steps = config.epochs * steps_per_epoch
  if config.max_steps:
    total_steps = min(total_steps, config.max_steps)

  keras.utils.set_random_seed(config.seed)  # Weight initialization.
  with strategy.scope():
    model = config_lib.build_model(config)
    optimizer = keras.optimizers.Adam(
        config_lib.learning_rate(config, steps_per_epoch))
    optimizer.build(model.trainable_variables)
    # Running sums of the batch-mean metrics, checkpointed with the model so
    # a resumed run logs the same averages as an uninterrupted one.
    interval_sums = tf.Variable(tf.zeros([len(_TRAIN_METRICS)]),
                                trainable=False)
    epoch_sums = tf.Variable(tf.zeros([len(_TRAIN_METRICS)]),
                             trainable=False)
    guard = NonFiniteGuard()
  # Every worker resumes from the chief's checkpoints; non-chief workers
  # take part in saving (it may be collective) into a scratch directory.
  own_dir = distribute.worker_dir(workdir, strategy)
  manager = checkpoints.make_manager(
      own_dir, config.keep_checkpoints, model=model, optimizer=optimizer,
      interval_sums=interval_sums, epoch_sums=epoch_sums)
  checkpoints.restore_latest(manager, os.path.join(workdir, 'checkpoints'))
  tf.io.gfile.makedirs(own_dir)
  if chief:
    config_lib.save(workdir, config)
  step = int(optimizer.iterations.numpy())

  jit_compile = resolve_jit_compile(config.jit_compile)
  logging.info('XLA (jit_compile): %s; %d replicas (%s); %d steps per epoch; '
               'step %d of %d.', jit_compile, strategy.num_replicas_in_sync,
               config.strategy, steps_per_epoch, step, total_steps)
  train_steps = make_train_loop(
      make_train_step(model, optimizer, config, jit_compile, guard, strategy),
      data.resident_images(train_images), config.batch_size, config.seed)
  eval_step = make_eval_step(model, config, jit_compile)
  writer = lambda name: (
      tf.summary.create_file_writer(os.path.join(workdir, name)) if chief
      else tf.summary.create_noop_writer())
  train_writer, test_writer = writer('train'), writer('test')
  test_batches = data.eval_batches(test_images, config.eval_batch_size)

  figure_seed = tf.constant([config.seed, _FIGURE_STREAM], tf.int32)
  grid_inputs = next(iter(test_batches.unbatch().batch(_NUM_GRID_IMAGES)))
  # Drawn once, so the prior-sample pictures compare across steps.
  prior_z = model.latent_prior().sample(_NUM_GRID_IMAGES, seed=figure_seed)
  pictures = lambda: images.blog_pictures(model, grid_inputs, prior_z,
                                          figure_seed)

  def save():
    guard.check()
    manager.save(checkpoint_number=step)

  def stop(signum):
    raise TrainingInterrupted(step, signum)

  start_step = last_saved_step = step
  progress = keras.utils.Progbar(max(total_steps - start_step, 1),
                                 stateful_metrics=('epoch',) + _TRAIN_METRICS)
  train_metrics, test_metrics = {}, {}
  interval_start_time, interval_start_step = time.perf_counter(), step
  with interrupts.stop_on_signals(strategy, manager.directory, save,
                                  stop) as check_stop:
    while step < total_steps:
      epoch = step // steps_per_epoch
      num_steps = steps_to_next_event(step, config, steps_per_epoch,
                                      total_steps)
      terms = train_steps(tf.constant(step, tf.int64),
                          tf.constant(num_steps, tf.int64))
      interval_sums.assign_add(terms)
      epoch_sums.assign_add(terms)
      step += num_steps
      if step % config.log_every == 0 or step == total_steps:
        guard.check()
        since_log = step - (step - 1) // config.log_every * config.log_every
        train_metrics = dict(zip(_TRAIN_METRICS,
                                 (interval_sums / since_log).numpy()))
        if step % config.log_every == 0:
          # Not at a last step off the grid: if the run is resumed with more
          # steps, the next log still averages its whole interval.
          interval_sums.assign(tf.zeros_like(interval_sums))
        elapsed = time.perf_counter() - interval_start_time
        examples_per_second = ((step - interval_start_step) *
                               config.batch_size / elapsed)
        interval_start_time, interval_start_step = time.perf_counter(), step
        _write_scalars(train_writer, step, {
            **train_metrics,
            'learning_rate': float(optimizer.learning_rate.numpy()),
            'examples_per_second': examples_per_second,
        })
        progress.update(step - start_step,
                        [('epoch', epoch + 1), *train_metrics.items()])
      if step % config.image_every == 0 and chief:
        images.write_image_summaries(train_writer, step, pictures())
      if step % steps_per_epoch == 0:
        guard.check()
        epoch_metrics = dict(zip(
            _TRAIN_METRICS, (epoch_sums / steps_per_epoch).numpy()))
        epoch_sums.assign(tf.zeros_like(epoch_sums))
        # Not collective: only the chief evaluates; the others wait at the
        # next step's all-reduce.
        test_metrics = (evaluate(eval_step, test_batches, config.seed)
                        if chief else {})
        _write_scalars(train_writer, step,
                       {f'epoch/{k}': v for k, v in epoch_metrics.items()})
        _write_scalars(test_writer, step, test_metrics)
        logging.info('Epoch %d (step %d): train %s; test %s', epoch + 1,
                     step, _format(epoch_metrics), _format(test_metrics))
      check_stop()  # Saves and raises TrainingInterrupted on a signal.
      if step % config.checkpoint_every == 0 or step % steps_per_epoch == 0:
        save()
        last_saved_step = step
  if step != last_saved_step:
    save()
  distribute.remove_worker_dir(workdir, strategy)
  if not chief:
    return {'train': train_metrics, 'test': {}}
  if not test_metrics:
    test_metrics = evaluate(eval_step, test_batches, config.seed)
    _write_scalars(test_writer, step, test_metrics)
  final_pictures = pictures()
  images.write_image_summaries(train_writer, step, final_pictures)
  images.write_figures(workdir, final_pictures)
  logging.info('Done at step %d: test %s', step, _format(test_metrics))
  return {'train': train_metrics, 'test': test_metrics}
