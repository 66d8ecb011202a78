"""absl flags from a config dataclass: one flag per field, same default."""

import dataclasses
import sys
from typing import Any, List, Mapping, Sequence, Type

from absl import app
from absl import flags

__all__ = ['config_from_flags_or_exit', 'dataclass_from_flags',
           'define_dataclass_flags']


def define_dataclass_flags(cls: Type, help_texts: Mapping[str, str],
                           choices: Mapping[str, Sequence[str]] = ()) -> None:
  """Defines `--field` for every field of `cls`: an enum where `choices`
  lists the names, else by the field's type (int, float, or string)."""
  choices = dict(choices)
  for field in dataclasses.fields(cls):
    name, default, help_text = field.name, field.default, help_texts[field.name]
    if name in choices:
      flags.DEFINE_enum(name, default, choices[name], help_text)
    elif field.type is int:
      flags.DEFINE_integer(name, default, help_text)
    elif field.type is float:
      flags.DEFINE_float(name, default, help_text)
    else:
      flags.DEFINE_string(name, default, help_text)


def dataclass_from_flags(cls: Type) -> Any:
  """`cls(**parsed flag values)`; its own checks raise ValueError."""
  return cls(**{field.name: flags.FLAGS[field.name].value
                for field in dataclasses.fields(cls)})


def config_from_flags_or_exit(cls: Type, argv: List[str]) -> Any:
  """For a binary's `main`: the config from the flags, or exit with a
  one-line message (stray arguments, or values `cls` rejects)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    return dataclass_from_flags(cls)
  except ValueError as e:
    sys.exit(f'Invalid flags: {e}')
