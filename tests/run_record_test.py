"""Tests of the run history: provenance, config changes on resume."""

import dataclasses
import inspect
import json
import os
import platform
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from elbo import config as config_lib
from elbo import run_record
from elbo import summaries
from elbo import train
import conftest

# Mechanics, not learning: the small generated files (conftest.data_dir).
pytestmark = pytest.mark.generated_data


# The end-to-end tests need elbo.train to call run_record (start after the
# restore, update at each checkpoint and at the end).
_WIRED = ('allow_config_changes' in
          inspect.signature(train.train_and_evaluate).parameters)
_needs_wiring = pytest.mark.skipif(
    not _WIRED, reason='elbo.train does not record run histories yet')


def _git(directory, *args):
  return subprocess.run(['git', '-C', directory, *args], check=True,
                        capture_output=True, text=True).stdout.strip()


def _expected_git_state():
  """This checkout's (commit, dirty), as git itself reports them."""
  try:
    commit = _git(conftest.REPO_ROOT, 'rev-parse', 'HEAD')
  except (OSError, subprocess.CalledProcessError):
    return None, None
  return commit, bool(_git(conftest.REPO_ROOT, 'status', '--porcelain'))


@pytest.fixture
def clock(monkeypatch):
  """run_record's monotonic clock, advanced by hand."""
  now = [1000.]
  monkeypatch.setattr(run_record.time, 'monotonic', lambda: now[0])
  return now


def test_one_entry_per_start_with_steps_wall_times_and_provenance(
    tmp_path, clock):
  workdir = str(tmp_path)
  config = config_lib.Config(batch_size=16, max_steps=4)
  history = run_record.start(workdir, config, 0)
  clock[0] += 2.5
  history.update(4)
  longer = dataclasses.replace(config, max_steps=8)
  history = run_record.start(workdir, longer, 4)
  clock[0] += 1.25
  history.update(6)
  clock[0] += 1.25
  history.update(8, {'elbo': -200., 'reconstruction': -180., 'kl': 20.})

  first, second = run_record.read(workdir)
  assert [first['start_step'], first['last_step']] == [0, 4]
  assert [second['start_step'], second['last_step']] == [4, 8]
  assert [first['wall_time'], second['wall_time']] == [2.5, 2.5]
  assert [first['total_wall_time'], second['total_wall_time']] == [2.5, 5.]
  assert first['test'] is None
  assert second['test'] == {'elbo': -200., 'reconstruction': -180.,
                            'kl': 20.}
  assert first['config'] == dataclasses.asdict(config)
  assert second['config'] == dataclasses.asdict(longer)
  assert first['config_changes'] == {}
  assert second['config_changes'] == {'max_steps': [4, 8]}
  assert config_lib.load(workdir) == longer

  commit, dirty = _expected_git_state()
  assert second['git_commit'] == commit and second['git_dirty'] == dirty
  assert len(commit or 'x' * 40) == 40
  assert second['tensorflow'] == tf.__version__
  assert second['devices'] == [
      d.name.replace('/physical_device:', '')
      for d in tf.config.list_physical_devices()]
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      models = [line.split(':')[1].strip() for line in f
                if line.startswith('model name')]
    assert second['cpu'] == (models[0] if models else second['cpu'])
  assert second['cpu_count'] == os.cpu_count()
  # This machine's vector extensions, e.g. ['sse4_2', 'avx', 'avx2', 'fma'].
  assert set(second['cpu_features']) <= set(run_record._VECTOR_FLAGS)
  if platform.machine() == 'x86_64' and os.path.exists('/proc/cpuinfo'):
    assert 'avx' in second['cpu_features']  # x86-64 TF wheels need AVX.
  assert not os.path.exists(os.path.join(workdir,
                                         run_record.FILENAME + '.tmp'))


def _started(workdir, **fields):
  """A run in `workdir` checkpointed at step 40."""
  config = config_lib.Config(batch_size=64, **fields)
  run_record.start(workdir, config, 0).update(40)
  return config


def test_the_environment_that_changes_numerics_is_recorded(monkeypatch):
  for name in run_record._NUMERICS_ENV:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX')
  monkeypatch.setenv('TF_NUM_INTRAOP_THREADS', '1')
  monkeypatch.setenv('UNRELATED', 'x')
  assert run_record.environment()['numerics_env'] == {
      'ONEDNN_MAX_CPU_ISA': 'AVX', 'TF_NUM_INTRAOP_THREADS': '1'}


def test_unsafe_change_on_resume_is_refused_in_one_line(tmp_path):
  workdir = str(tmp_path)
  config = _started(workdir)
  before = [open(os.path.join(workdir, name)).read()
            for name in (run_record.FILENAME, 'config.json')]
  changed = dataclasses.replace(config, batch_size=32, seed=3,
                                learning_rate=5e-4)
  with pytest.raises(config_lib.ConfigError) as error:
    run_record.start(workdir, changed, 40)
  message = str(error.value)
  assert '\n' not in message
  assert 'batch_size (64 -> 32)' in message and 'seed (0 -> 3)' in message
  assert 'learning_rate' not in message  # Safe: not refused.
  assert '--allow_config_change=batch_size,seed' in message
  # Nothing was written.
  assert before == [open(os.path.join(workdir, name)).read()
                    for name in (run_record.FILENAME, 'config.json')]


def test_safe_change_is_allowed_and_recorded(tmp_path):
  workdir = str(tmp_path)
  config = _started(workdir)
  changed = dataclasses.replace(config, learning_rate=5e-4, epochs=30,
                                jit_compile='false')
  run_record.start(workdir, changed, 40)
  entries = run_record.read(workdir)
  assert len(entries) == 2 and entries[1]['start_step'] == 40
  assert entries[1]['config_changes'] == {
      'epochs': [15, 30], 'learning_rate': [1e-3, 5e-4],
      'jit_compile': ['auto', 'false']}
  assert config_lib.load(workdir) == changed


def test_allowed_unsafe_change_is_recorded(tmp_path):
  workdir = str(tmp_path)
  config = _started(workdir)
  changed = dataclasses.replace(config, batch_size=128, seed=1)
  with pytest.raises(config_lib.ConfigError, match=r'seed \(0 -> 1\)'):
    run_record.start(workdir, changed, 40, allow_changes=['batch_size'])
  run_record.start(workdir, changed, 40, allow_changes=['batch_size', 'seed'])
  entry = run_record.read(workdir)[-1]
  assert entry['config_changes'] == {'batch_size': [64, 128], 'seed': [0, 1]}
  assert entry['config']['batch_size'] == 128
  assert config_lib.load(workdir) == changed


def test_any_change_at_step_0_since_nothing_was_trained(tmp_path):
  workdir = str(tmp_path)
  config = config_lib.Config(batch_size=64)
  run_record.start(workdir, config, 0)  # Killed before its first checkpoint.
  run_record.start(workdir, dataclasses.replace(config, batch_size=32), 0)
  assert run_record.read(workdir)[1]['config_changes'] == {
      'batch_size': [64, 32]}


def test_allowing_an_unknown_field_is_an_error(tmp_path):
  with pytest.raises(config_lib.ConfigError,
                     match='--allow_config_change: batchsize is not'):
    run_record.start(str(tmp_path), config_lib.Config(), 0,
                     allow_changes=['batchsize'])


# A later Config with a field the old runs did not have.
_NewConfig = dataclasses.make_dataclass(
    'NewConfig', [('encoder', str, 'conv')], bases=(config_lib.Config,),
    frozen=True)


def test_new_fields_take_their_default_and_are_refused_when_changed(
    tmp_path):
  workdir = str(tmp_path)
  _started(workdir)
  run_record.start(workdir, _NewConfig(batch_size=64), 40)
  assert run_record.read(workdir)[-1]['config_changes'] == {}
  with pytest.raises(config_lib.ConfigError,
                     match=r"encoder \('conv' -> 'mlp'\)"):
    run_record.start(workdir, _NewConfig(batch_size=64, encoder='mlp'), 40)
  # Back to the Config without the field: the saved `encoder` is ignored.
  run_record.start(workdir, config_lib.Config(batch_size=64), 40)
  assert run_record.read(workdir)[-1]['config_changes'] == {}


def test_old_workdir_with_only_config_json(tmp_path, data_dir):
  workdir = str(tmp_path)
  config = config_lib.Config(batch_size=64, data_dir=data_dir)
  # As an older version wrote it: a field since removed, none of the fields
  # added since, and a data_dir of another machine.
  old = dataclasses.asdict(config)
  del old['clip_norm']
  old.update(data_dir='/elsewhere/datasets', removed_option=3)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(old, f)
  assert config_lib.load(workdir, data_dir=data_dir) == config

  with pytest.raises(config_lib.ConfigError, match=r'batch_size \(64 -> 32'):
    run_record.start(workdir, dataclasses.replace(config, batch_size=32), 40)
  run_record.start(workdir, config, 40)
  (entry,) = run_record.read(workdir)
  assert entry['start_step'] == 40 and entry['config_changes'] == {}
  assert config_lib.load(workdir) == config


def test_git_state_of_a_checkout_outside_one_and_without_git(tmp_path,
                                                              monkeypatch):
  repo, outside = str(tmp_path / 'repo'), str(tmp_path / 'outside')
  os.makedirs(os.path.join(repo, 'pkg'))
  os.makedirs(outside)
  with open(os.path.join(repo, 'pkg', 'code.py'), 'w') as f:
    f.write('x = 1\n')
  _git(repo, 'init', '-q')
  _git(repo, 'add', '.')
  _git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'c')
  commit = _git(repo, 'rev-parse', 'HEAD')
  package = os.path.join(repo, 'pkg')
  assert run_record.git_state(package) == (commit, False)
  with open(os.path.join(package, 'code.py'), 'a') as f:
    f.write('x = 2\n')
  assert run_record.git_state(package) == (commit, True)
  # An untracked directory inside a checkout (a virtualenv) is not its code.
  os.makedirs(os.path.join(repo, 'venv'))
  with open(os.path.join(repo, 'venv', 'site.py'), 'w') as f:
    f.write('')
  assert run_record.git_state(os.path.join(repo, 'venv')) == (None, None)
  assert run_record.git_state(outside) == (None, None)
  monkeypatch.setenv('PATH', outside)  # No git.
  assert run_record.git_state(package) == (None, None)


def test_finished_test_metrics_only_for_the_same_config(tmp_path):
  workdir = str(tmp_path)
  config = config_lib.Config(batch_size=16, max_steps=4)
  history = run_record.start(workdir, config, 0)
  assert run_record.finished_test_metrics(workdir, config) is None
  history.update(4, {'elbo': -100., 'reconstruction': -90., 'kl': 10.})
  assert run_record.finished_test_metrics(workdir, config) == {
      'elbo': -100., 'reconstruction': -90., 'kl': 10.}
  assert run_record.finished_test_metrics(
      workdir, dataclasses.replace(config, max_steps=8)) is None


def test_text_summary_has_a_row_per_start(tmp_path):
  workdir = str(tmp_path)
  config = _started(workdir)
  history = run_record.start(
      workdir, dataclasses.replace(config, learning_rate=5e-4), 40)
  history.update(50, {'elbo': -100.5, 'reconstruction': -90., 'kl': 10.5})
  writer = summaries.SummaryWriter(os.path.join(workdir, 'train'))
  history.write_summary(writer, 50)
  texts = []
  for path in tf.io.gfile.glob(os.path.join(workdir, 'train', 'events*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        texts.append((value.tag, event.step,
                      tf.make_ndarray(value.tensor).item().decode()))
  ((tag, step, text),) = texts
  assert (tag, step) == ('run_history', 50)
  lines = text.splitlines()
  assert len(lines) == 2 + 2  # Header, rule, one row per start.
  assert lines[2].startswith('| 0 | 40 |')
  assert lines[3].startswith('| 40 | 50 |')
  assert 'learning_rate: 0.001 -> 0.0005' in lines[3]
  assert 'elbo -100.50, reconstruction -90.00, kl 10.50' in lines[3]
  commit, _ = _expected_git_state()
  assert (commit or '') in lines[3]


def _tiny(data_dir, **fields):
  """The small iwae_mlp model: what is recorded is the loop's."""
  return config_lib.Config(model='iwae_mlp', data_dir=data_dir,
                           batch_size=16, log_every=2,
                           image_every=1000, checkpoint_every=2,
                           eval_batch_size=128, **fields)


@pytest.fixture(scope='module')
def fake_data(tmp_path_factory):
  return conftest.make_fake_datasets(str(tmp_path_factory.mktemp('data')))


@_needs_wiring
def test_training_records_each_start_and_refuses_unsafe_resumes(
    tmp_path, fake_data):
  workdir = str(tmp_path)
  first = train.train_and_evaluate(_tiny(fake_data, max_steps=4), workdir)
  with pytest.raises(config_lib.ConfigError, match=r'seed \(0 -> 1\)'):
    train.train_and_evaluate(_tiny(fake_data, max_steps=6, seed=1), workdir)
  config = _tiny(fake_data, max_steps=6, learning_rate=5e-4)
  second = train.train_and_evaluate(config, workdir)

  entries = run_record.read(workdir)
  assert [(e['start_step'], e['last_step']) for e in entries] == [(0, 4),
                                                                  (4, 6)]
  np.testing.assert_allclose(
      [list(e['test'].values()) for e in entries],
      [list(first['test'].values()), list(second['test'].values())])
  assert entries[1]['config_changes'] == {'max_steps': [4, 6],
                                          'learning_rate': [1e-3, 5e-4]}
  assert entries[1]['git_commit'] == _expected_git_state()[0]
  assert config_lib.load(workdir) == config

  # A workdir from before histories: only config.json and checkpoints.
  os.remove(os.path.join(workdir, run_record.FILENAME))
  train.train_and_evaluate(dataclasses.replace(config, max_steps=8), workdir)
  (entry,) = run_record.read(workdir)
  assert (entry['start_step'], entry['last_step']) == (6, 8)
