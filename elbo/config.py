"""What defines a run: the `Config`, its checks, presets, save and load.

A run's config is saved as `config.json` in its workdir, so that evaluation
rebuilds exactly the model that was trained. What is built from a config
(model, optimizer, learning-rate schedule) is `elbo.factory`'s.
"""

import dataclasses
import json
import math
import os
from typing import Optional

from absl import logging
import tensorflow as tf

from elbo import data
from elbo import distribute
from elbo import losses
from elbo import models
from elbo import objectives

__all__ = ['CHOICES', 'Config', 'ConfigError', 'IWAE_PAPER_EPOCHS',
           'IWAE_STAGES', 'JIT_COMPILE_CHOICES', 'LR_SCHEDULES', 'PRECISIONS',
           'PRESETS', 'load', 'save']

JIT_COMPILE_CHOICES = ('auto', 'true', 'false')
# cosine: decay to 0 over all epochs. iwae_stages: the IWAE paper's schedule
# (stage i of 8 lasts 3^i / 3280 of all epochs at 10^(-i/7) times the rate).
LR_SCHEDULES = ('constant', 'cosine', 'iwae_stages')
PRECISIONS = ('float32', 'mixed_bfloat16')


# The Config fields that take one of a few names. Tables (dicts) are looked
# up when a Config is made, so an entry added at run time is a valid name.
CHOICES = {
    'model': models.MODELS,
    'dataset': data.DATASETS,
    'kl': losses.KL_METHODS,
    'objective': objectives.OBJECTIVES,
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


def _field(default, help_text: str):
  """A Config field with its flag's help text."""
  return dataclasses.field(default=default, metadata={'help': help_text})


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a training run. Defaults: the blog's setup.

  Each field is a flag of `experiments/train.py`, with its help text here.
  """
  model: str = _field(
      'blog', 'blog: the 2019 TFP blog\'s convolutional VAE; iwae_mlp: the '
      'IWAE paper\'s one-stochastic-layer MLP (50 latents).')
  dataset: str = _field(
      'mnist', 'mnist, fashion_mnist, kmnist: grey levels, dynamically '
      'binarized; binarized_mnist: the static Larochelle & Murray '
      'binarization.')
  data_dir: Optional[str] = _field(
      None, 'A local directory with the standard files (*-idx3-ubyte.gz, '
      'binarized_mnist_*.amat.gz, directly or in a sub-directory named '
      'after the dataset). Unset: load through TFDS.')
  epochs: int = _field(15, 'Passes over the training set; >= 1.')
  batch_size: int = _field(256, 'Examples per training step; >= 1.')
  learning_rate: float = _field(
      1e-3, 'Adam learning rate (the initial one of a schedule); > 0.')
  lr_schedule: str = _field(
      'constant', 'constant; cosine: decay to 0 over all epochs; '
      'iwae_stages: the IWAE paper\'s 8 stages, 3^i/3280 of the epochs at '
      '10^(-i/7) times the rate.')
  adam_epsilon: float = _field(
      1e-7, 'Adam\'s epsilon (Keras default 1e-7; the IWAE paper 1e-4); '
      '> 0.')
  clip_norm: float = _field(
      0.0, 'Clip the global-batch gradient to this norm (over all '
      'replicas) before Adam; 0: no clipping.')
  objective: str = _field(
      'elbo', 'elbo: maximize reconstruction - kl_weight * kl; iwae: the '
      'importance-weighted bound with k = num_samples; iwae_dreg: the same '
      'bound with the doubly reparameterized encoder gradient.')
  kl: str = _field(
      'analytic', 'analytic: closed-form KL(q || p); mc: Monte Carlo from '
      'the same latent samples as the reconstruction term.')
  num_samples: int = _field(
      1, 'Latent samples per example (k of iwae); >= 1.')
  kl_weight: float = _field(
      1.0, 'beta, the weight of the KL term in the elbo objective; 1 is the '
      'ELBO; >= 0.')
  kl_warmup_steps: int = _field(
      0, 'Steps of linear warm-up of kl_weight from 0; 0: none.')
  prior: str = _field(
      'normal', 'normal: N(0, I), the blog\'s; mixture: a learned mixture '
      'of prior_components diagonal Gaussians (needs --kl=mc).')
  prior_components: int = _field(
      100, 'Components of the mixture prior; >= 1.')
  precision: str = _field(
      'float32', 'float32, or mixed_bfloat16 (bfloat16 convolutions, '
      'float32 variables and distributions).')
  seed: int = _field(
      0, 'Seed for initialization, data order, binarization and latent '
      'samples.')
  jit_compile: str = _field(
      'auto', 'XLA-compile the train step. auto: on a GPU or TPU, and on a '
      'CPU for a model without convolutions (there the whole multi-step '
      'loop is compiled; XLA\'s CPU convolutions are slower than oneDNN\'s).')
  strategy: str = _field(
      'default', 'tf.distribute strategy: default (one device), mirrored '
      '(all local GPUs), multiworker (MultiWorkerMirroredStrategy from '
      'TF_CONFIG), tpu (TPUStrategy at --tpu).')
  tpu: str = _field(
      'local', 'For --strategy=tpu: local (a TPU VM), a TPU name, or a '
      'grpc:// address.')
  max_steps: int = _field(
      0, 'Stop after this global step (for smoke runs); 0: no cap.')
  steps_per_call: int = _field(
      10, 'Training steps per tf.function call (batches are made in the '
      'graph); calls also end at every log, image, checkpoint and epoch; '
      '>= 1.')
  log_every: int = _field(
      50, 'Steps between scalar summaries and progress; >= 1.')
  image_every: int = _field(500, 'Steps between image summaries; >= 1.')
  checkpoint_every: int = _field(
      500, 'Steps between checkpoints (one is also written each epoch and '
      'at the end); >= 1.')
  keep_checkpoints: int = _field(
      3, 'How many recent checkpoints to keep; >= 1.')
  eval_batch_size: int = _field(
      500, 'Examples per test-set evaluation batch; >= 1.')
  divergence_threshold: float = _field(
      10.0, 'A step whose objective is this many robust standard '
      'deviations below, and whose log gradient norm this many above, the '
      'medians of the last divergence_window steps is a divergence: restore '
      'a checkpoint and apply the remedy (README, Interruptions); 0: off.')
  divergence_window: int = _field(
      200, 'Recent steps the divergence statistics cover; detection starts '
      'after this many; >= 1.')
  divergence_rewind: int = _field(
      100, 'On a divergence, restore the newest checkpoint at least this '
      'many steps before it; >= 0.')
  divergence_skip: int = _field(
      50, 'On a divergence, draw the data this many steps past the bad '
      'step; >= 0.')
  divergence_lr_factor: float = _field(
      0.5, 'On a divergence, multiply the learning rate by this for '
      'divergence_cooldown steps; in (0, 1].')
  divergence_cooldown: int = _field(
      1000, 'Steps of the lowered learning rate after a recovery; >= 0.')
  divergence_max_recoveries: int = _field(
      3, 'Recoveries allowed per run; one more divergence stops it; >= 0.')

  def __post_init__(self):
    for name, choices in CHOICES.items():
      if getattr(self, name) not in choices:
        raise ConfigError(f'{name} must be one of {tuple(choices)}, got '
                         f'{getattr(self, name)!r}.')
    for name in ('epochs', 'batch_size', 'num_samples', 'prior_components',
                 'steps_per_call', 'log_every', 'image_every',
                 'checkpoint_every', 'keep_checkpoints', 'eval_batch_size',
                 'divergence_window'):
      if getattr(self, name) < 1:
        raise ConfigError(
            f'{name} must be >= 1, got {getattr(self, name)}.')
    for name in ('max_steps', 'kl_warmup_steps', 'divergence_rewind',
                 'divergence_skip', 'divergence_cooldown',
                 'divergence_max_recoveries'):
      if getattr(self, name) < 0:
        raise ConfigError(
            f'{name} must be >= 0, got {getattr(self, name)}.')
    for name in ('learning_rate', 'adam_epsilon'):
      value = getattr(self, name)
      if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f'{name} must be > 0, got {value}.')
    if not (self.clip_norm >= 0 and math.isfinite(self.clip_norm)):
      raise ConfigError(f'clip_norm must be >= 0, got {self.clip_norm}.')
    if not (self.divergence_threshold >= 0 and
            math.isfinite(self.divergence_threshold)):
      raise ConfigError('divergence_threshold must be >= 0, got '
                        f'{self.divergence_threshold}.')
    if not 0 < self.divergence_lr_factor <= 1:
      raise ConfigError('divergence_lr_factor must be in (0, 1], got '
                        f'{self.divergence_lr_factor}.')
    if not (self.kl_weight >= 0 and math.isfinite(self.kl_weight)):
      raise ConfigError(f'kl_weight must be >= 0, got {self.kl_weight}.')
    if self.objective != 'elbo' and (self.kl_weight != 1 or
                                     self.kl_warmup_steps):
      raise ConfigError('kl_weight and kl_warmup_steps apply to the elbo '
                       f'objective only, not to {self.objective}.')
    if self.model == 'iwae_mlp' and (self.prior != 'normal' or
                                     self.precision != 'float32'):
      raise ConfigError('model=iwae_mlp has the prior N(0, I) and float32 '
                        'only: use prior=normal and precision=float32.')
    if self.prior == 'mixture' and self.kl == 'analytic':
      raise ConfigError('The mixture prior has no closed-form KL; use '
                       'kl=mc with prior=mixture.')
    if self.data_dir is not None and not tf.io.gfile.isdir(self.data_dir):
      raise ConfigError(f'data_dir {self.data_dir!r} is not a directory.')


# The IWAE paper's stages: 3^i epochs at 0.001 * 10^(-i/7), i = 0..7.
IWAE_STAGES = 8
IWAE_PAPER_EPOCHS = sum(3 ** i for i in range(IWAE_STAGES))  # 3,280
# Named sets of flags (`--preset=NAME`); flags given explicitly win.
PRESETS = {
    # The blog's configuration: the defaults.
    'blog': {},
    # The long run of the README (two commands: this with --max_steps=7722,
    # then with --learning_rate=1e-3).
    'long150': dict(epochs=150, lr_schedule='cosine', learning_rate=2e-3,
                    precision='mixed_bfloat16', prior='mixture', kl='mc',
                    checkpoint_every=1000),
    # Burda et al. (2015), Table 1, one stochastic layer, on dynamically
    # binarized MNIST; the paper's batch of 20 and Adam epsilon, its stage
    # schedule compressed into `epochs` (the paper trains 3,280).
    'iwae_vae': dict(model='iwae_mlp', batch_size=20, adam_epsilon=1e-4,
                     lr_schedule='iwae_stages', epochs=100, steps_per_call=50,
                     log_every=500, image_every=5000, checkpoint_every=5000),
    'iwae_k5': dict(model='iwae_mlp', batch_size=20, adam_epsilon=1e-4,
                    lr_schedule='iwae_stages', epochs=100,
                    objective='iwae', num_samples=5, steps_per_call=50,
                    log_every=500, image_every=5000, checkpoint_every=5000),
}
# The same two rows with the paper's exact schedule: 3^i epochs at
# 0.001 * 10^(-i/7), i = 0..7, 3,280 epochs (9.84 million steps).
PRESETS['iwae_paper_vae'] = dict(PRESETS['iwae_vae'], epochs=IWAE_PAPER_EPOCHS,
                                 steps_per_call=100)
PRESETS['iwae_paper_k5'] = dict(PRESETS['iwae_k5'], epochs=IWAE_PAPER_EPOCHS,
                                steps_per_call=100)


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
