"""Tests for experiments/vtab.py: NeuCRaB's pool, groups, tasks and options, validated."""

import importlib.util
import os

from absl.testing import absltest
from absl.testing import parameterized

from ckpt_rank import data
from ckpt_rank import finetune_main
from ckpt_rank import measures
from ckpt_rank import preflight

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG_FILE = os.path.join(_ROOT, 'experiments', 'vtab.py')
_ARCHIVE = '/data/rank_ckpt'

# The paper's Group I TF-Hub modules (../shared/docs/NEUCRAB.md), generative ones at 128 px.
_VTAB_MODULES = ('wae-ukl', 'wae-gan', 'cond-biggan', 'wae-mmd', 'vae', 'uncond-biggan', 'jigsaw',
                 'relative-patch-location', 'exemplar', 'rotation', 'semi-rotation-10',
                 'semi-exemplar-10', 'sup-100', 'sup-exemplar-100')
_GENERATIVE = ('wae-ukl', 'wae-gan', 'cond-biggan', 'wae-mmd', 'vae', 'uncond-biggan')
# The authors' README: archive checkpoints as <run>/model.ckpt-<step>.
_GROUP2_PATHS = ('imagenet_res50/90000', 'imagenet_res50/180000', 'imagenet_res50/270000',
                 'imagenet_res50/300000', 'inat_res50/90000', 'inat_res50/180000',
                 'inat_res50/270000', 'inat_res50/300000', 'places_res50/60000',
                 'places_res50/120000', 'places_res50/180000', 'places_res50/200000')


def _module():
  spec = importlib.util.spec_from_file_location('vtab_config', _CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config(arg=None):
  return _module().get_config(arg)


def _specs(config) -> dict[str, str]:
  return dict(config.pool.checkpoints)


def _members(config) -> dict[str, tuple[str, ...]]:
  return {g: tuple(e.checkpoints) for g, e in config.pool.groups.items()}


class VtabConfigTest(parameterized.TestCase):

  @parameterized.parameters(None, f'archive_dir={_ARCHIVE}',
                            f'archive_dir={_ARCHIVE},group3=archive', 'runlocal',
                            f'runlocal,archive_dir={_ARCHIVE},table=/x/gt.json')
  def test_every_variant_validates(self, arg):
    config = _config(arg)
    preflight.validate_config(config)  # Fields, groups, measures, tasks and roles, fine_tune.
    names = [n for n, _ in config.pool.checkpoints]
    self.assertLen(set(names), len(names))
    for group in config.pool.groups.values():
      self.assertTrue(set(group.checkpoints) <= set(names))
      self.assertTrue(group.description)
    for task in config.tasks:
      for role in (config.train_role, config.eval_role):
        data.tasks.get(task).split(role)

  def test_paper_pool_with_archive(self):
    config = _config(f'archive_dir={_ARCHIVE}')
    specs, members = _specs(config), _members(config)
    self.assertEqual({g: len(m) for g, m in members.items()},
                     {'mixed_supervision': 16, 'training_stages': 12, 'architectures': 13})
    # 41 group places, 40 checkpoints: Sup-100%-Inat is Group II's Inat-300k (one file).
    self.assertEqual(sum(len(m) for m in members.values()), 41)
    self.assertLen(specs, 40)
    self.assertEqual(set().union(*members.values()), set(specs))
    self.assertIn('inat_res50_300k', members['mixed_supervision'])
    self.assertIn('inat_res50_300k', members['training_stages'])
    self.assertEqual(sorted(specs[n] for n in members['training_stages']),
                     sorted(f'tfhub:{_ARCHIVE}/{p}' for p in _GROUP2_PATHS))
    self.assertEqual(specs['places_res50_300k'], f'tfhub:{_ARCHIVE}/places_res50/300000')
    # Group I: the 14 VTAB modules by their TF-Hub handles.
    hub = sorted(s for n, s in specs.items() if n in members['mixed_supervision'] and
                 'tfhub.dev' in s)
    self.assertEqual(hub, sorted(f'tfhub:https://tfhub.dev/vtab/{m}/1' for m in _VTAB_MODULES))
    # Group III: TF-Hub feature vectors, Inception-v4 (not on TF-Hub) from the archive.
    for name in members['architectures']:
      if name == 'inception_v4':
        self.assertEqual(specs[name], f'tfhub:{_ARCHIVE}/imagenet_inception_v4/300000')
      else:
        self.assertRegex(specs[name],
                         r'^tfhub:https://tfhub\.dev/google/imagenet/\w+/feature_vector/5$')
    self.assertEqual(specs['inception_resnet_v2'],
                     'tfhub:https://tfhub.dev/google/imagenet/inception_resnet_v2/'
                     'feature_vector/5')
    self.assertEqual(specs['mobilenet_v2_035'],
                     'tfhub:https://tfhub.dev/google/imagenet/mobilenet_v2_035_224/'
                     'feature_vector/5')

  def test_group3_from_archive_is_the_papers_own_runs(self):
    config = _config(f'archive_dir={_ARCHIVE},group3=archive')
    specs = _specs(config)
    architectures = _members(config)['architectures']
    self.assertLen(architectures, 13)
    for name in architectures:
      self.assertStartsWith(specs[name], f'tfhub:{_ARCHIVE}/imagenet_')
    self.assertEqual(specs['inception_resnet_v2'],
                     f'tfhub:{_ARCHIVE}/imagenet_inception_resnet_v2/90000')  # As the README.

  def test_without_archive_groups_shrink_with_a_logged_line(self):
    with self.assertLogs('absl', 'WARNING') as logs:
      config = _config()
    specs, members = _specs(config), _members(config)
    self.assertEqual({g: len(m) for g, m in members.items()},
                     {'mixed_supervision': 14, 'architectures': 12})
    self.assertLen(specs, 26)
    self.assertTrue(all(s.startswith('tfhub:https://tfhub.dev/') for s in specs.values()))
    self.assertNotIn('inception_v4', specs)
    line = '\n'.join(logs.output)
    for name in ('inat_res50_300k', 'places_res50_300k', 'imagenet_res50_90k', 'inception_v4'):
      self.assertIn(name, line)
    self.assertIn('14 archive checkpoints are left out', line)

  def test_generative_modules_run_at_128(self):
    config = _config(f'archive_dir={_ARCHIVE}')
    specs = _specs(config)
    generative = {n for n, s in specs.items()
                  if any(s == f'tfhub:https://tfhub.dev/vtab/{m}/1' for m in _GENERATIVE)}
    self.assertLen(generative, 6)
    self.assertEqual(set(config.pool.load_options.keys()), generative)
    for name in specs:
      expected = 128 if name in generative else 224
      self.assertEqual(preflight.load_overrides(config, name), {'input_size': expected}, name)

  def test_classification_twins_are_recorded(self):
    group3 = _module().GROUP3
    self.assertLen(group3, 13)
    self.assertEqual(group3['inception_v4'], {})
    for name, handles in group3.items():
      if handles:
        self.assertEqual(handles['classification'],
                         handles['feature_vector'].replace('/feature_vector/', '/classification/'))

  def test_tasks_measures_and_recipe(self):
    config = _config()
    self.assertEqual(sorted(config.tasks), data.tasks.names('paper'))  # The task table's group.
    self.assertEqual(config.train_role, 'train800val200')
    self.assertEqual(config.eval_role, 'test')
    self.assertEqual(config.measures, tuple(measures.names()))
    for paper_measure in ('leep', 'nce', 'nleep', 'linear_probe', 'knn'):
      self.assertIn(paper_measure, config.measures)
    self.assertEqual(tuple(config.fine_tune.learning_rates), (0.1, 0.05, 0.01, 0.005))
    self.assertLen(config.fine_tune.step_budgets, 2)
    self.assertEqual((config.fine_tune.momentum, config.fine_tune.weight_decay), (0.9, 1e-4))
    self.assertEqual(config.ground_truth.table, '')
    self.assertEqual(_config('table=/x/gt.json').ground_truth.table, '/x/gt.json')

  def test_runlocal(self):
    config = _config('runlocal')
    specs = _specs(config)
    self.assertEqual(set(specs), {'sup_100', 'rotation', 'vae', 'mobilenet_v2',
                                  'efficientnet_lite0'})
    self.assertEqual(specs['vae'], 'tfhub:https://tfhub.dev/vtab/vae/1')
    self.assertEqual(preflight.load_overrides(config, 'vae'), {'input_size': 128})
    self.assertEqual(preflight.load_overrides(config, 'sup_100'), {'input_size': 224})
    # The in-run ground truth has at least the two built-in Flax checkpoints to rank.
    for name in ('mobilenet_v2', 'efficientnet_lite0'):
      self.assertIsNone(finetune_main.not_fine_tunable(specs[name]))
    self.assertEqual(config.tasks, ('caltech101',))
    self.assertLessEqual(config.max_train_examples, 200)
    self.assertLessEqual(config.max_eval_examples, 200)

  @parameterized.parameters(('group3=bogus', 'group3 must be'),
                            ('group3=archive', 'needs archive_dir'),
                            ('no_such_option=1', "Unknown config option 'no_such_option'"))
  def test_bad_options(self, arg, message):
    with self.assertRaisesRegex(ValueError, message):
      _config(arg)


if __name__ == '__main__':
  absltest.main()
