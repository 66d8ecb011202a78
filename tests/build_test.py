"""BUILD lists every module, binary and test on disk, and nothing else."""

import ast
import collections
import glob
import os

import conftest


def _srcs_by_rule() -> dict:
  """{'py_library': {...}, 'py_test': {...}, ...}: the `srcs` of each rule
  kind in BUILD (Starlark BUILD files parse as Python)."""
  with open(os.path.join(conftest.REPO_ROOT, 'BUILD')) as f:
    tree = ast.parse(f.read())
  srcs = collections.defaultdict(set)
  for call in ast.walk(tree):
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
      for keyword in call.keywords:
        if keyword.arg == 'srcs':
          srcs[call.func.id].update(e.value for e in keyword.value.elts)
  return srcs


def _all_srcs() -> set:
  return set().union(*_srcs_by_rule().values())


def _python_files_on_disk() -> set:
  files = set()
  for pattern in ('elbo/*.py', 'experiments/*.py', 'tests/*.py'):
    files.update(os.path.relpath(path, conftest.REPO_ROOT) for path in
                 glob.glob(os.path.join(conftest.REPO_ROOT, pattern)))
  return files


def test_every_python_file_has_a_target():
  missing = _python_files_on_disk() - _all_srcs()
  assert not missing, f'not in BUILD: {sorted(missing)}'


def test_every_listed_file_exists():
  absent = {src for src in _all_srcs() if not os.path.isfile(
      os.path.join(conftest.REPO_ROOT, src))}
  assert not absent, f'in BUILD but not on disk: {sorted(absent)}'


def test_every_test_file_is_a_py_test_and_every_binary_a_py_binary():
  on_disk = _python_files_on_disk()
  srcs = _srcs_by_rule()
  assert srcs['py_test'] == {p for p in on_disk if p.endswith('_test.py')}
  assert srcs['py_binary'] == {p for p in on_disk
                               if p.startswith('experiments/')}
