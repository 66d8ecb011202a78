r"""Evaluates a training run on the test set: -ELBO and -log p(x).

  python experiments/evaluate.py --workdir=/tmp/elbo/blog

reports the mean negative ELBO (with its reconstruction and KL terms) and the
importance-sampled negative log-likelihood with k = 5000 samples per image
(as in the IWAE paper), with standard errors, over the whole test split. It
writes `evaluation_k5000.json` and TensorBoard scalars (`eval/`) into the
workdir. The work is saved every few hundred images; run the same command
again to continue after an interruption. A finished evaluation with fewer
samples (say k = 1000) is reused: k = 5000 then draws only the 4000 new
samples per image, with the same result. For a quick look:

  python experiments/evaluate.py --workdir=/tmp/elbo/blog \
      --num_samples=1000 --num_examples=500

`--strategy=mirrored|multiworker|tpu` shares the test images out over the
replicas (and workers, each started with its TF_CONFIG as for train.py);
the figures are those of one process. Progress (images, decoder passes per
second, time left) is logged and written to TensorBoard (`eval/`).
"""

import sys

from absl import app
from absl import flags
from absl import logging

from elbo import config as config_lib
from elbo import distribute
from elbo import evaluation
from elbo import flag_utils

_HELP = {
    'num_samples': 'k, importance samples per test image; >= 1.',
    'num_examples': 'Evaluate only the first N test images; 0: all.',
    'examples_per_call': 'Test images per compiled call; >= 1.',
    'decoder_passes_per_call': 'Upper bound on decoder passes (images x '
                               'samples) in memory at once; >= 1.',
    'save_every': 'Images between saves of partial results; >= 1.',
    'seed': 'Seed of the importance samples.',
    'precision': 'float32 (exact figures) or mixed_bfloat16 (faster).',
    'strategy': 'tf.distribute strategy the images are shared out over '
                '(multiworker: the cluster from TF_CONFIG).',
    'tpu': 'With --strategy=tpu: a TPU name or grpc:// address.',
    'data_dir': 'Local directory of the standard files; unset: the one the '
                'run was trained with.',
}

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training workdir.',
                               required=True)
flag_utils.define_dataclass_flags(evaluation.EvalConfig,
                                  {'precision': config_lib.PRECISIONS,
                                   'strategy': distribute.STRATEGIES},
                                  help_texts=_HELP)
flags.adopt_module_key_flags(flag_utils)  # --help lists them.


def main(argv):
  eval_config = flag_utils.config_from_flags_or_exit(evaluation.EvalConfig,
                                                     argv)
  try:
    result = evaluation.evaluate_run(_WORKDIR.value, eval_config)
  except evaluation.USER_ERRORS as e:
    sys.exit(f'Error: {e}')
  if result is None:
    logging.info('This worker\'s share is saved; the chief writes the '
                 'results.')
    return
  logging.info('Step %d, %d test images: -ELBO %.2f +- %.2f '
               '(reconstruction %.2f, KL %.2f); -log p(x) (k=%d) %.2f +- %.2f',
               result['step'], result['num_examples'], result['neg_elbo'],
               result['elbo']['stderr'], -result['reconstruction']['mean'],
               result['kl']['mean'], result['num_samples'], result['nll'],
               result['log_likelihood']['stderr'])


if __name__ == '__main__':
  app.run(main)
