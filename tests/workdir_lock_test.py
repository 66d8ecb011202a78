"""One run per workdir: a live holder refuses others, a dead one does not.

The holder across processes is a child Python that imports only the lock
module (no TensorFlow), so each starts in a fraction of a second.
"""

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from elbo import workdir_lock
import conftest

_NOW = 1.8e9  # The lease tests' clock: a fixed time since the epoch.

_HOLD = """
import sys, time
from elbo import workdir_lock
with workdir_lock.hold(sys.argv[1]):
  print('held', flush=True)
  time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
  """A child process holding `tmp_path / 'run'`; killed at the end."""
  workdir = str(tmp_path / 'run')
  process = subprocess.Popen(
      [sys.executable, '-c', _HOLD, workdir], stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=conftest.REPO_ROOT))
  line = process.stdout.readline()
  assert line == 'held\n', process.stderr.read()
  yield workdir, process
  process.kill()
  process.wait()


def _lock_file(workdir):
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE)) as f:
    return f.read()


def test_a_live_holder_refuses_a_second_run_naming_it(holder):
  workdir, process = holder
  with pytest.raises(workdir_lock.WorkdirLockError) as raised:
    with workdir_lock.hold(workdir):
      pytest.fail('entered a held workdir')
  message = str(raised.value)
  assert '\n' not in message
  started = json.loads(_lock_file(workdir))['started']
  assert message.startswith(
      f'{workdir} is in use by pid {process.pid} on host '
      f'{socket.gethostname()} since {started} (it holds {workdir}/.lock).')
  assert process.poll() is None  # The holder runs on, untouched.


def test_after_kill_9_of_the_holder_the_next_run_holds_it(holder):
  workdir, process = holder
  process.send_signal(signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL
  stale = _lock_file(workdir)
  assert json.loads(stale)['pid'] == process.pid
  with workdir_lock.hold(workdir):
    assert json.loads(_lock_file(workdir))['pid'] == os.getpid()
  assert _lock_file(workdir) == stale  # Released: the bytes it found.


def test_one_process_twice_is_refused_then_free_after_the_block(tmp_path):
  workdir = str(tmp_path / 'new' / 'run')
  with workdir_lock.hold(workdir):
    assert os.listdir(workdir) == ['.lock']  # Made, and nothing else.
    with pytest.raises(workdir_lock.WorkdirLockError,
                       match=f'in use by pid {os.getpid()} on host '):
      with workdir_lock.hold(workdir):
        pass
  with workdir_lock.hold(workdir):
    pass


def test_only_the_chief_holds_it(holder):
  workdir, _ = holder
  with workdir_lock.hold(workdir, chief=False):  # Another worker: enters.
    pass


def test_an_exception_inside_releases_it(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(KeyError):
    with workdir_lock.hold(workdir):
      raise KeyError('training failed')
  with workdir_lock.hold(workdir):
    pass


def test_a_workdir_that_cannot_be_made_is_a_one_line_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(workdir_lock.WorkdirLockError,
                     match=f'^Cannot create {blocker}/run/.lock: '):
    with workdir_lock.hold(str(blocker / 'run')):
      pass


class TestLeaseOnNonLocalWorkdir:
  """`ram://` (TensorFlow's in-memory filesystem) stands in for `gs://`."""

  @pytest.fixture
  def workdir(self, monkeypatch, request):
    monkeypatch.setattr(workdir_lock, '_SETTLE_SECONDS', 0.)
    monkeypatch.setattr(workdir_lock, '_now', lambda: _NOW)  # Stopped.
    return f'ram://lock-test/{request.node.name}'

  def _lease(self, workdir):
    with tf.io.gfile.GFile(workdir + '/' + workdir_lock.LOCK_FILE) as f:
      return json.loads(f.read())

  def test_a_live_lease_refuses_a_second_run_and_is_removed_at_the_end(
      self, workdir):
    with workdir_lock.hold(workdir):
      assert self._lease(workdir)['pid'] == os.getpid()
      with pytest.raises(workdir_lock.WorkdirLockError,
                         match=f'in use by pid {os.getpid()} on host .*'
                               'renewed 0 s ago'):
        with workdir_lock.hold(workdir):
          pass
    assert not tf.io.gfile.exists(workdir + '/' + workdir_lock.LOCK_FILE)
    with workdir_lock.hold(workdir):
      pass

  def test_a_dead_runs_lease_is_taken_over_once_expired(self, workdir):
    path = workdir + '/' + workdir_lock.LOCK_FILE
    tf.io.gfile.makedirs(workdir)
    dead = {'pid': 1, 'host': 'gone', 'started': 'then', 'token': 'x',
            'renewed': _NOW - workdir_lock.LEASE_SECONDS + 60}
    with tf.io.gfile.GFile(path, 'w') as f:
      f.write(json.dumps(dead))
    with pytest.raises(workdir_lock.WorkdirLockError,
                       match=r'pid 1 on host gone .* wait 60 s\.$'):
      with workdir_lock.hold(workdir):
        pass
    tf.io.gfile.remove(path)  # 'w' appends to a file on ram://.
    with tf.io.gfile.GFile(path, 'w') as f:
      f.write(json.dumps({**dead, 'renewed': dead['renewed'] - 61}))
    with workdir_lock.hold(workdir):
      assert self._lease(workdir)['pid'] == os.getpid()

  def test_the_lease_is_renewed_while_held(self, workdir, monkeypatch):
    """With no wait between renewals and a clock that ticks once a read,
    the lease's time moves on while held; counted in reads, not seconds."""
    ticks = itertools.count(_NOW)
    monkeypatch.setattr(workdir_lock, '_now', lambda: next(ticks))
    monkeypatch.setattr(workdir_lock, '_RENEW_SECONDS', 0.)
    with workdir_lock.hold(workdir):
      first = self._lease(workdir)['renewed']
      renewed = first
      for _ in range(100_000):
        renewed = self._lease(workdir)['renewed']
        if renewed > first:
          break
      assert renewed > first

  def test_a_run_that_loses_the_race_stops(self, workdir, monkeypatch):
    path = workdir + '/' + workdir_lock.LOCK_FILE
    real_sleep = time.sleep

    def other_run_writes(seconds):  # Another run's lease lands meanwhile.
      tf.io.gfile.remove(path)
      with tf.io.gfile.GFile(path, 'w') as f:
        f.write(json.dumps({'token': 'other', 'renewed': _NOW}))
      real_sleep(seconds)

    monkeypatch.setattr(workdir_lock.time, 'sleep', other_run_writes)
    with pytest.raises(workdir_lock.WorkdirLockError,
                       match='another run took .* at the same time'):
      with workdir_lock.hold(workdir):
        pass
