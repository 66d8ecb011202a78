"""Checkpoints that went bad are skipped, a failed save leaves the last one.

A tiny `tf.train.Checkpoint` (two variables) with checkpoints at steps 1, 2
and 3, whose values are the step: a restore that lands on step s must set
every variable to s.
"""

import logging
import os
import resource
import signal

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management

from elbo import checkpoints

_SIZE = 1000  # float32s in `a`: its data file is over 4000 bytes.


class _Run:
  """Two variables, a manager, and checkpoints 1..3 in `directory`."""

  def __init__(self, workdir, max_to_keep=3, size=_SIZE):
    self.a = tf.Variable(tf.zeros([size]))
    self.w = tf.Variable(0.)
    self.manager = checkpoints.make_manager(
        str(workdir), max_to_keep, a=self.a, w=self.w)
    self.directory = self.manager.directory

  def set(self, value):
    self.a.assign(tf.fill(self.a.shape, float(value)))
    self.w.assign(float(value))

  def values(self):
    return self.a.numpy(), float(self.w.numpy())

  def file(self, step, kind='data-00000-of-00001'):
    return os.path.join(self.directory, f'ckpt-{step}.{kind}')


@pytest.fixture
def run(tmp_path):
  run = _Run(tmp_path)
  for step in (1, 2, 3):
    run.set(step)
    checkpoints.save(run.manager, step)
  run.set(-7.)  # Whatever restores must overwrite this everywhere.
  return run


def _truncate(path, fraction=0.5):
  with open(path, 'r+b') as f:
    f.truncate(int(os.path.getsize(path) * fraction))


def _flip_a_byte(path):
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0xff]))


def _assert_restored(run, step):
  a, w = run.values()
  np.testing.assert_array_equal(a, np.full([_SIZE], step, np.float32))
  assert w == step


# (what goes wrong with ckpt-3, the file the warning must name)
_DAMAGE = [
    (lambda run: _truncate(run.file(3)), 'ckpt-3.data-00000-of-00001'),
    (lambda run: _truncate(run.file(3), 0), 'ckpt-3.data-00000-of-00001'),
    (lambda run: _flip_a_byte(run.file(3)), 'ckpt-3.data-00000-of-00001'),
    (lambda run: os.remove(run.file(3)), 'ckpt-3.data-00000-of-00001'),
    (lambda run: _truncate(run.file(3, 'index')), 'ckpt-3.index'),
    (lambda run: os.remove(run.file(3, 'index')), 'ckpt-3.index'),
]


@pytest.mark.parametrize('damage,bad_file', _DAMAGE, ids=[
    'data cut in half', 'data empty', 'data byte flipped', 'data missing',
    'index cut in half', 'index missing'])
def test_unreadable_newest_resumes_from_the_previous_one(run, caplog, damage,
                                                         bad_file):
  damage(run)
  with caplog.at_level(logging.WARNING):
    path = checkpoints.restore_latest(run.manager)
  assert path == os.path.join(run.directory, 'ckpt-2')
  _assert_restored(run, 2)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and bad_file in warnings[0], warnings
  assert 'using ' + path in warnings[0]


def test_two_unreadable_resume_from_the_oldest(run, caplog):
  _truncate(run.file(3))
  _truncate(run.file(2))
  with caplog.at_level(logging.WARNING):
    path = checkpoints.restore_latest(run.manager)
  assert path.endswith('ckpt-1')
  _assert_restored(run, 1)
  assert 'ckpt-3.data' in caplog.text and 'ckpt-2.data' in caplog.text


def test_none_readable_is_a_one_line_error_not_step_0(run):
  for step in (1, 2, 3):
    _truncate(run.file(step))
  with pytest.raises(checkpoints.CheckpointReadError) as raised:
    checkpoints.restore_latest(run.manager)
  message = str(raised.value)
  assert '\n' not in message
  assert message.startswith(f'No checkpoint in {run.directory} can be read:')
  for step in (1, 2, 3):
    assert f'ckpt-{step}.data-00000-of-00001: Read less bytes' in message
  _, w = run.values()
  assert w == -7.


@pytest.mark.parametrize('state', ['missing', 'cut short'])
def test_checkpoints_without_a_state_file_still_resume(run, state):
  """TF takes a lost or unreadable state file for "no checkpoint"."""
  state_file = os.path.join(run.directory, 'checkpoint')
  os.remove(state_file) if state == 'missing' else _truncate(state_file, 0.3)
  assert tf.train.latest_checkpoint(run.directory) is None
  assert checkpoints.restore_latest(run.manager).endswith('ckpt-3')
  _assert_restored(run, 3)
  _truncate(run.file(3))
  assert checkpoints.restore_latest(run.manager).endswith('ckpt-2')
  _assert_restored(run, 2)


def test_no_checkpoint_restores_nothing(tmp_path):
  run = _Run(tmp_path)
  assert checkpoints.restore_latest(run.manager) is None
  assert run.values()[1] == 0.


def test_other_architecture_is_a_mismatch_without_falling_back(run, tmp_path):
  other = _Run(tmp_path, size=5)  # Same names, another shape.
  checkpoints.save(other.manager, 4)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match='ckpt-4: does not match this model'):
    checkpoints.restore_latest(run.manager)


def test_restores_from_another_directory(run, tmp_path):
  _truncate(run.file(3))
  worker = _Run(tmp_path / 'worker')
  path = checkpoints.restore_latest(worker.manager, run.directory)
  assert path == os.path.join(run.directory, 'ckpt-2')
  np.testing.assert_array_equal(worker.a.numpy(), np.full([_SIZE], 2.))
  assert not os.path.exists(worker.directory)


def test_partial_restore_skips_unreadable_and_ignores_other_objects(run):
  """As `evaluation.restore_model` restores only the model of a training
  checkpoint: `w` stays as it is, `a` comes from the newest that reads."""
  _flip_a_byte(run.file(3))
  a = tf.Variable(tf.zeros([_SIZE]))
  path = checkpoints.restore_newest_readable(
      tf.train.Checkpoint(a=a), run.directory, partial=True)
  assert path == os.path.join(run.directory, 'ckpt-2')
  np.testing.assert_array_equal(a.numpy(), np.full([_SIZE], 2.))
  with pytest.raises(checkpoints.CheckpointMismatchError):  # `a` only.
    checkpoints.restore_newest_readable(tf.train.Checkpoint(a=a),
                                        run.directory)
  missing = tf.Variable(0.)  # An object the checkpoints do not hold.
  with pytest.raises(checkpoints.CheckpointMismatchError):
    checkpoints.restore_newest_readable(
        tf.train.Checkpoint(a=a, other=missing), run.directory, partial=True)


def _file_size_limit(limit):
  """The kernel refuses writes past `limit` bytes (EFBIG), as a full disk
  refuses them (ENOSPC); SIGXFSZ ignored so that the write fails instead."""
  previous = (resource.getrlimit(resource.RLIMIT_FSIZE),
              signal.signal(signal.SIGXFSZ, signal.SIG_IGN))
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, previous[0][1]))
  return previous


def _restore_limit(previous):
  resource.setrlimit(resource.RLIMIT_FSIZE, previous[0])
  signal.signal(signal.SIGXFSZ, previous[1])


def _fail_state_file(monkeypatch):
  def fail(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None,
                                           'No space left on device')
  monkeypatch.setattr(checkpoint_management,
                      'update_checkpoint_state_internal', fail)


# (how the save of ckpt-4 fails, what the error says)
_FAILURES = [
    ('data file cut off by the kernel', 'File too large'),
    ('temporary directory cannot be made', 'Not a directory'),
    ('state file not written', 'No space left on device'),
]


@pytest.mark.parametrize('failure,cause', _FAILURES,
                         ids=[f for f, _ in _FAILURES])
def test_failed_save_leaves_the_previous_checkpoint_latest(
    run, monkeypatch, failure, cause):
  before = sorted(os.listdir(run.directory))
  run.set(4)
  limit = None
  if failure == 'data file cut off by the kernel':
    limit = _file_size_limit(2000)  # Half of ckpt-4's data file.
  elif failure == 'temporary directory cannot be made':
    # Where TF makes its temporary directory, a file: as when the
    # directory cannot be written.
    open(os.path.join(run.directory, 'ckpt-4_temp'), 'w').close()
  else:
    _fail_state_file(monkeypatch)
  try:
    with pytest.raises(checkpoints.CheckpointSaveError) as raised:
      checkpoints.save(run.manager, 4)
  finally:
    if limit:
      _restore_limit(limit)
  message = str(raised.value)
  assert '\n' not in message and '{{' not in message
  assert message.startswith('Cannot save checkpoint '
                            f'{run.directory}/ckpt-4: ')
  assert cause in message
  assert f'the latest checkpoint is still {run.directory}/ckpt-3' in message
  # Nothing of ckpt-4 left, ckpt-3 the latest.
  assert sorted(os.listdir(run.directory)) == before
  assert tf.train.latest_checkpoint(run.directory).endswith('ckpt-3')
  monkeypatch.undo()
  fresh = _Run(os.path.dirname(run.directory))
  assert checkpoints.restore_latest(fresh.manager).endswith('ckpt-3')
  np.testing.assert_array_equal(fresh.a.numpy(), np.full([_SIZE], 3.))


def test_save_returns_the_path_the_state_file_names(run):
  run.set(4)
  path = checkpoints.save(run.manager, 4)
  assert path == os.path.join(run.directory, 'ckpt-4')
  assert tf.train.latest_checkpoint(run.directory) == path
  assert not os.path.exists(run.file(1, 'index'))  # max_to_keep=3.


def test_a_variable_missing_from_the_checkpoint_is_a_mismatch(tmp_path):
  """Every object must get its value: a model with a variable more than
  the checkpoint's does not resume with that one left at its initial
  value."""
  smaller = tf.train.Checkpoint(a=tf.Variable(tf.ones([_SIZE])))
  checkpoints.save(tf.train.CheckpointManager(
      smaller, os.path.join(tmp_path, 'checkpoints'), 1), 1)
  run = _Run(tmp_path)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match='ckpt-1: does not match this model'):
    checkpoints.restore_latest(run.manager)
