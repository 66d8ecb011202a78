"""The compiled training and evaluation steps.

`make_train_step` is one explicit `tf.GradientTape` step of the configured
objective (`elbo.objectives.OBJECTIVES`) on any model with the three methods
of `elbo.models.Model`, across replicas under a `tf.distribute` strategy,
with the ELBO's terms returned apart for logging and two guards recorded in
the graph (`NonFiniteGuard`, `elbo.divergence.DivergenceGuard`).
`make_train_loop` runs many such steps in one call on batches it makes in
the graph. The host loop around them is `elbo.loop`'s.
"""

from typing import Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from elbo import config as config_lib
from elbo import data
from elbo import divergence
from elbo import errors
from elbo import losses
from elbo import models
from elbo import objectives
from elbo import streams

__all__ = ['GUARDED', 'NonFiniteGuard', 'STEP_OUTPUTS', 'TERMS',
           'TRAIN_METRICS', 'clip_by_global_norm', 'evaluate',
           'global_gradient_norm', 'make_eval_step', 'make_train_loop',
           'make_train_step', 'resolve_jit_compile']

TERMS = losses.ElboTerms._fields  # ('elbo', 'reconstruction', 'kl')
# Logged during training: the ELBO terms and the objective maximized (the
# ELBO itself, beta-weighted during KL warm-up, or the IWAE bound).
TRAIN_METRICS = TERMS + ('objective',)
GUARDED = TRAIN_METRICS + ('gradients',)
# What a training step returns: the metrics, then the global gradient norm
# (logged, but not part of the checkpointed sums).
STEP_OUTPUTS = TRAIN_METRICS + ('gradient_norm',)
_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
                 keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                 keras.layers.Conv3DTranspose)


def resolve_jit_compile(jit_compile: str,
                        model: Optional[keras.Model] = None) -> bool:
  """'auto' means XLA on a GPU or TPU, and on a CPU for a model without
  convolutions. On CPU, TF's oneDNN convolutions run the blog's model about
  2x faster than XLA's; for an MLP, XLA compiling the whole multi-step loop
  removes the per-op overhead that dominates its small steps."""
  if jit_compile == 'auto':
    if (tf.config.list_physical_devices('GPU') or
        tf.config.list_physical_devices('TPU')):
      return True
    return model is not None and not _has_convolutions(model)
  return jit_compile == 'true'


def _has_convolutions(model: keras.Model) -> bool:
  return any(isinstance(layer, _CONVOLUTIONS)
             for layer in model._flatten_layers())  # pylint: disable=protected-access


class NonFiniteGuard(tf.Module):
  """Remembers the first step whose loss terms or gradients are not finite.

  Recording happens inside the compiled step; the host reads it only at
  `check()` (before logging and before every checkpoint), so the guard costs
  no per-step synchronization, and a bad state is never saved.
  """

  def __init__(self):
    super().__init__()
    self.first_bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
    self.bad = tf.Variable(tf.zeros([len(GUARDED)], tf.bool),
                           trainable=False)

  def observe(self, step: tf.Tensor, metrics: tf.Tensor,
              gradients_finite: tf.Tensor) -> None:
    finite = tf.concat([tf.math.is_finite(metrics), [gradients_finite]],
                       axis=0)

    def record():
      self.first_bad_step.assign(step)
      self.bad.assign(tf.logical_not(finite))
      return tf.constant(0)

    tf.cond(tf.logical_and(tf.logical_not(tf.reduce_all(finite)),
                           self.first_bad_step < 0),
            record, lambda: tf.constant(0))

  def check(self) -> None:
    """Raises NonFiniteError naming the first bad step and what was bad."""
    step = int(self.first_bad_step.numpy())
    if step >= 0:
      names = [n for n, bad in zip(GUARDED, self.bad.numpy()) if bad]
      raise errors.NonFiniteError(
          f'Non-finite {", ".join(names)} at step {step + 1}; training '
          'stopped and the last checkpoint (before it) was kept.')


def clip_by_global_norm(
    gradients: Sequence[tf.Tensor], clip_norm: float,
    context: tf.distribute.ReplicaContext,
    norm: Optional[tf.Tensor] = None) -> List[tf.Tensor]:
  """Scales this replica's part of the gradient so that the sum over
  replicas, the global-batch gradient the optimizer applies, has norm at
  most `clip_norm`. `norm`: that sum's norm, if already known.

  Keras's own `global_clipnorm` clips each replica's part before the
  optimizer sums them, which bounds another norm on several replicas.
  """
  if norm is None:
    norm = global_gradient_norm(gradients, context)
  scale = clip_norm / tf.maximum(norm, clip_norm)
  return [g * tf.cast(scale, g.dtype) for g in gradients]


def global_gradient_norm(gradients: Sequence[tf.Tensor],
                         context: tf.distribute.ReplicaContext,
                         compiled: bool = False) -> tf.Tensor:
  """The norm of the global-batch gradient, the sum over replicas of their
  parts (an all-reduce of the gradients when there are several).
  `compiled`: the caller runs under XLA (see `_norm_by_matvec`)."""
  if context.num_replicas_in_sync > 1:
    gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
  if compiled:
    return _norm_by_matvec(gradients)
  return tf.linalg.global_norm(gradients)


def _norm_by_matvec(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
  """`tf.linalg.global_norm` for XLA: each tensor's squares, as a matrix,
  times a vector of ones. XLA:CPU rewrites a long sum into a stored square
  and a windowed sum, which took a quarter of the IWAE MLP's step; a
  matrix-vector product sums the rows with the vectorized matmul kernels
  (the step 1.4x faster; the norm rounds as a matmul sums its inputs, a
  row in one sequence: see docs/performance.md)."""
  sums = []
  for tensor in tensors:
    rows = tf.reshape(tensor, [-1, tensor.shape[-1] if tensor.shape.rank
                               else 1])
    sums.append(tf.reduce_sum(tf.linalg.matvec(
        rows * rows, tf.ones([rows.shape[-1]], rows.dtype))))
  return tf.sqrt(tf.add_n(sums))


def make_train_step(model: models.Model,
                    optimizer: keras.optimizers.Optimizer,
                    config: config_lib.Config, jit_compile: bool,
                    guard: Optional[NonFiniteGuard] = None,
                    strategy: Optional[tf.distribute.Strategy] = None,
                    divergence_guard: Optional[
                        divergence.DivergenceGuard] = None):
  """Returns `train_step(batch, step) -> [elbo, reconstruction, kl,
  objective, gradient_norm]`, means over the global batch and the norm of
  the global-batch gradient.

  `batch` is the global batch; under `strategy`, replica r of R trains on
  its part r of R. Each replica's loss is minus its objective
  (`objectives.OBJECTIVES[config.objective]`) summed and divided by the
  global batch size, so the all-reduced (summed) gradients are those of the
  global mean, whatever the number of replicas. The ELBO's terms come back
  separately for logging. With `config.clip_norm`, the global-batch gradient
  is clipped to that norm. On several replicas the norm costs an all-reduce
  of the gradients besides the optimizer's own. `step` (int64 scalar, the
  global step) keys the latent draws, so a step computes the same thing
  whenever it runs. XLA (`jit_compile`) compiles each replica's loss and
  gradients, and on a single replica the update too.
  """
  strategy = strategy or tf.distribute.get_strategy()
  latent_seed = streams.seed(config.seed, streams.LATENT)
  objective_fn = objectives.OBJECTIVES[config.objective]

  @tf.function(jit_compile=jit_compile)
  def loss_and_gradients(batch, step, seed, global_size):
    with tf.GradientTape() as tape:
      terms, objective = objective_fn(model, batch, config, seed, step)
      loss = -tf.reduce_sum(objective) / global_size
    gradients = tape.gradient(loss, model.trainable_variables)
    sums = tf.stack([tf.reduce_sum(t) for t in (*terms, objective)])
    return gradients, sums

  # On one device XLA also fuses the optimizer's update into the step;
  # across replicas the update all-reduces, which stays outside XLA.
  compile_update = jit_compile and strategy.num_replicas_in_sync == 1

  def replica_step(global_batch, step):
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    replica = context.replica_id_in_sync_group
    batch = tf.reshape(global_batch,
                       [replicas, -1, *global_batch.shape[1:]])[replica]
    seed = tf.random.experimental.stateless_fold_in(
        latent_seed, tf.cast(step, tf.int32) * replicas + replica)
    global_size = tf.cast(tf.shape(global_batch)[0], tf.float32)
    gradients, sums = loss_and_gradients(batch, step, seed, global_size)
    norm = global_gradient_norm(gradients, context, compiled=compile_update)
    if config.clip_norm:
      gradients = clip_by_global_norm(gradients, config.clip_norm, context,
                                      norm)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    size = tf.cast(tf.shape(batch)[0], tf.float32)
    # Every replica has the same norm: its sum over replicas divided by R.
    return sums, size, norm / replicas

  if compile_update:
    replica_step = tf.function(replica_step, jit_compile=True)

  @tf.function
  def train_step(batch, step):
    sums, size, norm = [
        strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
        for value in strategy.run(replica_step, args=(batch, step))]
    metrics = sums / size
    if guard is not None:
      guard.observe(step, metrics, tf.math.is_finite(norm))
    if divergence_guard is not None:
      divergence_guard.observe(step, metrics[TRAIN_METRICS.index(
          'objective')], norm)
    return tf.concat([metrics, [norm]], axis=0)

  return train_step


def make_train_loop(train_step, images: tf.Variable, batch_size: int,
                    seed: int, jit_compile: bool = False,
                    steps_per_call: int = 1):
  """Returns `train_steps(first_step, num_steps, data_offset) -> sums`: runs
  `train_step` on steps first_step, ..., first_step + num_steps - 1 in one
  `tf.function` call, on batches made in the graph from the resident
  `images` (`data.training_batches` of the steps + data_offset, an int64
  scalar: 0 unless a divergence recovery skipped data). Several steps per
  call cut Python dispatch. Returns the sum over the steps of
  `train_step`'s outputs.

  With `jit_compile`, XLA compiles the steps' loop as one program (single
  replica only: `train_step`'s all-reduces stay outside XLA): for a small
  model the time around the arithmetic, not the arithmetic, is the step's
  cost, and one program removes it. The batches are made before it, by
  TensorFlow's own kernels, so they are the same bits either way; random
  draws inside the step come from XLA's generator (another stream than
  TensorFlow's kernels for the same seed). The batches are padded to
  `steps_per_call` (the most steps a call runs), so every call runs the
  same program whatever its length: a run resumed off the grid of calls
  rounds exactly as an uninterrupted one.
  """

  def run_steps(batches, first_step, num_steps):
    sums = tf.zeros([len(STEP_OUTPUTS)])
    for index in tf.range(num_steps):
      sums += train_step(batches[index], first_step + index)
    return sums

  if jit_compile:
    run_steps = tf.function(run_steps, jit_compile=True)

  @tf.function
  def train_steps(first_step, num_steps, data_offset=0):
    batches = data.training_batches(images, batch_size, seed,
                                    first_step + data_offset, num_steps)
    if jit_compile:
      tf.debugging.assert_less_equal(
          num_steps, tf.constant(steps_per_call, num_steps.dtype),
          message='num_steps exceeds steps_per_call')
      padding = [[0, steps_per_call - tf.shape(batches)[0]]] + [[0, 0]] * (
          batches.shape.rank - 1)
      batches = tf.ensure_shape(tf.pad(batches, padding),
                                [steps_per_call, *batches.shape[1:]])
    return run_steps(batches, first_step, tf.cast(num_steps, tf.int64))

  return train_steps


def make_eval_step(model: models.Model, config: config_lib.Config,
                   jit_compile: bool):
  """Returns `eval_step(batch, seed) -> [elbo, reconstruction, kl]` sums."""

  @tf.function(jit_compile=jit_compile)
  def eval_step(batch, seed):
    terms = objectives.batch_elbo(model, batch, config, seed)
    return tf.stack([tf.reduce_sum(t) for t in terms])

  return eval_step


def evaluate(eval_step, batches: tf.data.Dataset,
             seed: int) -> Dict[str, float]:
  """Mean ELBO terms over a whole split, with a fixed latent seed per batch
  so that repeated evaluations of the same model agree."""
  sums, count = np.zeros(len(TERMS)), 0
  base_seed = streams.seed(seed, streams.TEST_ELBO)
  for index, batch in enumerate(batches):
    batch_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
    sums += eval_step(batch, batch_seed).numpy()
    count += int(batch.shape[0])
  return dict(zip(TERMS, (sums / count).tolist()))
