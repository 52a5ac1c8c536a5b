"""pytest set-up shared by every test: the order in which test classes reach the workers.

`run_tests.sh` runs two xdist workers with `--dist loadscope --no-loadscope-reorder`: each test
class (or module) goes to one worker whole, in collection order, and a worker that finishes takes
the next one. Reordered here so that the long classes start first (longest-processing-time
first): a long class collected last would otherwise run alone at the end while the other worker
idles. A class is long when it carries `@pytest.mark.slow(seconds=S)`, S its measured duration on
the 2-core CI machine (plain `@pytest.mark.slow` counts as 60 s); the others keep their order.
"""

_DEFAULT_SLOW_SECONDS = 60.0


def _scope(item) -> str:
  """xdist's loadscope unit: the test's class, or its module for module-level tests."""
  return item.nodeid.rsplit('::', 1)[0]


def _seconds(item) -> float:
  marker = item.get_closest_marker('slow')
  if marker is None:
    return 0.0
  return float(marker.kwargs.get('seconds', _DEFAULT_SLOW_SECONDS))


def pytest_collection_modifyitems(session, config, items):
  del session, config
  cost, first_seen = {}, {}
  for index, item in enumerate(items):
    scope = _scope(item)
    cost[scope] = max(cost.get(scope, 0.0), _seconds(item))
    first_seen.setdefault(scope, index)
  # Stable: by cost (descending), then in collection order; a scope's tests stay together.
  items.sort(key=lambda item: (-cost[_scope(item)], first_seen[_scope(item)]))
