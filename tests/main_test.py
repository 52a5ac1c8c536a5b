"""Tests of the ckpt_rank.main binary, run as a subprocess the way a user runs it.

The end-to-end test runs `experiments/offline.py:runlocal` (real ImageNet MobileNetV2, a 2-step
MNIST snapshot of it and the dog-breed SavedModel on real digits) three times in one workdir: a
first run of the binary, then, through `experiment.run` in this process (the binary's only work
besides flag parsing), a rerun that must do no work, and a run after one score file was deleted
(a crash's leftovers) that must recompute that score only. The first run also fine-tunes the
ground truth in the run (`finetune_main.run`), whose table and cells are checked here too.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import pytest

from ckpt_rank import baselines
from ckpt_rank import checkpoints
from ckpt_rank import config_lib
from ckpt_rank import experiment
from ckpt_rank import finetune
from ckpt_rank import finetune_main
from ckpt_rank import measures
from ckpt_rank import results as results_lib
from ckpt_rank import verdicts

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_main(*args, timeout=900):
  env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.run([sys.executable, '-m', 'ckpt_rank.main', *args], cwd=_REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def _tempdir(test):
  # tempfile rather than create_tempdir(): the latter needs absl flags parsed (not under pytest).
  path = tempfile.mkdtemp(prefix='ckpt_rank_test_')
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


def _stage_files(workdir):
  """{relative path: mtime} of every stage file (features, measures, ground truth)."""
  found = {}
  for stage in ('features', 'measures', 'ground_truth'):
    for root, _, files in os.walk(os.path.join(workdir, stage)):
      for name in files:
        path = os.path.join(root, name)
        found[os.path.relpath(path, workdir)] = os.path.getmtime(path)
  return found


def _work(workdir):
  with open(os.path.join(workdir, 'work.json')) as f:
    return json.load(f)['work']


@pytest.mark.slow(seconds=300)  # 382 s on the 2-core machine with other work running.
class EndToEndTest(absltest.TestCase):

  def test_runlocal_runs_resumes_and_redoes_nothing(self):
    workdir = _tempdir(self)
    process = _run_main('--config=experiments/offline.py:runlocal', f'--workdir={workdir}')
    self.assertEqual(process.returncode, 0, msg=process.stderr[-5000:])

    # The results parse, both forms agree, and every checkpoint is there.
    results = results_lib.read(os.path.join(workdir, 'results.binpb'))
    self.assertEqual(results, results_lib.read(os.path.join(workdir, 'results.json')))
    names = [c.name for c in results.checkpoints]
    self.assertEqual(names, ['mobilenet_v2', 'dog_mobilenet_v2', 'mobilenet_v2_mnist_step2'])
    # The 12 measures, then the two static baselines (judged like measures).
    self.assertLen(results.measures, 14)
    self.assertEqual(list(results.measures[12:]), list(baselines.NAMES))
    self.assertLen(results.scores, 3 * 14)
    with_ground_truth = {g.checkpoint for g in results.ground_truth}
    self.assertContainsSubset({'mobilenet_v2', 'mobilenet_v2_mnist_step2'}, with_ground_truth)
    for g in results.ground_truth:
      self.assertBetween(g.accuracy, 0.0, 1.0)
      self.assertEqual(g.source, 'finetune')
    # Every measure ranks every checkpoint it scored that has ground truth, on the task and
    # averaged, for the pool ('') and the group.
    pseudo = (verdicts.NOISE_CEILING, verdicts.RANDOM)
    for evaluation in results.rankings:
      self.assertIn(evaluation.group, ('', 'mobilenets'))
      if evaluation.skipped_reason or evaluation.measure in pseudo:
        continue
      if not evaluation.group:  # Whole-pool evaluations carry their intervals.
        self.assertIn('kendall_tau', evaluation.uncertainty, msg=evaluation.measure)
      expected = with_ground_truth if evaluation.group == '' else {'mobilenet_v2',
                                                                   'mobilenet_v2_mnist_step2'}
      scored = {s.checkpoint for s in results.scores
                if s.measure == evaluation.measure and not s.skipped_reason}
      self.assertEqual(set(evaluation.checkpoints), expected & scored, msg=evaluation.measure)
      self.assertIn('kendall_tau', evaluation.metrics)
    averaged = [e for e in results.rankings if not e.task and not e.group]
    self.assertLen(averaged, 14 + 2)  # Measures, baselines, noise ceiling and random order.
    self.assertEqual({e.measure for e in averaged} & set(pseudo), set(pseudo))
    self.assertNotEmpty(results.verdicts)
    # Seeds are recorded with the keyed measures' scores.
    nleep = [s for s in results.scores if s.measure.startswith('nleep')]
    self.assertTrue(all(len(s.seeds) == 2 and len(s.per_seed) == 2 for s in nleep))
    # config.measure_seed_counts: one seed for the linear probe and PARC.
    single = [s for s in results.scores if s.measure.split('(')[0] in ('linear_probe', 'parc')]
    self.assertLen(single, 2 * 3)
    self.assertTrue(all(len(s.seeds) == 1 for s in single))
    # The printed table and the report.
    self.assertIn('Ranking metrics averaged over 1 task(s)', process.stdout)
    self.assertIn('| logme |', process.stdout)
    self.assertIn('noise ceiling (a perfect measure)', process.stdout)
    self.assertIn('bootstrap interval', process.stdout)
    self.assertTrue(os.path.exists(os.path.join(workdir, 'report.md')))
    work = _work(workdir)
    self.assertEqual(work['scores_computed'], 3 * 12)
    self.assertEqual(work['features_extracted'], 3)

    self._check_ground_truth(workdir)

    # A rerun does no work: no checkpoint loaded, no stage file rewritten.
    files = _stage_files(workdir)
    self.assertNotEmpty(files)
    config = config_lib.load_config('experiments/offline.py:runlocal')
    with mock.patch.object(finetune, 'finetune', side_effect=AssertionError('work redone')):
      experiment.run(config, workdir)
    self.assertEqual(_work(workdir), {'checkpoints_loaded': 0, 'features_extracted': 0,
                                      'scores_computed': 0, 'ground_truth_cells_computed': 0})
    self.assertEqual(_stage_files(workdir), files)
    rerun = results_lib.read(os.path.join(workdir, 'results.binpb'))
    self.assertEqual(list(rerun.scores), list(results.scores))
    self.assertEqual(list(rerun.rankings), list(results.rankings))

    # A lost score file (as a crash leaves it) is recomputed alone, from cached features, and so
    # is a score that other measure code computed (its stored code version differs).
    lost = next(p for p in files if p.startswith('measures') and 'logme' in p)
    os.remove(os.path.join(workdir, lost))
    old_code = next(p for p in files if p.startswith('measures') and 'sfda' in p)
    with open(os.path.join(workdir, old_code)) as f:
      stored = json.load(f)
    self.assertEqual(stored['inputs']['code'], measures.get('sfda').code_version)
    stored['inputs']['code'] = 'other-code'
    with open(os.path.join(workdir, old_code), 'w') as f:
      json.dump(stored, f)
    experiment.run(config, workdir)
    work = _work(workdir)
    self.assertEqual(work['scores_computed'], 2)
    self.assertEqual(work['features_extracted'], 0)  # Read back from the feature cache.
    self.assertEqual(work['ground_truth_cells_computed'], 0)
    self.assertTrue(os.path.exists(os.path.join(workdir, lost)))
    with open(os.path.join(workdir, old_code)) as f:
      self.assertEqual(json.load(f)['inputs']['code'], measures.get('sfda').code_version)

    self._check_table_identity(config, workdir)

  def _check_table_identity(self, config, workdir):
    """The run's table used as a committed one: its own weights pass; a cell from other weights
    stops the run, is left out of every ranking and listed, or is fine-tuned in the run (found
    in this workdir here), as config.ground_truth.on_mismatch says."""
    with open(os.path.join(workdir, finetune_main.TABLE_FILE)) as f:
      table = json.load(f)
    config.ground_truth.table = os.path.join(workdir, finetune_main.TABLE_FILE)
    results = experiment.run(config, workdir)
    details = json.loads(results.tasks[0].details_json)
    self.assertEqual(details['ground_truth_left_out'], {})
    self.assertEqual(details['ground_truth_fine_tuned_here'], {})

    snapshot = 'mobilenet_v2_mnist_step2'
    cell = table['table']['sklearn_digits'][snapshot]
    true_accuracy, cell['accuracy'], cell['fingerprint'] = cell['accuracy'], 0.01, 'f' * 16
    other = os.path.join(_tempdir(self), 'other_weights.json')
    with open(other, 'w') as f:
      json.dump(table, f)
    config.ground_truth.table = other
    config.ground_truth.on_mismatch = 'error'
    with self.assertRaisesRegex(ValueError, f'{snapshot} on sklearn_digits: weights f{{16}} in '
                                r'the table, [0-9a-f]{16} here; same snapshot recipe'):
      experiment.run(config, workdir)

    config.ground_truth.on_mismatch = 'leave_out'
    results = experiment.run(config, workdir)
    details = json.loads(results.tasks[0].details_json)
    self.assertEqual(list(details['ground_truth_left_out']), [snapshot])
    self.assertNotIn(snapshot, {g.checkpoint for g in results.ground_truth})
    for evaluation in results.rankings:
      self.assertNotIn(snapshot, evaluation.checkpoints)
    with open(os.path.join(workdir, 'report.md')) as f:
      self.assertIn(f'{snapshot} on sklearn_digits is left out of the rankings', f.read())

    config.ground_truth.on_mismatch = 'finetune'
    results = experiment.run(config, workdir)
    self.assertEqual(_work(workdir)['ground_truth_cells_computed'], 0)  # Its cell is on disk.
    details = json.loads(results.tasks[0].details_json)
    self.assertEqual(list(details['ground_truth_fine_tuned_here']), [snapshot])
    refit = next(g for g in results.ground_truth if g.checkpoint == snapshot)
    self.assertAlmostEqual(refit.accuracy, true_accuracy)  # Not the table's 0.01.
    self.assertIn('this run', refit.source)
    with open(os.path.join(workdir, 'report.md')) as f:
      self.assertIn(f'{snapshot} on sklearn_digits: ground truth fine-tuned in this run', f.read())

  def _check_ground_truth(self, workdir):
    """The ground truth the run fine-tuned: the table, its cells and the snapshot checkpoint."""
    with open(os.path.join(workdir, finetune_main.TABLE_FILE)) as f:
      written = json.load(f)
    self.assertEqual(written['config']['image_size'], 32)
    names = [n for n, _ in written['pool']]
    self.assertEqual(names, ['mobilenet_v2', 'dog_mobilenet_v2', 'mobilenet_v2_mnist_step2'])
    table = written['table']['sklearn_digits']
    self.assertCountEqual(table, names)
    # The dog export runs batch norm in inference mode only: finetune_tf refuses it, saying why
    # (a re-export whose __call__ takes `training` would be fine-tuned instead).
    dog = table['dog_mobilenet_v2']
    if 'skipped' in dog:
      self.assertRegex(dog['skipped'], r"TF-Hub checkpoint 'dog_mobilenet_v2'.*training")
    else:
      self.assertBetween(dog['accuracy'], 0.0, 1.0)
    for name in ('mobilenet_v2', 'mobilenet_v2_mnist_step2'):
      self.assertBetween(table[name]['accuracy'], 0.0, 1.0)
      self.assertEqual(table[name]['learning_rate'], 0.01)
      self.assertEqual(table[name]['steps'], 3)
      self.assertEqual(table[name]['num_eval'], 128)
      self.assertEqual(table[name]['num_train'], 100)
    cells = glob.glob(os.path.join(workdir, 'ground_truth', '*', '*.json'))
    self.assertLen(cells, 3)
    with open(os.path.join(workdir, 'ground_truth', 'sklearn_digits', 'mobilenet_v2.json')) as f:
      cell = json.load(f)
    self.assertEqual(cell['status'], 'done')
    self.assertLen(cell['runs'], 1)
    self.assertEqual(cell['best'], cell['runs'][0])
    self.assertEqual(cell['best']['settings']['seed'], 0)
    self.assertIn('jax', cell['versions'])
    self.assertEqual(cell['protocol']['eval_role'], 'test')
    # The snapshot cell records its recipe (why its weights may differ on another CPU).
    self.assertLen(table['mobilenet_v2_mnist_step2']['snapshot']['recipe'], 16)
    self.assertNotIn('snapshot', table['mobilenet_v2'])
    # The table names the workdir WORKDIR. The snapshot is a checkpoint with its source head.
    spec = dict(written['pool'])['mobilenet_v2_mnist_step2']
    self.assertEqual(spec, 'flax:WORKDIR/pool/mobilenet_v2_mnist_step2')
    snapshot = checkpoints.load(spec.replace('WORKDIR', workdir))
    self.assertTrue(snapshot.has_head)
    self.assertEqual(snapshot.num_classes, 10)
    self.assertEqual(snapshot.input_size, 32)


class FlagsTest(absltest.TestCase):

  def test_missing_workdir_is_a_flag_error(self):
    process = _run_main('--config=experiments/offline.py:runlocal')
    self.assertNotEqual(process.returncode, 0)
    self.assertIn('--workdir', process.stderr)

  def test_unknown_config_key_is_a_flag_error(self):
    workdir = _tempdir(self)
    process = _run_main('--config=experiments/offline.py:runlocal', f'--workdir={workdir}',
                        '--config.no_such_key=1')
    self.assertNotEqual(process.returncode, 0)
    self.assertIn('no_such_key', process.stderr)
    self.assertEqual(os.listdir(workdir), [])

  def test_bad_measure_fails_before_any_work(self):
    workdir = _tempdir(self)
    process = _run_main('--config=experiments/offline.py:runlocal', f'--workdir={workdir}',
                        "--config.measures=('leep', 'no_such_measure')")
    self.assertNotEqual(process.returncode, 0)
    self.assertIn('no_such_measure', process.stderr)
    self.assertEqual(os.listdir(workdir), [])


if __name__ == '__main__':
  absltest.main()
