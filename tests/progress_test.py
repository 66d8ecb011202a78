"""elbo.progress: plain lines for a file, the Keras bar for a terminal."""

import io
import os
import re
import subprocess

import pytest

import conftest
from elbo import progress

# ESC (ANSI codes), carriage return, backspace.
_CONTROL = re.compile(r'[\x1b\r\x08]')


class FakeClock:

  def __init__(self):
    self.now = 100.

  def __call__(self):
    return self.now


class FakeTerminal(io.StringIO):

  def isatty(self):
    return True


def test_plain_lines_one_per_update_with_eta():
  stream, clock = io.StringIO(), FakeClock()
  report = progress.Progress(1000, start_step=100, steps_per_epoch=300,
                             stream=stream, clock=clock)
  metrics = {'elbo': -210.314, 'reconstruction': -190.1, 'kl': 20.214}
  report.update(150, metrics)
  clock.now += 20.  # 50 steps in 20 s: 0.4 s per step.
  report.update(200, metrics, examples_per_second=640.4)
  clock.now += 20.
  report.update(301, metrics, examples_per_second=1280.)
  lines = stream.getvalue().split('\n')
  assert lines[-1] == ''  # Every line ends with a newline.
  assert lines[:-1] == [
      'step 150/1000 (epoch 1): elbo -210.31, reconstruction -190.10, '
      'kl 20.21 | ETA ?',
      # 800 steps left at 0.4 s each.
      'step 200/1000 (epoch 1): elbo -210.31, reconstruction -190.10, '
      'kl 20.21 | 640 examples/s | ETA 0:05:20',
      # 40 s for 151 steps since the first update; 699 left: 185.2 s.
      'step 301/1000 (epoch 2): elbo -210.31, reconstruction -190.10, '
      'kl 20.21 | 1280 examples/s | ETA 0:03:05',
  ]
  assert not _CONTROL.search(stream.getvalue())


def test_plain_line_without_epochs():
  stream = io.StringIO()
  progress.Progress(10, stream=stream).update(5, {'elbo': -1e7})
  assert stream.getvalue() == 'step 5/10: elbo -1e+07 | ETA ?\n'


def test_a_terminal_gets_the_keras_progress_bar():
  stream = FakeTerminal()
  report = progress.Progress(100, stream=stream, steps_per_epoch=50)
  assert report.terminal
  report.update(50, {'elbo': -150.5}, examples_per_second=900.)
  report.update(100, {'elbo': -120.25}, examples_per_second=910.)
  text = stream.getvalue()
  # The bar's redraws and its figures, shown as given (stateful).
  assert '\r' in text and '━' in text
  assert '100/100' in text and 'elbo: -120.25' in text
  assert 'epoch: 2' in text


def test_a_closed_or_plain_object_is_not_a_terminal():
  closed = io.StringIO()
  closed.close()
  assert not progress.is_terminal(closed)
  assert not progress.is_terminal(object())
  assert progress.is_terminal(FakeTerminal())


@pytest.mark.parametrize('seconds, text', [(0.4, '0:00:00'),
                                           (3725, '1:02:05')])
def test_eta_format(seconds, text):
  assert progress.plain_line(1, 2, {}, eta_seconds=seconds).endswith(text)


def test_a_redirected_training_log_has_plain_lines(tmp_path,
                                                   generated_data_dir):
  log = tmp_path / 'train.log'
  argv, env = conftest.binary_command(
      f'--workdir={tmp_path / "run"}', f'--data_dir={generated_data_dir}',
      '--model=iwae_mlp', '--batch_size=32', '--max_steps=12',
      '--log_every=4', '--steps_per_call=2')
  with open(log, 'w') as stdout:
    subprocess.run(argv, env=env, stdout=stdout, stderr=subprocess.PIPE,
                   check=True, timeout=300)
  text = log.read_text()
  assert not _CONTROL.search(text)
  # 512 generated images: 16 steps per epoch; a line every 4 steps.
  steps = [int(m.group(1)) for m in
           re.finditer(r'^step (\d+)/12 \(epoch 1\): .*elbo -?\d+\.\d\d.*'
                       r' \| ETA .+$', text, re.M)]
  assert steps == [4, 8, 12]
