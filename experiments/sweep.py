r"""Trains one run per seed and tabulates their final test metrics.

  python experiments/sweep.py --workdir=/tmp/elbo/seeds --seeds=0,1,2 \
      --data_dir=../shared/datasets --epochs=5

trains /tmp/elbo/seeds/seed_0, seed_1, seed_2 one after the other in this
process, each with every other flag as experiments/train.py takes it, and
writes `summary.json` and `summary.md` into --workdir after each run: per run
the final test -ELBO, -reconstruction and KL (nats) and the commit, then
their mean and sample standard deviation (ddof=1) over the runs.

Run the same command again to resume: unfinished runs continue from their
checkpoints; finished runs with the same flags are not trained again (their
recorded test metrics are read from `run_history.json`).
"""

import dataclasses
import json
import os
import statistics
import sys
from typing import Any, Dict, List

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from elbo import config as config_lib
from elbo import flag_utils
from elbo import run_record
from elbo import train

# As experiments/train.py's.
EXIT_INTERRUPTED = 75
# Summary columns, in nats: (key, heading, test metric, sign).
_COLUMNS = (('neg_elbo', '-ELBO', 'elbo', -1),
            ('neg_reconstruction', '-reconstruction', 'reconstruction', -1),
            ('kl', 'KL', 'kl', 1))


def _all_integers(values: List[str]) -> bool:
  try:
    return bool(values) and len({int(v) for v in values}) == len(values)
  except ValueError:
    return False


_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory of the sweep: one workdir per seed in '
    'seed_<seed>/, and summary.json, summary.md.', required=True)
_SEEDS = flags.DEFINE_list('seeds', None, 'Distinct integer seeds, one run '
                           'each, e.g. 0,1,2.', required=True)
flag_utils.define_dataclass_flags(config_lib.Config, config_lib.CHOICES)
flag_utils.define_preset_flag(config_lib.PRESETS)
flags.adopt_module_key_flags(flag_utils)  # --help lists them.
flags.register_validator('seeds', _all_integers,
                         message='--seeds must be distinct integers.')
flags.register_validator(
    'workdir',
    lambda path: not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path),
    message='--workdir exists and is not a directory.')


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
  """Mean and sample sd (None for a single run) of each column."""
  summary = {'runs': runs, 'mean': {}, 'sd': {}}
  for key, *_ in _COLUMNS:
    values = [run[key] for run in runs]
    summary['mean'][key] = statistics.mean(values)
    summary['sd'][key] = (statistics.stdev(values) if len(values) > 1
                          else None)
  return summary


def markdown(summary: Dict[str, Any]) -> str:
  headings = [heading for _, heading, *_ in _COLUMNS]
  rows = ['| seed | ' + ' | '.join(headings) + ' | commit |',
          '| ---: | ' + ' | '.join('---:' for _ in headings) + ' | --- |']
  for run in summary['runs']:
    commit = run['git_commit'] or 'unknown'
    if run['git_dirty']:
      commit += ' (dirty)'
    rows.append(f'| {run["seed"]} | ' + ' | '.join(
        f'{run[key]:.2f}' for key, *_ in _COLUMNS) + f' | {commit} |')

  def mean_sd(key):
    sd = summary['sd'][key]
    return f'{summary["mean"][key]:.2f}' + (f' ± {sd:.2f}' if sd is not None
                                            else '')

  rows.append(f'| mean ± sd ({len(summary["runs"])} runs) | ' +
              ' | '.join(mean_sd(key) for key, *_ in _COLUMNS) + ' | |')
  return '\n'.join(rows) + '\n'


def _write(workdir: str, runs: List[Dict[str, Any]]) -> None:
  summary = summarize(runs)
  run_record.write_file(os.path.join(workdir, 'summary.json'),
                        json.dumps(summary, indent=2))
  run_record.write_file(os.path.join(workdir, 'summary.md'), markdown(summary))


def main(argv):
  config = flag_utils.config_from_flags_or_exit(config_lib.Config, argv,
                                                config_lib.PRESETS)
  if flags.FLAGS['seed'].present:
    sys.exit('Error: --seed and --seeds: the sweep sets the seed of each '
             'run; pass --seeds only.')
  commit, dirty = run_record.git_state()  # Of the code this process runs.
  runs = []
  for seed in map(int, _SEEDS.value):
    run_config = dataclasses.replace(config, seed=seed)
    run_dir = os.path.join(_WORKDIR.value, f'seed_{seed}')
    test = run_record.finished_test_metrics(run_dir, run_config)
    run_commit, run_dirty = commit, dirty
    if test is None:
      logging.info('Seed %d: training in %s.', seed, run_dir)
      try:
        test = train.train_and_evaluate(run_config, run_dir)['test']
      except train.TrainingInterrupted as e:
        logging.warning('%s', e)
        sys.exit(EXIT_INTERRUPTED)
      except train.USER_ERRORS as e:
        sys.exit(f'Error: seed {seed}: {e}')
    else:
      logging.info('Seed %d: finished in %s; not trained again.', seed,
                   run_dir)
      last = run_record.read(run_dir)[-1]
      run_commit, run_dirty = last['git_commit'], last['git_dirty']
    if not test:  # A non-chief worker: the chief writes the summary.
      continue
    runs.append({'seed': seed, 'workdir': run_dir,
                 **{key: sign * test[name] for key, _, name, sign in _COLUMNS},
                 'git_commit': run_commit, 'git_dirty': run_dirty})
    _write(_WORKDIR.value, runs)
  if runs:
    logging.info('Summary in %s:\n%s', _WORKDIR.value,
                 markdown(summarize(runs)))


if __name__ == '__main__':
  app.run(main)
