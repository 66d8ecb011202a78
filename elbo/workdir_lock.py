"""One run per workdir: a lock that dies with the process holding it.

Two training processes on one workdir would overwrite each other's
checkpoints and interleave their events. `hold(workdir)` takes
`fcntl.flock` on `WORKDIR/.lock` and keeps that file open until the block
ends. The kernel drops the lock when the process dies, however it dies
(kill -9 included), so a dead run never blocks the next; the pid, host and
start time written into the file are only there for the message of the run
refused. The file itself stays (deleting it could let two runs lock two
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
(`ENOLCK`, e.g. NFS mounted with `nolock`, some FUSE mounts) and non-local
paths (`gs://...`) are not locked: a warning says so.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Iterator

from absl import logging

__all__ = ['LOCK_FILE', 'WorkdirLockError', 'hold']

LOCK_FILE = '.lock'


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
    logging.warning('%s is not on a local filesystem: not locked; make sure '
                    'no other run uses it.', workdir)
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
      if locked:
        os.ftruncate(fd, 0)  # While still holding it: nobody is named.
  finally:
    os.close(fd)  # Releases the lock.
