"""Checkpoints of a run: `tf.train.CheckpointManager` plus clear errors.

`tf.train.Checkpoint` writes the data files first and then atomically
replaces the small `checkpoint` state file that names the latest one, so a
process killed mid-save leaves the previous checkpoint as the latest: a
restart never sees a half-written checkpoint.
"""

import os
from typing import Optional

from absl import logging
import tensorflow as tf

__all__ = ['CheckpointMismatchError', 'make_manager', 'restore_latest']


class CheckpointMismatchError(ValueError):
  """The checkpoint in a workdir was written by a different model."""


def make_manager(workdir: str, max_to_keep: int,
                 **trackables) -> tf.train.CheckpointManager:
  """A manager for `workdir/checkpoints` saving the given objects."""
  return tf.train.CheckpointManager(
      tf.train.Checkpoint(**trackables), os.path.join(workdir, 'checkpoints'),
      max_to_keep=max_to_keep)


def restore_latest(manager: tf.train.CheckpointManager,
                   directory: Optional[str] = None) -> Optional[str]:
  """Restores the latest checkpoint, if any, into the manager's objects.

  Every saved value must find its object and every object its value.
  `directory` restores from another directory than the manager's own (a
  non-chief worker resumes from the chief's checkpoints).

  Returns:
    The restored checkpoint's path, or None when there is none.

  Raises:
    CheckpointMismatchError: the checkpoint holds another architecture.
  """
  path = (tf.train.latest_checkpoint(directory) if directory
          else manager.latest_checkpoint)
  if path is None:
    return None
  try:
    manager.checkpoint.restore(path).assert_consumed()
  except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
    detail = ' '.join(str(e).split())[:300]
    raise CheckpointMismatchError(
        f'{path}: does not match this model ({detail}). Was it written with '
        'other flags? Resume with the flags in config.json beside it, or use '
        'a new --workdir.') from e
  logging.info('Restored %s.', path)
  return path
