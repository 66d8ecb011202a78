"""The training loop: an explicit GradientTape step, TensorBoard, checkpoints.

`train_and_evaluate(config, workdir)` is the whole job. Re-running it with the
same workdir resumes from the latest checkpoint: model, optimizer (whose
`iterations` is the global step), and the running metric sums; the data
position follows from the step, because batches and latent draws are keyed on
(seed, epoch, step) (see `elbo.data`). So an interrupted and resumed run
computes what an uninterrupted one would.

The pieces are the researcher's: `model_fn(config)` builds any model with
the three methods of `elbo.models.Model`; the objective comes from the table
`elbo.objectives.OBJECTIVES`, the data from `elbo.data`'s table. The loop is
set-up, then training calls that stop at the next periodic action (log,
images, epoch evaluation, checkpoint; `steps_to_next_event`).

Safety: SIGTERM / SIGINT end the run with a checkpoint after the steps in
flight (`TrainingInterrupted`), on every worker at the same step
(`elbo.interrupts`); a non-finite loss term or gradient stops it
(`NonFiniteError`) before any checkpoint of the bad state is written; a
divergence that stays finite is detected and recovered from
(`elbo.divergence`), up to `divergence_max_recoveries` times
(`DivergenceError`).
"""

import dataclasses
import os
import signal
import time
from typing import (Callable, Collection, Dict, List, NamedTuple, Optional,
                    Sequence)

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from elbo import checkpoints
from elbo import config as config_lib
from elbo import data
from elbo import diagnostics
from elbo import distribute
from elbo import divergence
from elbo import images
from elbo import interrupts
from elbo import losses
from elbo import models
from elbo import objectives
from elbo import run_record
from elbo import streams
from elbo import summaries
from elbo import workdir_lock

__all__ = ['Config', 'DivergenceError', 'ModelFn', 'NonFiniteError',
           'NonFiniteGuard', 'TrainingInterrupted', 'USER_ERRORS',
           'clip_by_global_norm', 'evaluate', 'global_gradient_norm',
           'make_eval_step', 'make_train_loop', 'make_train_step',
           'resolve_jit_compile', 'steps_to_next_event',
           'train_and_evaluate']

Config = config_lib.Config
ModelFn = Callable[[Config], models.Model]
_TERMS = losses.ElboTerms._fields  # ('elbo', 'reconstruction', 'kl')
# Logged during training: the ELBO terms and the objective maximized (the
# ELBO itself, beta-weighted during KL warm-up, or the IWAE bound).
_TRAIN_METRICS = _TERMS + ('objective',)
_GUARDED = _TRAIN_METRICS + ('gradients',)
# What a training step returns: the metrics, then the global gradient norm
# (logged, but not part of the checkpointed sums).
_STEP_OUTPUTS = _TRAIN_METRICS + ('gradient_norm',)


def resolve_jit_compile(jit_compile: str,
                        model: Optional[keras.Model] = None) -> bool:
  """'auto' means XLA on a GPU or TPU, and on a CPU for a model without
  convolutions. On CPU, TF's oneDNN convolutions run the blog's model about
  2x faster than XLA's; for an MLP, XLA compiling the whole multi-step loop
  removes the per-op overhead that dominates its small steps."""
  if jit_compile == 'auto':
    if (tf.config.list_physical_devices('GPU') or
        tf.config.list_physical_devices('TPU')):
      return True
    return model is not None and not _has_convolutions(model)
  return jit_compile == 'true'


def _has_convolutions(model: keras.Model) -> bool:
  return any(isinstance(layer, keras.layers.Conv2D) or
             isinstance(layer, keras.layers.Conv2DTranspose) or
             'Conv' in type(layer).__name__
             for layer in model._flatten_layers())  # pylint: disable=protected-access


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


class DivergenceError(RuntimeError):
  """Training kept diverging after the allowed recoveries."""


# What a binary reports as one line (`Error: ...`) rather than a traceback.
USER_ERRORS = (data.DataError, checkpoints.CheckpointError,
               config_lib.ConfigError, distribute.StrategyError,
               NonFiniteError, DivergenceError, workdir_lock.WorkdirLockError)


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


def clip_by_global_norm(
    gradients: Sequence[tf.Tensor], clip_norm: float,
    context: tf.distribute.ReplicaContext,
    norm: Optional[tf.Tensor] = None) -> List[tf.Tensor]:
  """Scales this replica's part of the gradient so that the sum over
  replicas, the global-batch gradient the optimizer applies, has norm at
  most `clip_norm`. `norm`: that sum's norm, if already known.

  Keras's own `global_clipnorm` clips each replica's part before the
  optimizer sums them, which bounds another norm on several replicas.
  """
  if norm is None:
    norm = global_gradient_norm(gradients, context)
  scale = clip_norm / tf.maximum(norm, clip_norm)
  return [g * tf.cast(scale, g.dtype) for g in gradients]


def global_gradient_norm(gradients: Sequence[tf.Tensor],
                         context: tf.distribute.ReplicaContext) -> tf.Tensor:
  """The norm of the global-batch gradient, the sum over replicas of their
  parts (an all-reduce of the gradients when there are several)."""
  if context.num_replicas_in_sync > 1:
    gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
  return tf.linalg.global_norm(gradients)


def make_train_step(model: models.Model,
                    optimizer: keras.optimizers.Optimizer,
                    config: Config, jit_compile: bool,
                    guard: Optional[NonFiniteGuard] = None,
                    strategy: Optional[tf.distribute.Strategy] = None,
                    divergence_guard: Optional[
                        divergence.DivergenceGuard] = None):
  """Returns `train_step(batch, step) -> [elbo, reconstruction, kl,
  objective, gradient_norm]`, means over the global batch and the norm of
  the global-batch gradient.

  `batch` is the global batch; under `strategy`, replica r of R trains on
  its part r of R. Each replica's loss is minus its objective
  (`objectives.OBJECTIVES[config.objective]`) summed and divided by the
  global batch size, so the all-reduced (summed) gradients are those of the
  global mean, whatever the number of replicas. The ELBO's terms come back
  separately for logging. With `config.clip_norm`, the global-batch gradient
  is clipped to that norm. On several replicas the norm costs an all-reduce
  of the gradients besides the optimizer's own. `step` (int64 scalar, the
  global step) keys the latent draws, so a step computes the same thing
  whenever it runs. XLA (`jit_compile`) compiles each replica's loss and
  gradients, and on a single replica the update too.
  """
  strategy = strategy or tf.distribute.get_strategy()
  latent_seed = streams.seed(config.seed, streams.LATENT)
  objective_fn = objectives.OBJECTIVES[config.objective]

  @tf.function(jit_compile=jit_compile)
  def loss_and_gradients(batch, step, seed, global_size):
    with tf.GradientTape() as tape:
      terms, objective = objective_fn(model, batch, config, seed, step)
      loss = -tf.reduce_sum(objective) / global_size
    gradients = tape.gradient(loss, model.trainable_variables)
    sums = tf.stack([tf.reduce_sum(t) for t in (*terms, objective)])
    return gradients, sums

  def replica_step(global_batch, step):
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    replica = context.replica_id_in_sync_group
    batch = tf.reshape(global_batch,
                       [replicas, -1, *global_batch.shape[1:]])[replica]
    seed = tf.random.experimental.stateless_fold_in(
        latent_seed, tf.cast(step, tf.int32) * replicas + replica)
    global_size = tf.cast(tf.shape(global_batch)[0], tf.float32)
    gradients, sums = loss_and_gradients(batch, step, seed, global_size)
    norm = global_gradient_norm(gradients, context)
    if config.clip_norm:
      gradients = clip_by_global_norm(gradients, config.clip_norm, context,
                                      norm)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    size = tf.cast(tf.shape(batch)[0], tf.float32)
    # Every replica has the same norm: its sum over replicas divided by R.
    return sums, size, norm / replicas

  if jit_compile and strategy.num_replicas_in_sync == 1:
    # On one device XLA also fuses the optimizer's update into the step;
    # across replicas the update all-reduces, which stays outside XLA.
    replica_step = tf.function(replica_step, jit_compile=True)

  @tf.function
  def train_step(batch, step):
    sums, size, norm = [
        strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
        for value in strategy.run(replica_step, args=(batch, step))]
    metrics = sums / size
    if guard is not None:
      guard.observe(step, metrics, tf.math.is_finite(norm))
    if divergence_guard is not None:
      divergence_guard.observe(step, metrics[_TRAIN_METRICS.index(
          'objective')], norm)
    return tf.concat([metrics, [norm]], axis=0)

  return train_step


def make_train_loop(train_step, images: tf.Variable, batch_size: int,
                    seed: int, jit_compile: bool = False):
  """Returns `train_steps(first_step, num_steps, data_offset) -> sums`: runs
  `train_step` on steps first_step, ..., first_step + num_steps - 1 in one
  `tf.function` call, on batches made in the graph from the resident
  `images` (`data.training_batches` of the steps + data_offset, an int64
  scalar: 0 unless a divergence recovery skipped data). Several steps per
  call cut Python dispatch. Returns the sum over the steps of
  `train_step`'s outputs.

  With `jit_compile`, XLA compiles the steps' loop as one program (single
  replica only: `train_step`'s all-reduces stay outside XLA): for a small
  model the time around the arithmetic, not the arithmetic, is the step's
  cost, and one program removes it. The batches are made before it, by
  TensorFlow's own kernels, so they are the same bits either way; random
  draws inside the step come from XLA's generator (another stream than
  TensorFlow's kernels for the same seed).
  """

  def run_steps(batches, first_step):
    sums = tf.zeros([len(_STEP_OUTPUTS)])
    for index in tf.range(tf.shape(batches, out_type=tf.int64)[0]):
      sums += train_step(batches[index], first_step + index)
    return sums

  if jit_compile:
    run_steps = tf.function(run_steps, jit_compile=True)

  @tf.function
  def train_steps(first_step, num_steps, data_offset=0):
    batches = data.training_batches(images, batch_size, seed,
                                    first_step + data_offset, num_steps)
    return run_steps(batches, first_step)

  return train_steps


def steps_to_next_event(step: int, intervals: Sequence[int], total_steps: int,
                        steps_per_call: int,
                        also_at: Sequence[int] = ()) -> int:
  """How many steps one call may run: up to `steps_per_call`, but never
  past the next multiple of any of `intervals` (the periodic actions' and
  the epoch's), a step in `also_at`, or the end of training, so that every
  action happens at exactly the step it would with one step per call."""
  boundaries = [step + steps_per_call, total_steps]
  boundaries += [(step // every + 1) * every for every in intervals]
  boundaries += [s for s in also_at if s > step]
  return min(boundaries) - step


def make_eval_step(model: models.Model, config: Config, jit_compile: bool):
  """Returns `eval_step(batch, seed) -> [elbo, reconstruction, kl]` sums."""

  @tf.function(jit_compile=jit_compile)
  def eval_step(batch, seed):
    terms = objectives.batch_elbo(model, batch, config, seed)
    return tf.stack([tf.reduce_sum(t) for t in terms])

  return eval_step


def evaluate(eval_step, batches: tf.data.Dataset,
             seed: int) -> Dict[str, float]:
  """Mean ELBO terms over a whole split, with a fixed latent seed per batch
  so that repeated evaluations of the same model agree."""
  sums, count = np.zeros(len(_TERMS)), 0
  base_seed = streams.seed(seed, streams.TEST_ELBO)
  for index, batch in enumerate(batches):
    batch_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
    sums += eval_step(batch, batch_seed).numpy()
    count += int(batch.shape[0])
  return dict(zip(_TERMS, (sums / count).tolist()))


def _format(metrics: Dict[str, float]) -> str:
  return ', '.join(f'{k} {v:.2f}' for k, v in metrics.items())


class _ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """A schedule times a factor the loop sets (divergence cool-down). The
  factor is not checkpointed: it follows from `divergences.jsonl`."""

  def __init__(self, schedule: keras.optimizers.schedules.LearningRateSchedule):
    self.schedule = schedule
    self.factor = tf.Variable(1.0, trainable=False, name='lr_factor')

  def __call__(self, step):
    return self.schedule(step) * self.factor


class _LearningRate:
  """The optimizer's learning rate: the config's rate or schedule, times a
  factor. Keras checkpoints a constant rate (a variable) but not a
  schedule, so a constant rate is set again after every restore: a run
  resumed with another --learning_rate trains at the new one."""

  def __init__(self, base):
    self.base = base
    self.schedule = (_ScaledSchedule(base) if callable(base) else None)

  def for_optimizer(self):
    return self.schedule or self.base

  def set_factor(self, optimizer: keras.optimizers.Optimizer,
                 factor: float) -> None:
    if self.schedule is not None:
      self.schedule.factor.assign(factor)
    else:
      optimizer.learning_rate = self.base * factor


class _DivergenceDetected(Exception):
  """Raised inside the loop; `_Trainer.recover` handles it."""

  def __init__(self, bad_step: int):
    super().__init__(bad_step)
    self.bad_step = bad_step


class _PeriodicAction(NamedTuple):
  """Runs after the call that ends at a multiple of any of `every` (and at
  the last step if `at_end`)."""
  every: Sequence[int]
  at_end: bool
  run: Callable[[int], None]


def _hparams(config: Config) -> Dict[str, object]:
  """The config as HParams values (bool, int, float or str; None as str)."""
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v)
          for k, v in dataclasses.asdict(config).items()}


class _Trainer:
  """One training run: checks and data in `__init__`, the rest of the
  set-up in `build()`, then `train()`.

  Each periodic action (log, images, epoch evaluation, checkpoint) is one
  method, listed in `actions()`; the loop runs training calls that end at
  the next action (`steps_to_next_event`) and then the actions due.
  """

  def __init__(self, config: Config, workdir: str,
               model_fn: Optional[ModelFn],
               allow_config_changes: Collection[str]):
    self.config = config
    self.workdir = workdir
    self.allow_config_changes = allow_config_changes
    # First, before any other TF op: multi-worker collectives need it.
    self.strategy = distribute.make_strategy(config.strategy, config.tpu)
    self.chief = distribute.is_chief(self.strategy)
    if tf.io.gfile.exists(workdir) and not tf.io.gfile.isdir(workdir):
      raise config_lib.ConfigError(
          f'workdir {workdir!r} exists and is not a directory.')
    replicas = self.strategy.num_replicas_in_sync
    if config.batch_size % replicas:
      raise config_lib.ConfigError(
          f'batch_size {config.batch_size} is not divisible by the '
          f'{replicas} replicas.')
    train_images = data.load_images(config.dataset, 'train', config.data_dir)
    test_images = data.load_images(config.dataset, 'test', config.data_dir)
    self.steps_per_epoch = data.steps_per_epoch(len(train_images),
                                                config.batch_size)
    if self.steps_per_epoch == 0:
      raise config_lib.ConfigError(
          f'batch_size {config.batch_size} exceeds the {len(train_images)} '
          'training images.')
    self.total_steps = config.epochs * self.steps_per_epoch
    if config.max_steps:
      self.total_steps = min(self.total_steps, config.max_steps)
    self.images = (train_images, test_images)
    self.model_fn = model_fn

  def build(self) -> None:
    """The model, the optimizer, the restored state, and the workdir's
    first writes; with the workdir held (`workdir_lock`)."""
    config, workdir = self.config, self.workdir
    train_images, test_images = self.images
    replicas = self.strategy.num_replicas_in_sync
    model_fn = self.model_fn
    keras.utils.set_random_seed(config.seed)  # Weight initialization.
    with self.strategy.scope():
      self.model = (model_fn or config_lib.build_model)(config)
      if not isinstance(self.model, models.Model):
        raise config_lib.ConfigError(
            f'The model ({type(self.model).__name__}) lacks one of '
            'approx_posterior, decoder_likelihood, latent_prior '
            '(elbo.models.Model).')
      self.learning_rate = _LearningRate(
          config_lib.learning_rate(config, self.steps_per_epoch))
      self.optimizer = keras.optimizers.Adam(
          self.learning_rate.for_optimizer(), epsilon=config.adam_epsilon)
      self.optimizer.build(self.model.trainable_variables)
      # Running sums of the batch-mean metrics, checkpointed with the model
      # so a resumed run logs the same averages as an uninterrupted one.
      self.interval_sums = tf.Variable(tf.zeros([len(_TRAIN_METRICS)]),
                                       trainable=False)
      self.epoch_sums = tf.Variable(tf.zeros([len(_TRAIN_METRICS)]),
                                    trainable=False)
      self.guard = NonFiniteGuard()
      self.divergence_guard = divergence.DivergenceGuard(
          config.divergence_window, config.divergence_threshold)
    # Every worker resumes from the chief's checkpoints; non-chief workers
    # take part in saving (it may be collective) into a scratch directory.
    self.own_dir = distribute.worker_dir(workdir, self.strategy)
    self.manager = checkpoints.make_manager(
        self.own_dir, self._checkpoints_to_keep(), model=self.model,
        optimizer=self.optimizer, interval_sums=self.interval_sums,
        epoch_sums=self.epoch_sums, divergence_guard=self.divergence_guard)
    # Checkpoints written before the guard's window was saved lack it.
    checkpoints.restore_latest(self.manager,
                               os.path.join(workdir, 'checkpoints'),
                               optional=('divergence_guard',))
    self.step = int(self.optimizer.iterations.numpy())
    # config.json, and this start in run_history.json; refuses changes
    # that alter what a step means unless allowed.
    self.history = run_record.start(workdir, config, self.step,
                                    self.allow_config_changes,
                                    write=self.chief)
    tf.io.gfile.makedirs(self.own_dir)
    self.last_saved_step = self.step
    self.recoveries = divergence.read_recoveries(workdir)
    self.data_offset = tf.Variable(0, dtype=tf.int64, trainable=False)
    self._apply_remedies()

    jit_compile = resolve_jit_compile(config.jit_compile, self.model)
    logging.info('XLA (jit_compile): %s; %d replicas (%s); %d steps per '
                 'epoch; step %d of %d.', jit_compile, replicas,
                 config.strategy, self.steps_per_epoch, self.step,
                 self.total_steps)
    self.train_steps = make_train_loop(
        make_train_step(self.model, self.optimizer, config, jit_compile,
                        self.guard, self.strategy, self.divergence_guard),
        data.resident_images(train_images), config.batch_size, config.seed,
        jit_compile and config.strategy == 'default')
    self.eval_step = make_eval_step(self.model, config, jit_compile)
    writer = lambda name: summaries.SummaryWriter(
        os.path.join(workdir, name) if self.chief else None)
    self.train_writer, self.test_writer = writer('train'), writer('test')
    self.test_batches = data.eval_batches(test_images,
                                          config.eval_batch_size)
    self.figure_seed = streams.seed(config.seed, streams.FIGURE)
    self.grid_inputs = next(iter(
        self.test_batches.unbatch().batch(streams.NUM_GRID_IMAGES)))
    # Drawn once, so the prior-sample pictures compare across steps.
    self.prior_z = self.model.latent_prior().sample(streams.NUM_GRID_IMAGES,
                                                    seed=self.figure_seed)
    self.diagnostic_images = next(iter(
        self.test_batches.unbatch().batch(streams.NUM_DIAGNOSTIC_IMAGES)))
    self.diagnostic_seed = streams.seed(config.seed,
                                        streams.TRAIN_DIAGNOSTIC)
    self.train_metrics: Dict[str, float] = {}
    self.test_metrics: Dict[str, float] = {}
    self.images_written_at = -1

  def _checkpoints_to_keep(self) -> int:
    """Enough that one checkpoint `divergence_rewind` steps before any step
    is still there when a divergence is noticed (before the next save)."""
    config = self.config
    if config.divergence_threshold <= 0:
      return config.keep_checkpoints
    needed = (config.divergence_rewind // config.checkpoint_every +
              config.divergence_rewind // self.steps_per_epoch + 3)
    return max(config.keep_checkpoints, needed)

  def _apply_remedies(self) -> None:
    """The learning-rate factor and data offset in force at `self.step`."""
    self.learning_rate.set_factor(
        self.optimizer, divergence.lr_factor(self.recoveries, self.step))
    self.data_offset.assign(divergence.data_offset(self.recoveries,
                                                   self.step))

  def actions(self) -> List[_PeriodicAction]:
    config = self.config
    return [
        _PeriodicAction((config.log_every,), True, self.log),
        _PeriodicAction((config.image_every,), False, self.write_images),
        _PeriodicAction((self.steps_per_epoch,), False, self.evaluate_epoch),
        _PeriodicAction((config.checkpoint_every, self.steps_per_epoch), True,
                        self.save),
    ]

  def check_health(self) -> None:
    """Before anything is logged or saved: NaN stops the run, a finite
    divergence is recovered from."""
    self.guard.check()
    bad_step = self.divergence_guard.bad_step()
    if bad_step is not None:
      raise _DivergenceDetected(bad_step)

  def log(self, step: int) -> None:
    config = self.config
    since_log = step - (step - 1) // config.log_every * config.log_every
    self.train_metrics = dict(zip(
        _TRAIN_METRICS, (self.interval_sums / since_log).numpy().tolist()))
    if step % config.log_every == 0:
      # Not at a last step off the grid: if the run is resumed with more
      # steps, the next log still averages its whole interval.
      self.interval_sums.assign(tf.zeros_like(self.interval_sums))
    scalars = {
        **self.train_metrics,
        'learning_rate': float(self.optimizer.learning_rate.numpy()),
    }
    if self.norm_steps:
      scalars['gradient_norm'] = float(self.norm_sum) / self.norm_steps
    self.norm_sum, self.norm_steps = 0., 0
    if self.timer_start is not None and step > self.timer_step:
      elapsed = time.perf_counter() - self.timer_start
      # Without the first call of the process: it traces and compiles.
      scalars['examples_per_second'] = ((step - self.timer_step) *
                                        config.batch_size / elapsed)
      self.timer_start, self.timer_step = time.perf_counter(), step
    self.train_writer.scalars(step, scalars)
    epoch = (step - 1) // self.steps_per_epoch + 1
    self.progress.update(step - self.start_step,
                         [('epoch', epoch), *self.train_metrics.items()])

  def pictures(self) -> Dict[str, tf.Tensor]:
    return images.blog_pictures(self.model, self.grid_inputs, self.prior_z,
                                self.figure_seed)

  def write_images(self, step: int) -> None:
    if self.chief:
      images.write_image_summaries(self.train_writer, step, self.pictures())
      self.images_written_at = step

  def evaluate_epoch(self, step: int) -> None:
    epoch_metrics = dict(zip(
        _TRAIN_METRICS,
        (self.epoch_sums / self.steps_per_epoch).numpy().tolist()))
    self.epoch_sums.assign(tf.zeros_like(self.epoch_sums))
    # Not collective: only the chief evaluates; the others wait at the
    # next step's all-reduce.
    if self.chief:
      self.evaluate_test(step)
    self.train_writer.scalars(
        step, {f'epoch/{k}': v for k, v in epoch_metrics.items()})
    logging.info('Epoch %d (step %d): train %s; test %s',
                 step // self.steps_per_epoch, step, _format(epoch_metrics),
                 _format(self.test_metrics))

  def evaluate_test(self, step: int) -> None:
    """The test-set ELBO terms, and the latent diagnostics (active units,
    I(x; z), KL per dimension) under test/latent/."""
    self.test_metrics = evaluate(self.eval_step, self.test_batches,
                                 self.config.seed)
    self.test_writer.scalars(step, self.test_metrics)
    diagnostics.write_summaries(self.test_writer, step,
                                diagnostics.diagnostics_summary(
                                    self.model, self.diagnostic_images,
                                    self.diagnostic_seed))

  def save(self, step: int) -> None:
    self.guard.check()
    checkpoints.save(self.manager, step)
    self.history.update(step)
    self.last_saved_step = step

  def recover(self, bad_step: int) -> None:
    """Restores the newest checkpoint `divergence_rewind` steps before
    `bad_step` (0-based) and applies the remedy (`elbo.divergence`)."""
    config = self.config
    detail = self.divergence_guard.describe()
    saved = sorted(checkpoints.step_of(path)
                   for path in self.manager.checkpoints)
    before = [s for s in saved if s <= bad_step - config.divergence_rewind]
    target = (before or [s for s in saved if s <= bad_step] or [None])[-1]
    if (len(self.recoveries) >= config.divergence_max_recoveries or
        target is None):
      kept = f'ckpt-{saved[-1]} kept' if saved else 'no checkpoint yet'
      raise DivergenceError(
          f'Training diverged at step {bad_step + 1} ({detail}) after '
          f'{len(self.recoveries)} recoveries; stopped, {kept}. Try a lower '
          '--learning_rate or --clip_norm.')
    path = os.path.join(self.manager.directory, f'ckpt-{target}')
    self.manager.checkpoint.restore(path).assert_consumed()
    recovery = divergence.Recovery(
        bad_step=bad_step + 1, restored_step=target,
        data_skip=bad_step - target + 1 + config.divergence_skip,
        lr_factor=config.divergence_lr_factor,
        cooldown=config.divergence_cooldown, detail=detail)
    self.recoveries.append(recovery)
    if self.chief:
      divergence.record_recovery(self.workdir, recovery)
    logging.warning('Divergence at step %d (%s): restored ckpt-%d; data '
                    'skip %d steps ahead, learning rate x%g for %d steps '
                    '(recovery %d of at most %d).', bad_step + 1, detail,
                    target, recovery.data_skip, recovery.lr_factor,
                    recovery.cooldown, len(self.recoveries),
                    config.divergence_max_recoveries)
    self.train_writer.scalars(bad_step + 1, {
        'divergence/bad_step': bad_step + 1,
        'divergence/restored_step': target,
        'divergence/recoveries': len(self.recoveries)})
    self.divergence_guard.reset()
    self.step = self.last_saved_step = target
    self._apply_remedies()
    self.norm_sum, self.norm_steps = 0., 0
    self.timer_start, self.timer_step = time.perf_counter(), target

  def _write_run_summaries(self) -> None:
    """The config as text and as HParams, for comparing runs."""
    if not self.chief:
      return
    values = dataclasses.asdict(self.config)
    table = '\n'.join(['| flag | value |', '| --- | --- |'] +
                      [f'| {k} | {v} |' for k, v in values.items()])
    self.train_writer.text(self.step, 'config', table)
    summaries.SummaryWriter(self.workdir).hparams(
        _hparams(self.config),
        trial_id=os.path.basename(os.path.normpath(self.workdir)))

  def train(self) -> Dict[str, Dict[str, float]]:
    config = self.config
    actions = self.actions()
    self._write_run_summaries()
    self.start_step = self.step
    self.progress = keras.utils.Progbar(
        max(self.total_steps - self.start_step, 1),
        stateful_metrics=('epoch',) + _TRAIN_METRICS)
    self.norm_sum, self.norm_steps = 0., 0
    self.timer_start, self.timer_step = None, self.step
    # Test-only fault point: ELBO_TEST_KILL_AT_STEP=N kills this process
    # (SIGKILL) right after the call that ends at step N, before its actions.
    kill_at = int(os.environ.get('ELBO_TEST_KILL_AT_STEP', -1))

    def stop(signum):
      raise TrainingInterrupted(self.step, signum)

    with interrupts.stop_on_signals(
        self.strategy, self.manager.directory,
        lambda: self.save(self.step), stop) as check_stop:
      while self.step < self.total_steps:
        step = self.step
        if self.recoveries:
          self._apply_remedies()
        change = divergence.next_change(self.recoveries, step)
        num_steps = steps_to_next_event(
            step, sorted({i for a in actions for i in a.every}),
            self.total_steps, config.steps_per_call,
            ([] if change is None else [change]) + [kill_at])
        outputs = self.train_steps(tf.constant(step, tf.int64),
                                   tf.constant(num_steps, tf.int64),
                                   self.data_offset)
        if step + num_steps == kill_at:
          outputs.numpy()
          os.kill(os.getpid(), signal.SIGKILL)
        if self.timer_start is None:
          outputs.numpy()  # Waits for the first call, which compiles.
          self.timer_start, self.timer_step = (time.perf_counter(),
                                               step + num_steps)
        sums = outputs[:len(_TRAIN_METRICS)]
        self.interval_sums.assign_add(sums)
        self.epoch_sums.assign_add(sums)
        self.norm_sum += outputs[-1]
        self.norm_steps += num_steps
        self.step = step = step + num_steps
        due = [a for a in actions
               if any(step % every == 0 for every in a.every) or
               (a.at_end and step == self.total_steps)]
        try:
          if due:
            self.check_health()
          for action in due:
            action.run(step)
          check_stop()  # Saves and raises TrainingInterrupted on a signal.
        except _DivergenceDetected as e:
          self.recover(e.bad_step)
    distribute.remove_worker_dir(self.workdir, self.strategy)
    return self.finish()

  def finish(self) -> Dict[str, Dict[str, float]]:
    """The last evaluation and the figures, on the chief."""
    if not self.chief:
      return {'train': self.train_metrics, 'test': {}}
    if not self.test_metrics:
      self.evaluate_test(self.step)
    final_pictures = self.pictures()
    if self.images_written_at != self.step:
      images.write_image_summaries(self.train_writer, self.step,
                                   final_pictures)
    images.write_figures(self.workdir, final_pictures)
    config = self.config
    labels = data.load_labels_or_none(config.dataset, 'test', config.data_dir)
    figures = images.latent_figures(
        self.model, self.diagnostic_images.numpy(),
        None if labels is None else labels[:streams.NUM_DIAGNOSTIC_IMAGES],
        self.diagnostic_seed)
    images.write_latent_figures(self.workdir, figures)
    images.write_latent_summaries(self.train_writer, self.step, figures)
    self.history.update(self.step, self.test_metrics)
    self.history.write_summary(self.train_writer, self.step)
    logging.info('Done at step %d: test %s', self.step,
                 _format(self.test_metrics))
    return {'train': self.train_metrics, 'test': self.test_metrics}


def train_and_evaluate(config: Config, workdir: str,
                       model_fn: Optional[ModelFn] = None,
                       allow_config_changes: Collection[str] = ()
                       ) -> Dict[str, Dict[str, float]]:
  """Trains (or resumes) a VAE and evaluates it each epoch.

  Args:
    config: the run's flags.
    workdir: where the run lives; an existing run there is resumed.
    model_fn: `model_fn(config) -> model`, any Keras model with the three
      methods of `elbo.models.Model`. Default: the built-in model
      `config.model` names (`elbo.config.build_model`). Resume and evaluate
      with the same function.
    allow_config_changes: Config fields that a resumed run may change
      although they alter what a step means or what the checkpoint holds
      (`elbo.run_record.SAFE_CHANGES` may always change).

  Writes to `workdir`: `checkpoints/`, TensorBoard events in `train/` and
  `test/` (and the config as HParams at the top), `config.json` and
  `run_history.json` (every start: config, commit, versions, wall time),
  `divergences.jsonl` if training had to recover, and at the end
  `reconstructions.png` and `prior_samples.png` (the blog's figures) and
  the latent figures (`elbo.images.latent_figures`). Nothing is created before
  the data has loaded.

  Returns:
    The mean ELBO terms of the last train interval and of the last test
    evaluation: `{'train': {...}, 'test': {...}}`.

  Raises:
    TrainingInterrupted: SIGTERM or SIGINT, here or at another worker; a
      checkpoint was written.
    NonFiniteError: NaN/Inf in a loss term or the gradients.
    DivergenceError: a finite divergence persisted after the allowed
      recoveries.
    checkpoints.CheckpointError: the workdir holds another model
      (`CheckpointMismatchError`), no checkpoint in it can be read
      (`CheckpointReadError`), or a save failed (`CheckpointSaveError`).
    workdir_lock.WorkdirLockError: another live run holds the workdir.
    data.DataError: a data file is missing or malformed.
    config_lib.ConfigError: the workdir is a file, the batch is larger
      than the training set or not divisible by the replicas, or the model
      lacks the interface.
    distribute.StrategyError: the strategy cannot run here.
  """
  trainer = _Trainer(config, workdir, model_fn,  # Loads the data.
                     allow_config_changes)
  # One run per workdir (the chief's: its workers are part of it), held
  # from before the first write to the workdir to the end.
  with workdir_lock.hold(workdir, trainer.chief):
    trainer.build()
    return trainer.train()
