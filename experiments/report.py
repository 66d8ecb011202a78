r"""Builds the results tables from run records and workdirs.

Prints every table made from the records in --records (docs/results) and
from the runs given with --workdirs (a run's workdir, or a sweep's directory
of seed_* workdirs), e.g.

  python experiments/report.py
  python experiments/report.py --workdirs=W --title="my run" --tables=blog

--save_records=DIR writes each workdir's record (DIR/<name>.json), so that
a row can be published with its provenance; --update=README.md,docs/results.md
rewrites the tables between their `<!-- report:NAME -->` markers, and
--check=... exits with status 1 when one of them differs from what this
prints. See elbo.results for the record format.
"""

import json
import os
import sys

from absl import app
from absl import flags

from elbo import results

_RECORDS = flags.DEFINE_string(
    'records', 'docs/results', 'Directory of published records (*.json).')
_WORKDIRS = flags.DEFINE_list(
    'workdirs', [], 'Workdirs of runs, or sweep directories (seed_*/), to '
    'add as records; a record of the same name in --records is replaced.')
_NAMES = flags.DEFINE_list(
    'names', [], 'Record names for --workdirs, in order; default: each '
    "directory's base name.")
_TITLE = flags.DEFINE_string('title', None, 'Row title of --workdirs '
                             'records; default: the name.')
_TABLES = flags.DEFINE_list('tables', ['blog'], 'Tables the --workdirs rows '
                            'appear in: ' + ', '.join(results.TABLES) + '.')
_ORDER = flags.DEFINE_integer('order', 0, 'Place of --workdirs rows in '
                              'their tables (ascending).')
_NOTE = flags.DEFINE_string('note', None, 'What a reader of --workdirs '
                            'records should know (how they ran).')
_SAVE_RECORDS = flags.DEFINE_string(
    'save_records', None, 'Write the --workdirs records into this directory.')
_UPDATE = flags.DEFINE_list('update', [], 'Markdown files whose report '
                            'blocks are rewritten.')
_CHECK = flags.DEFINE_list('check', [], 'Markdown files whose report blocks '
                           'must equal the tables: else exit status 1.')


def _workdir_records():
  names = _NAMES.value or [None] * len(_WORKDIRS.value)
  if len(names) != len(_WORKDIRS.value):
    sys.exit('Error: --names must give one name per --workdirs entry.')
  return [results.record_from_workdir(path, name, _TITLE.value,
                                      _TABLES.value, _ORDER.value,
                                      _NOTE.value)
          for path, name in zip(_WORKDIRS.value, names)]


def _write_record(directory: str, record) -> None:
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, record['name'] + '.json')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(json.dumps(record, indent=2, ensure_ascii=False) + '\n')
  print(f'Wrote {path}', file=sys.stderr)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    added = _workdir_records()
  except FileNotFoundError as e:
    sys.exit(f'Error: {e}')
  if _SAVE_RECORDS.value:
    for record in added:
      _write_record(_SAVE_RECORDS.value, record)
  by_name = {r['name']: r for r in results.load_records(_RECORDS.value)}
  by_name.update((r['name'], r) for r in added)
  blocks = results.render(
      list(by_name.values()),
      results.load_benchmarks(os.path.join(_RECORDS.value, 'benchmarks')))
  for path in _UPDATE.value:
    with open(path, encoding='utf-8') as f:
      text = f.read()
    with open(path, 'w', encoding='utf-8') as f:
      f.write(results.update_blocks(text, blocks))
  stale = []
  for path in _CHECK.value:
    with open(path, encoding='utf-8') as f:
      stale += [f'{path}: {name}' for name in
                results.stale_blocks(f.read(), blocks)]
  if stale:
    sys.exit('Tables that differ from the records (run experiments/report.py '
             '--update=FILE): ' + ', '.join(stale))
  if not (_UPDATE.value or _CHECK.value):
    for name, text in blocks.items():
      print(f'## {name}\n\n{text}')


if __name__ == '__main__':
  app.run(main)
