"""absl flags from a config dataclass: one flag per field, same default.

The help text of a field lives with the field
(`dataclasses.field(metadata={'help': ...})`). The flags are defined in this
module, so a binary calls `flags.adopt_module_key_flags(flag_utils)` to list
them under its own `--help`.
"""

import dataclasses
import sys
from typing import Any, List, Mapping, Optional, Sequence, Type

from absl import app
from absl import flags

__all__ = ['config_from_flags_or_exit', 'dataclass_from_flags',
           'define_dataclass_flags', 'define_preset_flag']

_PRESET = 'preset'


def define_dataclass_flags(cls: Type,
                           choices: Mapping[str, Sequence[str]] = (),
                           help_texts: Optional[Mapping[str, str]] = None
                           ) -> None:
  """Defines `--field` for every field of `cls`: an enum where `choices`
  lists the names, else by the field's type (int, float, or string). Help
  from `help_texts`, else the field's `metadata['help']`."""
  choices = dict(choices)
  for field in dataclasses.fields(cls):
    name, default = field.name, field.default
    help_text = (help_texts or {}).get(name) or field.metadata.get('help')
    if not help_text:
      raise ValueError(f'{cls.__name__}.{name} has no help text: give it '
                       "dataclasses.field(metadata={'help': ...}).")
    if name in choices:
      flags.DEFINE_enum(name, default, list(choices[name]), help_text)
    elif field.type is int:
      flags.DEFINE_integer(name, default, help_text)
    elif field.type is float:
      flags.DEFINE_float(name, default, help_text)
    else:
      flags.DEFINE_string(name, default, help_text)


def define_preset_flag(presets: Mapping[str, Mapping[str, Any]]) -> None:
  """Defines `--preset`, a named set of defaults for the dataclass flags."""
  flags.DEFINE_enum(
      _PRESET, None, list(presets),
      'A named set of flag values (flags given explicitly win): ' +
      '; '.join(f'{name}: ' + (' '.join(f'--{k}={v}' for k, v in
                                         values.items()) or 'the defaults')
                for name, values in presets.items()) + '.')


def dataclass_from_flags(
    cls: Type, presets: Optional[Mapping[str, Mapping[str, Any]]] = None
) -> Any:
  """`cls(**parsed flag values)`, where `--preset` (if defined and set)
  supplies the values of flags not given explicitly; `cls`'s own checks
  raise ValueError."""
  preset = {}
  if presets is not None and flags.FLAGS[_PRESET].value is not None:
    preset = presets[flags.FLAGS[_PRESET].value]
  values = {}
  for field in dataclasses.fields(cls):
    flag = flags.FLAGS[field.name]
    values[field.name] = (preset[field.name] if field.name in preset and
                          not flag.present else flag.value)
  return cls(**values)


def config_from_flags_or_exit(
    cls: Type, argv: List[str],
    presets: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Any:
  """For a binary's `main`: the config from the flags, or exit with a
  one-line message (stray arguments, or values `cls` rejects)."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    return dataclass_from_flags(cls, presets)
  except ValueError as e:
    sys.exit(f'Invalid flags: {e}')
