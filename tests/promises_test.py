"""The long-run promises, end to end through the train binary.

A second training on a held workdir is refused and changes nothing in it;
a run resumed past a cut-short newest checkpoint ends where an uninterrupted
run does; the blog's model resumes bit for bit after kill -9. Every stop is
at a known step: the loop's test-only fault point (ELBO_TEST_KILL_AT_STEP,
`conftest.signal_at_step_command`), never a clock.
"""

import os
import shutil
import signal
import subprocess
from typing import NamedTuple

import pytest
import tensorflow as tf

import conftest

# Mechanics, not learning: the small generated files (conftest.data_dir),
# but for the blog's model on real MNIST (real_data_dir).
pytestmark = pytest.mark.generated_data

_STEPS = 12


def _flags(workdir, data_dir, *extra, model='iwae_mlp', batch_size=32):
  return ['--workdir', str(workdir), '--data_dir', data_dir,
          f'--model={model}', f'--batch_size={batch_size}', '--log_every=1',
          '--checkpoint_every=4', '--keep_checkpoints=10',
          '--image_every=1000', '--eval_batch_size=1000',
          f'--max_steps={_STEPS}', *extra]


def _run_until(step, signum, *flags, threads=None):
  """Runs the binary to `step`, where it sends itself `signum`; with
  `threads`, TensorFlow's op thread pools have that many threads."""
  argv, env = conftest.signal_at_step_command(step, signum, *flags)
  if threads:
    env.update(TF_NUM_INTRAOP_THREADS=str(threads),
               TF_NUM_INTEROP_THREADS=str(threads))
  return subprocess.run(argv, env=env, capture_output=True, text=True,
                        timeout=600)


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith('Error:')]


class _HeldRun(NamedTuple):
  workdir: str  # 12 steps, checkpoints at 4, 8 and 12.
  pid: int
  stderr: str
  second: subprocess.CompletedProcess  # The second training, refused.
  before: dict  # The workdir's files before the second training,
  after: dict  # and after it.


@pytest.fixture(scope='module')
def reference_run(data_dir, tmp_path_factory) -> _HeldRun:
  """12 steps, during which a second training was tried on the workdir: the
  first stopped itself (SIGSTOP) after step 6, holding the workdir, and went
  on at SIGCONT; a stop computes nothing, so this is also the
  uninterrupted run the resumed ones are compared with."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  argv, env = conftest.signal_at_step_command(6, signal.SIGSTOP,
                                              *_flags(workdir, data_dir))
  first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
  try:
    _, status = os.waitpid(first.pid, os.WUNTRACED)  # Until it stops.
    assert os.WIFSTOPPED(status), status
    before = conftest.file_tree(workdir)
    second = conftest.run_binary(*_flags(workdir, data_dir))
    after = conftest.file_tree(workdir)
  finally:
    first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
  assert first.returncode == 0, stderr[-3000:]
  return _HeldRun(workdir, first.pid, stderr, second, before, after)


def test_a_second_training_on_a_held_workdir_is_refused_and_changes_nothing(
    reference_run):
  """The second training exits with one `Error:` line naming the holder
  and leaves every file's bytes as they were; the first then finishes."""
  second = reference_run.second
  assert second.returncode == 1, second.stderr[-3000:]
  errors = _error_lines(second.stderr)
  assert len(errors) == 1, second.stderr[-3000:]
  assert f'pid {reference_run.pid}' in errors[0], errors
  assert 'Traceback' not in second.stderr
  assert 'checkpoints/ckpt-4.index' in reference_run.before  # Its state.
  assert reference_run.after == reference_run.before
  assert tf.train.latest_checkpoint(os.path.join(
      reference_run.workdir, 'checkpoints')).endswith(f'ckpt-{_STEPS}')


def test_a_run_resumed_past_a_cut_short_checkpoint_ends_as_an_uninterrupted_one(
    reference_run, data_dir, tmp_path):
  """Killed after step 10 (checkpoints 4 and 8), ckpt-8's data cut to half
  its size: the resumed run restores ckpt-4, writes ckpt-8 again and ends
  with every tensor of ckpt-8 and ckpt-12 equal to the uninterrupted run's."""
  workdir = str(tmp_path / 'run')
  killed = _run_until(10, signal.SIGKILL, *_flags(workdir, data_dir))
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  directory = os.path.join(workdir, 'checkpoints')
  data_file = os.path.join(directory, 'ckpt-8.data-00000-of-00001')
  size = os.path.getsize(data_file)
  with open(data_file, 'r+b') as f:
    f.truncate(size // 2)

  resumed = conftest.run_binary(*_flags(workdir, data_dir))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Skipped unreadable checkpoints' in resumed.stderr
  assert 'ckpt-8.data-00000-of-00001' in resumed.stderr
  assert f'Restored {os.path.join(directory, "ckpt-4")}' in resumed.stderr
  assert os.path.getsize(data_file) == size
  for step in (8, 12):
    conftest.assert_same_tensors(
        conftest.checkpoint_tensors(os.path.join(directory, f'ckpt-{step}')),
        conftest.checkpoint_tensors(
            os.path.join(reference_run.workdir, 'checkpoints',
                         f'ckpt-{step}')))
  # The logged curve too (steps 5-10, logged twice, have the last value).
  assert (conftest.elbo_curve(workdir) ==
          conftest.elbo_curve(reference_run.workdir))


def test_the_blogs_model_resumes_bit_for_bit_after_kill9(real_data_dir,
                                                         tmp_path):
  """The default model on real MNIST, batch 32: killed after step 5
  (checkpoints at 2 and 4), then resumed, its ckpt-6 equals an
  uninterrupted run's in every tensor. Both runs end by the fault point at
  step 7, after ckpt-6 and before the end-of-run evaluation of the 10,000
  test images (which would take most of the test's time)."""
  flags = lambda workdir: _flags(workdir, real_data_dir, '--max_steps=8',
                                 '--checkpoint_every=2', model='blog')
  whole, split = tmp_path / 'whole', tmp_path / 'split'
  for workdir, stops in ((whole, [7]), (split, [5, 7])):
    for step in stops:
      result = _run_until(step, signal.SIGKILL, *flags(workdir), threads=1)
      assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  assert 'Restored' in result.stderr and 'ckpt-4' in result.stderr
  conftest.assert_same_tensors(
      conftest.checkpoint_tensors(str(split / 'checkpoints' / 'ckpt-6')),
      conftest.checkpoint_tensors(str(whole / 'checkpoints' / 'ckpt-6')))


def _bad_data_dir(tmp_path):
  os.makedirs(tmp_path / 'bad_data' / 'mnist')
  with open(tmp_path / 'bad_data' / 'mnist' / 'train-images-idx3-ubyte.gz',
            'wb') as f:
    f.write(b'junk')


# (flags, expected message on stderr): every kind of bad input given to an
# existing run, from flag parsing to a checkpoint of another model.
_BAD_INPUTS = [
    (['--batch_size=-5'], 'batch_size must be >= 1'),
    (['--epochs=many'], 'flag --epochs=many: invalid literal'),
    (['--kl=exact'], 'flag --kl=exact: value should be one of'),
    (['--bogus=1'], 'Unknown command line flag'),
    (['stray'], "Unexpected arguments: ['stray']"),
    (['--data_dir=/nonexistent'], "data_dir '/nonexistent' is not a"),
    (['--data_dir={tmp_path}/bad_data'],
     'train-images-idx3-ubyte.gz: cannot read'),
    (['--seed=1'], 'with a changed seed (0 -> 1)'),
    (['--model=blog', '--allow_config_change=model'],
     'ckpt-12: does not match this model'),
]


@pytest.mark.parametrize('flags,message', _BAD_INPUTS,
                         ids=[' '.join(f) for f, _ in _BAD_INPUTS])
def test_bad_input_to_an_existing_run_changes_no_byte_of_it(
    reference_run, data_dir, tmp_path, flags, message):
  """One line (`Error: ...` or absl's usage error), no traceback, and the
  tree around the run (the workdir, its parent) byte-for-byte as before."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference_run.workdir, workdir)
  # As a run killed -9 leaves it: a lock file naming a dead holder.
  with open(os.path.join(workdir, '.lock'), 'w') as f:
    f.write('{"pid": 1, "host": "gone", "started": "2020-01-01"}\n')
  _bad_data_dir(tmp_path)
  before = conftest.file_tree(str(tmp_path))
  flags = [flag.format(tmp_path=tmp_path) for flag in flags]
  result = conftest.run_binary(*_flags(workdir, data_dir), *flags)
  assert result.returncode not in (0, 75)
  assert message in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert len(_error_lines(result.stderr)) <= 1  # absl's usage: none.
  assert conftest.file_tree(str(tmp_path)) == before


def test_a_workdir_that_is_a_file_is_refused_and_kept(data_dir, tmp_path):
  path = tmp_path / 'run'
  path.write_bytes(b'not a run')
  result = conftest.run_binary(*_flags(path, data_dir))
  assert result.returncode not in (0, 75)
  assert f"Error: workdir '{path}' exists and is not a directory." in (
      result.stderr)
  assert len(_error_lines(result.stderr)) <= 1
  assert conftest.file_tree(str(tmp_path)) == {'run': b'not a run'}
