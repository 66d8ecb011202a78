"""`tf.distribute` for the training binary: strategies and the chief.

We write no distribution of our own: the train step runs under the chosen
strategy (`strategy.run`), each replica takes its part of the global batch,
the loss is averaged over the global batch, and only the chief writes
checkpoints, summaries and figures.
"""

import os

import tensorflow as tf

__all__ = ['STRATEGIES', 'StrategyError', 'is_chief', 'make_strategy',
           'remove_worker_dir', 'worker_dir']

# default: one device. mirrored: all local devices (GPUs, else the CPU).
# multiworker: MultiWorkerMirroredStrategy, the cluster from TF_CONFIG.
# tpu: TPUStrategy on the TPU named by `tpu` ('local' on a TPU VM).
STRATEGIES = ('default', 'mirrored', 'multiworker', 'tpu')


class StrategyError(RuntimeError):
  """The requested strategy cannot run here (e.g. no TPU found)."""


def make_strategy(name: str,
                  tpu: str = 'local') -> tf.distribute.Strategy:
  """Creates the strategy `name`; call it before any other TF op."""
  if name == 'default':
    return tf.distribute.get_strategy()
  if name == 'mirrored':
    return tf.distribute.MirroredStrategy()
  if name == 'multiworker':
    if 'TF_CONFIG' not in os.environ:
      raise StrategyError('--strategy=multiworker needs TF_CONFIG describing '
                          'the cluster (see README, "Scaling out").')
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == 'tpu':
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
      tf.config.experimental_connect_to_cluster(resolver)
      tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as e:
      detail = ' '.join(str(e).split())[:200]
      raise StrategyError(f'No TPU found at {tpu!r}: {detail}') from e
    return tf.distribute.TPUStrategy(resolver)
  raise StrategyError(f'strategy must be one of {STRATEGIES}, got {name!r}.')


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True where checkpoints and summaries are written: everywhere but the
  non-chief workers of a multi-worker cluster."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  resolver = strategy.cluster_resolver
  task_type, task_id = resolver.task_type, resolver.task_id
  if task_type in (None, 'chief'):
    return True
  has_chief = 'chief' in resolver.cluster_spec().as_dict()
  return task_type == 'worker' and task_id == 0 and not has_chief


def worker_dir(workdir: str, strategy: tf.distribute.Strategy) -> str:
  """The workdir on the chief; a scratch directory inside it elsewhere
  (non-chief workers still take part in saving, then throw it away)."""
  if is_chief(strategy):
    return workdir
  resolver = strategy.cluster_resolver
  return os.path.join(workdir, f'.{resolver.task_type}_{resolver.task_id}')


def remove_worker_dir(workdir: str, strategy: tf.distribute.Strategy) -> None:
  if not is_chief(strategy):
    scratch = worker_dir(workdir, strategy)
    if tf.io.gfile.exists(scratch):
      tf.io.gfile.rmtree(scratch)
