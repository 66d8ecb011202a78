"""The benchmark's FLOP counts, trace summary and blog model, and smoke runs
of the binary.

The binary runs in --smoke mode (2 steps, 1 repeat): the blog's model on a
tiny batch with our float32 and bfloat16 steps and the blog's `fit`; the
IWAE MLP at batch 20 with our step, XLA, and the peers through a fake peers
script written here (it echoes its arguments; no JAX or PyTorch needed).
"""

import gzip
import json
import math
import os
import sys

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


# The IWAE MLP's dense layers (in * out), encoder and decoder, and the
# first layer, whose input gradient a training step does not compute.
_MLP_ENCODER = 784 * 200 + 200 * 200 + 200 * 2 * 50
_MLP_DECODER = 50 * 200 + 200 * 200 + 200 * 784
_MLP_FIRST = 784 * 200
_MLP_BIASES = 200 + 200 + 2 * 50 + 200 + 200 + 784


@pytest.mark.parametrize('num_samples', [1, 5])
def test_training_flops_of_the_mlp_run_the_decoder_k_times(num_samples):
  model = factory.build_model(config_lib.Config(model='iwae_mlp'))
  counted = flops.count_training_flops(model, batch_size=20,
                                       num_samples=num_samples)
  assert counted['num_samples'] == num_samples
  assert counted['forward_flops_per_image'] == 2 * (
      _MLP_ENCODER + num_samples * _MLP_DECODER)
  assert counted['training_flops_per_step'] == 20 * 2 * (
      3 * (_MLP_ENCODER + num_samples * _MLP_DECODER) - _MLP_FIRST)


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


# A peers script as the benchmark calls it (NAME --k K --steps N --spc S):
# prints a decoy JSON line, then its arguments and a ms_per_step of 2.5
# (jax) or 10 (torch) as the last JSON line, then a line that is not JSON.
_FAKE_PEERS = """
import json, sys
name, _, k, _, steps, _, spc = sys.argv[1:]
print(json.dumps({'ms_per_step': 1000.0, 'decoy': True}))
print(json.dumps({'who': name, 'k': int(k), 'steps': int(steps),
                  'spc': int(spc),
                  'ms_per_step': {'jax': 2.5, 'torch': 10.0}[name]}))
print('done')
"""


def _fake_peers(tmp_path) -> list:
  script = tmp_path / 'peers.py'
  script.write_text(_FAKE_PEERS)
  return [f'--peers_python={sys.executable}', f'--peers_script={script}']


def test_smoke_run_of_the_mlp_with_peers(tmp_path):
  output = tmp_path / 'bench.json'
  result = conftest.run_binary(
      '--smoke', '--model=iwae_mlp', '--batch_size=20', '--objective=iwae',
      '--num_samples=5', '--steps_per_call=3',
      '--candidates=ours,ours_xla,jax,torch', *_fake_peers(tmp_path),
      f'--workdir={tmp_path / "work"}', f'--output={output}',
      binary='benchmark')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'ours_over_jax' in result.stdout

  with open(output) as f:
    results = json.load(f)
  settings = results['settings']
  assert (settings['model'], settings['objective'], settings['num_samples'],
          settings['peer_num_samples']) == ('iwae_mlp', 'iwae', 5, 5)
  assert settings['peers_script'] == 'peers.py'  # No local paths.
  for name, ms in (('jax', 2.5), ('torch', 10.0)):
    candidate = results['candidates'][name]
    # The last JSON line, with k = num_samples, the smoke's 2 steps rounded
    # up to whole calls of --steps_per_call.
    assert candidate['peer_report'] == {'who': name, 'k': 5, 'steps': 3,
                                        'spc': 3, 'ms_per_step': ms}
    assert candidate['ms_per_step'] == ms
    assert candidate['seconds_per_step'] == [ms / 1e3]
    ours = results['candidates']['ours']['seconds_per_step'][0]
    # A speed ratio: the peer's time over ours.
    np.testing.assert_allclose(
        results['ratios'][f'ours_over_{name}']['value'], ms / 1e3 / ours)
  for candidate in results['candidates'].values():
    assert _positive_finite(candidate['ms_per_step'])

  counted = results['flops']
  assert counted['training_flops_per_step'] == 20 * 2 * (
      3 * (_MLP_ENCODER + 5 * _MLP_DECODER) - _MLP_FIRST)
  # XLA's dots are the formula's matmuls exactly, and the gradient norm's
  # matrix-vector products, 2 a parameter (measured: equal).
  assert counted['xla_hlo_flops_per_step']['dot'] == (
      counted['training_flops_per_step'] +
      2 * (_MLP_ENCODER + _MLP_DECODER + _MLP_BIASES))
  # The graph profiler also counts the elementwise ops: 4.2% more
  # measured at k = 5 (149.9 M / 143.8 M), 11% at k = 1.
  assert (counted['training_flops_per_step'] <
          counted['graph_profiler_flops_per_step'] <
          1.15 * counted['training_flops_per_step'])


def test_help_lists_the_binarys_flags():
  # absl prints the main module's flags, then exits with 1.
  result = conftest.run_binary('--help', binary='benchmark')
  assert 'experiments/benchmark.py:' in result.stdout, result.stderr[-3000:]
  for flag in ('--candidates', '--smoke', '--profile', '--output',
               '--peers_python', '--peers_script', '--peer_steps'):
    assert flag in result.stdout, flag
  # The training flags, as experiments/train.py takes them.
  for flag in ('--model', '--objective', '--num_samples', '--precision',
               '--batch_size', '--steps_per_call', '--jit_compile',
               '--preset', '--data_dir', '--seed'):
    assert flag in result.stdout + result.stderr, flag


def test_unknown_candidate_is_a_one_line_error(tmp_path):
  result = conftest.run_binary('--candidates=ours,nope',
                               f'--workdir={tmp_path}', binary='benchmark')
  assert result.returncode != 0
  assert '--candidates must be' in result.stderr


def _one_error(result) -> str:
  """The one line of a refusal: no traceback, no usage text."""
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines()
            if line.startswith(('Error: ', 'Invalid flags: '))]
  assert len(errors) == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  assert '--helpfull' not in result.stdout + result.stderr  # No usage.
  return errors[0]


@pytest.mark.parametrize('flags, expected', [
    (['--model=iwae_mlp', '--batch_size=20', '--candidates=ours,jax'],
     'set --peers_python'),
    (['--model=iwae_mlp', '--batch_size=32', '--candidates=torch'],
     'batch 20'),
    (['--candidates=ours,jax'], '--model=iwae_mlp'),
    (['--model=iwae_mlp', '--candidates=ours,blog_fit'],
     'blog_fit: for --model=blog only'),
])
def test_candidates_that_cannot_run_are_refused(tmp_path, flags, expected):
  result = conftest.run_binary('--smoke', *flags, f'--workdir={tmp_path}',
                               binary='benchmark')
  assert expected in _one_error(result)
  assert not os.path.exists(tmp_path / 'benchmark.json')


def test_a_failing_peer_is_a_one_line_error(tmp_path):
  script = tmp_path / 'peers.py'
  script.write_text('import sys\nsys.exit("no jax here")\n')
  result = conftest.run_binary(
      '--smoke', '--model=iwae_mlp', '--batch_size=20', '--candidates=jax',
      f'--peers_python={sys.executable}', f'--peers_script={script}',
      f'--workdir={tmp_path}', binary='benchmark')
  assert 'peer jax failed (exit status 1): no jax here' in _one_error(result)


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
  error = _one_error(result)
  assert str(data_dir) in error and expected in error, error
  assert not os.path.exists(tmp_path / 'work' / 'benchmark.json')
