r"""Trains the TFP blog's VAE on MNIST with an explicit GradientTape loop.

The blog configuration (15 epochs, batch 256, dynamic binarization), from
TFDS:

  python experiments/train.py --workdir=/tmp/elbo/blog

From local copies of the standard files, and only a few steps:

  python experiments/train.py --workdir=/tmp/elbo/smoke \
      --data_dir=../shared/datasets --max_steps=50

Run it again with the same --workdir to resume. SIGTERM or Ctrl-C stop it
after the current step with a checkpoint and exit status 75. TensorBoard:

  tensorboard --logdir=/tmp/elbo
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from elbo import checkpoints
from elbo import data
from elbo import losses
from elbo import train

_DEFAULTS = train.Config()
# Exit status after SIGTERM / SIGINT, once the checkpoint is written: "try
# again" (EX_TEMPFAIL), for job schedulers that requeue on it.
EXIT_INTERRUPTED = 75

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, TensorBoard events and '
    'figures. An existing run there is resumed.', required=True)
_DATASET = flags.DEFINE_enum(
    'dataset', _DEFAULTS.dataset, data.DATASETS,
    'mnist: dynamically binarized grey-level MNIST; binarized_mnist: the '
    'static Larochelle & Murray binarization.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', _DEFAULTS.data_dir, 'A local directory with the standard '
    'files (*-idx3-ubyte.gz, binarized_mnist_*.amat.gz, directly or in a '
    'sub-directory named after the dataset). Unset: load through TFDS.')
_EPOCHS = flags.DEFINE_integer('epochs', _DEFAULTS.epochs,
                               'Passes over the training set; >= 1.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', _DEFAULTS.batch_size,
                                   'Examples per training step; >= 1.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', _DEFAULTS.learning_rate,
                                    'Adam learning rate; > 0.')
_KL = flags.DEFINE_enum(
    'kl', _DEFAULTS.kl, losses.KL_METHODS,
    'analytic: closed-form KL(q || p); mc: Monte Carlo from the same latent '
    'samples as the reconstruction term.')
_NUM_SAMPLES = flags.DEFINE_integer(
    'num_samples', _DEFAULTS.num_samples,
    'Latent samples per example in the ELBO; >= 1.')
_SEED = flags.DEFINE_integer('seed', _DEFAULTS.seed,
                             'Seed for initialization, data order, '
                             'binarization and latent samples.')
_JIT_COMPILE = flags.DEFINE_enum(
    'jit_compile', _DEFAULTS.jit_compile, train.JIT_COMPILE_CHOICES,
    'XLA-compile the train step. auto: only when a GPU or TPU is present '
    '(on CPU XLA is about 2x slower for this model).')
_MAX_STEPS = flags.DEFINE_integer(
    'max_steps', _DEFAULTS.max_steps,
    'Stop after this global step (for smoke runs); 0: no cap.')
_LOG_EVERY = flags.DEFINE_integer('log_every', _DEFAULTS.log_every,
                                  'Steps between scalar summaries; >= 1.')
_IMAGE_EVERY = flags.DEFINE_integer('image_every', _DEFAULTS.image_every,
                                    'Steps between image summaries; >= 1.')
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    'checkpoint_every', _DEFAULTS.checkpoint_every,
    'Steps between checkpoints (one is also written each epoch and at the '
    'end); >= 1.')
_KEEP_CHECKPOINTS = flags.DEFINE_integer(
    'keep_checkpoints', _DEFAULTS.keep_checkpoints,
    'How many recent checkpoints to keep; >= 1.')
_EVAL_BATCH_SIZE = flags.DEFINE_integer(
    'eval_batch_size', _DEFAULTS.eval_batch_size,
    'Examples per test-set evaluation batch; >= 1.')

flags.register_validator(
    'workdir', lambda path: not os.path.exists(path) or os.path.isdir(path),
    message='--workdir exists and is not a directory.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    config = train.Config(
        dataset=_DATASET.value, data_dir=_DATA_DIR.value,
        epochs=_EPOCHS.value, batch_size=_BATCH_SIZE.value,
        learning_rate=_LEARNING_RATE.value, kl=_KL.value,
        num_samples=_NUM_SAMPLES.value, seed=_SEED.value,
        jit_compile=_JIT_COMPILE.value, max_steps=_MAX_STEPS.value,
        log_every=_LOG_EVERY.value, image_every=_IMAGE_EVERY.value,
        checkpoint_every=_CHECKPOINT_EVERY.value,
        keep_checkpoints=_KEEP_CHECKPOINTS.value,
        eval_batch_size=_EVAL_BATCH_SIZE.value)
  except ValueError as e:
    sys.exit(f'Invalid flags: {e}')
  logging.info('Config: %s', config)
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except train.TrainingInterrupted as e:
    logging.warning('%s', e)
    sys.exit(EXIT_INTERRUPTED)
  except (data.DataError, checkpoints.CheckpointMismatchError,
          train.NonFiniteError) as e:
    sys.exit(f'Error: {e}')


if __name__ == '__main__':
  app.run(main)
