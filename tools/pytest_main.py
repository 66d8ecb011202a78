"""The main of every Bazel pytest_test: runs pytest on the given files.

`--starts-binary-only` keeps, for each binary the tests start, the first
test that starts it: CI runs those under Bazel (after pytest has run every
test once), where a binary missing from the target's runfiles fails the
first test that starts it. What a test starts is read from its text: its
source, its parameters, the fixtures it uses (from its module or
conftest), and the functions of its module, class or conftest that these
call. It starts a binary of `experiments/` through conftest's
`run_binary`, `binary_command`, `start_workers` or `signal_at_step_command`
(`binary='name'`, else `train`) or by its path (`experiments/name.py`), and a bare process through
`subprocess` or `sys.executable`. A target that keeps none fails (pytest's
exit code 5): its data lists a binary that no test starts, or a test
starts it in a way this does not see.
"""

import inspect
import os
import re
import sys

import pytest

_HELPER = re.compile(
    r'\b(run_binary|binary_command|start_workers|signal_at_step_command)\(')
_NAMED = re.compile(r'\bbinary=[\'"](\w+)[\'"]|\bexperiments/(\w+)\.py\b')
_PROCESS = re.compile(r'\b(subprocess|sys\.executable)\b')
_CALL = re.compile(r'\b(\w+)\s*\(')


def _functions(owner) -> dict:
  """{name: source} of the functions defined in a module or class."""
  if owner is None:
    return {}
  home = getattr(owner, '__module__', getattr(owner, '__name__', None))
  return {name: inspect.getsource(value)
          for name, value in vars(owner).items()
          if inspect.isfunction(value) and value.__module__ == home}


def _started(text: str) -> set:
  """The binaries (and 'process') that code or parameters start."""
  started = {a or b for a, b in _NAMED.findall(text)}
  if len(_HELPER.findall(text)) > len(re.findall(r'\bbinary=', text)):
    started.add('train')  # The helpers' default.
  if _PROCESS.search(text):
    started.add('process')
  return started


def _starts(item) -> set:
  """What the test starts (module docstring)."""
  modules = {item.module.__name__, 'conftest'}
  scope = {**_functions(sys.modules.get('conftest')),
           **_functions(item.module), **_functions(item.cls)}
  sources = [inspect.getsource(item.function)] + [
      inspect.getsource(definition.func)
      for definitions in item._fixtureinfo.name2fixturedefs.values()  # pylint: disable=protected-access
      for definition in definitions
      if definition.func.__module__ in modules]
  callspec = getattr(item, 'callspec', None)
  started = _started(str(callspec.params)) if callspec else set()
  seen = set()
  while sources:
    source = sources.pop()
    started |= _started(source)
    for name in _CALL.findall(source):
      if name in scope and name not in seen:
        seen.add(name)
        sources.append(scope[name])
  return started


class StartsBinaryOnly:
  """The `--starts-binary-only` option (module docstring)."""

  @staticmethod
  def pytest_addoption(parser):
    parser.addoption('--starts-binary-only', action='store_true',
                     help='Run only the first test that starts each binary.')

  @staticmethod
  def pytest_collection_modifyitems(config, items):
    if not config.getoption('starts_binary_only'):
      return
    kept, covered = [], set()
    for item in items:
      started = _starts(item)
      if started - covered:
        kept.append(item)
        covered |= started
    config.hook.pytest_deselected(
        items=[item for item in items if item not in kept])
    items[:] = kept


if __name__ == '__main__':
  # No .pytest_cache in the runfiles tree.
  # -n 0: Bazel already runs the targets in parallel (pytest.ini's -n).
  args = ['-p', 'no:cacheprovider', '-n', '0', *sys.argv[1:]]
  if os.environ.get('TEST_TMPDIR'):  # Bazel cleans it up after the test.
    args.append('--basetemp=' + os.path.join(os.environ['TEST_TMPDIR'],
                                              'pytest'))
  if os.environ.get('XML_OUTPUT_FILE'):  # Per-test results for Bazel.
    args.append('--junitxml=' + os.environ['XML_OUTPUT_FILE'])
  sys.exit(pytest.main(args, plugins=[StartsBinaryOnly()]))
