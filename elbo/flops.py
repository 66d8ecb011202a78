"""FLOPs of a training step, counted three ways, to check each other.

* `count_training_flops`: by formula over the model's convolution and dense
  layers; the number the benchmark divides by its times.
* `graph_profiler_flops`: TensorFlow's graph profiler over the traced step
  (no XLA). It counts somewhat more: every op in the graphs, and a
  Conv2DBackprop* priced by its output size times the whole kernel.
* `hlo_flops` of `xla_hlo_text`: the convolutions and dots in XLA's
  optimized HLO, the work XLA actually schedules (multiplications by the
  zeros of dilated convolutions included).

A multiply-add is 2 FLOPs throughout. The step functions are those of
`elbo.step.make_train_step`: a `tf.function` of `(batch, step)`, `step` a
scalar int64.
"""

import collections
import re
from typing import Dict, List

import keras
import numpy as np
import tensorflow as tf

from elbo import models

__all__ = [
    'count_training_flops',
    'graph_profiler_flops',
    'hlo_flops',
    'xla_hlo_text',
]

_StepFunction = tf.types.experimental.PolymorphicFunction
# One HLO instruction: `[ROOT] %name = type[dims]{layout} opcode(operands...`.
_HLO_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*'
                              r'\w+\[([\d,]*)\]\S*\s+(\w[\w-]*)\((.*)$')


def count_training_flops(model: models.Model, batch_size: int,
                         num_samples: int = 1) -> Dict:
  """FLOPs of one training step, by formula over the conv and dense layers.

  Any model whose `encoder` and `decoder` are Keras networks of these
  layers (the built-in ones); the decoder runs once per latent sample.
  Per image, forward:

  ```none
  Conv2D           2 * K * K * C_in * C_out * H_out * W_out
  Conv2DTranspose  2 * K * K * C_in * C_out * H_in * W_in
  Dense            2 * in * out
  forward          encoder layers + num_samples * decoder layers
  training         3 * forward - forward of the first encoder layer
  ```

  A convolution counts its taps on the 'same' padding; a transposed
  convolution is the gradient of one, hence the input's size. The backward
  pass costs the forward twice over: the gradient with respect to the
  weights, and with respect to the layer's input (skipped for the first
  encoder layer, whose input is the data). Biases, activations, the
  distributions and the optimizer update (all elementwise, about 0.1%) are
  left out.

  Args:
    model: the VAE, built (its layers have input and output shapes).
    batch_size: images per step.
    num_samples: latent samples per image (`Config.num_samples`, the k of
      an importance-weighted bound).

  Returns:
    flops: a dict with `method` ('formula'), `num_samples`,
      `forward_flops_per_image`,
      `training_flops_per_image`, `training_flops_per_step` and `layers`, a
      list of `{'layer': 'network/layer', 'forward_flops_per_image': n}`.
  """
  forward = 0
  first_layer_forward = None
  layers = []
  for network, repeats in ((model.encoder, 1),
                           (model.decoder, num_samples)):
    for layer in network.layers:
      if isinstance(layer, keras.layers.Conv2DTranspose):
        _, height, width, _ = layer.input.shape
        flops = 2 * int(np.prod(layer.kernel.shape)) * height * width
      elif isinstance(layer, keras.layers.Conv2D):
        _, height, width, _ = layer.output.shape
        flops = 2 * int(np.prod(layer.kernel.shape)) * height * width
      elif isinstance(layer, keras.layers.Dense):
        flops = 2 * int(np.prod(layer.kernel.shape))
      else:
        continue
      layers.append({'layer': f'{network.name}/{layer.name}',
                     'forward_flops_per_image': int(flops)})
      if first_layer_forward is None:
        first_layer_forward = flops
      forward += repeats * flops
  per_image = 3 * forward - first_layer_forward
  return {
      'method': 'formula',
      'num_samples': num_samples,
      'forward_flops_per_image': int(forward),
      'training_flops_per_image': int(per_image),
      'training_flops_per_step': int(per_image * batch_size),
      'layers': layers,
  }


def _function_graphs(graph: tf.Graph) -> List[tf.Graph]:
  """`graph` and the graphs of the functions it calls, recursively."""
  graphs, pending, seen = [], [graph], set()
  while pending:
    current = pending.pop()
    if id(current) in seen:
      continue
    seen.add(id(current))
    graphs.append(current)
    for function in getattr(current, '_functions', {}).values():
      if getattr(function, 'graph', None) is not None:
        pending.append(function.graph)
  return graphs


def graph_profiler_flops(step_fn: _StepFunction, batch: tf.Tensor) -> int:
  """TensorFlow's graph profiler's FLOP count of a traced train step.

  Summed over the step's graph and the functions it calls (each counted
  once). It counts every op in the graphs, including ones pruned at run
  time, and prices a Conv2DBackprop* by output size times the whole kernel,
  so it comes out above `count_training_flops`.

  Args:
    step_fn: the train step, a `tf.function` of `(batch, step)`, without
      XLA.
    batch: an example batch, to trace the step with.

  Returns:
    flops: the profiler's total float operations of one step.
  """
  from tensorflow.python.profiler import model_analyzer  # pylint: disable=g-import-not-at-top
  from tensorflow.python.profiler import option_builder  # pylint: disable=g-import-not-at-top
  graph = step_fn.get_concrete_function(
      batch, tf.constant(0, tf.int64)).graph
  options = option_builder.ProfileOptionBuilder.float_operation()
  options['output'] = 'none'
  return sum(int(model_analyzer.profile(g, options=options).total_float_ops)
             for g in _function_graphs(graph))


def xla_hlo_text(step_fn: _StepFunction, batch: tf.Tensor) -> str:
  """The optimized HLO of a whole train step, compiled by XLA.

  The step is recompiled whole, whether it compiles itself
  (`jit_compile=True`) or only a function it calls.

  Args:
    step_fn: the train step, a `tf.function` of `(batch, step)`.
    batch: an example batch, to trace the step with.

  Returns:
    hlo_text: the HLO module as text, for `hlo_flops`.
  """
  whole_step = tf.function(step_fn.python_function, jit_compile=True)
  return whole_step.experimental_get_compiler_ir(
      batch, tf.constant(0, tf.int64))(stage='optimized_hlo')


def hlo_flops(hlo_text: str) -> Dict:
  """FLOPs of the convolutions and dots in an HLO module, as XLA runs them.

  ```none
  convolution  2 * output elements * window taps * input features / groups
  dot          2 * output elements * contracted size
  ```

  Taps that fall on padding or on the zeros of a dilated input count: the
  convolution kernel multiplies them all.

  Args:
    hlo_text: an HLO module as text, e.g. from `xla_hlo_text`.

  Returns:
    flops: a dict with `convolution`, `dot` and `total` FLOPs; the number of
      `convolutions` and `dots` (keys present only when nonzero); and
      `library_calls`, how many of each library call (oneDNN / XNNPACK /
      YNNPACK fusions, custom calls) XLA chose.
  """
  shapes, convolution, dot = {}, 0, 0
  counts = collections.Counter()
  instructions = []
  for line in hlo_text.splitlines():
    match = _HLO_INSTRUCTION.match(line)
    if not match:
      continue
    name, dims, opcode, rest = match.groups()
    shape = [int(d) for d in dims.split(',') if d]
    shapes[name] = shape
    instructions.append((opcode, shape, rest))
  for opcode, shape, rest in instructions:
    operands = re.findall(r'%?([\w.\-]+)', rest.split(')')[0])
    if opcode in ('convolution', 'dot'):
      counts[opcode + 's'] += 1
    if opcode == 'convolution':
      window = re.search(r'size=([\dx]+)', rest)
      labels = re.search(r'dim_labels=(\w+)_', rest)
      groups = re.search(r'feature_group_count=(\d+)', rest)
      lhs = shapes.get(operands[0]) if operands else None
      if not (window and labels and lhs):
        continue
      taps = int(np.prod([int(s) for s in window.group(1).split('x')]))
      features = lhs[labels.group(1).index('f')]
      features //= int(groups.group(1)) if groups else 1
      convolution += 2 * int(np.prod(shape)) * taps * features
    elif opcode == 'dot':
      contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', rest)
      lhs = shapes.get(operands[0]) if operands else None
      if not (contracting and lhs):
        continue
      size = int(np.prod([lhs[int(d)] for d in contracting.group(1).split(',')
                          if d]))
      dot += 2 * int(np.prod(shape)) * size
  library_calls = collections.Counter(
      re.findall(r'"kind":"(__\w+)"', hlo_text) +
      re.findall(r'custom_call_target="([^"]+)"', hlo_text))
  return {'convolution': convolution, 'dot': dot, 'total': convolution + dot,
          **counts, 'library_calls': dict(library_calls)}
