"""The benchmark's FLOP counts, trace summary and blog model, and a smoke run
of the binary.

The binary runs in --smoke mode (2 steps, 1 repeat) on a tiny batch, with
our float32 and bfloat16 steps and the blog's `fit` (the XLA candidate only
adds a compilation; its HLO FLOP count is tested on a small function here).
"""

import gzip
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

import conftest
from elbo import blog_tf_keras
from elbo import config as config_lib
from elbo import factory
from elbo import flops
from elbo import profiling

_BATCH = 8
# Forward FLOPs per image of the blog's VAE, layer by layer: a conv
# 2*K*K*Cin*Cout*Hout*Wout, a transposed conv with the input's size, dense
# 2*in*out.
_FORWARD_FLOPS_BY_LAYER = [
    2 * 5 * 5 * 1 * 32 * 28 * 28,    # encoder: conv 5x5, 28x28
    2 * 5 * 5 * 32 * 32 * 14 * 14,   # conv 5x5 stride 2 -> 14x14
    2 * 5 * 5 * 32 * 64 * 14 * 14,
    2 * 5 * 5 * 64 * 64 * 7 * 7,     # stride 2 -> 7x7
    2 * 7 * 7 * 64 * 64 * 1 * 1,     # 7x7 'valid' -> 1x1
    2 * 64 * 152,                    # dense -> loc and scale_tril of 16
    2 * 7 * 7 * 16 * 64 * 1 * 1,     # decoder: transposed, from 1x1
    2 * 5 * 5 * 64 * 64 * 7 * 7,     # from 7x7
    2 * 5 * 5 * 64 * 64 * 7 * 7,     # from 7x7, stride 2
    2 * 5 * 5 * 64 * 32 * 14 * 14,
    2 * 5 * 5 * 32 * 32 * 14 * 14,   # stride 2
    2 * 5 * 5 * 32 * 32 * 28 * 28,
    2 * 5 * 5 * 32 * 1 * 28 * 28,    # conv to the logits
]
# Tripled for the backward pass, less the first layer's input gradient.
_TRAINING_FLOPS_PER_IMAGE = (3 * sum(_FORWARD_FLOPS_BY_LAYER) -
                             _FORWARD_FLOPS_BY_LAYER[0])


def _positive_finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_training_flops_by_formula():
  model = factory.build_model(config_lib.Config())
  counted = flops.count_training_flops(model, batch_size=_BATCH)
  assert [layer['forward_flops_per_image'] for layer in counted['layers']
          ] == _FORWARD_FLOPS_BY_LAYER
  assert counted['layers'][0]['layer'].startswith('encoder/')
  assert counted['layers'][-1]['layer'].startswith('decoder/')
  assert counted['forward_flops_per_image'] == 133_487_616
  assert counted['training_flops_per_image'] == _TRAINING_FLOPS_PER_IMAGE
  assert counted['training_flops_per_step'] == (_BATCH *
                                                _TRAINING_FLOPS_PER_IMAGE)


def test_hlo_flops_counts_convolutions_and_dots():
  images = tf.zeros([4, 6, 6, 3])
  kernel = tf.zeros([3, 3, 3, 5])
  matrix = tf.zeros([7, 11])

  @tf.function(jit_compile=True)
  def f(images, kernel, matrix):
    conv = tf.nn.conv2d(images, kernel, strides=1, padding='SAME')
    return tf.reduce_sum(conv) + tf.reduce_sum(matrix @ tf.transpose(matrix))

  hlo = f.experimental_get_compiler_ir(images, kernel, matrix)(
      stage='optimized_hlo')
  counted = flops.hlo_flops(hlo)
  assert counted['convolution'] == 2 * (4 * 6 * 6 * 5) * (3 * 3) * 3
  assert counted['dot'] == 2 * 7 * 7 * 11
  assert counted['total'] == counted['convolution'] + counted['dot']
  assert (counted['convolutions'], counted['dots']) == (1, 1)


def _write_trace(path: str, lines, metadata) -> None:
  """An XSpace with one host plane; `lines` maps a thread's name to
  (metadata id, picoseconds) events. A device plane repeats them all, to be
  ignored."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  for plane_name in ('/host:CPU', '/device:GPU:0'):
    plane = space.planes.add(name=plane_name)
    for metadata_id, name in metadata.items():
      plane.event_metadata[metadata_id].name = name
    for line_name, events in lines.items():
      line = plane.lines.add(name=line_name)
      for metadata_id, picoseconds in events:
        line.events.add(metadata_id=metadata_id, duration_ps=picoseconds)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(space.SerializeToString())


def test_summarize_trace_sums_op_time_per_step(tmp_path):
  ms = 10**9  # Picoseconds.
  metadata = {1: 'encoder/dense/MatMul:MatMul', 2: 'fusion.3',
              3: 'tensorflow::ExecutorState::Process', 4: 'conv:Conv2D',
              5: 'fusion.11'}
  lines = {
      'tf_Compute': [(1, 4 * ms), (3, 50 * ms), (4, 2 * ms)],
      'XLAEigen/7': [(2, 3 * ms), (5, 1 * ms), (1, 2 * ms)],
      'python': [(1, 100 * ms)],  # The main thread: Python-side calls.
  }
  run = tmp_path / 'plugins' / 'profile' / 'run'
  _write_trace(str(run / 'old.xplane.pb'), {'tf_Compute': [(4, ms)]},
               metadata)
  os.utime(run / 'old.xplane.pb', (0, 0))
  _write_trace(str(run / 'host.xplane.pb'), lines, metadata)

  summary = profiling.summarize_trace(str(tmp_path), steps=2, top=2)
  assert summary['logdir'] == str(tmp_path)
  # MatMul (4 + 2) + fusion (3 + 1) + Conv2D 2, over 2 steps.
  np.testing.assert_allclose(summary['op_ms_per_step'], 6.)
  assert [row['op'] for row in summary['top_op_types']] == ['MatMul',
                                                            'fusion']
  np.testing.assert_allclose(
      [row['ms_per_step'] for row in summary['top_op_types']], [3., 2.])
  np.testing.assert_allclose(
      [row['share'] for row in summary['top_op_types']], [0.5, 1 / 3])
  assert [row['op'] for row in summary['top_ops']] == [
      'encoder/dense/MatMul:MatMul', 'fusion.3']
  np.testing.assert_allclose(
      [row['ms_per_step'] for row in summary['top_ops']], [3., 1.5])


def test_summarize_trace_without_a_trace_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match='no .xplane.pb'):
    profiling.summarize_trace(str(tmp_path), steps=1)


def test_blog_model_has_the_shapes_of_ours():
  blog = blog_tf_keras.build_vae()
  ours = factory.build_model(config_lib.Config())
  shapes = lambda model: sorted(tuple(v.shape)
                                for v in model.trainable_variables)
  assert shapes(blog) == shapes(ours)
  assert sum(int(np.prod(v.shape)) for v in blog.trainable_variables
             ) == 749_305
  images = tf.zeros([2, 28, 28, 1])
  likelihood = blog(images)
  assert likelihood.event_shape == [28, 28, 1]
  assert likelihood.log_prob(images).shape == [2]


def test_smoke_run_writes_valid_json(tmp_path):
  output = tmp_path / 'out' / 'bench.json'
  result = conftest.run_binary(
      '--smoke', f'--batch_size={_BATCH}', '--candidates=ours,ours_bf16,'
      'blog_fit', f'--workdir={tmp_path / "work"}', f'--output={output}',
      binary='benchmark')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'images/s' in result.stdout and 'ours_over_fit' in result.stdout

  with open(output) as f:
    results = json.load(f)
  assert {'note', 'settings', 'machine', 'load_average', 'flops',
          'references', 'candidates', 'ratios'} <= set(results)
  assert results['settings']['steps'] == 2
  assert results['settings']['repeats'] == 1
  assert set(results['candidates']) == {'ours', 'ours_bf16', 'blog_fit'}
  for name, candidate in results['candidates'].items():
    for key in ('ms_per_step', 'images_per_second', 'gflops_per_second',
                'fraction_of_matmul', 'fraction_of_fp32_matmul',
                'best_fraction_of_matmul', 'best_gflops_per_second',
                'fraction_of_bf16_matmul'):
      assert _positive_finite(candidate[key]), (name, key, candidate[key])
    assert len(candidate['seconds_per_step']) == 1
    np.testing.assert_allclose(
        candidate['images_per_second'] * candidate['ms_per_step'] / 1e3,
        _BATCH, rtol=1e-6)
  for name in ('matmul_fp32', 'matmul_bf16'):
    assert _positive_finite(results['references'][name]['gflops_per_second'])
  assert set(results['ratios']) == {'bf16_over_fp32', 'ours_over_fit',
                                    'bf16_over_fit'}
  for ratio in results['ratios'].values():
    assert _positive_finite(ratio['value'])

  counted = results['flops']
  assert counted['training_flops_per_image'] == _TRAINING_FLOPS_PER_IMAGE
  assert counted['training_flops_per_step'] == (_BATCH *
                                                _TRAINING_FLOPS_PER_IMAGE)
  # The graph profiler counts more (see elbo.flops): within 15%.
  assert (counted['training_flops_per_step'] <
          counted['graph_profiler_flops_per_step'] <
          1.15 * counted['training_flops_per_step'])


def test_help_lists_the_binarys_flags():
  # absl prints the main module's flags, then exits with 1.
  result = conftest.run_binary('--help', binary='benchmark')
  assert 'experiments/benchmark.py:' in result.stdout, result.stderr[-3000:]
  for flag in ('--candidates', '--data_dir', '--smoke', '--steps_per_call',
               '--profile', '--output'):
    assert flag in result.stdout, flag


def test_unknown_candidate_is_a_one_line_error(tmp_path):
  result = conftest.run_binary('--candidates=ours,nope',
                               f'--workdir={tmp_path}', binary='benchmark')
  assert result.returncode != 0
  assert '--candidates must be' in result.stderr


def _no_directory(data_dir) -> str:
  return 'is not a directory'


def _no_mnist_file(data_dir) -> str:
  data_dir.mkdir()
  return 'file not found'


def _truncated_mnist_file(data_dir) -> str:
  data_dir.mkdir()
  with gzip.open(data_dir / 'train-images-idx3-ubyte.gz', 'wb') as f:
    f.write(b'\x00\x00\x08')  # Shorter than the 16-byte header.
  return 'truncated'


@pytest.mark.parametrize(
    'make_data_dir', [_no_directory, _no_mnist_file, _truncated_mnist_file])
def test_bad_data_dir_is_a_one_line_error(tmp_path, make_data_dir):
  data_dir = tmp_path / 'data'
  expected = make_data_dir(data_dir)
  result = conftest.run_binary(
      '--smoke', '--candidates=ours', f'--data_dir={data_dir}',
      f'--workdir={tmp_path / "work"}', binary='benchmark')
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines()
            if line.startswith('Error: ')]
  assert len(errors) == 1, result.stderr[-3000:]
  assert str(data_dir) in errors[0] and expected in errors[0], errors[0]
  assert 'Traceback' not in result.stderr
  assert 'flags:' not in result.stdout + result.stderr  # No usage text.
  assert not os.path.exists(tmp_path / 'work' / 'benchmark.json')
