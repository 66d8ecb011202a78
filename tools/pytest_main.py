"""The main of every Bazel pytest_test: runs pytest on the given files."""

import os
import sys

import pytest

if __name__ == '__main__':
  # No .pytest_cache in the runfiles tree.
  args = ['-p', 'no:cacheprovider', *sys.argv[1:]]
  if os.environ.get('TEST_TMPDIR'):  # Bazel cleans it up after the test.
    args.append('--basetemp=' + os.path.join(os.environ['TEST_TMPDIR'],
                                              'pytest'))
  if os.environ.get('XML_OUTPUT_FILE'):  # Per-test results for Bazel.
    args.append('--junitxml=' + os.environ['XML_OUTPUT_FILE'])
  sys.exit(pytest.main(args))
