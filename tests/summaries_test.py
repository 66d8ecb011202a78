"""Tests of elbo.summaries: what each write puts in the event files."""

import os

import numpy as np
import tensorflow as tf

from elbo import summaries


def _events(logdir: str):
  """{(tag, step): tensor proto} of every summary written under `logdir`."""
  found = {}
  for path in tf.io.gfile.glob(os.path.join(logdir, 'events.out.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        found[(value.tag, event.step)] = value
  return found


class TestSummaryWriter:

  def test_scalars_are_flushed_without_close(self, tmp_path):
    writer = summaries.SummaryWriter(str(tmp_path))
    writer.scalars(3, {'loss': 1.5, 'kl/x': 0.25})
    # Read while the writer is open: a killed run still shows its curves.
    events = _events(str(tmp_path))
    assert tf.make_ndarray(events[('loss', 3)].tensor) == np.float32(1.5)
    assert tf.make_ndarray(events[('kl/x', 3)].tensor) == np.float32(0.25)

  def test_images_histograms_and_text(self, tmp_path):
    writer = summaries.SummaryWriter(str(tmp_path))
    writer.images(2, {'grid': tf.zeros([5, 4, 6, 1])}, max_outputs=2)
    writer.histograms(2, {'h': np.arange(4.)})
    writer.text(2, 'notes', '| a | b |')
    events = _events(str(tmp_path))
    # An image summary holds width, height, then one PNG per image.
    image = tf.make_ndarray(events[('grid', 2)].tensor)
    assert image[:2].tolist() == [b'6', b'4'] and len(image) == 2 + 2
    histogram = tf.make_ndarray(events[('h', 2)].tensor)
    assert histogram[:, 2].sum() == 4  # Bucket counts: the four values.
    text = tf.make_ndarray(events[('notes', 2)].tensor)
    assert text == b'| a | b |'

  def test_hparams(self, tmp_path):
    summaries.SummaryWriter(str(tmp_path)).hparams({'lr': 0.5}, 'trial')
    tags = {tag for tag, _ in _events(str(tmp_path))}
    assert '_hparams_/session_start_info' in tags

  def test_noop_writes_nothing(self, tmp_path):
    for writer in (summaries.SummaryWriter.noop(),
                   summaries.SummaryWriter(None)):
      writer.scalars(1, {'loss': 1.})
      writer.text(1, 'notes', 'x')
      writer.flush()
    assert not os.listdir(tmp_path) and writer.logdir is None
