"""Where the time of a traced step goes: op totals from a profiler trace.

`tf.profiler.experimental.start(logdir)` ... `stop()` writes an XSpace
protobuf (`<logdir>/plugins/profile/<run>/<host>.xplane.pb`) that
TensorBoard's profile plugin opens; `summarize_trace` reads the same file
for a table that needs no TensorBoard.
"""

import collections
import glob
import os
import re
from typing import Dict

__all__ = ['summarize_trace']


def _op_type(name: str) -> str:
  """'scope/name:Type' -> 'Type' (a TF op); 'fusion.12' -> 'fusion' (XLA)."""
  return name.rsplit(':', 1)[1] if ':' in name else re.sub(r'\.\d+$', '', name)


def summarize_trace(logdir: str, steps: int, top: int = 12) -> Dict:
  """Op-level time per step from the newest `.xplane.pb` under `logdir`.

  Sums the events of the host's op-executing threads: TF's inter-op threads
  (`tf_Compute`) and, under XLA, its Eigen threads; the main thread holds
  only the Python-side calls, and `::` events are executor or thunk
  containers around the ops. An op type is the type after the last ':' of a
  TF op's name, or an HLO instruction's name without its '.N' suffix. Times
  add up over threads, so ops running in parallel can sum to more than the
  wall time.

  Args:
    logdir: the directory given to `tf.profiler.experimental.start`.
    steps: how many steps the trace holds, to divide by.
    top: how many op types and ops to list.

  Returns:
    summary: a dict with `logdir`, `op_ms_per_step` (all ops), and
      `top_op_types` and `top_ops`, lists of `{'op', 'ms_per_step',
      'share'}`, the largest first.

  Raises:
    FileNotFoundError: no `.xplane.pb` under `logdir`.
  """
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(logdir, '**', '*.xplane.pb'),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f'{logdir}: no .xplane.pb profiler trace.')
  space = xplane_pb2.XSpace()
  with open(paths[-1], 'rb') as f:
    space.ParseFromString(f.read())
  by_type, by_op = collections.Counter(), collections.Counter()
  for plane in space.planes:
    if not plane.name.startswith('/host:CPU'):
      continue
    for line in plane.lines:
      if not (line.name.startswith('tf_Compute') or 'Eigen' in line.name):
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if '::' in name:
          continue
        milliseconds = event.duration_ps / 1e9 / steps
        by_type[_op_type(name)] += milliseconds
        by_op[name] += milliseconds
  total = sum(by_type.values())
  return {
      'logdir': logdir,
      'op_ms_per_step': total,
      'top_op_types': [{'op': k, 'ms_per_step': v, 'share': v / total}
                       for k, v in by_type.most_common(top)],
      'top_ops': [{'op': k, 'ms_per_step': v, 'share': v / total}
                  for k, v in by_op.most_common(top)],
  }
