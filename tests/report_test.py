"""Results as data: the docs' tables are what experiments/report.py prints
from the records in docs/results/, and the records are what their runs and
commands say."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

import conftest
from elbo import results

RECORDS = os.path.join(conftest.REPO_ROOT, 'docs', 'results')
# The runs of the blog-default record, as the sweep binary wrote them
# (outside the repository; present on the machine that trained them).
SHARED_SWEEP = os.path.join(os.path.dirname(conftest.REPO_ROOT), 'shared',
                            'results', 'blog-default')
DOCS_WITH_TABLES = {'README.md': {'summary'},
                    'docs/results.md': {*results.TABLES, 'runs',
                                        'commands'},
                    'docs/performance.md': {'benchmarks'}}


def _read(path: str) -> str:
  with open(os.path.join(conftest.REPO_ROOT, path), encoding='utf-8') as f:
    return f.read()


def _render():
  return results.render(
      results.load_records(RECORDS),
      results.load_benchmarks(os.path.join(RECORDS, 'benchmarks')))


@pytest.fixture(scope='module')
def blocks():
  return _render()


@pytest.mark.parametrize('path', sorted(DOCS_WITH_TABLES))
def test_the_docs_tables_are_what_the_report_prints(path, blocks):
  text = _read(path)
  assert {m.group('name') for m in results._BLOCK.finditer(text)} == (
      DOCS_WITH_TABLES[path])
  assert results.stale_blocks(text, blocks) == [], (
      f'Run: python experiments/report.py --update={path}')


def test_a_figure_edited_by_hand_is_caught(blocks):
  text = _read('docs/results.md')
  figure = blocks['blog'].split('|')[-7].strip()  # The last row's -ELBO.
  start = text.index('<!-- report:blog -->')
  at = text.index(figure, start)
  edited = text[:at] + figure.replace('.', '.9', 1) + text[at + len(figure):]
  assert results.stale_blocks(edited, blocks) == ['blog']


def test_report_binary_checks_and_updates(tmp_path):
  page = tmp_path / 'page.md'
  page.write_text('Intro.\n<!-- report:summary -->\nold\n<!-- /report -->\n'
                  'End.\n')
  argv, env = conftest.binary_command(f'--records={RECORDS}',
                                      f'--check={page}', binary='report')
  checked = subprocess.run(argv, env=env, capture_output=True, text=True,
                           timeout=300)
  assert checked.returncode == 1
  assert f'{page}: summary' in checked.stderr
  argv, env = conftest.binary_command(f'--records={RECORDS}',
                                      f'--update={page}', binary='report')
  subprocess.run(argv, env=env, check=True, timeout=300)
  blocks = _render()
  assert page.read_text() == ('Intro.\n<!-- report:summary -->\n' +
                              blocks['summary'] + '<!-- /report -->\nEnd.\n')


def _record(*negative_elbos, evaluations=()):
  runs = [{'seed': seed, 'git_commit': 'abcdef0123', 'git_dirty': False,
           'wall_time': 60. * (seed + 1),
           'test': {'neg_elbo': value, 'neg_reconstruction': value - 10,
                    'kl': 10.},
           'evaluations': list(evaluations)}
          for seed, value in enumerate(negative_elbos)]
  return {'name': 'r', 'title': 'a row', 'tables': ['blog'], 'order': 0,
          'command': 'c', 'source': 'workdir', 'rerunnable': True,
          'note': None, 'runs': runs}


def test_several_seeds_give_mean_sd_and_n():
  # 99, 100, 104: mean 101, sample sd sqrt((4 + 1 + 9) / 2) = 2.65.
  row = results.table([_record(99., 100., 104.)], 'blog').splitlines()[-1]
  assert row == ('| a row | 3 | 101.00 ± 2.65 | 91.00 ± 2.65 | '
                 '10.00 ± 0.00 |  | 2 min | abcdef0 |')


def test_one_run_shows_its_evaluations_with_standard_errors():
  evaluation = {'num_samples': 5000, 'num_examples': 10000, 'neg_elbo': 96.7,
                'neg_elbo_se': 0.3, 'nll': 92.512, 'nll_se': 0.26}
  record = _record(96.64, evaluations=[evaluation])
  row = results.table([record], 'blog').splitlines()[-1]
  assert ('-log p(x) 92.51 ± 0.26, -ELBO 96.70 ± 0.30 (k = 5000, all '
          '10,000)') in row
  assert results.summary_table([{**record, 'tables': ['summary']}]).endswith(
      '| a row | 1 | 96.64 | 92.51 ± 0.26 (k = 5000, all 10,000) | '
      'abcdef0 |\n')


def test_a_run_in_progress_shows_its_evaluation_and_no_final_terms():
  evaluation = {'num_samples': 5000, 'num_examples': 10000, 'neg_elbo': 91.1,
                'neg_elbo_se': 0.25, 'nll': 86.97, 'nll_se': 0.23}
  record = _record(90., evaluations=[evaluation])
  record['runs'][0]['test'] = None  # Not finished: no final evaluation.
  row = results.table([record], 'blog').splitlines()[-1]
  assert row == ('| a row | 0 |  |  |  | -log p(x) 86.97 ± 0.23, -ELBO 91.10 '
                 '± 0.25 (k = 5000, all 10,000) | 1 min | abcdef0 |')


def test_benchmark_outputs_become_tables():
  output = {'command': 'python experiments/benchmark.py --smoke',
            'machine': {'cpu': 'CPU X'}, 'settings': {'batch_size': 20},
            'candidates': {'ours': {'ms_per_step': 4.0,
                                    'images_per_second': 5000.,
                                    'fraction_of_matmul': 0.125}},
            'ratios': {'ours / fit': {'value': 1.014}}}
  assert results.benchmarks_table([output]) == (
      '`python experiments/benchmark.py --smoke` (CPU X, batch 20):\n\n'
      '| candidate | ms/step | images/s | of matmul |\n'
      '| --- | ---: | ---: | ---: |\n'
      '| `ours` | 4.00 | 5000 | 0.12 |\n'
      '| ratio ours / fit | | 1.01 | |\n')
  assert results.benchmarks_table([]) == 'No benchmark records yet.\n'


def _write_run(workdir, seed, neg_elbo, config):
  os.makedirs(workdir)
  entry = {'config': {**config, 'seed': seed}, 'git_commit': 'c0ffee',
           'git_dirty': False, 'cpu': 'CPU', 'cpu_count': 2,
           'cpu_features': ['avx2'], 'numerics_env': {}, 'python': '3.11',
           'total_wall_time': 100., 'last_step': 30,
           'test': {'elbo': -neg_elbo, 'reconstruction': 10. - neg_elbo,
                    'kl': 10.}}
  with open(os.path.join(workdir, 'run_history.json'), 'w') as f:
    json.dump([entry], f)
  evaluation = {'num_samples': 100, 'num_examples': 500, 'step': 30,
                'neg_elbo': neg_elbo, 'nll': neg_elbo - 4,
                'elbo': {'mean': -neg_elbo, 'stderr': 0.5},
                'log_likelihood': {'mean': 4 - neg_elbo, 'stderr': 0.4}}
  with open(os.path.join(workdir, 'evaluation_k100_n500.json'), 'w') as f:
    json.dump(evaluation, f)


def test_record_from_a_sweep_and_from_one_workdir(tmp_path):
  from elbo import config as config_lib  # pylint: disable=g-import-not-at-top
  config = dataclasses.asdict(config_lib.Config(epochs=2))
  for seed, value in ((0, 120.), (1, 122.)):
    _write_run(str(tmp_path / 'sweep' / f'seed_{seed}'), seed, value, config)
  record = results.record_from_workdir(str(tmp_path / 'sweep'))
  assert record['name'] == 'sweep' and record['source'] == 'workdir'
  assert record['command'] == ('python experiments/sweep.py --workdir=W '
                               '--seeds=0,1 --epochs=2')
  assert [run['test']['neg_elbo'] for run in record['runs']] == [120., 122.]
  assert record['runs'][1]['test']['neg_reconstruction'] == 112.
  assert record['runs'][0]['evaluations'][0]['nll_se'] == 0.4
  single = results.record_from_workdir(str(tmp_path / 'sweep' / 'seed_1'))
  assert single['command'] == ('python experiments/train.py --workdir=W '
                               '--epochs=2 --seed=1')
  with pytest.raises(FileNotFoundError):
    results.record_from_workdir(str(tmp_path))


_CONFIG_FROM_FLAGS = '''
import dataclasses, json, sys
from absl import flags
from elbo import config as config_lib, flag_utils
flag_utils.define_dataclass_flags(config_lib.Config, config_lib.CHOICES)
flag_utils.define_preset_flag(config_lib.PRESETS)
flags.FLAGS(['config_from_flags', *sys.argv[1:]])
config = flag_utils.dataclass_from_flags(config_lib.Config, config_lib.PRESETS)
print(json.dumps(dataclasses.asdict(config)))
'''


def _config_from_flags(flag_args, data_dir):
  """The config the training binaries build from `flag_args`, parsed by
  the same flag definitions, with --data_dir replaced by `data_dir` (the
  config checks that it exists)."""
  args = [arg for arg in flag_args if not arg.startswith('--data_dir=')]
  env = dict(os.environ, PYTHONPATH=conftest.REPO_ROOT,
             TF_CPP_MIN_LOG_LEVEL='2')
  output = subprocess.run(
      [sys.executable, '-c', _CONFIG_FROM_FLAGS, *args,
       f'--data_dir={data_dir}'], env=env, capture_output=True, text=True,
      check=True, timeout=300).stdout
  return json.loads(output.splitlines()[-1])


def test_blog_default_runs_are_what_their_command_trains(tmp_path):
  """Each run's saved config is the one its command builds for its seed,
  with --preset=blog or without. (Re-running them is 15 epochs of the
  convolutional model per seed, too long for a test.)"""
  with open(os.path.join(RECORDS, 'blog-default.json')) as f:
    record = json.load(f)
  program, *flag_args = record['command'].split()[1:]
  assert program == 'experiments/sweep.py'
  seeds = [arg for arg in flag_args if arg.startswith('--seeds=')]
  assert seeds == ['--seeds=' + ','.join(str(run['seed'])
                                         for run in record['runs'])]
  common = [arg for arg in flag_args
            if not arg.startswith(('--workdir=', '--seeds='))]
  assert common == ['--data_dir=../shared/datasets']
  for run in record['runs']:
    saved = dict(run['config'], data_dir=str(tmp_path))
    flags_of_run = [*common, f'--seed={run["seed"]}']
    assert _config_from_flags(flags_of_run, tmp_path) == saved
    assert _config_from_flags(['--preset=blog', *flags_of_run],
                              tmp_path) == saved
    assert run['config']['data_dir'] == '../shared/datasets'
    assert run['git_commit'] and run['git_dirty'] is False


@pytest.mark.skipif(not os.path.isdir(SHARED_SWEEP),
                    reason='the sweep directory is not on this machine')
def test_blog_default_record_is_what_the_report_reads_from_the_runs(
    tmp_path):
  copy = shutil.copytree(SHARED_SWEEP, tmp_path / 'blog-default')
  with open(os.path.join(RECORDS, 'blog-default.json')) as f:
    committed = json.load(f)
  fresh = results.record_from_workdir(
      str(copy), title=committed['title'], tables=committed['tables'],
      order=committed['order'], note=committed['note'])
  assert fresh == committed


def test_transcribed_records_say_they_cannot_be_rerun():
  for record in results.load_records(RECORDS):
    assert record['source'] in ('workdir', 'transcribed')
    if record['source'] == 'transcribed':
      assert record['rerunnable'] is False
      assert 'cannot be re-run' in record['note']
