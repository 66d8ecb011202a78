"""What a run builds from its `Config`: the model, the optimizer and its
learning rate, and the guards of its step (`build_trainable`).

The optimizer's rate is the config's rate or schedule times a factor that
divergence recovery lowers for a while (`LearningRate`); Keras checkpoints a
constant rate but not a schedule, so the rate is set again after every
restore, and a run resumed with another `--learning_rate` trains at the new
one.
"""

import dataclasses
from typing import Optional, Tuple, Union

import keras
import tensorflow as tf

from elbo import config as config_lib
from elbo import divergence
from elbo import models
from elbo import step as step_lib

__all__ = ['LearningRate', 'Trainable', 'build_model', 'build_trainable',
           'learning_rate', 'make_optimizer']

_Schedule = keras.optimizers.schedules.LearningRateSchedule


def build_model(config: config_lib.Config) -> models.Model:
  """The built-in model `config.model` names (`elbo.models.MODELS`). For
  another precision than the config's, pass `dataclasses.replace(config,
  precision=...)` (the variables are float32 either way, so checkpoints are
  interchangeable)."""
  return models.MODELS[config.model](config)


def learning_rate(config: config_lib.Config,
                  steps_per_epoch: int) -> Union[float, _Schedule]:
  """The constant rate, a cosine decay to 0 over all `epochs`, or the IWAE
  paper's stages scaled to `epochs` (exactly the paper's at 3,280)."""
  total_steps = config.epochs * steps_per_epoch
  if config.lr_schedule == 'cosine':
    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=total_steps)
  if config.lr_schedule == 'iwae_stages':
    lengths = [3 ** i for i in range(config_lib.IWAE_STAGES)]
    # Stage i covers steps [start_i, start_{i+1}); the schedule's
    # boundaries are inclusive, hence the last step of each stage.
    last_steps = [sum(lengths[:i + 1]) * total_steps // sum(lengths) - 1
                  for i in range(config_lib.IWAE_STAGES - 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        last_steps, [config.learning_rate * 10 ** (-i / 7)
                     for i in range(config_lib.IWAE_STAGES)])
  return config.learning_rate


class _ScaledSchedule(_Schedule):
  """A schedule times a factor (the divergence cool-down's). The factor is
  not checkpointed: it follows from `divergences.jsonl`."""

  def __init__(self, schedule: _Schedule):
    self.schedule = schedule
    self.factor = tf.Variable(1.0, trainable=False, name='lr_factor')

  def __call__(self, step):
    return self.schedule(step) * self.factor


class LearningRate:
  """The optimizer's learning rate: the config's rate or schedule, times a
  factor that `set_factor` changes."""

  def __init__(self, base: Union[float, _Schedule]):
    self.base = base
    self.schedule: Optional[_ScaledSchedule] = (
        _ScaledSchedule(base) if callable(base) else None)

  def for_optimizer(self) -> Union[float, _Schedule]:
    return self.schedule or self.base

  def set_factor(self, optimizer: keras.optimizers.Optimizer,
                 factor: float) -> None:
    if self.schedule is not None:
      self.schedule.factor.assign(factor)
    else:
      optimizer.learning_rate = self.base * factor


def make_optimizer(config: config_lib.Config, steps_per_epoch: int,
                   variables) -> Tuple[keras.optimizers.Optimizer,
                                       LearningRate]:
  """Adam with the config's epsilon and learning rate, built for
  `variables` (so its slots exist before a checkpoint is restored)."""
  rate = LearningRate(learning_rate(config, steps_per_epoch))
  optimizer = keras.optimizers.Adam(rate.for_optimizer(),
                                    epsilon=config.adam_epsilon)
  optimizer.build(variables)
  return optimizer, rate


@dataclasses.dataclass
class Trainable:
  """What the compiled step updates and guards."""
  model: models.Model
  optimizer: keras.optimizers.Optimizer
  learning_rate: LearningRate
  guard: step_lib.NonFiniteGuard
  divergence_guard: divergence.DivergenceGuard

  def train_step(self, config: config_lib.Config, jit_compile: bool,
                 strategy: Optional[tf.distribute.Strategy] = None):
    """One guarded step (`elbo.step.make_train_step`)."""
    return step_lib.make_train_step(self.model, self.optimizer, config,
                                    jit_compile, self.guard, strategy,
                                    self.divergence_guard)


def build_trainable(config: config_lib.Config, steps_per_epoch: int,
                    model_fn: Optional[models.ModelFn] = None,
                    strategy: Optional[tf.distribute.Strategy] = None
                    ) -> Trainable:
  """The model (initialized from `config.seed`), its optimizer and the
  step's two guards, under `strategy`'s scope: what a training run and the
  benchmark build alike.

  Raises:
    ConfigError: the model lacks the interface of `elbo.models.Model`.
  """
  keras.utils.set_random_seed(config.seed)  # Weight initialization.
  with (strategy or tf.distribute.get_strategy()).scope():
    model = (model_fn or build_model)(config)
    if not isinstance(model, models.Model):
      raise config_lib.ConfigError(
          f'The model ({type(model).__name__}) lacks one of '
          'approx_posterior, decoder_likelihood, latent_prior '
          '(elbo.models.Model).')
    optimizer, rate = make_optimizer(config, steps_per_epoch,
                                     model.trainable_variables)
    return Trainable(model, optimizer, rate, step_lib.NonFiniteGuard(),
                     divergence.DivergenceGuard(config.divergence_window,
                                                config.divergence_threshold))


def train_loop(config: config_lib.Config, train_step, jit_compile: bool,
               images: tf.Variable):
  """`train_steps(first_step, num_steps, data_offset)` of `train_step`
  (`Trainable.train_step`) on batches made from the resident `images`
  (`elbo.step.make_train_loop`). XLA compiles the whole loop of steps only
  without a distribution strategy: under one, the step's all-reduces stay
  outside XLA."""
  return step_lib.make_train_loop(
      train_step, images, config.batch_size, config.seed,
      jit_compile and config.strategy == 'default', config.steps_per_call)
