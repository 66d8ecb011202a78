"""Every test file has a py_test and every binary a py_binary in BUILD.

Bazel checks the rest: a file that BUILD lists must exist, and a module
missing from a target's srcs or deps is missing from its runfiles, so the
tests that import it fail under `bazel test`. What Bazel cannot see is a
test or binary with no target at all; this test can (under Bazel, the
files to compare come in through a glob in the target's data).
"""

import ast
import collections
import glob
import os

import conftest

# pytest_test (tools/pytest.bzl) is a py_test that runs pytest.
_TEST_RULES = ('py_test', 'pytest_test')


def _srcs_by_rule() -> dict:
  """{'py_library': {...}, 'pytest_test': {...}, ...}: the `srcs` of each
  rule kind in BUILD (Starlark BUILD files parse as Python)."""
  with open(os.path.join(conftest.REPO_ROOT, 'BUILD')) as f:
    tree = ast.parse(f.read())
  srcs = collections.defaultdict(set)
  for call in ast.walk(tree):
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
      for keyword in call.keywords:
        if keyword.arg == 'srcs':
          srcs[call.func.id].update(e.value for e in keyword.value.elts)
  return srcs


def _files(pattern: str) -> set:
  return {os.path.relpath(path, conftest.REPO_ROOT) for path in
          glob.glob(os.path.join(conftest.REPO_ROOT, pattern))}


def test_every_test_file_is_a_py_test_and_every_binary_a_py_binary():
  srcs = _srcs_by_rule()
  tests = set().union(*(srcs[rule] for rule in _TEST_RULES))
  assert tests == _files('tests/*_test.py')
  assert srcs['py_binary'] == _files('experiments/*.py')
