r"""Exports a trained run as a TensorFlow SavedModel that needs no `elbo`.

  python experiments/export.py --workdir=/tmp/elbo/blog

writes `WORKDIR/saved_model` (or `--export_dir`) from the latest checkpoint,
with four signatures (see `elbo.export`), for images `x` in [0, 1] of shape
`[N, 28, 28, 1]`:

  encode(x)                  -> {loc, scale_tril}: q(z | x)
  decode(z)                  -> {logits}: p(x | z), Bernoulli
  sample(n, seed)            -> {images, latents}: decoder means at n draws
                                from the prior
  log_prob_bound(x, k, seed) -> {log_prob_bound}: the IWAE bound L_k

Anyone with TensorFlow can use it, e.g.

  model = tf.saved_model.load(path)
  z = model.signatures['encode'](x=x)['loc']
"""

import os
import sys

from absl import app
from absl import flags

from elbo import evaluation
from elbo import export

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training workdir.',
                               required=True)
_EXPORT_DIR = flags.DEFINE_string(
    'export_dir', None, 'Where to write the SavedModel; unset: '
    'WORKDIR/saved_model.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  export_dir = _EXPORT_DIR.value or os.path.join(_WORKDIR.value,
                                                 'saved_model')
  try:
    # No data is read: the run's data_dir need not exist here.
    model, _, step = evaluation.restore_model(_WORKDIR.value, data_dir=None)
    export.export(model, export_dir)
  except (*evaluation.USER_ERRORS, export.ExportError) as e:
    sys.exit(f'Error: {e}')
  print(f'Exported step {step} to {export_dir}')


if __name__ == '__main__':
  app.run(main)
