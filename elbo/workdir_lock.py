"""One run per workdir: a lock that dies with the process holding it.

Two training processes on one workdir would overwrite each other's
checkpoints and interleave their events. `hold(workdir)` takes
`fcntl.flock` on `WORKDIR/.lock` and keeps that file open until the block
ends. The kernel drops the lock when the process dies, however it dies
(kill -9 included), so a dead run never blocks the next; the pid, host and
start time written into the file are only there for the message of the run
refused; at the end the file gets back the bytes it had before, so a run
refused after locking (a config mismatch, say) changes no byte of the
workdir. The file itself stays (deleting it could let two runs lock two
different files of one name).

Network filesystems. On NFS, Linux passes `flock` to the server as a lock
on the whole file, so runs on different machines exclude each other too
(unless mounted with `local_lock=flock` or `all`: then only runs on the same
machine do).
When the holder's machine is lost rather than its process, no kernel is
left to release the lock: the server does when the client's lease expires
(NFSv4: about 90 s), or, under NFSv3's lock manager, only when that machine
reboots. The refusal then names a host that is gone; deleting the lock file
frees the workdir (the next run locks a new file). Filesystems without locks
(`ENOLCK`, e.g. NFS mounted with `nolock`, some FUSE mounts) are not locked:
a warning says so.

Non-local paths (`gs://...`, any `scheme://`) have no `flock`: there the
lock is a lease. The run writes `WORKDIR/.lock` through `tf.io.gfile`
(holder, and the time it last renewed it) and renews it every
`_RENEW_SECONDS` from a background thread. A run that finds a lease renewed
less than `LEASE_SECONDS` ago stops with `WorkdirLockError` (deleting the
file, if that run is known dead, frees the workdir at once); an older lease
is that of a dead run and is taken over. Two runs starting within the same
second could both find no lock: after writing its lease, a run waits
`_SETTLE_SECONDS` and reads it back, and only the one whose lease is there
goes on.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time
from typing import Iterator, Optional
import uuid

from absl import logging
import tensorflow as tf

__all__ = ['LOCK_FILE', 'WorkdirLockError', 'hold']

LOCK_FILE = '.lock'
# Non-local workdirs: a lease not renewed for this long is a dead run's.
LEASE_SECONDS = 300.
_RENEW_SECONDS = 30.
_SETTLE_SECONDS = 2.
# The lease's clock (seconds since the epoch): tests set their own.
_now = time.time


class WorkdirLockError(RuntimeError):
  """Another live process holds the workdir, or it cannot be locked."""


def _holder(fd: int) -> str:
  """Who holds the lock, from what it wrote into the file."""
  try:
    holder = json.loads(os.pread(fd, 4096, 0))
    return (f'pid {holder["pid"]} on host {holder["host"]} since '
            f'{holder["started"]}')
  except (OSError, ValueError, KeyError, TypeError):
    return 'another process (it has not written its pid yet)'


def _read_all(fd: int) -> bytes:
  return os.pread(fd, os.fstat(fd).st_size, 0)


@contextlib.contextmanager
def hold(workdir: str, chief: bool = True) -> Iterator[None]:
  """Inside the block no other process can hold `workdir`.

  Args:
    workdir: the run's directory; created if missing.
    chief: False on the other workers of a multi-worker run: they are the
      chief's run, and do not lock.

  Raises:
    WorkdirLockError: another live process holds `workdir`, or the lock
      file cannot be created there.
  """
  if not chief:
    yield
    return
  if '://' in workdir:
    with _lease(workdir):
      yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise WorkdirLockError(f'Cannot create {path}: {e.strerror}.') from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      locked = True
    except BlockingIOError:
      raise WorkdirLockError(
          f'{workdir} is in use by {_holder(fd)} (it holds {path}). Stop '
          'that run or wait for it to end; if its machine is lost, delete '
          f'{path}.') from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise WorkdirLockError(f'Cannot lock {path}: {e.strerror}.') from e
      logging.warning('Cannot lock %s (%s): make sure no other run uses %s.',
                      path, e.strerror, workdir)
      locked = False
    if locked:
      previous = _read_all(fd)
      started = datetime.datetime.now(datetime.timezone.utc)
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps({
          'pid': os.getpid(), 'host': socket.gethostname(),
          'started': started.isoformat(timespec='seconds'),
      }).encode() + b'\n', 0)
      os.fsync(fd)
    try:
      yield
    finally:
      if locked:  # While still holding it.
        os.ftruncate(fd, 0)
        os.pwrite(fd, previous, 0)
  finally:
    os.close(fd)  # Releases the lock.


def _read_lease(path: str) -> Optional[dict]:
  try:
    with tf.io.gfile.GFile(path) as f:
      return json.loads(f.read())
  except (tf.errors.NotFoundError, ValueError):
    return None


def _write_lease(path: str, lease: dict, overwrite: bool) -> None:
  """Atomically (a temporary file, then a rename). The temporary's name
  does not start with the lock's (on `ram://` that would make the lock
  seem to exist)."""
  temporary = os.path.join(os.path.dirname(path), f'.tmp-{lease["token"]}')
  with tf.io.gfile.GFile(temporary, 'w') as f:
    f.write(json.dumps({**lease, 'renewed': _now()}) + '\n')
  try:
    tf.io.gfile.rename(temporary, path, overwrite=overwrite)
  except tf.errors.AlreadyExistsError:
    tf.io.gfile.remove(temporary)
    raise


def _check_free(path: str, workdir: str) -> bool:
  """Whether a (dead run's) lease is there; raises if a live one is."""
  if not tf.io.gfile.exists(path):
    return False
  held = _read_lease(path)
  if held is None:
    raise WorkdirLockError(f'{path} is not a lease this library wrote; '
                           f'delete it if no run uses {workdir}.')
  age = _now() - held.get('renewed', 0)
  if age < LEASE_SECONDS:
    raise WorkdirLockError(
        f'{workdir} is in use by pid {held.get("pid")} on host '
        f'{held.get("host")} since {held.get("started")} (its lease {path} '
        f'was renewed {age:.0f} s ago). Stop that run; if it is dead, '
        f'delete {path} or wait {LEASE_SECONDS - age:.0f} s.')
  logging.warning('%s: lease of pid %s on host %s not renewed for %.0f s: '
                  'taking over.', path, held.get('pid'), held.get('host'), age)
  return True


@contextlib.contextmanager
def _lease(workdir: str) -> Iterator[None]:
  """The lock of a non-local workdir (module docstring)."""
  path = os.path.join(workdir, LOCK_FILE)
  tf.io.gfile.makedirs(workdir)
  lease = {'pid': os.getpid(), 'host': socket.gethostname(),
           'started': datetime.datetime.now(datetime.timezone.utc).isoformat(
               timespec='seconds'), 'token': uuid.uuid4().hex}
  try:
    _write_lease(path, lease, overwrite=_check_free(path, workdir))
  except tf.errors.AlreadyExistsError:
    _check_free(path, workdir)  # Raises: another run has just written it.
  time.sleep(_SETTLE_SECONDS)
  if (_read_lease(path) or {}).get('token') != lease['token']:
    raise WorkdirLockError(f'{workdir}: another run took {path} at the same '
                           'time; it goes on, this one stops.')
  stop = threading.Event()

  def renew():
    while not stop.wait(_RENEW_SECONDS):
      try:
        if (_read_lease(path) or {}).get('token') != lease['token']:
          logging.error('%s no longer names this run (was it stalled for '
                        '%.0f s?): another run may be writing %s.', path,
                        LEASE_SECONDS, workdir)
          return
        _write_lease(path, lease, overwrite=True)
      except tf.errors.OpError as e:  # Say a network error: retry.
        logging.warning('Cannot renew %s: %s', path, e)

  renewer = threading.Thread(target=renew, daemon=True)
  renewer.start()
  try:
    yield
  finally:
    stop.set()
    renewer.join()
    if (_read_lease(path) or {}).get('token') == lease['token']:
      tf.io.gfile.remove(path)
