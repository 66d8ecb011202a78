"""Checkpoints of a run: `tf.train.CheckpointManager` plus clear errors.

`tf.train.Checkpoint` writes the data files first and then atomically
replaces the small `checkpoint` state file that names the latest one, so a
process killed mid-save leaves the previous checkpoint as the latest: a
restart never sees a half-written checkpoint. Files can still go bad after
the save (a full disk or an interrupted copy cuts them short), and a save can
fail (disk full, no permission):

- `restore_latest` resumes from the newest checkpoint that reads, with a
  warning naming the ones that do not (`restore_newest_readable` does the
  same for some of the saved objects, say the model to evaluate); it never
  starts silently from step 0 while checkpoints exist
  (`CheckpointReadError` when none reads). A
  checkpoint that reads but holds another architecture stops it
  (`CheckpointMismatchError`) without trying older ones: they come from the
  same flags, and skipping a good checkpoint would throw its steps away.
- `save` ends in `CheckpointSaveError` and removes what the failed save
  wrote, so the previous checkpoint stays the latest.
"""

import os
import re
from typing import Collection, List, Optional

from absl import logging
import tensorflow as tf

__all__ = ['CheckpointError', 'CheckpointMismatchError', 'CheckpointReadError',
           'CheckpointSaveError', 'make_manager', 'restore_latest',
           'restore_newest_readable', 'save', 'step_of']

_NAME = 'ckpt'  # Checkpoints are `<directory>/ckpt-<step>.{index,data-*}`.


class CheckpointError(Exception):
  """A checkpoint cannot be restored or saved; the message is one line."""


class CheckpointMismatchError(CheckpointError, ValueError):
  """The checkpoint in a workdir was written by a different model."""


class CheckpointReadError(CheckpointError):
  """Checkpoints exist, but none of them can be read."""


class CheckpointSaveError(CheckpointError):
  """A checkpoint could not be written; the previous one is the latest."""


def make_manager(workdir: str, max_to_keep: int,
                 **trackables) -> tf.train.CheckpointManager:
  """A manager for `workdir/checkpoints` saving the given objects."""
  return tf.train.CheckpointManager(
      tf.train.Checkpoint(**trackables), os.path.join(workdir, 'checkpoints'),
      max_to_keep=max_to_keep, checkpoint_name=_NAME)


def _detail(error: object, limit: int = 300) -> str:
  """The error's message on one line, without TF's op decorations."""
  text = re.sub(r'\{\{function_node [^}]*\}\}|\[Op:\w+\]', '', str(error))
  return ' '.join(text.split())[:limit]


def step_of(path: str) -> int:
  """The global step of a checkpoint path `.../ckpt-<step>` (with or
  without a `.index`/`.data-*` suffix)."""
  name = os.path.basename(path).split('.', 1)[0]
  return int(name.rsplit('-', 1)[1])


def _candidates(directory: str) -> List[str]:
  """Checkpoint paths in `directory`, the one to restore first first.

  Those the state file lists, newest first; then any others on disk (say
  the state file was lost or cut short, which TF takes for "no
  checkpoint"), highest step first.
  """
  state = tf.train.get_checkpoint_state(directory)
  listed = ([state.model_checkpoint_path] +
            list(reversed(state.all_model_checkpoint_paths)) if state else [])
  on_disk = sorted(
      (path[:-len('.index')] for path in
       tf.io.gfile.glob(os.path.join(directory, f'{_NAME}-*.index'))
       if re.fullmatch(rf'{_NAME}-\d+\.index', os.path.basename(path))),
      key=step_of, reverse=True)
  candidates, names = [], set()
  for path in listed + on_disk:
    if os.path.basename(path) not in names:
      names.add(os.path.basename(path))
      candidates.append(path)
  return candidates


def _reader(path: str):
  """A reader of the checkpoint at `path` (a prefix, not a directory).

  Not `tf.train.load_checkpoint`: it takes a path that is a directory for
  the directory's latest checkpoint, and `ram://` reports any prefix of a
  file's name (`ckpt-4` of `ckpt-4.index`) as a directory.
  """
  return tf.compat.v1.train.NewCheckpointReader(path)


def _read_error(path: str) -> Optional[str]:
  """None if every tensor of checkpoint `path` reads (sizes and checksums
  check out), else what failed, naming the file (in the same directory)."""
  # TF's messages name files by their full paths: without the directory,
  # the file names survive the cut to 200 characters however deep it is.
  detail = lambda e: _detail(
      str(e).replace(os.path.dirname(path) + os.sep, ''), 200)
  try:
    reader = _reader(path)
  except (tf.errors.OpError, IndexError, ValueError) as e:
    return f'{os.path.basename(path)}.index: {detail(e)}'
  try:
    for name in reader.get_variable_to_dtype_map():
      reader.get_tensor(name)
  except (tf.errors.OpError, IndexError, ValueError) as e:
    data_files = sorted(tf.io.gfile.glob(path + '.data-*'))
    names = ', '.join(map(os.path.basename, data_files))
    return f'{names or os.path.basename(path)}: {detail(e)}'
  return None


def restore_latest(manager: tf.train.CheckpointManager,
                   directory: Optional[str] = None,
                   optional: Collection[str] = ()) -> Optional[str]:
  """Restores the newest readable checkpoint into the manager's objects.

  Every saved value must find its object and every object its value, so
  the restore that succeeds overwrites all of them, including any that an
  unreadable checkpoint tried before may have set.

  Args:
    manager: from `make_manager`; its objects receive the values.
    directory: restore from this directory instead of the manager's own (a
      non-chief worker resumes from the chief's checkpoints).
    optional: names of saved objects that checkpoints written before they
      were saved lack; there they keep their values.

  Returns:
    The restored checkpoint's path, or None when there is none.

  Raises:
    As `restore_newest_readable`.
  """
  return restore_newest_readable(manager.checkpoint,
                                 directory or manager.directory,
                                 optional=optional)


def restore_newest_readable(checkpoint: tf.train.Checkpoint, directory: str,
                            *, partial: bool = False,
                            optional: Collection[str] = ()) -> Optional[str]:
  """Restores the newest checkpoint in `directory` that reads.

  Checkpoints that cannot be read are skipped with a warning and left where
  they are.

  Args:
    checkpoint: the objects to receive the values.
    directory: where the checkpoints are.
    partial: `checkpoint` holds only some of the saved objects (the model
      of a training checkpoint, to evaluate it): saved values without an
      object are ignored; every object must still receive its values.
      Default value: `False`, every saved value must find its object too.
    optional: as in `restore_latest`.

  Returns:
    The restored checkpoint's path, or None when there is none.

  Raises:
    CheckpointMismatchError: a readable checkpoint holds another
      architecture (older ones are not tried).
    CheckpointReadError: there are checkpoints, but none can be read.
  """
  unreadable = []
  for path in _candidates(directory):
    try:
      target = _without_missing(checkpoint, path, optional)
      status = target.restore(path)
      if partial:
        status.expect_partial().assert_existing_objects_matched()
      else:
        status.assert_consumed()
    except (AssertionError, IndexError, ValueError, tf.errors.OpError) as e:
      problem = _read_error(path)
      if problem is None:
        raise CheckpointMismatchError(
            f'{path}: does not match this model ({_detail(e)}). Was it '
            'written with other flags? Resume with the flags in config.json '
            'beside it, or use a new --workdir.') from e
      unreadable.append(problem)
      continue
    if unreadable:
      logging.warning('Skipped unreadable checkpoints in %s (%s); using '
                      '%s.', directory, '; '.join(unreadable), path)
    if target is not checkpoint:
      checkpoint.save_counter.assign(target.save_counter)
    logging.info('Restored %s.', path)
    return path
  if unreadable:
    raise CheckpointReadError(
        f'No checkpoint in {directory} can be read: {"; ".join(unreadable)}. '
        'Restore them from a copy, or move them away to start from step 0.')
  return None


def _without_missing(checkpoint: tf.train.Checkpoint, path: str,
                     optional: Collection[str]) -> tf.train.Checkpoint:
  """`checkpoint`, or if the one at `path` lacks some `optional` objects, a
  checkpoint of the others (the same objects, so they receive the values)."""
  if not optional:
    return checkpoint
  saved = {name.split('/', 1)[0]
           for name in _reader(path).get_variable_to_shape_map()}
  if all(name in saved for name in optional):
    return checkpoint
  objects = {name: value for name, value in vars(checkpoint).items()
             if not name.startswith('_') and name not in optional}
  return tf.train.Checkpoint(**objects)


def save(manager: tf.train.CheckpointManager, step: int) -> str:
  """Saves checkpoint `step` with `manager`, or leaves the previous one.

  On failure the files this save wrote are removed (those of a checkpoint
  of the same step saved before are left for `restore_latest` to judge),
  and the state file still names the previous checkpoint. The manager's
  own record of its checkpoints may then be wrong: end the run.

  Returns:
    The saved checkpoint's path.

  Raises:
    CheckpointSaveError: the checkpoint could not be written (full disk,
      no permission, ...).
  """
  prefix = os.path.join(manager.directory, f'{_NAME}-{step}')
  name = os.path.basename(prefix)
  existed = name in map(os.path.basename, manager.checkpoints)
  previous = tf.train.latest_checkpoint(manager.directory)
  state_temps = os.path.join(manager.directory, 'checkpoint.tmp*')
  temps_before = set(tf.io.gfile.glob(state_temps))
  try:
    return manager.save(checkpoint_number=step)
  except (OSError, tf.errors.OpError) as e:
    latest = tf.train.latest_checkpoint(manager.directory)
    if latest != previous and os.path.basename(latest or '') == name:
      # Saved and recorded; deleting the oldest checkpoints failed.
      logging.warning('Saved %s, but cannot remove older checkpoints: %s',
                      latest, _detail(e))
      return latest
    written = set(tf.io.gfile.glob(state_temps)) - temps_before
    written.update(tf.io.gfile.glob(prefix + '_temp*'))
    if not existed:
      written.update(tf.io.gfile.glob(prefix + '.index'))
      written.update(tf.io.gfile.glob(prefix + '.data-*'))
    for path in sorted(written):
      try:
        if tf.io.gfile.isdir(path):
          tf.io.gfile.rmtree(path)
        else:
          tf.io.gfile.remove(path)
      except tf.errors.OpError as cleanup_error:
        logging.warning('Cannot remove %s: %s', path, _detail(cleanup_error))
    before = (f'the latest checkpoint is still {previous}' if previous
              else 'no checkpoint was saved before')
    raise CheckpointSaveError(
        f'Cannot save checkpoint {prefix}: {_detail(e)}; {before}. Free some '
        'space or fix the directory, then run again to resume.') from e


def restore_path(checkpoint: tf.train.Checkpoint, path: str,
                 optional: Collection[str] = ()) -> None:
  """Restores the checkpoint at `path` (every value to its object, as
  `restore_latest`), e.g. to rewind a run to a step it saved."""
  target = _without_missing(checkpoint, path, optional)
  target.restore(path).assert_consumed()
  if target is not checkpoint:
    checkpoint.save_counter.assign(target.save_counter)
