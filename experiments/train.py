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

Every flag is a field of `elbo.config.Config`, with the same default;
`--preset=NAME` takes a named set of them from `elbo.config.PRESETS` (flags
given explicitly win), e.g. the README's long run:

  python experiments/train.py --workdir=/tmp/elbo/long --preset=long150
"""

import sys

from absl import app
from absl import flags
from absl import logging

from elbo import config as config_lib
from elbo import flag_utils
from elbo import train

# Exit status after SIGTERM / SIGINT, once the checkpoint is written: "try
# again" (EX_TEMPFAIL), for job schedulers that requeue on it.
EXIT_INTERRUPTED = 75

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, TensorBoard events and '
    'figures. An existing run there is resumed.', required=True)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_list(
    'allow_config_change', [], 'Config fields a resumed run may change '
    'although they change what a step computes or what the checkpoint holds '
    '(elbo.run_record.SAFE_CHANGES may always change), e.g. batch_size,seed.')
flag_utils.define_dataclass_flags(config_lib.Config, config_lib.CHOICES)
flag_utils.define_preset_flag(config_lib.PRESETS)
flags.adopt_module_key_flags(flag_utils)  # --help lists them.


def main(argv):
  config = flag_utils.config_from_flags_or_exit(config_lib.Config, argv,
                                                config_lib.PRESETS)
  logging.info('Config: %s', config)
  try:
    train.train_and_evaluate(config, _WORKDIR.value,
                             allow_config_changes=_ALLOW_CONFIG_CHANGE.value)
  except train.TrainingInterrupted as e:
    logging.warning('%s', e)
    sys.exit(EXIT_INTERRUPTED)
  except train.USER_ERRORS as e:
    sys.exit(f'Error: {e}')


if __name__ == '__main__':
  app.run(main)
