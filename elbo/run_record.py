"""What produced a workdir: one history entry per start of a training run.

`start(workdir, config, step)` is called once the checkpoint is restored. It
refuses a resumed run whose config changes what a step means or what the
checkpoint holds (`SAFE_CHANGES` lists what may change), appends an entry to
`run_history.json` and writes the config to `config.json` (see
`elbo.config`). An entry holds:

- `start_step`, `start_time` (UTC, ISO 8601) and `config` (every field), with
  `config_changes` (`{field: [old, new]}`) against the previous start;
- where it ran: `elbo_version`, `git_commit` and `git_dirty` of the checkout
  the `elbo` package was imported from (None outside a git checkout),
  `hostname`, `python`, `tensorflow`, `tensorflow_probability`, `keras`,
  `devices`, `cpu` (the model name), `cpu_count` and `cpu_features` (the
  vector extensions that oneDNN picks its kernels by, e.g. `avx2` against
  `avx512f`: runs of the same seed on CPUs with different ones drift apart)
  and `numerics_env`, the environment variables set that change which
  kernels run or how they split their sums (`_NUMERICS_ENV`);
- kept up to date by `RunHistory.update` at every checkpoint and at the end,
  so that a killed run keeps all but its last steps: `last_step`,
  `last_time`, `wall_time` (seconds since this start), `total_wall_time`
  (over this and all earlier entries) and `test`, the final test metrics.

Every write replaces the whole file atomically (temporary file, then rename),
so a kill mid-write leaves the previous version.
"""

import dataclasses
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import time
from typing import Any, Collection, Dict, List, Mapping, Optional, Tuple

from absl import logging
import keras
import tensorflow as tf
import tensorflow_probability as tfp

from elbo import config as config_lib
from elbo import summaries

__all__ = ['FILENAME', 'SAFE_CHANGES', 'RunHistory', 'config_changes',
           'environment', 'finished_test_metrics', 'git_state', 'markdown',
           'read', 'start', 'write_file']

FILENAME = 'run_history.json'

# The config fields a resumed run may change: they decide how long to train,
# how fast, how often to log and save, and where and on what it runs, not what
# one step computes from the checkpoint. Every other field, and any field
# added later unless listed here, is refused without an explicit allowance:
# dataset, batch_size, seed (data order and latent draws), the loss
# (objective, kl, num_samples, kl_weight, kl_warmup_steps), the model (prior,
# prior_components, model) and precision.
# Caveats of allowed changes: with lr_schedule=cosine, epochs sets the decay
# length; jit_compile and the number of replicas (strategy) change the latent
# draws (not their distribution), so the run is no longer bit-identical to an
# uninterrupted one; the first train log after a log_every change averages
# its interval's sums over the new interval length.
SAFE_CHANGES = frozenset({
    # Length and optimization.
    'epochs', 'max_steps', 'learning_rate', 'lr_schedule', 'clip_norm',
    'adam_epsilon',
    # Divergence detection and its remedy.
    'divergence_threshold', 'divergence_window', 'divergence_rewind',
    'divergence_skip', 'divergence_lr_factor', 'divergence_cooldown',
    'divergence_max_recoveries',
    # Cadence.
    'log_every', 'image_every', 'checkpoint_every', 'keep_checkpoints',
    'steps_per_call', 'eval_batch_size',
    # Where the data is and what runs it.
    'data_dir', 'jit_compile', 'strategy', 'tpu',
})
_GIT_TIMEOUT_SECONDS = 10
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')


def _as_json(value: Any) -> Any:
  """`value` as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps(value))


def write_file(path: str, text: str) -> None:
  """Writes `text` to `path` atomically: a kill mid-write leaves the
  previous file intact."""
  temporary = path + '.tmp'
  with tf.io.gfile.GFile(temporary, 'w') as f:
    f.write(text)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def read(workdir: str) -> List[Dict[str, Any]]:
  """The history entries of `workdir`, oldest first; [] when there are
  none (a new workdir, or one written before histories were kept)."""
  path = os.path.join(workdir, FILENAME)
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def git_state(directory: Optional[str] = None
              ) -> Tuple[Optional[str], Optional[bool]]:
  """(commit, dirty) of the git checkout that tracks `directory` (default:
  the `elbo` package's), or (None, None): no git, not a checkout, or
  `directory` is not tracked in it (say, a virtualenv inside another
  repository).

  Dirty means that tracked files differ from the commit or that files that
  are neither tracked nor ignored exist: either way the code that ran may not
  be the commit's.
  """
  directory = directory or _PACKAGE_DIR

  def git(*args: str) -> str:
    return subprocess.run(['git', '-C', directory, *args], check=True,
                          capture_output=True, text=True,
                          timeout=_GIT_TIMEOUT_SECONDS).stdout

  try:
    git('ls-files', '--error-unmatch', '--', '.')
    commit = git('rev-parse', 'HEAD').strip()
    return commit, bool(git('status', '--porcelain'))
  except (OSError, subprocess.SubprocessError):
    return None, None


def _elbo_version() -> Optional[str]:
  # The package, already imported; not `import elbo`, whose Bazel target
  # depends on every library, this one included.
  version = getattr(importlib.import_module(__package__), '__version__',
                    None)
  if version is None:
    try:
      version = importlib.metadata.version('elbo')
    except importlib.metadata.PackageNotFoundError:
      pass
  return version


def _cpu_model() -> Optional[str]:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


# /proc/cpuinfo flags that decide which oneDNN kernels run, hence rounding.
_VECTOR_FLAGS = ('sse4_2', 'avx', 'avx2', 'fma', 'avx_vnni', 'avx512f',
                 'avx512bw', 'avx512_vnni', 'avx512_bf16', 'avx512_fp16',
                 'amx_bf16', 'amx_int8')


# Environment variables that change kernels or their threading, hence
# rounding (ONEDNN_MAX_CPU_ISA=AVX moved a 60-step run's test ELBO 2.8 nats).
_NUMERICS_ENV = ('ONEDNN_MAX_CPU_ISA', 'TF_ENABLE_ONEDNN_OPTS',
                 'TF_DETERMINISTIC_OPS', 'TF_NUM_INTRAOP_THREADS',
                 'TF_NUM_INTEROP_THREADS', 'OMP_NUM_THREADS', 'XLA_FLAGS',
                 'TF_XLA_FLAGS')


def _cpu_features() -> List[str]:
  """The `_VECTOR_FLAGS` this CPU has ([] where /proc/cpuinfo is not)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags'):
          flags = set(line.split(':', 1)[1].split())
          return [flag for flag in _VECTOR_FLAGS if flag in flags]
  except OSError:
    pass
  return []


def _devices() -> List[str]:
  """'CPU:0', 'GPU:0 NVIDIA A100-SXM4-40GB', ..."""
  names = []
  for device in tf.config.list_physical_devices():
    name = device.name.replace('/physical_device:', '')
    details = tf.config.experimental.get_device_details(device)
    names.append(' '.join([name, details.get('device_name', '')]).strip())
  return names


def environment() -> Dict[str, Any]:
  """Where this process runs: the code's version and commit, the host, the
  library versions and the devices (the entry fields of the module
  docstring)."""
  commit, dirty = git_state()
  return {
      'elbo_version': _elbo_version(),
      'git_commit': commit,
      'git_dirty': dirty,
      'hostname': socket.gethostname(),
      'python': platform.python_version(),
      'tensorflow': tf.__version__,
      'tensorflow_probability': tfp.__version__,
      'keras': keras.__version__,
      'devices': _devices(),
      'cpu': _cpu_model(),
      'cpu_count': os.cpu_count(),
      'cpu_features': _cpu_features(),
      'numerics_env': {name: os.environ[name] for name in _NUMERICS_ENV
                       if name in os.environ},
  }


def config_changes(previous: Mapping[str, Any],
                   config: config_lib.Config) -> Dict[str, List[Any]]:
  """`{field: [old, new]}` for the fields of `config` whose value differs
  from `previous` (a saved config). A field `previous` lacks was added
  since: the old run had its default. Saved fields `config` no longer has
  are ignored."""
  changes = {}
  for field in dataclasses.fields(config):
    old = previous.get(field.name, field.default)
    new = _as_json(getattr(config, field.name))
    if old != new:
      changes[field.name] = [old, new]
  return changes


def _previous_config(workdir: str, entries: List[Dict[str, Any]],
                     config: config_lib.Config) -> Optional[Dict[str, Any]]:
  """The config of the last start: from the history, else (a workdir
  written before histories were kept) from config.json, else None."""
  if entries:
    return entries[-1]['config']
  try:
    # This run's data_dir: the saved one may not exist on this machine, and
    # changing it is safe.
    saved = config_lib.load(workdir, data_dir=config.data_dir)
  except FileNotFoundError:
    return None
  return _as_json(dataclasses.asdict(saved))


def _check_changes(changes: Mapping[str, List[Any]], step: int,
                   allowed: Collection[str]) -> None:
  refused = sorted(set(changes) - SAFE_CHANGES - set(allowed))
  if refused:
    listed = ', '.join(f'{name} ({changes[name][0]!r} -> '
                       f'{changes[name][1]!r})' for name in refused)
    raise config_lib.ConfigError(
        f'Resuming at step {step} with a changed {listed}, which changes '
        'what a step computes or what the checkpoint holds; pass '
        f'--allow_config_change={",".join(refused)} to resume anyway, or use '
        'a new --workdir.')


class RunHistory:
  """The history of a workdir with the entry of this start last; `update`
  rewrites it. With `write=False` (a non-chief worker) nothing is written."""

  def __init__(self, workdir: str, entries: List[Dict[str, Any]],
               write: bool = True):
    self.path = os.path.join(workdir, FILENAME)
    self.entries = entries
    self._write = write
    self._start = time.monotonic()
    self._earlier_wall_time = sum(entry.get('wall_time') or 0.
                                  for entry in entries[:-1])

  @property
  def entry(self) -> Dict[str, Any]:
    return self.entries[-1]

  def update(self, step: int,
             test: Optional[Mapping[str, float]] = None) -> None:
    """Records `step` as the last step done (at a checkpoint or the end)
    and, when given, the final test metrics."""
    wall_time = time.monotonic() - self._start
    self.entry.update(last_step=int(step), last_time=_now(),
                      wall_time=round(wall_time, 3),
                      total_wall_time=round(
                          self._earlier_wall_time + wall_time, 3))
    if test is not None:
      self.entry['test'] = {name: float(v) for name, v in test.items()}
    if self._write:
      write_file(self.path, json.dumps(self.entries, indent=2))

  def write_summary(self, writer: summaries.SummaryWriter,
                    step: int) -> None:
    """The history as a markdown table in TensorBoard's text tab."""
    writer.text(step, 'run_history', markdown(self.entries))


def start(workdir: str, config: config_lib.Config, step: int,
          allow_changes: Collection[str] = (),
          write: bool = True) -> RunHistory:
  """Checks `config` against the run in `workdir` and records this start.

  Args:
    workdir: the run's directory.
    config: the config of this start.
    step: the global step of the restored checkpoint; 0 for a new run.
    allow_changes: config fields outside `SAFE_CHANGES` that may differ from
      the previous start anyway.
    write: False on non-chief workers: check only.

  Returns:
    The history with this start's entry last.

  Raises:
    config_lib.ConfigError: `allow_changes` names no config field, or a
      resumed run (`step` > 0) changed a field neither safe nor allowed.
  """
  names = {field.name for field in dataclasses.fields(config)}
  unknown = sorted(set(allow_changes) - names)
  if unknown:
    raise config_lib.ConfigError(
        f'--allow_config_change: {", ".join(unknown)} is not a config field.')
  entries = read(workdir)
  previous = _previous_config(workdir, entries, config)
  changes = config_changes(previous, config) if previous is not None else {}
  if step:  # At step 0 nothing was trained with the old config.
    _check_changes(changes, step, allow_changes)
  if changes:
    logging.warning('Config changed at step %d in %s (old, new): %s', step,
                    workdir, changes)
  entry = {'start_step': int(step), 'start_time': _now(),
           'config': _as_json(dataclasses.asdict(config)),
           'config_changes': changes, **environment(), 'test': None}
  history = RunHistory(workdir, entries + [entry], write)
  if write:
    tf.io.gfile.makedirs(workdir)
    history.update(step)
    config_lib.save(workdir, config)
  return history


def finished_test_metrics(
    workdir: str, config: config_lib.Config) -> Optional[Dict[str, float]]:
  """The final test metrics of a run in `workdir` that finished with
  exactly `config`, else None: running it again would only re-evaluate."""
  entries = read(workdir)
  if (entries and entries[-1].get('test') and
      entries[-1]['config'] == _as_json(dataclasses.asdict(config))):
    return entries[-1]['test']
  return None


def _cell(value: Any) -> str:
  return '' if value is None else str(value).replace('|', '\\|')


def markdown(entries: List[Mapping[str, Any]]) -> str:
  """One table row per start: steps, times, code, machine, changes."""
  rows = ['| start step | last step | started (UTC) | wall time (s) | '
          'commit | host | devices | versions | config changes | test |',
          '| ---: | ---: | --- | ---: | --- | --- | --- | --- | --- | --- |']
  for entry in entries:
    commit = entry.get('git_commit')
    if commit and entry.get('git_dirty'):
      commit += ' (dirty)'
    versions = ', '.join(
        f'{name} {entry.get(name)}' for name in
        ('elbo_version', 'python', 'tensorflow', 'tensorflow_probability',
         'keras'))
    changes = ', '.join(f'{name}: {old!r} -> {new!r}' for name, (old, new)
                        in entry.get('config_changes', {}).items())
    test = ', '.join(f'{name} {value:.2f}'
                     for name, value in (entry.get('test') or {}).items())
    cpu = ', '.join(str(part) for part in (
        entry.get('cpu'), entry.get('cpu_count') and
        f'{entry["cpu_count"]} cores', ' '.join(entry.get('cpu_features', [])),
        ' '.join(f'{name}={value}' for name, value in
                 entry.get('numerics_env', {}).items())) if part)
    rows.append('| ' + ' | '.join(_cell(value) for value in (
        entry['start_step'], entry.get('last_step'), entry['start_time'],
        entry.get('wall_time'), commit, entry.get('hostname'),
        ', '.join(entry.get('devices', [])) + f' ({cpu})',
        versions, changes, test)) + ' |')
  return '\n'.join(rows)
