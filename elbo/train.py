"""The training run: `train_and_evaluate(config, workdir)`, and what it wires.

Re-running it with the same workdir resumes from the latest checkpoint:
model, optimizer (whose `iterations` is the global step), the actions'
running sums and the divergence guard's window; the data position follows
from the step, because batches and latent draws are keyed on (seed, epoch,
step) (see `elbo.data`). So an interrupted and resumed run computes what an
uninterrupted one would.

A run is, in order: load the data; hold the workdir (`elbo.workdir_lock`);
build the model and optimizer (`elbo.factory`), the actions
(`elbo.actions`) and the checkpoint, and restore it; record the start
(`elbo.run_record`); compile the steps (`elbo.step`); run the loop
(`elbo.loop`) with divergence recovery (`elbo.recovery`) under the signal
handlers (`elbo.interrupts`); then the final evaluation and figures.

Safety: SIGTERM / SIGINT end the run with a checkpoint after the steps in
flight (`TrainingInterrupted`), on every worker at the same step; a
non-finite loss term or gradient stops it (`NonFiniteError`) before any
checkpoint of the bad state is written; a divergence that stays finite is
recovered from, up to `divergence_max_recoveries` times (`DivergenceError`).
"""

import dataclasses
import os
from typing import Collection, Dict, List, Optional, Sequence

from absl import logging
import tensorflow as tf

from elbo import actions as actions_lib
from elbo import checkpoints
from elbo import config as config_lib
from elbo import data
from elbo import distribute
from elbo import errors
from elbo import factory
from elbo import images
from elbo import interrupts
from elbo import loop
from elbo import models
from elbo import recovery as recovery_lib
from elbo import run_record
from elbo import step as step_lib
from elbo import streams
from elbo import summaries
from elbo import workdir_lock

__all__ = ['Action', 'Config', 'DivergenceError', 'ModelFn', 'NonFiniteError',
           'NonFiniteGuard', 'TrainingInterrupted', 'USER_ERRORS',
           'clip_by_global_norm', 'evaluate', 'global_gradient_norm',
           'make_eval_step', 'make_train_loop', 'make_train_step',
           'resolve_jit_compile', 'steps_to_next_event',
           'train_and_evaluate']

# The training API in one namespace; each is defined in the module named.
Action = loop.Action
Config = config_lib.Config
ModelFn = models.ModelFn
DivergenceError = errors.DivergenceError
NonFiniteError = errors.NonFiniteError
USER_ERRORS = errors.USER_ERRORS
NonFiniteGuard = step_lib.NonFiniteGuard
clip_by_global_norm = step_lib.clip_by_global_norm
evaluate = step_lib.evaluate
global_gradient_norm = step_lib.global_gradient_norm
make_eval_step = step_lib.make_eval_step
make_train_loop = step_lib.make_train_loop
make_train_step = step_lib.make_train_step
resolve_jit_compile = step_lib.resolve_jit_compile
steps_to_next_event = loop.steps_to_next_event


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


@dataclasses.dataclass
class _Data:
  """The images, and the run's length in steps."""
  train_images: object
  test_images: object
  steps_per_epoch: int
  total_steps: int


def _load_data(config: Config, workdir: str,
               strategy: tf.distribute.Strategy) -> _Data:
  """The images, after the checks that need no workdir write."""
  if tf.io.gfile.exists(workdir) and not tf.io.gfile.isdir(workdir):
    raise config_lib.ConfigError(
        f'workdir {workdir!r} exists and is not a directory.')
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise config_lib.ConfigError(
        f'batch_size {config.batch_size} is not divisible by the '
        f'{replicas} replicas.')
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
  return _Data(train_images, test_images, steps_per_epoch, total_steps)


def _test_evaluation(config: Config, model: models.Model, test_images,
                     jit_compile: bool,
                     writer: summaries.SummaryWriter
                     ) -> actions_lib.TestEvaluation:
  test_batches = data.eval_batches(test_images, config.eval_batch_size)
  diagnostic_images = next(iter(
      test_batches.unbatch().batch(streams.NUM_DIAGNOSTIC_IMAGES)))
  return actions_lib.TestEvaluation(
      step_lib.make_eval_step(model, config, jit_compile), test_batches,
      diagnostic_images,
      streams.seed(config.seed, streams.TRAIN_DIAGNOSTIC), model,
      config.seed, writer)


def _pictures_fn(config: Config, model: models.Model,
                 test: actions_lib.TestEvaluation):
  """The picture grids of fixed test images and fixed prior samples."""
  figure_seed = streams.seed(config.seed, streams.FIGURE)
  grid_inputs = next(iter(
      test.test_batches.unbatch().batch(streams.NUM_GRID_IMAGES)))
  # Drawn once, so the prior-sample pictures compare across steps.
  prior_z = model.latent_prior().sample(streams.NUM_GRID_IMAGES,
                                        seed=figure_seed)
  return lambda: images.blog_pictures(model, grid_inputs, prior_z,
                                      figure_seed)


def _restore(config: Config, workdir: str, strategy: tf.distribute.Strategy,
             steps_per_epoch: int, trainable: factory.Trainable,
             stateful: Sequence[loop.Action]) -> tf.train.CheckpointManager:
  """The checkpoint manager, after restoring the newest readable
  checkpoint. Every worker resumes from the chief's checkpoints; the others
  take part in saving (it may be collective) into a scratch directory."""
  action_state = {k: v for action in stateful
                  for k, v in action.trackables().items()}
  manager = checkpoints.make_manager(
      distribute.worker_dir(workdir, strategy),
      recovery_lib.checkpoints_to_keep(config, steps_per_epoch),
      model=trainable.model, optimizer=trainable.optimizer,
      divergence_guard=trainable.divergence_guard, **action_state)
  # Checkpoints written before the guard's window was saved lack it, and
  # those of runs started without an extra action lack its state.
  builtin = {'interval_sums', 'epoch_sums'}
  checkpoints.restore_latest(
      manager, os.path.join(workdir, 'checkpoints'),
      optional=('divergence_guard', *(set(action_state) - builtin)))
  return manager


def _write_run_summaries(config: Config, workdir: str,
                         writer: summaries.SummaryWriter, step: int) -> None:
  """The config as text and as HParams, for comparing runs."""
  values = dataclasses.asdict(config)
  table = '\n'.join(['| flag | value |', '| --- | --- |'] +
                    [f'| {k} | {v} |' for k, v in values.items()])
  writer.text(step, 'config', table)
  summaries.SummaryWriter(workdir).hparams(
      {k: v if isinstance(v, (bool, int, float, str)) else str(v)
       for k, v in values.items()},
      trial_id=os.path.basename(os.path.normpath(workdir)))


def train_and_evaluate(config: Config, workdir: str,
                       model_fn: Optional[ModelFn] = None,
                       allow_config_changes: Collection[str] = (),
                       extra_actions: Sequence[loop.Action] = ()
                       ) -> Dict[str, Dict[str, float]]:
  """Trains (or resumes) a VAE and evaluates it each epoch.

  Args:
    config: the run's flags.
    workdir: where the run lives; an existing run there is resumed.
    model_fn: `model_fn(config) -> model`, any Keras model with the three
      methods of `elbo.models.Model`. Default: the built-in model
      `config.model` names (`elbo.factory.build_model`). Resume and evaluate
      with the same function.
    allow_config_changes: Config fields that a resumed run may change
      although they alter what a step means or what the checkpoint holds
      (`elbo.run_record.SAFE_CHANGES` may always change).
    extra_actions: more periodic actions (`elbo.loop.Action`), run after
      the built-in ones when due; their `trackables()` join the checkpoint
      (a checkpoint written without them still restores).

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
    errors.NonFiniteError: NaN/Inf in a loss term or the gradients.
    errors.DivergenceError: a finite divergence persisted after the allowed
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
  # First, before any other TF op: multi-worker collectives need it.
  strategy = distribute.make_strategy(config.strategy, config.tpu)
  chief = distribute.is_chief(strategy)
  run_data = _load_data(config, workdir, strategy)
  # One run per workdir (the chief's: its workers are part of it), held
  # from before the first write to the workdir to the end.
  with workdir_lock.hold(workdir, chief):
    return _train(config, workdir, model_fn, allow_config_changes,
                  list(extra_actions), strategy, run_data)


@dataclasses.dataclass
class _Run:
  """A restored run, ready for its loop."""
  trainable: factory.Trainable
  jit_compile: bool
  state: loop.LoopState
  test: actions_lib.TestEvaluation
  log: actions_lib.LogScalars
  epoch: actions_lib.EvaluateEpoch
  manager: tf.train.CheckpointManager
  history: run_record.RunHistory
  writer: summaries.SummaryWriter  # train/


def _build(config: Config, workdir: str, model_fn: Optional[ModelFn],
           allow_config_changes: Collection[str],
           extra_actions: List[loop.Action], strategy: tf.distribute.Strategy,
           run_data: _Data) -> _Run:
  """Model, optimizer and the stateful actions, restored from the newest
  checkpoint; this start recorded."""
  chief = distribute.is_chief(strategy)
  steps_per_epoch = run_data.steps_per_epoch
  trainable = factory.build_trainable(config, steps_per_epoch, model_fn,
                                      strategy)
  jit_compile = step_lib.resolve_jit_compile(config.jit_compile,
                                             trainable.model)
  writer = lambda name: summaries.SummaryWriter(
      os.path.join(workdir, name) if chief else None)
  train_writer = writer('train')
  test = _test_evaluation(config, trainable.model, run_data.test_images,
                          jit_compile, writer('test'))
  log = actions_lib.LogScalars(config.log_every, config.batch_size,
                               run_data.total_steps, steps_per_epoch,
                               train_writer, trainable.optimizer)
  epoch = actions_lib.EvaluateEpoch(steps_per_epoch, test, train_writer,
                                    chief)
  manager = _restore(config, workdir, strategy, steps_per_epoch, trainable,
                     [log, epoch, *extra_actions])
  state = loop.LoopState(int(trainable.optimizer.iterations.numpy()),
                         run_data.total_steps)
  # config.json, and this start in run_history.json; refuses changes that
  # alter what a step means unless allowed.
  history = run_record.start(workdir, config, state.step,
                             allow_config_changes, write=chief)
  tf.io.gfile.makedirs(distribute.worker_dir(workdir, strategy))
  return _Run(trainable, jit_compile, state, test, log, epoch, manager,
              history, train_writer)


def _train(config: Config, workdir: str, model_fn: Optional[ModelFn],
           allow_config_changes: Collection[str],
           extra_actions: List[loop.Action], strategy: tf.distribute.Strategy,
           run_data: _Data) -> Dict[str, Dict[str, float]]:
  """Builds, restores, trains and finishes; with the workdir held."""
  chief = distribute.is_chief(strategy)
  run = _build(config, workdir, model_fn, allow_config_changes,
               extra_actions, strategy, run_data)
  trainable, state = run.trainable, run.state
  recovery = recovery_lib.Recovery(
      config, workdir, run.manager, trainable.guard,
      trainable.divergence_guard, trainable.learning_rate,
      trainable.optimizer, run.writer, chief)
  recovery.apply_remedies(state.step, force=True)
  logging.info('XLA (jit_compile): %s; %d replicas (%s); %d steps per '
               'epoch; step %d of %d.', run.jit_compile,
               strategy.num_replicas_in_sync, config.strategy,
               run_data.steps_per_epoch, state.step, state.total_steps)
  train_steps = factory.train_loop(
      config, trainable.train_step(config, run.jit_compile, strategy),
      run.jit_compile, data.resident_images(run_data.train_images))
  pictures = _pictures_fn(config, trainable.model, run.test)
  write_images = actions_lib.WriteImages(config.image_every, run.writer,
                                         pictures, chief)
  save = actions_lib.SaveCheckpoint(config.checkpoint_every,
                                    run_data.steps_per_epoch, run.manager,
                                    trainable.guard, run.history)
  if chief:
    _write_run_summaries(config, workdir, run.writer, state.step)

  def stop(signum):
    raise TrainingInterrupted(state.step, signum)

  with interrupts.stop_on_signals(strategy, run.manager.directory,
                                  lambda: save(state.step),
                                  stop) as check_stop:
    loop.run(state, train_steps,
             [run.log, write_images, run.epoch, save, *extra_actions],
             recovery, config.steps_per_call, check_stop)
  distribute.remove_worker_dir(workdir, strategy)
  if not chief:
    return {'train': run.log.metrics, 'test': {}}
  _finish(config, workdir, trainable.model, state.step, run.test, pictures(),
          write_images, run.writer, run.history)
  return {'train': run.log.metrics, 'test': run.test.metrics}


def _finish(config: Config, workdir: str, model: models.Model, step: int,
            test: actions_lib.TestEvaluation, pictures: Dict[str, tf.Tensor],
            write_images: actions_lib.WriteImages,
            writer: summaries.SummaryWriter,
            history: run_record.RunHistory) -> None:
  """The last evaluation and the figures, on the chief."""
  if not test.metrics:
    test(step)
  if write_images.written_at != step:
    images.write_image_summaries(writer, step, pictures)
  images.write_figures(workdir, pictures)
  labels = data.load_labels_or_none(config.dataset, 'test', config.data_dir)
  figures = images.latent_figures(
      model, test.diagnostic_images.numpy(),
      None if labels is None else labels[:streams.NUM_DIAGNOSTIC_IMAGES],
      test.diagnostic_seed)
  images.write_latent_figures(workdir, figures)
  images.write_latent_summaries(writer, step, figures)
  history.update(step, test.metrics)
  history.write_summary(writer, step)
  logging.info('Done at step %d: test %s', step,
               actions_lib.format_metrics(test.metrics))
