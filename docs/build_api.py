"""Builds the API reference with pdoc and fails on a broken reference.

  python docs/build_api.py --output=/tmp/elbo-api

pdoc has no option to fail on problems, so this script does it: it fails
(exit status 1) when pdoc warns while rendering, or when a docstring names
an `elbo.` object in backticks (`elbo.losses.elbo`) that does not exist.
"""

import argparse
import pathlib
import importlib
import re
import sys
import warnings
from typing import Iterator, List

import pdoc
import pdoc.doc

MODULES = ('elbo.losses', 'elbo.models', 'elbo.train', 'elbo.evaluation')
_REFERENCE = re.compile(r'`(elbo(?:\.\w+)+)(?:\(\))?`')


def _resolves(name: str) -> bool:
  """Whether `name` (e.g. elbo.losses.elbo) is a module or an attribute of
  one."""
  parts = name.split('.')
  for split in range(len(parts), 0, -1):
    try:
      value = importlib.import_module('.'.join(parts[:split]))
    except ImportError:
      continue
    try:
      for attribute in parts[split:]:
        value = getattr(value, attribute)
    except AttributeError:
      return False
    return True
  return False


def _documented(doc: pdoc.doc.Doc) -> Iterator[pdoc.doc.Doc]:
  yield doc
  if isinstance(doc, (pdoc.doc.Module, pdoc.doc.Class)):
    for member in doc.own_members:
      yield from _documented(member)


def broken_references(modules=MODULES) -> List[str]:
  """'where: name' for every backticked `elbo.` name that does not
  resolve."""
  broken = []
  for name in modules:
    for doc in _documented(pdoc.doc.Module(importlib.import_module(name))):
      for reference in _REFERENCE.findall(doc.docstring or ''):
        if not _resolves(reference):
          broken.append(f'{doc.fullname}: {reference}')
  return broken


def build(output: str, modules=MODULES) -> List[str]:
  """Renders `modules` into `output`; returns the problems found."""
  pdoc.render.configure(docformat='google', show_source=False)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    pdoc.pdoc(*modules, output_directory=pathlib.Path(output))
  problems = [f'pdoc: {w.message}' for w in caught
              if 'pdoc' in (w.filename or '')]
  return problems + [f'broken reference in {where}'
                     for where in broken_references(modules)]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output', required=True,
                      help='Directory for the HTML reference.')
  problems = build(parser.parse_args().output)
  for problem in problems:
    print(problem, file=sys.stderr)
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main())
