"""Tests of the ckpt_rank.main binary, run as a subprocess the way a user runs it.

The end-to-end test runs `experiments/offline.py:runlocal` (real ImageNet MobileNetV2, a 2-step
MNIST snapshot of it and the dog-breed SavedModel on real digits) three times in one workdir: a
first run, a rerun that must do no work, and a run after one score file was deleted (a crash's
leftovers) that must recompute that score only.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
import pytest

from ckpt_rank import measures
from ckpt_rank import results as results_lib

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


@pytest.mark.slow
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
    self.assertLen(results.measures, 12)
    self.assertLen(results.scores, 3 * 12)
    with_ground_truth = {g.checkpoint for g in results.ground_truth}
    self.assertContainsSubset({'mobilenet_v2', 'mobilenet_v2_mnist_step2'}, with_ground_truth)
    for g in results.ground_truth:
      self.assertBetween(g.accuracy, 0.0, 1.0)
      self.assertEqual(g.source, 'finetune')
    # Every measure ranks every checkpoint it scored that has ground truth, on the task and
    # averaged, for the pool ('') and the group.
    for evaluation in results.rankings:
      self.assertIn(evaluation.group, ('', 'mobilenets'))
      if evaluation.skipped_reason:
        continue
      expected = with_ground_truth if evaluation.group == '' else {'mobilenet_v2',
                                                                   'mobilenet_v2_mnist_step2'}
      scored = {s.checkpoint for s in results.scores
                if s.measure == evaluation.measure and not s.skipped_reason}
      self.assertEqual(set(evaluation.checkpoints), expected & scored, msg=evaluation.measure)
      self.assertIn('kendall_tau', evaluation.metrics)
    averaged = [e for e in results.rankings if not e.task and not e.group]
    self.assertLen(averaged, 12)
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
    self.assertTrue(os.path.exists(os.path.join(workdir, 'report.md')))
    work = _work(workdir)
    self.assertEqual(work['scores_computed'], 3 * 12)
    self.assertEqual(work['features_extracted'], 3)

    # A rerun does no work: no checkpoint loaded, no stage file rewritten.
    files = _stage_files(workdir)
    self.assertNotEmpty(files)
    again = _run_main('--config=experiments/offline.py:runlocal', f'--workdir={workdir}')
    self.assertEqual(again.returncode, 0, msg=again.stderr[-5000:])
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
    third = _run_main('--config=experiments/offline.py:runlocal', f'--workdir={workdir}')
    self.assertEqual(third.returncode, 0, msg=third.stderr[-5000:])
    work = _work(workdir)
    self.assertEqual(work['scores_computed'], 2)
    self.assertEqual(work['features_extracted'], 0)  # Read back from the feature cache.
    self.assertEqual(work['ground_truth_cells_computed'], 0)
    self.assertTrue(os.path.exists(os.path.join(workdir, lost)))
    with open(os.path.join(workdir, old_code)) as f:
      self.assertEqual(json.load(f)['inputs']['code'], measures.get('sfda').code_version)


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
