r"""Times the training step of any model and objective, side by side with
the blog's `model.fit` and with other frameworks.

  python experiments/benchmark.py --workdir=/tmp/elbo/benchmark
  python experiments/benchmark.py --model=iwae_mlp --batch_size=20 \
      --steps_per_call=100 --candidates=ours,jax,torch \
      --peers_python=PYTHON --peers_script=SCRIPT --output=F

Every flag of `experiments/train.py` (the fields of `elbo.config.Config`,
and `--preset`) says what is trained, as in a training run; `--data_dir`
unset means random binary images as many as MNIST's (the step costs the
same). The candidates (`--candidates`, of `elbo.benchmark.CANDIDATES`):
`ours` (the step and loop a training run builds), `ours_host_data`,
`ours_xla`, `ours_bf16` and `blog_fit` (the last two for the blog's model),
and the peers `jax` and `torch` (`--model=iwae_mlp --batch_size=20`): each
repeat runs `<--peers_python> <--peers_script> NAME --k K --steps N --spc S`
and reads `ms_per_step` from the last JSON line it prints (K: num_samples
for the iwae objectives, else 1; S: --steps_per_call).

After `--warmup_steps` steps and one untimed repeat each (a peer warms up
in its own process), every candidate runs `--steps` steps per repeat,
round-robin across `--repeats` repeats (the order rotates each repeat), so
that background load hits all alike; a time is the median over repeats, a
ratio the median of its per-repeat values. Results go to
`--output` (default `<workdir>/benchmark.json`) and a table on stdout.
`--smoke` is a check that everything runs, not a measurement.
"""

import json
import os
import sys

from absl import app
from absl import flags

from elbo import benchmark
from elbo import config as config_lib
from elbo import data
from elbo import flag_utils

_OURS = [n for n in benchmark.CANDIDATES if n not in benchmark.PEERS]

_WORKDIR = flags.DEFINE_string(
    'workdir', '/tmp/elbo/benchmark',
    'Where benchmark.json (unless --output says otherwise) and the profile '
    'go.')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'Path of the JSON results; default <workdir>/'
    'benchmark.json.')
_CANDIDATES = flags.DEFINE_list(
    'candidates', None,
    'Which candidates to time, of: ' + ', '.join(benchmark.CANDIDATES) +
    ' (ours_bf16 and blog_fit: --model=blog; jax and torch: '
    '--model=iwae_mlp --batch_size=20, --peers_python and --peers_script); '
    'default: all that apply.')
_WARMUP_STEPS = flags.DEFINE_integer(
    'warmup_steps', 5, 'Untimed steps per candidate first (tracing, XLA '
    'compilation, oneDNN primitive caches).', lower_bound=1)
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per repeat.',
                              lower_bound=1)
_PEER_STEPS = flags.DEFINE_integer(
    'peer_steps', None, 'Timed steps per repeat of a peer (rounded up to '
    'whole --steps_per_call); default --steps.', lower_bound=1)
_REPEATS = flags.DEFINE_integer(
    'repeats', 10, 'Round-robin repeats; the median is reported.',
    lower_bound=1)
_MATMUL_SIZE = flags.DEFINE_integer(
    'matmul_size', 4096, 'n of the n x n x n reference matmuls (5 of them '
    'per repeat).', lower_bound=16)
_SMOKE = flags.DEFINE_bool(
    'smoke', False, 'A quick check that everything runs (overrides: ' +
    ', '.join(f'--{k}={v}' for k, v in benchmark.SMOKE.items()) + ').')
_PROFILE = flags.DEFINE_enum(
    'profile', None, _OURS, 'A candidate to trace with the TensorFlow '
    'profiler after the timing (into <workdir>/profile).')
_PROFILE_STEPS = flags.DEFINE_integer('profile_steps', 5,
                                      'Steps traced by --profile.',
                                      lower_bound=1)
_PEERS_PYTHON = flags.DEFINE_string(
    'peers_python', None, 'A Python interpreter with the peers\' packages '
    '(jax, optax; torch); required by the jax and torch candidates.')
_PEERS_SCRIPT = flags.DEFINE_string(
    'peers_script', None, 'The script that times a peer: called as SCRIPT '
    'NAME --k K --steps N --spc S, it prints a JSON line with ms_per_step '
    'last.')
flag_utils.define_dataclass_flags(config_lib.Config, config_lib.CHOICES)
flag_utils.define_preset_flag(config_lib.PRESETS)
flags.adopt_module_key_flags(flag_utils)  # --help lists them.
flags.register_validator(
    'candidates',
    lambda names: names is None or (
        bool(names) and set(names) <= set(benchmark.CANDIDATES)),
    message='--candidates must be a non-empty comma list of: ' +
    ', '.join(benchmark.CANDIDATES) + '.')


def _settings() -> benchmark.Settings:
  values = {'warmup_steps': _WARMUP_STEPS.value, 'steps': _STEPS.value,
            'repeats': _REPEATS.value, 'matmul_size': _MATMUL_SIZE.value,
            'peer_steps': _PEER_STEPS.value}
  if _SMOKE.value:
    values.update(benchmark.SMOKE, peer_steps=None)
  return benchmark.Settings(
      peers_python=_PEERS_PYTHON.value, peers_script=_PEERS_SCRIPT.value,
      profile=_PROFILE.value, profile_steps=_PROFILE_STEPS.value,
      workdir=_WORKDIR.value, **values)


def main(argv):
  config = flag_utils.config_from_flags_or_exit(config_lib.Config, argv,
                                                config_lib.PRESETS)
  settings = _settings()
  names = _CANDIDATES.value or benchmark.default_candidates(config, settings)
  try:
    results = benchmark.run_benchmark(config, names, settings)
  except (benchmark.BenchmarkError, data.DataError) as e:
    sys.exit(f'Error: {e}')
  output = _OUTPUT.value or os.path.join(_WORKDIR.value, 'benchmark.json')
  if os.path.dirname(output):
    os.makedirs(os.path.dirname(output), exist_ok=True)
  with open(output, 'w') as f:
    json.dump(results, f, indent=2)
  print(benchmark.format_table(results))
  print(f'Results: {output}')


if __name__ == '__main__':
  app.run(main)
