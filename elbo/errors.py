"""The errors a run reports as one line (`Error: ...`), in one place.

Binaries catch `USER_ERRORS` and exit with the message, no traceback: each
names what is wrong and what to do. Anything else is a bug and keeps its
traceback.
"""

from elbo import checkpoints
from elbo import config as config_lib
from elbo import data
from elbo import distribute
from elbo import workdir_lock

__all__ = ['DivergenceError', 'NonFiniteError', 'USER_ERRORS',
           'WorkerLostError']


class NonFiniteError(FloatingPointError):
  """A loss term or the gradients became NaN or infinite."""


class DivergenceError(RuntimeError):
  """Training kept diverging after the allowed recoveries."""


class WorkerLostError(RuntimeError):
  """Another worker of a multi-worker evaluation failed or vanished."""


USER_ERRORS = (FileNotFoundError, data.DataError, checkpoints.CheckpointError,
               config_lib.ConfigError, distribute.StrategyError,
               workdir_lock.WorkdirLockError, NonFiniteError,
               DivergenceError, WorkerLostError)
