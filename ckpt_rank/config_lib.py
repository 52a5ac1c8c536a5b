"""Helpers shared by the configs in experiments/ (configs import this, never each other)."""

import ast
import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from ckpt_rank import measures


def resolve_path(path: str) -> str:
  """`path` as given when it exists; a relative one is also tried from the repository root."""
  path = os.path.expanduser(path)
  if os.path.isabs(path) or os.path.exists(path):
    return os.path.abspath(path)
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config that ``--config=SPEC`` gives the binaries, e.g. ``"experiments/vtab.py:runlocal"``.

  Args:
    spec: a config file's path, optionally followed by ``:`` and its argument. A relative path
      is read from the working directory, else from the repository root (so notebooks and
      scripts run anywhere in a checkout).

  Raises:
    FileNotFoundError: no such file.
    ValueError: a file without `get_config`, or an argument the config rejects.
  """
  given, _, arg = spec.partition(':')
  path = resolve_path(given)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No config file at {given!r} (nor at {path}).')
  module_spec = importlib.util.spec_from_file_location(
      '_ckpt_rank_config_' + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not callable(getattr(module, 'get_config', None)):
    raise ValueError(f'{path} defines no get_config(); it is not an experiment config.')
  return module.get_config(arg) if arg else module.get_config()


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses the config argument after the colon: ``"runlocal"``, ``"runlocal,seeds=3"``, ...

  A bare word sets that option to True, ``key=value`` sets it to the Python literal `value` (or
  the plain string when it is not a literal).

  Args:
    arg: the text after ``file.py:`` on the command line, or None.
    **defaults: every option the config understands, with its default.

  Returns:
    A locked ConfigDict of the options.

  Raises:
    ValueError: an option the config does not define.
  """
  options = dict(defaults)
  for token in filter(None, (t.strip() for t in (arg or '').split(','))):
    name, has_value, text = token.partition('=')
    name = name.strip()
    if name not in defaults:
      raise ValueError(f'Unknown config option {name!r} in {arg!r}; known: '
                       f'{", ".join(sorted(defaults)) or "none"}.')
    if not has_value:
      options[name] = True
      continue
    try:
      options[name] = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
      options[name] = text.strip()
  result = ml_collections.ConfigDict(options)
  result.lock()
  return result


def validate_measures(specs: Sequence[str]) -> list[measures.Measure]:
  """Resolves every measure spec of a config, failing on the first one that does not resolve.

  Args:
    specs: measure spec strings such as ``"leep"`` or ``"nleep(components_per_class=1)"``.

  Returns:
    The resolved measures, in order.

  Raises:
    ValueError: a spec that is not a string, names an unknown measure or hyper-parameter (the
      message quotes the spec and lists what is known), or two specs naming the same measure.
  """
  if isinstance(specs, str):
    raise ValueError(f'config.measures must be a sequence of spec strings, got the string '
                     f'{specs!r}; write ({specs!r},).')
  resolved = []
  seen = {}
  for index, spec in enumerate(specs):
    if not isinstance(spec, str):
      raise ValueError(f'config.measures[{index}] must be a spec string, got {spec!r}.')
    try:
      measure = measures.get(spec)
    except ValueError as e:
      raise ValueError(f'config.measures[{index}] = {spec!r}: {e}') from e
    if measure.spec in seen:
      raise ValueError(f'config.measures[{index}] = {spec!r} repeats config.measures'
                       f'[{seen[measure.spec]}] (both are {measure.spec!r}).')
    seen[measure.spec] = index
    resolved.append(measure)
  if not resolved:
    raise ValueError('config.measures is empty; name at least one of: '
                     f'{", ".join(measures.names())}.')
  return resolved
