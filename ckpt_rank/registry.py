"""A tiny name -> object registry that understands "name(key=value, ...)" specs.

Configs refer to measures (and later checkpoints and tasks) by strings such as
``"nleep(components_per_class=1)"``; `parse_spec` splits such a string into a name and keyword
arguments evaluated as Python literals.
"""

import ast
from typing import Any, Callable, Generic, TypeVar

T = TypeVar('T')


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
  """Splits ``"name(k=v, ...)"`` into ``("name", {"k": v})``; values must be Python literals."""
  spec = spec.strip()
  try:
    node = ast.parse(spec, mode='eval').body
  except SyntaxError as e:
    raise ValueError(f'Cannot parse spec {spec!r}: {e.msg}.') from None
  if isinstance(node, ast.Name):
    return node.id, {}
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.args:
    raise ValueError(f'Spec {spec!r} must look like "name" or "name(key=value, ...)" with keyword '
                     'arguments only.')
  kwargs = {}
  for kw in node.keywords:
    try:
      kwargs[kw.arg] = ast.literal_eval(kw.value)
    except ValueError:
      raise ValueError(f'Spec {spec!r}: the value of {kw.arg!r} must be a Python literal.') from None
  return node.func.id, kwargs


class Registry(Generic[T]):
  """Maps names to objects; `lookup` lists the known names when a name is unknown."""

  def __init__(self, kind: str):
    self._kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str, entry: T) -> T:
    if name in self._entries:
      raise ValueError(f'{self._kind} {name!r} is registered twice.')
    self._entries[name] = entry
    return entry

  def lookup(self, name: str) -> T:
    if name not in self._entries:
      raise ValueError(f'Unknown {self._kind} {name!r}; known: {", ".join(self.names())}.')
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)
