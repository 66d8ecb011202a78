"""The main of every Bazel pytest_test: runs pytest on the given files.

`--starts-binary-only` keeps only the tests that start a process (a binary
of the repo, through conftest's `run_binary`, `binary_command` or
`start_workers`, or `subprocess` / `sys.executable` directly): CI runs
those under Bazel, where a binary missing from a target's runfiles fails
them, after pytest has run every test once. A test starts one if its
source, that of a fixture it uses (from its module or conftest) or that of
a function of its module, class or conftest that these call names one of
`_STARTS_PROCESS`. A target that keeps none fails (pytest's exit code 5):
its data lists a binary that no test starts, or a test starts it in a way
this does not see.
"""

import inspect
import os
import re
import sys

import pytest

_STARTS_PROCESS = re.compile(
    r'\b(run_binary|binary_command|start_workers|subprocess|sys\.executable)'
    r'\b')
_CALL = re.compile(r'\b(\w+)\s*\(')


def _functions(owner) -> dict:
  """{name: source} of the functions defined in a module or class."""
  if owner is None:
    return {}
  home = getattr(owner, '__module__', getattr(owner, '__name__', None))
  return {name: inspect.getsource(value)
          for name, value in vars(owner).items()
          if inspect.isfunction(value) and value.__module__ == home}


def _starts_process(item) -> bool:
  modules = {item.module.__name__, 'conftest'}
  scope = {**_functions(sys.modules.get('conftest')),
           **_functions(item.module), **_functions(item.cls)}
  sources = [inspect.getsource(item.function)] + [
      inspect.getsource(definition.func)
      for definitions in item._fixtureinfo.name2fixturedefs.values()  # pylint: disable=protected-access
      for definition in definitions
      if definition.func.__module__ in modules]
  seen = set()
  while sources:
    source = sources.pop()
    if _STARTS_PROCESS.search(source):
      return True
    for name in _CALL.findall(source):
      if name in scope and name not in seen:
        seen.add(name)
        sources.append(scope[name])
  return False


class StartsBinaryOnly:
  """The `--starts-binary-only` option (module docstring)."""

  @staticmethod
  def pytest_addoption(parser):
    parser.addoption('--starts-binary-only', action='store_true',
                     help='Run only the tests that start a process.')

  @staticmethod
  def pytest_collection_modifyitems(config, items):
    if not config.getoption('starts_binary_only'):
      return
    kept = [item for item in items if _starts_process(item)]
    config.hook.pytest_deselected(
        items=[item for item in items if item not in kept])
    items[:] = kept


if __name__ == '__main__':
  # No .pytest_cache in the runfiles tree.
  args = ['-p', 'no:cacheprovider', *sys.argv[1:]]
  if os.environ.get('TEST_TMPDIR'):  # Bazel cleans it up after the test.
    args.append('--basetemp=' + os.path.join(os.environ['TEST_TMPDIR'],
                                              'pytest'))
  if os.environ.get('XML_OUTPUT_FILE'):  # Per-test results for Bazel.
    args.append('--junitxml=' + os.environ['XML_OUTPUT_FILE'])
  sys.exit(pytest.main(args, plugins=[StartsBinaryOnly()]))
