"""The docs' code runs: every ```python and ```sh block of README.md and
docs/*.md, in order, page by page, or it is marked as not run with a reason.

Markers are HTML comments on the lines just before a block:

- `<!-- not run: REASON -->`: not run here (a TPU, a server, a cluster);
- `<!-- newcomer command ... -->`: the README's quick start, which .ci/run
  runs from a fresh virtual environment;
- `<!-- test: OLD -> NEW -->`: replace OLD by NEW in the block before it
  runs (to train for a few steps on small data); NEW may name DATA_DIR.

Python blocks of one page run in one namespace, like a session. Shell
blocks run each command from the repository root; the binaries get flags
appended that make them small (`_SMALL_FLAGS`: absl takes the last value
of a repeated flag), and `/tmp/elbo` becomes a directory of the page's that
starts with a copy of a tiny trained run, `/tmp/elbo/blog`. The API
reference is built from the docstrings, and fails on a broken reference.
"""

import dataclasses
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

import pytest

import conftest

sys.path.insert(0, os.path.join(conftest.REPO_ROOT, 'docs'))
import build_api  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.generated_data

_PAGES = ['README.md'] + sorted(
    os.path.relpath(path, conftest.REPO_ROOT) for path in
    glob.glob(os.path.join(conftest.REPO_ROOT, 'docs', '*.md')))
_FENCE = re.compile(r'^```(\w*)\s*$')
_MARKER = re.compile(r'^<!-- (.*?) -->$', re.S)
_REPLACEMENT = re.compile(r'^test: (.+?) -> (.+)$', re.S)
_SMALL_TRAINING = ('--data_dir={data_dir}', '--max_steps=3',
                   '--batch_size=16', '--log_every=1', '--steps_per_call=1')
# Flags appended to each binary's command: a few steps, a few images.
_SMALL_FLAGS = {
    'experiments/train.py': _SMALL_TRAINING,
    'experiments/sweep.py': _SMALL_TRAINING,
    'experiments/evaluate.py': ('--num_samples=4', '--num_examples=16'),
    'experiments/figures.py': ('--num_examples=64',
                               '--diagnostic_examples=16'),
    'experiments/export.py': (),
    'experiments/benchmark.py': (),  # Its own --smoke.
    'docs/build_api.py': (),
}


@dataclasses.dataclass
class Block:
  page: str
  line: int  # Of the opening fence, 1-based.
  language: str
  code: str
  markers: List[str]

  @property
  def id(self) -> str:
    return f'{self.page}:{self.line}'

  def not_run_reason(self) -> Optional[str]:
    for marker in self.markers:
      if marker.startswith('not run:'):
        return marker[len('not run:'):].strip()
      if marker.startswith('newcomer command'):
        return 'run by .ci/run in a fresh environment'
    return None

  def replacements(self) -> List[Tuple[str, str]]:
    return [tuple(m.groups()) for m in map(_REPLACEMENT.match, self.markers)
            if m]


def _markers_before(lines: List[str], index: int) -> List[str]:
  """The HTML comments on the lines just above line `index` (blank lines
  between them allowed), top first."""
  comments = []
  i = index - 1
  while i >= 0:
    if not lines[i].strip():
      i -= 1
      continue
    if not lines[i].rstrip().endswith('-->'):
      break
    end = i
    while i >= 0 and not lines[i].startswith('<!--'):
      i -= 1
    if i < 0:
      break
    comments.insert(0, '\n'.join(lines[i:end + 1]))
    i -= 1
  return [m.group(1).strip() for m in map(_MARKER.match, comments) if m]


def read_blocks(page: str) -> List[Block]:
  with open(os.path.join(conftest.REPO_ROOT, page), encoding='utf-8') as f:
    lines = f.read().split('\n')
  blocks, i = [], 0
  while i < len(lines):
    match = _FENCE.match(lines[i])
    if not match:
      i += 1
      continue
    end = next(j for j in range(i + 1, len(lines)) if lines[j] == '```')
    blocks.append(Block(page, i + 1, match.group(1),
                        '\n'.join(lines[i + 1:end]),
                        _markers_before(lines, i)))
    i = end + 1
  return blocks


_ALL = [block for page in _PAGES for block in read_blocks(page)
        if block.language in ('python', 'sh')]
_RUN = [block for block in _ALL if block.not_run_reason() is None]


def test_every_page_is_linked_from_the_readme():
  with open(os.path.join(conftest.REPO_ROOT, 'README.md')) as f:
    readme = f.read()
  for page in _PAGES[1:] + ['docs/tutorial.ipynb', 'CHANGELOG.md']:
    assert f']({page})' in readme, page


def test_every_block_runs_or_says_why_not():
  assert len(_RUN) >= 10
  for block in _ALL:
    reason = block.not_run_reason()
    assert reason is None or len(reason) > 10, block.id
  newcomer = [b for b in _ALL if b.markers and
              b.markers[-1].startswith('newcomer command')]
  assert [b.page for b in newcomer] == ['README.md']


def test_markers_are_read():
  lines = ['text', '<!-- not run: needs a TPU -->', '', '<!-- test: a -> b',
           'c -->', '```sh']
  assert _markers_before(lines, 5) == ['not run: needs a TPU',
                                       'test: a -> b\nc']
  assert _markers_before(['text', '```sh'], 1) == []


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, generated_data_dir) -> str:
  """A tiny run of the blog model, the docs' /tmp/elbo/blog."""
  workdir = str(tmp_path_factory.mktemp('docs_run') / 'blog')
  _run_command(['python', 'experiments/train.py', f'--workdir={workdir}'],
               generated_data_dir)
  return workdir


_PAGE_STATE: Dict[str, dict] = {}


def _page_state(page: str, tmp_path_factory, trained_run: str) -> dict:
  """A page's namespace and its /tmp/elbo, made at its first block."""
  if page not in _PAGE_STATE:
    root = str(tmp_path_factory.mktemp('elbo'))
    shutil.copytree(trained_run, os.path.join(root, 'blog'))
    _PAGE_STATE[page] = {'root': root, 'namespace': {'__name__': 'docs'}}
  return _PAGE_STATE[page]


def _commands(code: str) -> List[List[str]]:
  """The commands of a shell block, continuations joined, comments
  dropped."""
  return [shlex.split(line, comments=True) for line in
          code.replace('\\\n', ' ').split('\n') if line.strip()]


def _run_command(argv: List[str], data_dir: str) -> str:
  if argv[0] != 'python' or argv[1] not in _SMALL_FLAGS:
    raise AssertionError(f'{shlex.join(argv)}: not a binary this test can '
                         'run; mark the block <!-- not run: why -->')
  if argv[1] == 'experiments/benchmark.py':
    assert '--smoke' in argv, 'benchmarks take minutes: add --smoke'
  small = [flag.format(data_dir=data_dir) for flag in _SMALL_FLAGS[argv[1]]]
  if '--help' in argv:
    small = []
  env = dict(os.environ, PYTHONPATH=conftest.REPO_ROOT,
             TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run([sys.executable, *argv[1:], *small],
                          cwd=conftest.REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  if '--help' in argv:  # absl prints the help and exits with status 1.
    assert '--workdir' in result.stdout + result.stderr
  else:
    assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.parametrize('block', _RUN, ids=[b.id for b in _RUN])
def test_block_runs(block, tmp_path_factory, trained_run,
                    generated_data_dir):
  state = _page_state(block.page, tmp_path_factory, trained_run)
  code = block.code
  for old, new in block.replacements():
    assert old in code, f'{block.id}: no {old!r} to replace'
    code = code.replace(old, new.replace('DATA_DIR',
                                         repr(generated_data_dir)))
  code = code.replace('/tmp/elbo', state['root'])
  if block.language == 'python':
    exec(compile(code, block.id, 'exec'), state['namespace'])  # pylint: disable=exec-used
  else:
    for argv in _commands(code):
      _run_command(argv, generated_data_dir)


def test_api_reference_builds_without_broken_references(tmp_path):
  assert build_api.build(str(tmp_path)) == []
  assert os.path.isfile(tmp_path / 'elbo' / 'losses.html')
  assert not build_api._resolves('elbo.losses.no_such_function')
  assert build_api._resolves('elbo.losses.importance_weighted_bound')
