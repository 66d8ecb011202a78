r"""Times the training step of the blog's VAE, five ways, side by side.

  python experiments/benchmark.py --workdir=/tmp/elbo/benchmark

Candidates (`--candidates`, a comma list; default all):

  ours       our training loop (elbo.train.make_train_loop): the
             GradientTape step, float32, no XLA (TensorFlow's own oneDNN
             kernels on CPU), batches made in the graph from the resident
             images, --steps_per_call steps per tf.function call
  ours_host_data  the same step, one step per call, its batches from a
             tf.data iterator on the host: the input pipeline we replaced
  ours_xla   the loop with jit_compile=True (XLA)
  ours_bf16  the loop, no XLA, precision mixed_bfloat16
  blog_fit   the blog's way: the same architecture in tf_keras with
             tfp.layers heads (MultivariateNormalTriL with a
             KLDivergenceRegularizer, IndependentBernoulli), loss = negative
             log-likelihood, trained with `model.fit` on a tf.data dataset

and two references, the machine's rate on a large float32 and a large
bfloat16 `tf.matmul`. After `--warmup_steps` steps each, every candidate
runs `--steps` steps per repeat, round-robin across `--repeats` repeats (the
order rotates each repeat), so background load hits all of them alike; the
reported time is the median over repeats, and a ratio between two
candidates is the median of its per-repeat values (each pair ran within
seconds of each other). On a shared or loaded machine the absolute rates
move with the load; the ratios are the numbers to compare.

Training FLOPs are counted once, by formula over the model's layers (see
`elbo.flops`), and cross-checked against TensorFlow's graph
profiler and, when `ours_xla` runs, against the convolutions and dots in
XLA's optimized HLO (which counts the work XLA actually schedules,
including multiplications by the zeros of dilated convolutions).

`--profile=CANDIDATE` traces `--profile_steps` more steps of one candidate
with the TensorFlow profiler into `<workdir>/profile` (open it in
TensorBoard's profile plugin) and prints where the time goes, by op type.

Results go to `--output` (default `<workdir>/benchmark.json`) and a table on
stdout. `--smoke` runs 1 warm-up step, 2 steps, 1 repeat and a small matmul:
a check that everything runs, not a measurement.
"""

import json
import os
import platform
import re
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from elbo import blog_tf_keras
from elbo import config as config_lib
from elbo import data
from elbo import factory
from elbo import flops as flops_lib
from elbo import models
from elbo import profiling
from elbo import train

CANDIDATES = {
    'ours': 'our training loop, float32, no XLA (TF/oneDNN kernels), '
            'batches made in the graph',
    'ours_host_data': 'our step, float32, no XLA, one step per call, '
                      'batches from a host tf.data iterator',
    'ours_xla': 'our training loop, float32, jit_compile=True (XLA)',
    'ours_bf16': 'our training loop, mixed_bfloat16, no XLA',
    'blog_fit': 'the blog: tf_keras + tfp.layers, model.fit, float32, no XLA',
}
# Which matmul reference each candidate's compute runs at.
_PRECISION = {'ours': 'fp32', 'ours_host_data': 'fp32', 'ours_xla': 'fp32',
              'ours_bf16': 'bf16', 'blog_fit': 'fp32'}
_REFERENCES = ('matmul_fp32', 'matmul_bf16')
# (name, numerator, denominator): throughput ratios printed and saved.
_RATIOS = (('xla_over_no_xla', 'ours_xla', 'ours'),
           ('bf16_over_fp32', 'ours_bf16', 'ours'),
           ('ours_over_fit', 'ours', 'blog_fit'),
           ('bf16_over_fit', 'ours_bf16', 'blog_fit'),
           ('resident_over_host_data', 'ours', 'ours_host_data'))
_NUM_DISTINCT_BATCHES = 4
_SMOKE = {'warmup_steps': 1, 'steps': 2, 'repeats': 1, 'matmul_size': 256}
_NOTE = ('Absolute rates depend on what else runs on the machine (compare '
         'load_average); the candidates were interleaved round-robin in one '
         'process, so their ratios are the comparable numbers.')

_WORKDIR = flags.DEFINE_string(
    'workdir', '/tmp/elbo/benchmark',
    'Where benchmark.json (unless --output says otherwise) and the profile '
    'go.')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'Path of the JSON results; default <workdir>/'
    'benchmark.json.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256,
                                   'Images per training step.', lower_bound=1)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'A directory with the MNIST files (as for train.py) to '
    'time on real binarized digits; unset: random binary images (the step '
    'costs the same).')
_CANDIDATES = flags.DEFINE_list(
    'candidates', list(CANDIDATES), 'Which candidates to time, of: ' +
    ', '.join(CANDIDATES) + '.')
_WARMUP_STEPS = flags.DEFINE_integer(
    'warmup_steps', 5, 'Untimed steps per candidate first (tracing, XLA '
    'compilation, oneDNN primitive caches).', lower_bound=1)
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per repeat.',
                              lower_bound=1)
_REPEATS = flags.DEFINE_integer(
    'repeats', 10, 'Round-robin repeats; the median is reported.',
    lower_bound=1)
_MATMUL_SIZE = flags.DEFINE_integer(
    'matmul_size', 4096, 'n of the n x n x n reference matmuls (each '
    'repeat runs --steps of them).',
    lower_bound=16)
_SMOKE_FLAG = flags.DEFINE_bool(
    'smoke', False, 'A quick check that everything runs (overrides: ' +
    ', '.join(f'--{k}={v}' for k, v in _SMOKE.items()) + ').')
_PROFILE = flags.DEFINE_string(
    'profile', None, 'A candidate to trace with the TensorFlow profiler '
    'after the timing (into <workdir>/profile).')
_PROFILE_STEPS = flags.DEFINE_integer('profile_steps', 5,
                                      'Steps traced by --profile.',
                                      lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of weights and fake data.')
_STEPS_PER_CALL = flags.DEFINE_integer(
    'steps_per_call', config_lib.Config().steps_per_call,
    'Training steps per tf.function call of our loop (as train.py).',
    lower_bound=1)

flags.register_validator(
    'candidates', lambda names: bool(names) and set(names) <= set(CANDIDATES),
    message='--candidates must be a non-empty comma list of: ' +
    ', '.join(CANDIDATES) + '.')
flags.register_validator(
    'profile', lambda name: name is None or name in CANDIDATES,
    message='--profile must be one of: ' + ', '.join(CANDIDATES) + '.')


# ----------------------------------------------------------- candidates ----


def make_images(batch_size: int, data_dir: Optional[str],
                seed: int) -> np.ndarray:
  """uint8 training images: MNIST's, or random black-and-white ones (a few
  batches' worth; the step costs the same)."""
  if data_dir:
    return data.load_images('mnist', 'train', data_dir)
  shape = [_NUM_DISTINCT_BATCHES * batch_size, *models.IMAGE_SHAPE]
  return np.random.default_rng(seed).choice(
      np.array([0, 255], np.uint8), size=shape)


def make_batches(images: np.ndarray, batch_size: int,
                 seed: int) -> tf.Tensor:
  """The first few binarized training batches, [n, batch, 28, 28, 1]."""
  return tf.stack([data.training_batch(images, batch_size, seed, step)
                   for step in range(_NUM_DISTINCT_BATCHES)])


def _dataset(batches: tf.Tensor) -> tf.data.Dataset:
  """The same batches, cycled, prefetched: a host-side input pipeline."""
  return (tf.data.Dataset.from_tensor_slices(batches).repeat()
          .prefetch(tf.data.AUTOTUNE))


class Candidate:
  """`run(n)` trains n steps and returns their wall time in seconds."""

  def __init__(self, name: str, run: Callable[[int], float],
               step_fn=None, model=None):
    self.name = name
    self.run = run
    self.step_fn = step_fn  # Ours: the one-step tf.function, for FLOPs.
    self.model = model


def make_ours(name: str, images: np.ndarray, batch_size: int, seed: int,
              steps_per_call: int) -> Candidate:
  precision = 'mixed_bfloat16' if name == 'ours_bf16' else 'float32'
  config = config_lib.Config(batch_size=batch_size, seed=seed,
                             precision=precision)
  keras.utils.set_random_seed(seed)
  model = factory.build_model(config)
  optimizer = keras.optimizers.Adam(config.learning_rate)
  optimizer.build(model.trainable_variables)
  step_fn = train.make_train_step(model, optimizer, config,
                                  jit_compile=(name == 'ours_xla'),
                                  guard=train.NonFiniteGuard())
  step = 0
  if name == 'ours_host_data':
    iterator = iter(_dataset(make_batches(images, batch_size, seed)))
    run_steps = lambda first, count: sum(
        step_fn(next(iterator), tf.constant(s, tf.int64))
        for s in range(first, first + count))
    steps_per_call = 1
  else:
    train_steps = train.make_train_loop(step_fn, data.resident_images(images),
                                        batch_size, seed)
    run_steps = lambda first, count: train_steps(
        tf.constant(first, tf.int64), tf.constant(count, tf.int64))

  def run(num_steps: int) -> float:
    nonlocal step
    start = time.perf_counter()
    end = step + num_steps
    while step < end:
      count = min(steps_per_call, end - step)
      metrics = run_steps(step, count)
      step += count
    metrics.numpy()  # Waits for the last step.
    return time.perf_counter() - start

  return Candidate(name, run, step_fn, model)


def make_blog_fit(batches: tf.Tensor, seed: int) -> Candidate:
  """`model.fit` of the blog's model, timed per step by a callback."""
  tf.random.set_seed(seed)
  vae = blog_tf_keras.build_vae()
  dataset = _dataset(batches).map(lambda x: (x, x))

  class StepTimes(tf_keras.callbacks.Callback):

    def on_train_begin(self, logs=None):
      self.ends = []

    def on_train_batch_end(self, batch, logs=None):
      self.ends.append(time.perf_counter())

  times = StepTimes()

  def run(num_steps: int) -> float:
    # One extra step, so that the time from the end of the first step to
    # the end of the last leaves out fit's per-call start-up.
    vae.fit(dataset, epochs=1, steps_per_epoch=num_steps + 1, verbose=0,
            callbacks=[times])
    return times.ends[-1] - times.ends[0]

  return Candidate('blog_fit', run, model=vae)


def make_matmul(name: str, size: int, seed: int) -> Candidate:
  dtype = tf.bfloat16 if name == 'matmul_bf16' else tf.float32
  a = tf.cast(tf.random.stateless_normal([size, size], [seed, 1]), dtype)
  b = tf.cast(tf.random.stateless_normal([size, size], [seed, 2]), dtype)
  matmul = tf.function(tf.matmul)

  def run(num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
      product = matmul(a, b)
    product.numpy()
    return time.perf_counter() - start

  return Candidate(name, run)


# -------------------------------------------------------------- profile ----


def profile(candidate: Candidate, logdir: str, steps: int) -> Dict:
  tf.io.gfile.makedirs(logdir)
  tf.profiler.experimental.start(logdir)
  try:
    seconds = candidate.run(steps)
  finally:
    tf.profiler.experimental.stop()
  summary = profiling.summarize_trace(logdir, steps)
  summary.update(candidate=candidate.name, steps=steps,
                 wall_ms_per_step=1e3 * seconds / steps)
  return summary


# ----------------------------------------------------------------- main ----


def _machine() -> Dict:
  cpu = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      names = re.findall(r'model name\s*:\s*(.*)', f.read())
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return {
      'cpu': cpu,
      'cpu_count': os.cpu_count(),
      'devices': [d.name for d in tf.config.list_physical_devices()],
      'tensorflow': tf.__version__,
      'tensorflow_probability': tfp.__version__,
      'keras': keras.__version__,
      'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''),
      'TF_ENABLE_ONEDNN_OPTS': os.environ.get('TF_ENABLE_ONEDNN_OPTS', ''),
  }


def _rotated(names: List[str], shift: int) -> List[str]:
  shift %= len(names)
  return names[shift:] + names[:shift]


def run_benchmark(names: List[str], batch_size: int, data_dir: Optional[str],
                  warmup_steps: int, steps: int, repeats: int,
                  matmul_size: int, seed: int, profile_name: Optional[str],
                  profile_steps: int, workdir: str,
                  steps_per_call: int = config_lib.Config().steps_per_call
                  ) -> Dict:
  """Builds, warms up and times the candidates; returns the results."""
  load_before = os.getloadavg()
  images = make_images(batch_size, data_dir, seed)
  batches = make_batches(images, batch_size, seed)
  make = lambda name: (
      make_blog_fit(batches, seed) if name == 'blog_fit'
      else make_ours(name, images, batch_size, seed, steps_per_call))
  timed = {name: make(name) for name in names}
  for name in _REFERENCES:
    timed[name] = make_matmul(name, matmul_size, seed)
  order = [n for n in CANDIDATES if n in names] + list(_REFERENCES)

  for name in order:
    start = time.perf_counter()
    timed[name].run(warmup_steps)
    logging.info('Warm-up of %s: %.1f s', name, time.perf_counter() - start)

  seconds = {name: [] for name in order}
  for repeat in range(repeats):
    for name in _rotated(order, repeat):
      seconds[name].append(timed[name].run(steps) / steps)
    logging.info('Repeat %d/%d: %s', repeat + 1, repeats, ', '.join(
        f'{n} {1e3 * seconds[n][-1]:.1f} ms' for n in order))

  # FLOPs, once: after the timing, so that tracing or compiling again does
  # not disturb it.
  reference_model = next((c.model for c in timed.values()
                          if isinstance(c.model, models.VAE)), None)
  if reference_model is None:
    reference_model = factory.build_model(config_lib.Config())
  flops = flops_lib.count_training_flops(reference_model, batch_size)
  flops_per_step = flops['training_flops_per_step']
  example = batches[0]
  if 'ours' in timed:
    flops['graph_profiler_flops_per_step'] = flops_lib.graph_profiler_flops(
        timed['ours'].step_fn, example)
  if 'ours_xla' in timed:
    flops['xla_hlo_flops_per_step'] = flops_lib.hlo_flops(
        flops_lib.xla_hlo_text(timed['ours_xla'].step_fn, example))
  logging.info('FLOPs counted.')

  references = {}
  for name in _REFERENCES:
    median = statistics.median(seconds[name])
    references[name] = {
        'size': matmul_size,
        'seconds_per_matmul': seconds[name],
        'gflops_per_second': 2 * matmul_size**3 / median / 1e9,
        'best_gflops_per_second': 2 * matmul_size**3 / min(seconds[name]) /
                                  1e9,
    }
  results = {}
  for name in names:
    median = statistics.median(seconds[name])
    rate = flops_per_step / median
    results[name] = {
        'description': CANDIDATES[name],
        'seconds_per_step': seconds[name],
        'ms_per_step': 1e3 * median,
        'images_per_second': batch_size / median,
        'gflops_per_second': rate / 1e9,
        # The least disturbed repeat, for a machine with other load.
        'best_images_per_second': batch_size / min(seconds[name]),
        'best_gflops_per_second': flops_per_step / min(seconds[name]) / 1e9,
        'fraction_of_matmul': rate / 1e9 / references[
            'matmul_' + _PRECISION[name]]['gflops_per_second'],
        'fraction_of_fp32_matmul': rate / 1e9 / references[
            'matmul_fp32']['gflops_per_second'],
        'fraction_of_bf16_matmul': rate / 1e9 / references[
            'matmul_bf16']['gflops_per_second'],
        # Best repeat over best repeat: less sensitive to load that comes
        # and goes (a matmul, one op on all cores, suffers more from it).
        'best_fraction_of_matmul': flops_per_step / min(seconds[name]) /
                                   1e9 / references['matmul_' + _PRECISION[
                                       name]]['best_gflops_per_second'],
    }
  ratios = {}
  for ratio, numerator, denominator in _RATIOS:
    if numerator in results and denominator in results:
      # Paired by repeat: both ran within seconds of each other.
      per_repeat = [d / n for n, d in zip(seconds[numerator],
                                           seconds[denominator])]
      ratios[ratio] = {
          'value': statistics.median(per_repeat),
          'of_medians': (results[numerator]['images_per_second'] /
                         results[denominator]['images_per_second']),
          'per_repeat': per_repeat,
          'of': f'images/s of {numerator} / images/s of {denominator}, '
                'median over repeats',
      }
  output = {
      'note': _NOTE,
      'settings': {
          'batch_size': batch_size, 'data': data_dir or 'random binary',
          'warmup_steps': warmup_steps, 'steps': steps, 'repeats': repeats,
          'matmul_size': matmul_size, 'seed': seed, 'candidates': names,
          'steps_per_call': steps_per_call,
      },
      'machine': _machine(),
      'load_average': {'before': list(load_before),
                       'after': list(os.getloadavg())},
      'flops': flops,
      'references': references,
      'candidates': results,
      'ratios': ratios,
  }
  if profile_name:
    candidate = timed.get(profile_name)
    if candidate is None:
      candidate = make(profile_name)
      candidate.run(warmup_steps)
    output['profile'] = profile(candidate, os.path.join(workdir, 'profile'),
                                profile_steps)
  return output


def format_table(results: Dict) -> str:
  lines = [f'{"candidate":<14} {"images/s":>9} {"(best)":>8} '
           f'{"ms/step":>9} {"GFLOP/s":>9} {"of fp32 mm":>10} '
           f'{"of bf16 mm":>10} {"best/best":>9}']
  for name, r in results['candidates'].items():
    lines.append(f'{name:<14} {r["images_per_second"]:9.1f} '
                 f'{r["best_images_per_second"]:8.1f} '
                 f'{r["ms_per_step"]:9.1f} {r["gflops_per_second"]:9.1f} '
                 f'{r["fraction_of_fp32_matmul"]:10.2f} '
                 f'{r["fraction_of_bf16_matmul"]:10.2f} '
                 f'{r["best_fraction_of_matmul"]:9.2f}')
  for name, r in results['references'].items():
    lines.append(f'{name:<14} {"":>9} {"":>8} {"":>9} '
                 f'{r["gflops_per_second"]:9.1f}   ({r["size"]}^3 matmul; '
                 f'best repeat {r["best_gflops_per_second"]:.1f})')
  flops = results['flops']
  lines.append(f'Training FLOPs per step (formula): '
               f'{flops["training_flops_per_step"] / 1e9:.2f} G '
               f'({flops["training_flops_per_image"] / 1e6:.1f} M per image)')
  if 'graph_profiler_flops_per_step' in flops:
    lines.append('  TF graph profiler: '
                 f'{flops["graph_profiler_flops_per_step"] / 1e9:.2f} G')
  if 'xla_hlo_flops_per_step' in flops:
    hlo = flops['xla_hlo_flops_per_step']
    lines.append('  XLA optimized HLO (convolutions + dots as scheduled): '
                 f'{hlo["total"] / 1e9:.2f} G in {hlo.get("convolutions", 0)} '
                 f'convolutions and {hlo.get("dots", 0)} dots; library '
                 f'calls: {hlo["library_calls"] or "none"}')
  for name, r in results['ratios'].items():
    spread = ', '.join(f'{x:.2f}' for x in r['per_repeat'])
    lines.append(f'{name}: {r["value"]:.2f}  (ratio of medians '
                 f'{r["of_medians"]:.2f}; per repeat: {spread})')
  lines.append('load average before/after: ' + ' / '.join(
      ' '.join(f'{x:.1f}' for x in results['load_average'][k])
      for k in ('before', 'after')))
  lines.append('"of fp32/bf16 mm": median GFLOP/s over the median matmul '
               'rate; "best/best": best repeat over the best matmul repeat '
               'of the same precision.')
  lines.append(results['note'])
  if 'profile' in results:
    p = results['profile']
    lines.append(f'Profile of {p["candidate"]} ({p["steps"]} steps, '
                 f'{p["wall_ms_per_step"]:.0f} ms/step wall, '
                 f'{p["op_ms_per_step"]:.0f} ms/step in ops over all '
                 f'threads; trace in {p["logdir"]}):')
    for row in p['top_op_types']:
      lines.append(f'  {row["op"]:<50} {row["ms_per_step"]:8.1f} ms '
                   f'{100 * row["share"]:5.1f}%')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  settings = {'warmup_steps': _WARMUP_STEPS.value, 'steps': _STEPS.value,
              'repeats': _REPEATS.value, 'matmul_size': _MATMUL_SIZE.value}
  if _SMOKE_FLAG.value:
    settings.update(_SMOKE)
  if _DATA_DIR.value and not os.path.isdir(_DATA_DIR.value):
    sys.exit(f'Error: --data_dir {_DATA_DIR.value!r} is not a directory.')
  names = [n for n in CANDIDATES if n in _CANDIDATES.value]
  try:
    results = run_benchmark(
        names, _BATCH_SIZE.value, _DATA_DIR.value, seed=_SEED.value,
        profile_name=_PROFILE.value, profile_steps=_PROFILE_STEPS.value,
        workdir=_WORKDIR.value, steps_per_call=_STEPS_PER_CALL.value,
        **settings)
  except data.DataError as e:  # A missing or malformed MNIST file.
    sys.exit(f'Error: {e}')
  output = _OUTPUT.value or os.path.join(_WORKDIR.value, 'benchmark.json')
  if os.path.dirname(output):
    tf.io.gfile.makedirs(os.path.dirname(output))
  with open(output, 'w') as f:
    json.dump(results, f, indent=2)
  print(format_table(results))
  print(f'Results: {output}')


if __name__ == '__main__':
  app.run(main)
