"""Ground truth by the VTAB protocol: a rate chosen on validation data, retrained with seeds.

The benchmark ranks checkpoints against the accuracy each reaches when fine-tuned on the target
task. How that accuracy is obtained decides whether a ranking verdict can be trusted:

* the hyper-parameters must be chosen without looking at the test images, or the table is
  optimistically biased and partly noise (picking the best of k test accuracies adds the maximum of
  k noisy draws);
* the grid must contain the optimum: a rate picked at the grid's edge says the best lies outside;
* one fine-tuning run is one draw: its seed moves the accuracy by about as much as the gaps between
  good checkpoints, so a cell needs several seeds and its standard error.

`vtab_cell` does what VTAB (and the NeuCRaB paper) prescribe, in the budget of this project:

1. for every learning rate of the grid, fine-tune on ``train800`` (selection seed) and measure
   accuracy on ``val200``;
2. while the best rate sits at an edge of the grid, extend the grid past that edge by the ratio
   of the grid's two rates at that edge (0.003 / 0.01 / 0.03: x3 upwards to 0.09, 0.27; /3.33
   downwards to 0.0009, 0.00027), at most `Protocol.max_extensions` times each way; a rate still
   at the edge then is flagged in the cell (``edge``);
3. retrain the selected setting on ``train800val200`` with each of `Protocol.seeds`, and measure
   accuracy on the whole test split;
4. record the per-seed accuracies, their mean, the standard error over seeds and the binomial
   standard error of one test accuracy (`accuracy_noise`).

Ties on validation accuracy (200 images: accuracies are multiples of 0.005) are broken towards an
interior rate, then the smaller rate, so that a tie never forces a needless extension.

The fine-tuning itself is `ckpt_rank.finetune` (Flax) or `ckpt_rank.finetune_tf` (TF-Hub): this
module only sees a `runner(train, eval, settings) -> finetune.Result`, so it is backend-free and
tested with fake runners.
"""

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ckpt_rank import finetune

# The protocol names a table records; a table made under another one is refused (`experiment`).
VTAB = 'vtab'                    # This module: selection on val200, seeds, whole test split.
TEST_SELECTED = 'test_selected'  # Earlier tables: best test accuracy over a grid, one seed.
PROTOCOLS = (VTAB, TEST_SELECTED)
# Bumped when what `vtab_cell` computes changes, so that cells of an older version are redone.
VERSION = 1

Runner = Callable[[Any, Any, Any, Any, finetune.Settings], finetune.Result]


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The VTAB protocol's settings.

  Attributes:
    learning_rates: the initial grid (at least two rates; sorted and deduplicated here).
    base: every other fine-tuning setting (steps, batch, schedule, momentum, weight decay); its
      learning rate and seed are replaced by the grid's and the seeds.
    seeds: the seeds of the retraining runs (at least one; three or more for a standard error).
    selection_seed: the seed of the grid runs on train800.
    max_extensions: how many rates may be added past each edge of the grid.
  """
  learning_rates: tuple[float, ...]
  base: finetune.Settings
  seeds: tuple[int, ...] = (0, 1, 2)
  selection_seed: int = 0
  max_extensions: int = 2

  def __post_init__(self):
    rates = tuple(sorted({float(r) for r in self.learning_rates}))
    if len(rates) < 2 or not all(r > 0 and math.isfinite(r) for r in rates):
      raise ValueError(f'The learning-rate grid needs at least two distinct positive rates, got '
                       f'{self.learning_rates}.')
    object.__setattr__(self, 'learning_rates', rates)
    seeds = tuple(int(s) for s in self.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
      raise ValueError(f'seeds must be distinct and at least one, got {self.seeds}.')
    object.__setattr__(self, 'seeds', seeds)
    if self.max_extensions < 0:
      raise ValueError(f'max_extensions must be >= 0, got {self.max_extensions}.')

  def to_json(self) -> dict[str, Any]:
    return {'name': VTAB, 'version': VERSION, 'learning_rates': list(self.learning_rates),
            'base': dataclasses.asdict(self.base), 'seeds': list(self.seeds),
            'selection_seed': self.selection_seed, 'max_extensions': self.max_extensions}


def _run(runner: Runner, train, evaluation, settings: finetune.Settings) -> finetune.Result:
  """One run; a diverged run counts as accuracy 0 (recorded with a NaN loss)."""
  try:
    return runner(*train, *evaluation, settings)
  except FloatingPointError:
    return finetune.Result(settings, 0.0, (float('nan'),), 0.0, 0.0)


def _pick(accuracies: dict[float, float]) -> tuple[float, Optional[str]]:
  """(selected rate, 'low' / 'high' when it is the grid's smallest / largest rate, else None)."""
  rates = sorted(accuracies)
  best = max(accuracies.values())
  tied = [r for r in rates if accuracies[r] == best]
  interior = [r for r in tied if rates[0] < r < rates[-1]]
  chosen = (interior or tied)[0]
  edge = 'low' if chosen == rates[0] else 'high' if chosen == rates[-1] else None
  return chosen, edge


def select_learning_rate(runner: Runner, train, validation, protocol: Protocol
                         ) -> tuple[float, Optional[str], list[finetune.Result]]:
  """Steps 1-2: the grid on train -> validation, extended past an edge pick.

  Returns:
    (selected rate, the edge it still sits at or None, every grid run in the order run).
  """
  runs = []
  accuracies = {}

  def evaluate(rate):
    settings = dataclasses.replace(protocol.base, learning_rate=float(rate),
                                   seed=protocol.selection_seed)
    result = _run(runner, train, validation, settings)
    runs.append(result)
    accuracies[float(rate)] = result.accuracy

  for rate in protocol.learning_rates:
    evaluate(rate)
  low_ratio = protocol.learning_rates[1] / protocol.learning_rates[0]
  high_ratio = protocol.learning_rates[-1] / protocol.learning_rates[-2]
  extended = {'low': 0, 'high': 0}
  while True:
    chosen, edge = _pick(accuracies)
    if edge is None or extended[edge] >= protocol.max_extensions:
      return chosen, edge, runs
    extended[edge] += 1
    # Rounded to 3 significant digits, so that grids read back from JSON compare equal.
    evaluate(float(f'{chosen / low_ratio if edge == "low" else chosen * high_ratio:.3g}'))


def accuracy_noise(accuracies: Sequence[float], num_test: int) -> dict[str, float]:
  """The mean of per-seed test accuracies and its two sources of noise.

  Args:
    accuracies: one test accuracy per seed.
    num_test: test images each was measured on.

  Returns:
    {'mean', 'seed_sd' (sample standard deviation over seeds, 0 with one seed), 'seed_se'
    (seed_sd / sqrt(seeds)), 'test_se' (binomial standard error of one accuracy on num_test
    images, sqrt(p (1 - p) / n) at the mean; shared by all seeds since they see the same test
    images), 'se' (sqrt(seed_se^2 + test_se^2): the standard error of the mean as an estimate of
    the checkpoint's expected accuracy on the task's image distribution)}.
  """
  values = np.asarray(accuracies, np.float64)
  if values.size == 0 or num_test < 1:
    raise ValueError('accuracy_noise needs at least one accuracy and one test image.')
  mean = float(values.mean())
  seed_sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
  seed_se = seed_sd / math.sqrt(values.size)
  test_se = math.sqrt(max(mean * (1 - mean), 0.0) / num_test)
  return {'mean': mean, 'seed_sd': seed_sd, 'seed_se': seed_se, 'test_se': test_se,
          'se': math.sqrt(seed_se ** 2 + test_se ** 2)}


def vtab_cell(runner: Runner, *, select_train, select_eval, train, test,
              protocol: Protocol, progress: Optional[Callable[[str], None]] = None
              ) -> dict[str, Any]:
  """One (task, checkpoint) cell by the VTAB protocol (module docstring).

  Args:
    runner: fine-tunes one setting: runner(train_images, train_labels, eval_images, eval_labels,
      settings) -> `finetune.Result` (raises FloatingPointError when it diverges).
    select_train, select_eval: (images, labels) of train800 and val200.
    train, test: (images, labels) of train800val200 and the test split.
    protocol: the grid, seeds and other settings.
    progress: called with a line after each run, or None.

  Returns:
    The cell's JSON fields: 'accuracy' (mean over seeds), 'accuracies' (per seed, in
    `protocol.seeds` order), the `accuracy_noise` fields, 'learning_rate' (selected), 'edge'
    (None, 'low' or 'high'), 'selection' ([{learning_rate, val_accuracy}] in rate order),
    'selection_runs' and 'seed_runs' (`Result.to_json()` of every run), 'num_val', 'num_test'.

  Raises:
    FloatingPointError: a retraining run of the selected rate diverged (the selection run of that
      rate did not: the rate is unstable, and the cell would have no honest accuracy).
  """
  say = progress or (lambda _: None)
  rate, edge, selection_runs = select_learning_rate(
      _logged(runner, say, 'select'), select_train, select_eval, protocol)
  seed_runs = []
  for seed in protocol.seeds:
    settings = dataclasses.replace(protocol.base, learning_rate=rate, seed=seed)
    seed_runs.append(_logged(runner, say, 'seed')(*train, *test, settings))
  accuracies = [r.accuracy for r in seed_runs]
  num_test = int(len(test[1]))
  noise = accuracy_noise(accuracies, num_test)
  return {'accuracy': noise['mean'], 'accuracies': accuracies, **noise,
          'learning_rate': rate, 'edge': edge,
          'selection': sorted(({'learning_rate': r.settings.learning_rate,
                                'val_accuracy': r.accuracy} for r in selection_runs),
                              key=lambda s: s['learning_rate']),
          'selection_runs': [r.to_json() for r in selection_runs],
          'seed_runs': [r.to_json() for r in seed_runs],
          'num_val': int(len(select_eval[1])), 'num_test': num_test}


def _logged(runner: Runner, say: Callable[[str], None], stage: str) -> Runner:
  def run(*args):
    settings = args[-1]
    result = runner(*args)
    say(f'{stage} lr {settings.learning_rate:g} seed {settings.seed}: accuracy '
        f'{result.accuracy:.4f} in {result.seconds:.0f} s')
    return result
  return run
