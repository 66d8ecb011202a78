"""Smoke test of the benchmark binary, and of its FLOP counts.

The binary runs in --smoke mode (2 steps, 1 repeat) on a tiny batch, with
our float32 and bfloat16 steps and the blog's `fit` (the XLA candidate only
adds a compilation; its HLO FLOP count is tested on a small function here).
"""

import importlib.util
import json
import math
import os

import numpy as np
import tensorflow as tf

import conftest

_BATCH = 8
# Training FLOPs of the blog's VAE per image, by the formula in the binary:
# forward 133,487,616 (conv 2*K*K*Cin*Cout*Hout*Wout, transposed conv with
# the input's size, dense 2*in*out), tripled for the backward pass, less the
# first layer's input gradient (1,254,400).
_TRAINING_FLOPS_PER_IMAGE = 3 * 133_487_616 - 1_254_400


def _load_benchmark_module():
  path = os.path.join(conftest.REPO_ROOT, 'experiments', 'benchmark.py')
  spec = importlib.util.spec_from_file_location('benchmark_binary', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _positive_finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


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

  flops = results['flops']
  assert flops['training_flops_per_image'] == _TRAINING_FLOPS_PER_IMAGE
  assert flops['training_flops_per_step'] == _BATCH * _TRAINING_FLOPS_PER_IMAGE
  # The graph profiler counts more (see the binary): within 15%.
  assert (flops['training_flops_per_step'] <
          flops['graph_profiler_flops_per_step'] <
          1.15 * flops['training_flops_per_step'])


def test_unknown_candidate_is_a_one_line_error(tmp_path):
  result = conftest.run_binary('--candidates=ours,nope',
                               f'--workdir={tmp_path}', binary='benchmark')
  assert result.returncode != 0
  assert '--candidates must be' in result.stderr


def test_hlo_flops_counts_convolutions_and_dots():
  benchmark = _load_benchmark_module()
  images = tf.zeros([4, 6, 6, 3])
  kernel = tf.zeros([3, 3, 3, 5])
  matrix = tf.zeros([7, 11])

  @tf.function(jit_compile=True)
  def f(images, kernel, matrix):
    conv = tf.nn.conv2d(images, kernel, strides=1, padding='SAME')
    return tf.reduce_sum(conv) + tf.reduce_sum(matrix @ tf.transpose(matrix))

  hlo = f.experimental_get_compiler_ir(images, kernel, matrix)(
      stage='optimized_hlo')
  counted = benchmark.hlo_flops(hlo)
  assert counted['convolution'] == 2 * (4 * 6 * 6 * 5) * (3 * 3) * 3
  assert counted['dot'] == 2 * 7 * 7 * 11
