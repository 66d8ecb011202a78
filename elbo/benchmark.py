"""Times training steps side by side: ours, the blog's `fit`, and peers.

A *candidate* trains the configured model; `run_benchmark` warms each one
up (`warmup_steps`, then one untimed repeat, so that every call length the
timing uses is compiled), then times `steps` steps of each, round-robin over `repeats` repeats
(the order rotates each repeat), so that other load on the machine hits all
of them alike. A candidate's time is the median over repeats; a ratio
between two candidates is the median of its per-repeat values, each pair
having run within seconds of each other.

Candidates (`CANDIDATES`):

- `ours`: the training step and loop exactly as a training run builds them
  (`elbo.factory`, `elbo.step`, both guards, `--jit_compile` resolved as
  `train.py` does), batches made in the graph from the resident images,
  `steps_per_call` steps per call;
- `ours_host_data`: the same step, one step per call, its batches from a
  `tf.data` iterator on the host;
- `ours_xla`: `ours` with `jit_compile='true'`;
- `ours_bf16`: `ours` with `precision='mixed_bfloat16'` (the blog's model);
- `blog_fit`: the blog's own way (`elbo.blog_tf_keras`), `model.fit` on a
  `tf.data` dataset (the blog's model);
- `jax`, `torch`: the IWAE paper's MLP step in other frameworks, timed by a
  separate script in a separate process (`PEERS`: its protocol).

Two references give the machine's rate: a large float32 and bfloat16
`tf.matmul`. FLOPs per step are counted by formula (`elbo.flops`) and
cross-checked against TensorFlow's graph profiler and XLA's HLO.
"""

import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

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
from elbo import step as step_lib

__all__ = ['BenchmarkError', 'CANDIDATES', 'Candidate', 'PEERS',
           'PEER_BATCH_SIZE', 'SMOKE', 'Settings', 'check_candidates',
           'default_candidates', 'format_table', 'machine_info', 'peer_num_samples',
           'run_benchmark']

CANDIDATES = {
    'ours': 'the training step and loop as train.py builds them',
    'ours_host_data': 'our step, one step per call, batches from a host '
                      'tf.data iterator',
    'ours_xla': 'our training loop with jit_compile=true (XLA)',
    'ours_bf16': 'our training loop, mixed_bfloat16',
    'blog_fit': 'the blog: tf_keras + tfp.layers, model.fit, float32, no XLA',
    'jax': 'JAX: jit of steps_per_call steps in one lax.fori_loop (peer '
           'script, own process)',
    'torch': 'PyTorch eager (peer script, own process)',
}
# The peers are run as `<python> <script> NAME --k K --steps N --spc S`;
# the script times N steps of the IWAE paper's MLP at batch 20 (k latent
# samples, an IWAE-k bound; S steps per compiled call where that applies)
# after its own warm-up, and prints a JSON line with `ms_per_step` last.
PEERS = ('jax', 'torch')
PEER_BATCH_SIZE = 20
# The packages whose versions a peer's record holds.
_PEER_PACKAGES = {'jax': ('jax', 'jaxlib', 'optax'), 'torch': ('torch',)}
_BLOG_ONLY = ('ours_bf16', 'blog_fit')
# Which matmul reference each candidate's compute runs at.
_PRECISION = dict({name: 'fp32' for name in CANDIDATES}, ours_bf16='bf16')
_REFERENCES = ('matmul_fp32', 'matmul_bf16')
_MATMULS_PER_REPEAT = 5
# A training candidate's time per repeat: its best of this many runs of the
# steps, as the peers' script reports its own (so that the ratio compares
# like with like on a machine whose speed moves).
_RUNS_PER_REPEAT = 3
# (name, numerator, denominator): speed ratios, > 1 when the numerator is
# faster.
_RATIOS = (('xla_over_no_xla', 'ours_xla', 'ours'),
           ('bf16_over_fp32', 'ours_bf16', 'ours'),
           ('ours_over_fit', 'ours', 'blog_fit'),
           ('bf16_over_fit', 'ours_bf16', 'blog_fit'),
           ('resident_over_host_data', 'ours', 'ours_host_data'),
           ('ours_over_jax', 'ours', 'jax'),
           ('ours_over_torch', 'ours', 'torch'))
# A random training set as large as MNIST's, so that drawing an epoch's
# permutation costs what it does in a real run.
_FAKE_IMAGES = 60_000
_NUM_DISTINCT_BATCHES = 4  # For the tf.data candidates.
SMOKE = {'warmup_steps': 1, 'steps': 2, 'repeats': 1, 'matmul_size': 256}
_NOTE = ('Absolute rates depend on what else runs on the machine (compare '
         'load_average); the candidates were interleaved round-robin, so '
         'their ratios are the comparable numbers. A peer\'s time per repeat '
         'is its script\'s own figure (after its own warm-up; the provided '
         'script reports its best of 3 runs); an in-process candidate\'s is '
         f'its best of {_RUNS_PER_REPEAT} runs of the steps.')


class BenchmarkError(ValueError):
  """Candidates that cannot run with these flags, or a peer that failed."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """How to time; the model and step are the `Config`'s."""
  warmup_steps: int = 5
  steps: int = 5
  repeats: int = 10
  matmul_size: int = 4096
  peer_steps: Optional[int] = None  # Default: steps.
  peers_python: Optional[str] = None
  peers_script: Optional[str] = None
  profile: Optional[str] = None
  profile_steps: int = 5
  workdir: str = '/tmp/elbo/benchmark'


class Candidate:
  """`run(n)` trains n steps and returns the seconds per step."""

  def __init__(self, name: str, run: Callable[[int], float],
               step_fn=None, model=None):
    self.name = name
    self.run = run
    self.step_fn = step_fn  # Ours: the one-step tf.function, for FLOPs.
    self.model = model
    self.report: Optional[Dict] = None  # A peer's last JSON line.


def peer_num_samples(config: config_lib.Config) -> int:
  """The k a peer times: the config's for an importance-weighted bound."""
  return config.num_samples if config.objective in ('iwae',
                                                    'iwae_dreg') else 1


def default_candidates(config: config_lib.Config,
                       settings: Settings) -> List[str]:
  """Every candidate that can time `config`: the peers only when
  `settings` says how to run them."""
  names = []
  for name in CANDIDATES:
    try:
      check_candidates(config, [name], settings)
    except BenchmarkError:
      continue
    names.append(name)
  return names


def check_candidates(config: config_lib.Config, names: Sequence[str],
                     settings: Settings) -> None:
  """Raises BenchmarkError when a candidate cannot time this config."""
  unknown = sorted(set(names) - set(CANDIDATES))
  if unknown or not names:
    raise BenchmarkError(f'candidates must be a non-empty list of '
                         f'{", ".join(CANDIDATES)}; got {list(names)}.')
  if config.strategy != 'default':
    raise BenchmarkError('the benchmark times one device: use '
                         '--strategy=default.')
  blog_only = [n for n in names if n in _BLOG_ONLY]
  if blog_only and config.model != 'blog':
    raise BenchmarkError(f'{", ".join(blog_only)}: for --model=blog only.')
  peers = [n for n in names if n in PEERS]
  if not peers:
    return
  if config.model != 'iwae_mlp' or config.batch_size != PEER_BATCH_SIZE:
    raise BenchmarkError(f'{", ".join(peers)}: the peers time the '
                         f'iwae_mlp model at batch {PEER_BATCH_SIZE}; use '
                         f'--model=iwae_mlp --batch_size={PEER_BATCH_SIZE}.')
  if not (settings.peers_python and settings.peers_script):
    raise BenchmarkError(f'{", ".join(peers)}: set --peers_python (a Python '
                         'with the peers\' packages) and --peers_script.')
  if not os.path.isfile(settings.peers_script):
    raise BenchmarkError(f'--peers_script {settings.peers_script!r}: not '
                         'a file.')


# ----------------------------------------------------------- candidates ----


def make_images(config: config_lib.Config) -> np.ndarray:
  """uint8 training images: the dataset's from `config.data_dir`, or as
  many random black-and-white ones (the step costs the same)."""
  if config.data_dir:
    return data.load_images(config.dataset, 'train', config.data_dir)
  shape = [_FAKE_IMAGES, *models.IMAGE_SHAPE]
  return np.random.default_rng(config.seed).integers(
      0, 2, size=shape, dtype=np.uint8) * np.uint8(255)


def make_batches(images: np.ndarray, config: config_lib.Config) -> tf.Tensor:
  """The first few binarized training batches, [n, batch, 28, 28, 1]."""
  return tf.stack([data.training_batch(images, config.batch_size, config.seed,
                                       step)
                   for step in range(_NUM_DISTINCT_BATCHES)])


def _dataset(batches: tf.Tensor) -> tf.data.Dataset:
  """The same batches, cycled, prefetched: a host-side input pipeline."""
  return (tf.data.Dataset.from_tensor_slices(batches).repeat()
          .prefetch(tf.data.AUTOTUNE))


def candidate_config(name: str,
                     config: config_lib.Config) -> config_lib.Config:
  """The config an `ours*` candidate trains with."""
  if name == 'ours_xla':
    return dataclasses.replace(config, jit_compile='true')
  if name == 'ours_bf16':
    return dataclasses.replace(config, precision='mixed_bfloat16')
  return config


def _trainable(config: config_lib.Config, num_images: int):
  """The trainable and XLA choice, built as `elbo.train` builds them."""
  trainable = factory.build_trainable(
      config, data.steps_per_epoch(num_images, config.batch_size))
  return trainable, step_lib.resolve_jit_compile(config.jit_compile,
                                                 trainable.model)


def make_ours(name: str, config: config_lib.Config,
              resident_images: tf.Variable,
              batches: tf.Tensor) -> Candidate:
  """An `ours*` candidate; `resident_images` as `data.resident_images`."""
  config = candidate_config(name, config)
  trainable, jit_compile = _trainable(config, resident_images.shape[0])
  model = trainable.model
  step_fn = trainable.train_step(config, jit_compile)
  steps_per_call = config.steps_per_call
  if name == 'ours_host_data':
    iterator = iter(_dataset(batches))
    run_steps = lambda first, count: sum(
        step_fn(next(iterator), tf.constant(s, tf.int64))
        for s in range(first, first + count))
    steps_per_call = 1
  else:
    train_steps = factory.train_loop(config, step_fn, jit_compile,
                                     resident_images)
    run_steps = lambda first, count: train_steps(
        tf.constant(first, tf.int64), tf.constant(count, tf.int64))
  step = 0

  def run(num_steps: int) -> float:
    nonlocal step
    start = time.perf_counter()
    end = step + num_steps
    while step < end:
      count = min(steps_per_call, end - step)
      metrics = run_steps(step, count)
      step += count
    metrics.numpy()  # Waits for the last step.
    return (time.perf_counter() - start) / num_steps

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
    return (times.ends[-1] - times.ends[0]) / num_steps

  return Candidate('blog_fit', run, model=vae)


def make_matmul(name: str, size: int, seed: int) -> Candidate:
  """A reference: `run(n)` times n square matmuls of `size`."""
  dtype = tf.bfloat16 if name == 'matmul_bf16' else tf.float32
  a = tf.cast(tf.random.stateless_normal([size, size], [seed, 1]), dtype)
  b = tf.cast(tf.random.stateless_normal([size, size], [seed, 2]), dtype)
  matmul = tf.function(tf.matmul)

  def run(num_steps: int) -> float:
    start = time.perf_counter()
    for _ in range(num_steps):
      product = matmul(a, b)
    product.numpy()
    return (time.perf_counter() - start) / num_steps

  return Candidate(name, run)


def _last_json_line(text: str) -> Optional[Dict]:
  for line in reversed(text.strip().splitlines()):
    try:
      value = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(value, dict) and 'ms_per_step' in value:
      return value
  return None


def make_peer(name: str, config: config_lib.Config,
              settings: Settings) -> Candidate:
  """A peer: each `run(n)` is one process of the peers' script."""
  k = peer_num_samples(config)
  spc = config.steps_per_call

  def run(num_steps: int) -> float:
    steps = -(-num_steps // spc) * spc  # Whole calls of the jitted loop.
    argv = [settings.peers_python, settings.peers_script, name, '--k',
            str(k), '--steps', str(steps), '--spc', str(spc)]
    result = subprocess.run(argv, capture_output=True, text=True,
                            check=False)
    report = _last_json_line(result.stdout)
    if result.returncode or report is None:
      last = (result.stderr.strip().splitlines() or ['no output'])[-1]
      raise BenchmarkError(f'peer {name} failed (exit status '
                           f'{result.returncode}): {last}')
    candidate.report = report
    return report['ms_per_step'] / 1e3

  candidate = Candidate(name, run)
  return candidate


def _peer_versions(python: str, name: str) -> Dict[str, Optional[str]]:
  """The versions of the peer's packages in `python`, None if missing."""
  code = ('import importlib.metadata as m, json, sys\n'
          'def v(p):\n'
          '  try: return m.version(p)\n'
          '  except m.PackageNotFoundError: return None\n'
          'print(json.dumps({p: v(p) for p in sys.argv[1:]}))')
  result = subprocess.run([python, '-c', code, *_PEER_PACKAGES[name]],
                          capture_output=True, text=True, check=False)
  try:
    return json.loads(result.stdout)
  except json.JSONDecodeError:
    return {package: None for package in _PEER_PACKAGES[name]}


def _make(name: str, config: config_lib.Config, settings: Settings,
          resident: tf.Variable, batches: tf.Tensor) -> Candidate:
  if name == 'blog_fit':
    return make_blog_fit(batches, config.seed)
  if name in PEERS:
    return make_peer(name, config, settings)
  return make_ours(name, config, resident, batches)


# -------------------------------------------------------------- profile ----


def profile(candidate: Candidate, logdir: str, steps: int) -> Dict:
  """Traces `steps` steps of `candidate`; where the time goes, by op."""
  tf.io.gfile.makedirs(logdir)
  tf.profiler.experimental.start(logdir)
  try:
    seconds_per_step = candidate.run(steps)
  finally:
    tf.profiler.experimental.stop()
  summary = profiling.summarize_trace(logdir, steps)
  summary.update(candidate=candidate.name, steps=steps,
                 wall_ms_per_step=1e3 * seconds_per_step)
  return summary


# ----------------------------------------------------------- the timing ----


def machine_info() -> Dict:
  """The CPU, devices and versions a benchmark ran on."""
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
      'python': sys.version.split()[0],
      'tensorflow': tf.__version__,
      'tensorflow_probability': tfp.__version__,
      'keras': keras.__version__,
      'elbo': _version('elbo'),
      'XLA_FLAGS': os.environ.get('XLA_FLAGS', ''),
      'TF_ENABLE_ONEDNN_OPTS': os.environ.get('TF_ENABLE_ONEDNN_OPTS', ''),
  }


def _version(package: str) -> Optional[str]:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _rotated(names: List[str], shift: int) -> List[str]:
  shift %= len(names)
  return names[shift:] + names[:shift]


def _time_round_robin(timed: Dict[str, Candidate], order: List[str],
                      settings: Settings) -> Dict[str, List[float]]:
  """Warm-up, then the repeats; seconds per step of each repeat."""
  steps = {name: settings.steps for name in order}
  for name in order:
    if name in PEERS:  # A peer warms up in its own process.
      steps[name] = settings.peer_steps or settings.steps
      continue
    warmup = settings.warmup_steps
    if name in _REFERENCES:
      steps[name] = _MATMULS_PER_REPEAT
      warmup = min(warmup, _MATMULS_PER_REPEAT)
    start = time.perf_counter()
    timed[name].run(warmup)
    if name not in _REFERENCES:
      # Calls as long as the timed ones: XLA compiles once per length.
      timed[name].run(steps[name])
    logging.info('Warm-up of %s: %.1f s', name, time.perf_counter() - start)
  seconds = {name: [] for name in order}
  for repeat in range(settings.repeats):
    for name in _rotated(order, repeat):
      runs = 1 if name in PEERS or name in _REFERENCES else _RUNS_PER_REPEAT
      seconds[name].append(min(timed[name].run(steps[name])
                               for _ in range(runs)))
    logging.info('Repeat %d/%d: %s', repeat + 1, settings.repeats, ', '.join(
        f'{n} {1e3 * seconds[n][-1]:.2f} ms' for n in order))
  return seconds


def _count_flops(config: config_lib.Config, timed: Dict[str, Candidate],
                 batches: tf.Tensor) -> Dict:
  """The formula's count, and the profiler's and XLA's where they apply."""
  model = next((timed[n].model for n in ('ours', 'ours_xla',
                                         'ours_host_data', 'ours_bf16')
                if n in timed), None)
  if model is None:
    model = factory.build_model(config)
  flops = flops_lib.count_training_flops(model, config.batch_size,
                                         config.num_samples)
  example = batches[0]
  if 'ours' in timed:
    flops['graph_profiler_flops_per_step'] = flops_lib.graph_profiler_flops(
        timed['ours'].step_fn, example)
  if 'ours_xla' in timed:
    flops['xla_hlo_flops_per_step'] = flops_lib.hlo_flops(
        flops_lib.xla_hlo_text(timed['ours_xla'].step_fn, example))
  return flops


def _references(seconds: Dict[str, List[float]], size: int) -> Dict:
  references = {}
  for name in _REFERENCES:
    references[name] = {
        'size': size,
        'seconds_per_matmul': seconds[name],
        'gflops_per_second': 2 * size**3 / statistics.median(
            seconds[name]) / 1e9,
        'best_gflops_per_second': 2 * size**3 / min(seconds[name]) / 1e9,
    }
  return references


def _candidate_results(name: str, seconds: List[float], batch_size: int,
                       flops_per_step: float, references: Dict) -> Dict:
  median, best = statistics.median(seconds), min(seconds)
  rate = flops_per_step / median / 1e9
  reference = references['matmul_' + _PRECISION[name]]
  return {
      'description': CANDIDATES[name],
      'seconds_per_step': seconds,
      'ms_per_step': 1e3 * median,
      'images_per_second': batch_size / median,
      'gflops_per_second': rate,
      # The least disturbed repeat, for a machine with other load.
      'best_images_per_second': batch_size / best,
      'best_gflops_per_second': flops_per_step / best / 1e9,
      'fraction_of_matmul': rate / reference['gflops_per_second'],
      'fraction_of_fp32_matmul': rate / references[
          'matmul_fp32']['gflops_per_second'],
      'fraction_of_bf16_matmul': rate / references[
          'matmul_bf16']['gflops_per_second'],
      # Best repeat over best repeat: less sensitive to load that comes
      # and goes (a matmul, one op on all cores, suffers more from it).
      'best_fraction_of_matmul': flops_per_step / best / 1e9 /
                                 reference['best_gflops_per_second'],
  }


def _ratios(seconds: Dict[str, List[float]]) -> Dict:
  ratios = {}
  for ratio, numerator, denominator in _RATIOS:
    if numerator in seconds and denominator in seconds:
      # Paired by repeat: both ran within seconds of each other.
      per_repeat = [d / n for n, d in zip(seconds[numerator],
                                           seconds[denominator])]
      ratios[ratio] = {
          'value': statistics.median(per_repeat),
          'of_medians': (statistics.median(seconds[denominator]) /
                         statistics.median(seconds[numerator])),
          'per_repeat': per_repeat,
          'of': f'steps/s of {numerator} / steps/s of {denominator}, '
                'median over repeats',
      }
  return ratios


def _settings_record(config: config_lib.Config, names: Sequence[str],
                     settings: Settings) -> Dict:
  """What the output says about how it was timed (no local paths)."""
  record = {
      'model': config.model, 'objective': config.objective,
      'num_samples': config.num_samples, 'precision': config.precision,
      'jit_compile': config.jit_compile, 'batch_size': config.batch_size,
      'steps_per_call': config.steps_per_call, 'seed': config.seed,
      'data': config.dataset if config.data_dir else 'random binary',
      'warmup_steps': settings.warmup_steps, 'steps': settings.steps,
      'repeats': settings.repeats, 'matmul_size': settings.matmul_size,
      'matmuls_per_repeat': _MATMULS_PER_REPEAT, 'candidates': list(names),
      'config': dataclasses.asdict(dataclasses.replace(config,
                                                       data_dir=None)),
  }
  peers = [n for n in names if n in PEERS]
  if peers:
    record.update(
        peer_steps=settings.peer_steps or settings.steps,
        peer_num_samples=peer_num_samples(config),
        peers_script=os.path.basename(settings.peers_script),
        peer_versions={n: _peer_versions(settings.peers_python, n)
                       for n in peers})
  return record


def run_benchmark(config: config_lib.Config, names: Sequence[str],
                  settings: Settings) -> Dict:
  """Builds, warms up and times the candidates; returns the results.

  Raises:
    BenchmarkError: `check_candidates`' refusals, or a peer failed.
    data.DataError: a data file is missing or malformed.
  """
  check_candidates(config, names, settings)
  load_before = os.getloadavg()
  images = make_images(config)
  batches = make_batches(images, config)
  resident = data.resident_images(images)
  names = [n for n in CANDIDATES if n in names]
  timed = {name: _make(name, config, settings, resident, batches)
           for name in names}
  for name in _REFERENCES:
    timed[name] = make_matmul(name, settings.matmul_size, config.seed)
  seconds = _time_round_robin(timed, names + list(_REFERENCES), settings)
  # FLOPs after the timing, so that tracing or compiling again does not
  # disturb it.
  flops = _count_flops(config, timed, batches)
  references = _references(seconds, settings.matmul_size)
  results = {name: _candidate_results(
      name, seconds[name], config.batch_size,
      flops['training_flops_per_step'], references) for name in names}
  for name in names:
    if timed[name].report is not None:
      results[name]['peer_report'] = timed[name].report
  output = {
      'note': _NOTE,
      'settings': _settings_record(config, names, settings),
      'machine': machine_info(),
      'load_average': {'before': list(load_before),
                       'after': list(os.getloadavg())},
      'flops': flops,
      'references': references,
      'candidates': results,
      'ratios': _ratios({n: seconds[n] for n in names}),
  }
  if settings.profile:
    candidate = timed.get(settings.profile)
    if candidate is None:
      candidate = _make(settings.profile, config, settings, resident,
                        batches)
      candidate.run(settings.warmup_steps)
    output['profile'] = profile(candidate,
                                os.path.join(settings.workdir, 'profile'),
                                settings.profile_steps)
  return output


# ---------------------------------------------------------------- table ----


def format_table(results: Dict) -> str:
  """The results as plain text: candidates, references, FLOPs, ratios."""
  lines = [f'{"candidate":<14} {"images/s":>9} {"(best)":>8} '
           f'{"ms/step":>9} {"GFLOP/s":>9} {"of fp32 mm":>10} '
           f'{"of bf16 mm":>10} {"best/best":>9}']
  for name, r in results['candidates'].items():
    lines.append(f'{name:<14} {r["images_per_second"]:9.1f} '
                 f'{r["best_images_per_second"]:8.1f} '
                 f'{r["ms_per_step"]:9.2f} {r["gflops_per_second"]:9.1f} '
                 f'{r["fraction_of_fp32_matmul"]:10.3f} '
                 f'{r["fraction_of_bf16_matmul"]:10.3f} '
                 f'{r["best_fraction_of_matmul"]:9.3f}')
  for name, r in results['references'].items():
    lines.append(f'{name:<14} {"":>9} {"":>8} {"":>9} '
                 f'{r["gflops_per_second"]:9.1f}   ({r["size"]}^3 matmul; '
                 f'best repeat {r["best_gflops_per_second"]:.1f})')
  lines += _flops_lines(results['flops'])
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
    lines += _profile_lines(results['profile'])
  return '\n'.join(lines)


def _giga_or_mega(count: float) -> str:
  return f'{count / 1e9:.2f} G' if count >= 1e9 else f'{count / 1e6:.1f} M'


def _flops_lines(flops: Dict) -> List[str]:
  lines = [f'Training FLOPs per step (formula, k = {flops["num_samples"]}): '
           f'{_giga_or_mega(flops["training_flops_per_step"])} '
           f'({_giga_or_mega(flops["training_flops_per_image"])} per image)']
  if 'graph_profiler_flops_per_step' in flops:
    lines.append('  TF graph profiler: ' +
                 _giga_or_mega(flops['graph_profiler_flops_per_step']))
  if 'xla_hlo_flops_per_step' in flops:
    hlo = flops['xla_hlo_flops_per_step']
    lines.append('  XLA optimized HLO (convolutions + dots as scheduled): '
                 f'{_giga_or_mega(hlo["total"])} in '
                 f'{hlo.get("convolutions", 0)} '
                 f'convolutions and {hlo.get("dots", 0)} dots; library '
                 f'calls: {hlo["library_calls"] or "none"}')
  return lines


def _profile_lines(p: Dict) -> List[str]:
  lines = [f'Profile of {p["candidate"]} ({p["steps"]} steps, '
           f'{p["wall_ms_per_step"]:.1f} ms/step wall, '
           f'{p["op_ms_per_step"]:.1f} ms/step in ops over all threads; '
           f'trace in {p["logdir"]}):']
  for row in p['top_op_types']:
    lines.append(f'  {row["op"]:<50} {row["ms_per_step"]:8.2f} ms '
                 f'{100 * row["share"]:5.1f}%')
  return lines
