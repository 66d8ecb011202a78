r"""Pictures and diagnostics of a run's latent space, from its latest
checkpoint.

  python experiments/figures.py --workdir=/tmp/elbo/blog

writes into the workdir `interpolations.png`, `traversals.png`,
`latent_pca.png` (test posterior means on their first two principal axes,
coloured by digit), `kl_per_dimension.png`, `reconstructions_8x8.png` and
`prior_samples_8x8.png`, the same images to TensorBoard (`figures/`, tags
`latent/...`) and `diagnostics.json`: active units, the mutual information
I_q(x; z), the total correlation of q(z | x) and the KL per latent dimension
(see `elbo.diagnostics`), on the first `--diagnostic_examples` test images.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from elbo import data
from elbo import diagnostics
from elbo import evaluation
from elbo import images
from elbo import run_record
from elbo import streams
from elbo import summaries

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training workdir.',
                               required=True)
_NUM_EXAMPLES = flags.DEFINE_integer(
    'num_examples', 10_000, 'Test images to encode (the embedding, the '
    'ranking of dimensions); >= 64.', lower_bound=64)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the prior samples and of '
                             'the Monte Carlo estimates.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'Local directory of the standard files; unset: the '
    'one the run was trained with.')
_DIAGNOSTIC_EXAMPLES = flags.DEFINE_integer(
    'diagnostic_examples', 1000, 'The first N test images give the '
    'diagnostics; the mutual information estimate is at most log N and '
    'costs N^2 densities.', lower_bound=2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  workdir = _WORKDIR.value
  overrides = {'data_dir': _DATA_DIR.value} if _DATA_DIR.value else {}
  try:
    model, config, step = evaluation.restore_model(workdir, **overrides)
    test_images = data.load_images(config.dataset, 'test', config.data_dir)
  except evaluation.USER_ERRORS as e:
    sys.exit(f'Error: {e}')
  # Binarized once with the evaluation's fixed seed.
  binary = np.concatenate(list(data.eval_batches(test_images, 10_000)))
  binary = binary[:_NUM_EXAMPLES.value]
  labels = data.load_labels_or_none(config.dataset, 'test', config.data_dir)
  if labels is not None:
    labels = labels[:len(binary)]
  seed = streams.seed(_SEED.value, streams.FIGURES_BINARY)

  summary = diagnostics.diagnostics_summary(
      model, binary[:_DIAGNOSTIC_EXAMPLES.value], seed)
  figures = images.latent_figures(model, binary, labels, seed)
  images.write_latent_figures(workdir, figures)
  images.write_latent_summaries(
      summaries.SummaryWriter(os.path.join(workdir, 'figures')), step,
      figures)
  result = {'step': step, 'num_examples': min(len(binary),
                                              _DIAGNOSTIC_EXAMPLES.value),
            **{name: value.tolist() if isinstance(value, np.ndarray)
               else value for name, value in summary.items()}}
  run_record.write_file(os.path.join(workdir, 'diagnostics.json'),
                        json.dumps(result, indent=2))
  kl = np.sort(summary['kl_per_dimension'])[::-1]
  logging.info('Step %d: %d active units of %d; I_q(x; z) %.2f nats (at most '
               'log %d = %.2f); total correlation %.2f; KL per dimension, '
               'largest first: %s', step, summary['active_units'], len(kl),
               summary['mutual_information'], result['num_examples'],
               summary['log_num_examples'], summary['total_correlation'],
               ' '.join(f'{v:.2f}' for v in kl))


if __name__ == '__main__':
  app.run(main)
