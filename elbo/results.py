"""Published results as data: run records and the tables made from them.

A *record* (`docs/results/<name>.json`) is one row of a results table and
says where each of its figures comes from:

- `name`, `title`, `tables` (the tables the row appears in) and `order`
  (its place in them);
- `command`: the command that trains the row's runs (`W` stands for the
  workdir), and `evaluate_command` when figures come from
  `experiments/evaluate.py`;
- `source`: `workdir` when the record was written by `experiments/report.py`
  from the runs' own `run_history.json` and evaluation JSON, `transcribed`
  when the figures were copied from an older write-up whose runs are gone;
- `rerunnable` (whether the command reproduces the row's kind of run at the
  current code), `note` (why not, or what to know) and `decimals` (how
  many the figures were given with; default 2);
- `runs`: one entry per run, with `seed`, `git_commit`, `git_dirty`,
  `versions`, `cpu`, `cpu_count`, `cpu_features`, `numerics_env`,
  `wall_time` (seconds, all starts of the run), `config` (when known),
  `test` (`neg_elbo`, `neg_reconstruction`, `kl`: the final test terms in
  nats) and `evaluations` (`num_samples`, `num_examples`, `neg_elbo`,
  `neg_elbo_se`, `nll`, `nll_se`, ...). Unknown values are null.

A row of several runs shows the mean ± sample standard deviation (n - 1)
over them and n; a row of one run shows its figures, and an evaluation's
± is the standard error over the test images.

The tables go into markdown files between markers

  <!-- report:NAME -->
  ...
  <!-- /report -->

which `update_blocks` rewrites and `stale_blocks` checks. The outputs of
`experiments/benchmark.py` kept in `docs/results/benchmarks/` (each with the
`command` that made it added) give the `benchmarks` block.
"""

import json
import os
import re
import statistics
from typing import Any, Dict, List, Mapping, Optional, Sequence

import tensorflow as tf

__all__ = ['TABLES', 'benchmarks_table', 'command_for', 'load_benchmarks',
           'load_records', 'record_from_workdir',
           'render', 'runs_table', 'stale_blocks', 'summary_table', 'table',
           'update_blocks']

# The test terms of a run: (key in a record, heading, run_history's name,
# sign from run_history's value to the record's).
_TERMS = (('neg_elbo', '-ELBO', 'elbo', -1),
          ('neg_reconstruction', '-reconstruction', 'reconstruction', -1),
          ('kl', 'KL', 'kl', 1))
# Table name -> its heading (what the rows have in common).
TABLES = {
    'summary': 'Headline results',
    'blog': 'The blog configuration and its variants, 15 epochs',
    'iwae': 'The IWAE paper\'s model (Burda et al. 2015, Table 1)',
    'long': 'The long run: mixture prior, 150 epochs',
}
_BLOCK = re.compile(r'(<!-- report:(?P<name>[\w-]+) -->\n)(?P<body>.*?)'
                    r'(<!-- /report -->)', re.S)
# Run-history fields copied into a record's run.
_ENVIRONMENT = ('git_commit', 'git_dirty', 'cpu', 'cpu_count', 'cpu_features',
                'numerics_env')
_VERSIONS = ('elbo_version', 'python', 'tensorflow', 'tensorflow_probability',
             'keras')


def load_records(directory: str) -> List[Dict[str, Any]]:
  """The records (`*.json`) in `directory`, sorted by name."""
  records = []
  for path in sorted(tf.io.gfile.glob(os.path.join(directory, '*.json'))):
    records.append(_read_json(path))
  return records


def _read_json(path: str) -> Any:
  with tf.io.gfile.GFile(path) as f:
    return json.loads(f.read())


def _evaluations(workdir: str) -> List[Dict[str, Any]]:
  """The figures of every `evaluation_k*.json` in `workdir`."""
  evaluations = []
  pattern = os.path.join(workdir, 'evaluation_k*.json')
  for path in sorted(tf.io.gfile.glob(pattern)):
    result = _read_json(path)
    evaluations.append({
        'num_samples': result['num_samples'],
        'num_examples': result['num_examples'],
        'step': result.get('step'),
        'precision': result.get('precision'),
        'neg_elbo': result['neg_elbo'],
        'neg_elbo_se': result['elbo']['stderr'],
        'nll': result['nll'],
        'nll_se': result['log_likelihood']['stderr'],
    })
  return evaluations


def _run_from_workdir(workdir: str) -> Dict[str, Any]:
  """A record's run from a workdir's run_history.json (its last start)."""
  entries = _read_json(os.path.join(workdir, 'run_history.json'))
  last = entries[-1]
  test = last.get('test')
  return {
      'seed': last['config']['seed'],
      **{key: last.get(key) for key in _ENVIRONMENT},
      'versions': {key: last.get(key) for key in _VERSIONS},
      'starts': len(entries),
      'last_step': last.get('last_step'),
      'wall_time': last.get('total_wall_time'),
      'config': last['config'],
      'test': None if not test else {
          key: sign * test[name] for key, _, name, sign in _TERMS},
      'evaluations': _evaluations(workdir),
  }


def command_for(config: Mapping[str, Any], sweep_seeds: Optional[
    Sequence[int]] = None) -> str:
  """The shortest command that trains `config` (a saved config): the
  training binary, or the sweep binary over `sweep_seeds`, with every flag
  whose value is not the default."""
  from elbo import config as config_lib  # pylint: disable=g-import-not-at-top
  defaults = config_lib.Config.__dataclass_fields__
  flags = [f'--{name}={value}' for name, value in config.items()
           if name in defaults and value != defaults[name].default and
           not (sweep_seeds is not None and name == 'seed')]
  if sweep_seeds is None:
    head = 'python experiments/train.py --workdir=W'
  else:
    head = ('python experiments/sweep.py --workdir=W --seeds=' +
            ','.join(str(seed) for seed in sweep_seeds))
  return ' '.join([head, *flags])


def record_from_workdir(path: str, name: Optional[str] = None,
                        title: Optional[str] = None,
                        tables: Sequence[str] = ('blog',),
                        order: int = 0, note: Optional[str] = None
                        ) -> Dict[str, Any]:
  """A record of the run in `path`, or of a sweep's runs (`path/seed_*`).

  Raises:
    FileNotFoundError: `path` holds neither a run_history.json nor seed_*
      directories with one.
  """
  if tf.io.gfile.exists(os.path.join(path, 'run_history.json')):
    runs = [_run_from_workdir(path)]
    command = command_for(runs[0]['config'])
  else:
    workdirs = sorted(
        os.path.dirname(p) for p in
        tf.io.gfile.glob(os.path.join(path, 'seed_*', 'run_history.json')))
    if not workdirs:
      raise FileNotFoundError(f'{path}: no run_history.json, and no '
                              'seed_*/run_history.json of a sweep.')
    runs = sorted((_run_from_workdir(w) for w in workdirs),
                  key=lambda run: run['seed'])
    command = command_for(runs[0]['config'], [run['seed'] for run in runs])
  name = name or os.path.basename(os.path.normpath(path))
  dirty = any(run['git_dirty'] for run in runs)
  return {
      'name': name, 'title': title or name, 'tables': list(tables),
      'order': order, 'command': command, 'source': 'workdir',
      'rerunnable': not dirty and all(run['git_commit'] for run in runs),
      'note': note, 'runs': runs,
  }


def _mean_sd(values: Sequence[Optional[float]], decimals: int = 2) -> str:
  """'100.26 ± 1.09' over the known values; their count when some are
  unknown."""
  known = [value for value in values if value is not None]
  if not known:
    return ''
  if len(known) == 1:
    text = f'{known[0]:.{decimals}f}'
  else:
    text = (f'{statistics.mean(known):.{decimals}f} ± '
            f'{statistics.stdev(known):.{decimals}f}')
  return text + (f' (n = {len(known)})' if len(known) < len(values) else '')


def _value(value: Optional[float], se: Optional[float]) -> str:
  return f'{value:.2f}' + ('' if se is None else f' ± {se:.2f}')


def _images(count: int) -> str:
  return 'all 10,000' if count == 10000 else f'first {count:,}'


def _evaluation_cell(evaluation: Mapping[str, Any]) -> str:
  """'-log p(x) 92.51 ± 0.26, -ELBO 96.66 ± 0.27 (k = 5000, all 10,000)'."""
  parts = []
  if evaluation.get('nll') is not None and evaluation['num_samples'] > 1:
    parts.append('-log p(x) ' + _value(evaluation['nll'],
                                      evaluation.get('nll_se')))
  if evaluation.get('neg_elbo') is not None:
    parts.append('-ELBO ' + _value(evaluation['neg_elbo'],
                                   evaluation.get('neg_elbo_se')))
  return (', '.join(parts) + f' (k = {evaluation["num_samples"]}, '
          f'{_images(evaluation["num_examples"])})')


def _wall(seconds: Optional[float]) -> str:
  if seconds is None:
    return ''
  if seconds < 3600:
    return f'{seconds / 60:.0f} min'
  return f'{seconds / 3600:.1f} h'


def _code(runs: Sequence[Mapping[str, Any]]) -> str:
  commits = []
  for run in runs:
    commit = (run.get('git_commit') or 'unknown')[:7]
    if run.get('git_dirty'):
      commit += ' (dirty)'
    if commit not in commits:
      commits.append(commit)
  return ', '.join(commits)


def _row(record: Mapping[str, Any]) -> List[str]:
  runs = [run for run in record['runs'] if run.get('test')]
  cells = [record['title'], str(len(runs))]
  for key, *_ in _TERMS:
    cells.append(_mean_sd([run['test'].get(key) for run in runs],
                          record.get('decimals', 2)))
  evaluations = [e for run in record['runs'] if len(record['runs']) == 1
                 for e in run.get('evaluations') or ()]
  cells.append('; '.join(_evaluation_cell(e) for e in evaluations))
  # Finished or not (a run in progress has no final test terms yet).
  walls = [run.get('wall_time') for run in record['runs']]
  cells.append(_wall(statistics.mean(walls)) if all(walls) else '')
  cells.append(_code(record['runs']) + (
      ' (transcribed)' if record['source'] == 'transcribed' else ''))
  return cells


_HEADINGS = ('run', 'n', 'test -ELBO', '-reconstruction', 'KL',
             'evaluate.py', 'wall time', 'code')


def table(records: Sequence[Mapping[str, Any]], name: str) -> str:
  """The markdown table `name`: one row per record that lists it."""
  rows = sorted((r for r in records if name in r['tables']),
                key=lambda r: (r['order'], r['name']))
  lines = ['| ' + ' | '.join(_HEADINGS) + ' |',
           '| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |']
  for record in rows:
    lines.append('| ' + ' | '.join(_row(record)) + ' |')
  return '\n'.join(lines) + '\n'


def _best_nll(record: Mapping[str, Any]) -> str:
  """The -log p(x) of the evaluation with the most samples, then images."""
  evaluations = [e for run in record['runs'] if len(record['runs']) == 1
                 for e in run.get('evaluations') or ()
                 if e.get('nll') is not None and e['num_samples'] > 1]
  if not evaluations:
    return ''
  best = max(evaluations,
             key=lambda e: (e['num_examples'], e['num_samples']))
  return (_value(best['nll'], best.get('nll_se')) +
          f' (k = {best["num_samples"]}, {_images(best["num_examples"])})')


def summary_table(records: Sequence[Mapping[str, Any]]) -> str:
  """The short table: test -ELBO and the best -log p(x) of each row."""
  lines = ['| run | n | test -ELBO | -log p(x) | code |',
           '| --- | ---: | ---: | --- | --- |']
  for record in sorted((r for r in records if 'summary' in r['tables']),
                       key=lambda r: (r['order'], r['name'])):
    row = _row(record)
    lines.append('| ' + ' | '.join(
        (*row[:3], _best_nll(record), row[-1])) + ' |')
  return '\n'.join(lines) + '\n'


def runs_table(records: Sequence[Mapping[str, Any]]) -> str:
  """Every run of every record: its seed, code, machine and test terms."""
  lines = ['| record | seed | code | CPU | test -ELBO (rec. / KL) | '
           'wall time | source |',
           '| --- | ---: | --- | --- | --- | ---: | --- |']
  for record in sorted(records, key=lambda r: (r['order'], r['name'])):
    for run in record['runs']:
      test = run.get('test')
      decimals = record.get('decimals', 2)
      terms = '' if not test else f'{test["neg_elbo"]:.{decimals}f}'
      if test and test.get('kl') is not None:
        terms += (f' ({test["neg_reconstruction"]:.{decimals}f} / '
                  f'{test["kl"]:.{decimals}f})')
      cpu = ', '.join(part for part in (
          run.get('cpu') or '', ' '.join(run.get('cpu_features') or ()))
          if part)
      lines.append('| ' + ' | '.join((
          f'`{record["name"]}`', '' if run.get('seed') is None
          else str(run['seed']), _code([run]), cpu, terms,
          _wall(run.get('wall_time')), record['source'])) + ' |')
  return '\n'.join(lines) + '\n'


def _commands(records: Sequence[Mapping[str, Any]]) -> str:
  """Each record's commands and note, as a list."""
  lines = []
  for record in sorted(records, key=lambda r: (r['order'], r['name'])):
    lines.append(f'- `{record["name"]}` ({record["title"]}): '
                 f'`{record["command"]}`')
    if record.get('evaluate_command'):
      lines.append(f'  then `{record["evaluate_command"]}`')
    if record.get('note'):
      lines.append(f'  {record["note"]}')
  return '\n'.join(lines) + '\n'


def load_benchmarks(directory: str) -> List[Dict[str, Any]]:
  """The outputs of `experiments/benchmark.py` kept in `directory`
  (`*.json`, each with a `command` added), sorted by file name."""
  return load_records(directory) if tf.io.gfile.isdir(directory) else []


def benchmarks_table(benchmarks: Sequence[Mapping[str, Any]]) -> str:
  """One table per benchmark output: each candidate's speed, then the
  ratios measured side by side in the same process."""
  if not benchmarks:
    return 'No benchmark records yet.\n'
  parts = []
  for output in benchmarks:
    machine = output.get('machine') or {}
    lines = [f'`{output.get("command", "")}` '
             f'({machine.get("cpu") or "unknown CPU"}, batch '
             f'{output["settings"]["batch_size"]}):', '',
             '| candidate | ms/step | images/s | of matmul |',
             '| --- | ---: | ---: | ---: |']
    for name, result in output['candidates'].items():
      fraction = result.get('fraction_of_matmul')
      lines.append(f'| `{name}` | {result["ms_per_step"]:.2f} | '
                   f'{result["images_per_second"]:.0f} | ' +
                   ('' if fraction is None else f'{fraction:.2f}') + ' |')
    for name, ratio in (output.get('ratios') or {}).items():
      lines.append(f'| ratio {name} | | {ratio["value"]:.2f} | |')
    parts.append('\n'.join(lines) + '\n')
  return '\n'.join(parts)


def render(records: Sequence[Mapping[str, Any]],
           benchmarks: Sequence[Mapping[str, Any]] = ()) -> Dict[str, str]:
  """Every block the docs hold: the tables of `TABLES`, `runs`,
  `commands` and `benchmarks`."""
  blocks = {name: table(records, name) for name in TABLES}
  blocks['benchmarks'] = benchmarks_table(benchmarks)
  blocks['summary'] = summary_table(records)
  blocks['runs'] = runs_table(records)
  blocks['commands'] = _commands(records)
  return blocks


def update_blocks(text: str, blocks: Mapping[str, str]) -> str:
  """`text` with every report block it marks replaced by `blocks`' text.

  Raises:
    KeyError: a marker names a block `blocks` lacks.
  """
  return _BLOCK.sub(
      lambda m: m.group(1) + blocks[m.group('name')] + m.group(4), text)


def stale_blocks(text: str, blocks: Mapping[str, str]) -> List[str]:
  """The names of the blocks in `text` that differ from `blocks`."""
  return [m.group('name') for m in _BLOCK.finditer(text)
          if m.group('body') != blocks.get(m.group('name'))]
