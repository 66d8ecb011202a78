"""What defines a run: the `Config`, its checks, and what is built from it.

A run's config is saved as `config.json` in its workdir, so that evaluation
rebuilds exactly the model that was trained.
"""

import dataclasses
import json
import math
import os
from typing import Optional, Union

from absl import logging
import keras
import tensorflow as tf

from elbo import data
from elbo import distribute
from elbo import losses
from elbo import models

__all__ = ['CHOICES', 'Config', 'ConfigError', 'JIT_COMPILE_CHOICES',
           'LR_SCHEDULES', 'OBJECTIVES', 'PRECISIONS', 'build_model',
           'learning_rate', 'load', 'save']

JIT_COMPILE_CHOICES = ('auto', 'true', 'false')
# 'elbo': maximize reconstruction - kl_weight * kl. 'iwae': maximize the
# importance-weighted bound with k = num_samples.
OBJECTIVES = ('elbo', 'iwae')
LR_SCHEDULES = ('constant', 'cosine')
PRECISIONS = ('float32', 'mixed_bfloat16')
# The Config fields that take one of a few names.
CHOICES = {
    'dataset': data.DATASETS,
    'kl': losses.KL_METHODS,
    'objective': OBJECTIVES,
    'lr_schedule': LR_SCHEDULES,
    'prior': models.PRIORS,
    'precision': PRECISIONS,
    'jit_compile': JIT_COMPILE_CHOICES,
    'strategy': distribute.STRATEGIES,
}
_FILENAME = 'config.json'


class ConfigError(ValueError):
  """A config that cannot run here: bad values, or values that do not fit
  the data or the workdir."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a training run. Defaults: the blog's setup."""
  dataset: str = 'mnist'
  data_dir: Optional[str] = None  # None: TFDS; else a dir of standard files.
  epochs: int = 15
  batch_size: int = 256
  learning_rate: float = 1e-3
  lr_schedule: str = 'constant'
  clip_norm: float = 0.0  # Largest gradient norm applied; 0: no clipping.
  objective: str = 'elbo'
  kl: str = 'analytic'  # 'analytic' or 'mc'.
  num_samples: int = 1  # Latent samples per example (k for 'iwae').
  kl_weight: float = 1.0  # beta; 1 is the ELBO.
  kl_warmup_steps: int = 0  # Linear warm-up of beta from 0.
  prior: str = 'normal'
  prior_components: int = 100  # For prior='mixture'.
  precision: str = 'float32'
  seed: int = 0
  jit_compile: str = 'auto'  # 'auto': XLA iff a GPU or TPU is present.
  strategy: str = 'default'  # See elbo.distribute.STRATEGIES.
  tpu: str = 'local'  # strategy='tpu': a TPU name or grpc:// address.
  max_steps: int = 0  # 0: no cap beyond `epochs`.
  steps_per_call: int = 10  # Training steps per tf.function call.
  log_every: int = 50
  image_every: int = 500
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  eval_batch_size: int = 500

  def __post_init__(self):
    for name, choices in CHOICES.items():
      if getattr(self, name) not in choices:
        raise ConfigError(f'{name} must be one of {choices}, got '
                         f'{getattr(self, name)!r}.')
    for name in ('epochs', 'batch_size', 'num_samples', 'prior_components',
                 'steps_per_call', 'log_every', 'image_every',
                 'checkpoint_every', 'keep_checkpoints', 'eval_batch_size'):
      if getattr(self, name) < 1:
        raise ConfigError(
            f'{name} must be >= 1, got {getattr(self, name)}.')
    for name in ('max_steps', 'kl_warmup_steps'):
      if getattr(self, name) < 0:
        raise ConfigError(
            f'{name} must be >= 0, got {getattr(self, name)}.')
    if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
      raise ConfigError(
          f'learning_rate must be > 0, got {self.learning_rate}.')
    if not (self.clip_norm >= 0 and math.isfinite(self.clip_norm)):
      raise ConfigError(f'clip_norm must be >= 0, got {self.clip_norm}.')
    if not (self.kl_weight >= 0 and math.isfinite(self.kl_weight)):
      raise ConfigError(f'kl_weight must be >= 0, got {self.kl_weight}.')
    if self.objective == 'iwae' and (self.kl_weight != 1 or
                                     self.kl_warmup_steps):
      raise ConfigError('kl_weight and kl_warmup_steps apply to the elbo '
                       'objective only, not to iwae.')
    if self.prior == 'mixture' and self.kl == 'analytic':
      raise ConfigError('The mixture prior has no closed-form KL; use '
                       'kl=mc with prior=mixture.')
    if self.data_dir is not None and not os.path.isdir(self.data_dir):
      raise ConfigError(f'data_dir {self.data_dir!r} is not a directory.')


def build_model(config: Config,
                precision: Optional[str] = None) -> models.VAE:
  """The VAE `config` describes; `precision` overrides the config's (the
  variables are float32 either way, so checkpoints are interchangeable)."""
  return models.VAE(prior=config.prior,
                    prior_components=config.prior_components,
                    precision=precision or config.precision)


_Schedule = keras.optimizers.schedules.LearningRateSchedule


def learning_rate(config: Config,
                  steps_per_epoch: int) -> Union[float, _Schedule]:
  """The constant rate, or a cosine decay to 0 over all `epochs`."""
  if config.lr_schedule == 'cosine':
    return keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=config.epochs * steps_per_epoch)
  return config.learning_rate


def save(workdir: str, config: Config) -> None:
  """Writes config.json, atomically: evaluation rebuilds the model from it.

  Whether a resumed run may change its config, and the history of its
  configs, are `elbo.run_record`'s: this only writes the latest.
  """
  path = os.path.join(workdir, _FILENAME)
  temporary = path + '.tmp'
  with tf.io.gfile.GFile(temporary, 'w') as f:
    json.dump(dataclasses.asdict(config), f, indent=2)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def load(workdir: str, **overrides) -> Config:
  """The config a run in `workdir` was trained with, with `overrides` (e.g.
  a `data_dir` on this machine) replacing saved values.

  Fields added since the run was written take their defaults; saved fields
  this version no longer has are dropped.
  """
  path = os.path.join(workdir, _FILENAME)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'{path}: not found; is {workdir} a training '
                            'workdir?')
  with tf.io.gfile.GFile(path) as f:
    values = json.load(f)
  values.update(overrides)
  known = {field.name for field in dataclasses.fields(Config)}
  dropped = sorted(set(values) - known)
  if dropped:
    logging.warning('%s: ignoring fields unknown to this version: %s', path,
                    ', '.join(dropped))
  return Config(**{k: v for k, v in values.items() if k in known})
