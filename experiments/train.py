r"""Trains the TFP blog's VAE on MNIST with an explicit GradientTape loop.

The blog configuration (15 epochs, batch 256, dynamic binarization), from
TFDS:

  python experiments/train.py --workdir=/tmp/elbo/blog

From local copies of the standard files, and only a few steps:

  python experiments/train.py --workdir=/tmp/elbo/smoke \
      --data_dir=../shared/datasets --max_steps=50

Run it again with the same --workdir to resume. SIGTERM or Ctrl-C stop it,
after the training call in flight and one more, with a checkpoint and exit
status 75; with several workers, a signal to any one stops all of them at the
same step. TensorBoard:

  tensorboard --logdir=/tmp/elbo

Every flag is a field of `elbo.config.Config`, with the same default.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from elbo import checkpoints
from elbo import config as config_lib
from elbo import data
from elbo import distribute
from elbo import flag_utils
from elbo import train

# Exit status after SIGTERM / SIGINT, once the checkpoint is written: "try
# again" (EX_TEMPFAIL), for job schedulers that requeue on it.
EXIT_INTERRUPTED = 75

_HELP = {
    'dataset': 'mnist: dynamically binarized grey-level MNIST; '
               'binarized_mnist: the static Larochelle & Murray binarization.',
    'data_dir': 'A local directory with the standard files (*-idx3-ubyte.gz, '
                'binarized_mnist_*.amat.gz, directly or in a sub-directory '
                'named after the dataset). Unset: load through TFDS.',
    'epochs': 'Passes over the training set; >= 1.',
    'batch_size': 'Examples per training step; >= 1.',
    'learning_rate': 'Adam learning rate (initial, for cosine); > 0.',
    'lr_schedule': 'constant, or cosine decay to 0 over all epochs.',
    'clip_norm': 'Clip the global-batch gradient to this norm (over all '
                 'replicas) before Adam; 0: no clipping.',
    'objective': 'elbo: maximize reconstruction - kl_weight * kl; iwae: '
                 'maximize the importance-weighted bound with '
                 'k = num_samples.',
    'kl': 'analytic: closed-form KL(q || p); mc: Monte Carlo from the same '
          'latent samples as the reconstruction term.',
    'num_samples': 'Latent samples per example (k of iwae); >= 1.',
    'kl_weight': 'beta, the weight of the KL term in the elbo objective; '
                 '1 is the ELBO; >= 0.',
    'kl_warmup_steps': 'Steps of linear warm-up of kl_weight from 0; 0: none.',
    'prior': 'normal: N(0, I), the blog\'s; mixture: a learned mixture of '
             'prior_components diagonal Gaussians (needs --kl=mc).',
    'prior_components': 'Components of the mixture prior; >= 1.',
    'precision': 'float32, or mixed_bfloat16 (bfloat16 convolutions, '
                 'float32 variables and distributions).',
    'seed': 'Seed for initialization, data order, binarization and latent '
            'samples.',
    'jit_compile': 'XLA-compile the train step. auto: only when a GPU or TPU '
                   'is present (on CPU XLA is slower for this model).',
    'strategy': 'tf.distribute strategy: default (one device), mirrored (all '
                'local GPUs), multiworker (MultiWorkerMirroredStrategy from '
                'TF_CONFIG), tpu (TPUStrategy at --tpu).',
    'tpu': 'For --strategy=tpu: local (a TPU VM), a TPU name, or a '
           'grpc:// address.',
    'max_steps': 'Stop after this global step (for smoke runs); 0: no cap.',
    'steps_per_call': 'Training steps per tf.function call (batches are '
                      'made in the graph); calls also end at every log, '
                      'image, checkpoint and epoch; >= 1.',
    'log_every': 'Steps between scalar summaries and progress; >= 1.',
    'image_every': 'Steps between image summaries; >= 1.',
    'checkpoint_every': 'Steps between checkpoints (one is also written each '
                        'epoch and at the end); >= 1.',
    'keep_checkpoints': 'How many recent checkpoints to keep; >= 1.',
    'eval_batch_size': 'Examples per test-set evaluation batch; >= 1.',
}


_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, TensorBoard events and '
    'figures. An existing run there is resumed.', required=True)
flag_utils.define_dataclass_flags(config_lib.Config, _HELP,
                                  config_lib.CHOICES)
flags.register_validator(
    'workdir', lambda path: not os.path.exists(path) or os.path.isdir(path),
    message='--workdir exists and is not a directory.')


def main(argv):
  config = flag_utils.config_from_flags_or_exit(config_lib.Config, argv)
  logging.info('Config: %s', config)
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except train.TrainingInterrupted as e:
    logging.warning('%s', e)
    sys.exit(EXIT_INTERRUPTED)
  except (data.DataError, checkpoints.CheckpointMismatchError,
          config_lib.ConfigError, distribute.StrategyError,
          train.NonFiniteError) as e:
    sys.exit(f'Error: {e}')


if __name__ == '__main__':
  app.run(main)
