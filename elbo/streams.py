"""Every random stream and fixed count of a run, in one place.

Every draw is stateless: its seed is `[run_seed, STREAM]` (then folded
with a step, batch or call index), so two streams never share draws and a
draw does not depend on what ran before it. The numbers are part of a
run's results: changing one changes every figure drawn from it, and a
resumed run would no longer match an uninterrupted one. Add a stream with a
new number; never reuse or renumber one.
"""

import tensorflow as tf

__all__ = ['DATA', 'EVAL_BINARIZATION_SEED', 'EVAL_DIAGNOSTIC',
           'EVAL_IMPORTANCE', 'EXPORT', 'FIGURE', 'FIGURES_BINARY',
           'LATENT', 'NUM_DIAGNOSTIC_IMAGES', 'NUM_GRID_IMAGES', 'TEST_ELBO',
           'TRAIN_DIAGNOSTIC', 'seed']

# Training (elbo.data, elbo.train).
DATA = 0  # Batch order and binarization, folded with (epoch, step).
LATENT = 1  # The objective's draws, folded with step * replicas + replica.
TEST_ELBO = 2  # The test-set ELBO during training, folded with the batch.
FIGURE = 3  # Reconstructions and the prior samples of the image grids.
TRAIN_DIAGNOSTIC = 4  # The latent diagnostics at each evaluation.

# elbo.evaluation.
EVAL_IMPORTANCE = 7  # The k importance samples, folded with a call start.
EVAL_DIAGNOSTIC = 8  # The latent diagnostics of the final evaluation.

# Streams keyed on a seed the caller passes, not the run's.
EXPORT = 0  # The SavedModel's `sample` and `log_prob_bound`.
FIGURES_BINARY = 0  # experiments/figures.py: diagnostics and figures.

# Test images are binarized once with this seed, whatever the run's seed,
# so that evaluations of different runs compare.
EVAL_BINARIZATION_SEED = (2019, 0)

# The latent diagnostics use the first test images (I(x; z) costs N^2
# densities).
NUM_DIAGNOSTIC_IMAGES = 1000
# Test images (and prior samples) in each TensorBoard image grid.
NUM_GRID_IMAGES = 16


def seed(run_seed: int, stream: int) -> tf.Tensor:
  """The stateless seed `[run_seed, stream]` (int32, shape `[2]`)."""
  return tf.constant([run_seed, stream], tf.int32)
