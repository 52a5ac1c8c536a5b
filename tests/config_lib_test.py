"""Tests for ckpt_rank.config_lib: loading a config file as --config= does, and its argument."""

import os
import tempfile

from absl.testing import absltest

from ckpt_rank import config_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LoadConfigTest(absltest.TestCase):

  def test_relative_to_the_repository_from_any_directory(self):
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as elsewhere:
      os.chdir(elsewhere)
      try:
        full = config_lib.load_config('experiments/offline.py')
        local = config_lib.load_config('experiments/offline.py:runlocal')
      finally:
        os.chdir(cwd)
    self.assertEqual(full.tasks, ('animal_mnist', 'mnist_5k'))
    self.assertNotEqual(local.tasks, full.tasks)  # The argument reached get_config.
    absolute = config_lib.load_config(os.path.join(_ROOT, 'experiments', 'offline.py'))
    self.assertEqual(absolute.to_dict(), full.to_dict())

  def test_errors(self):
    with self.assertRaisesRegex(FileNotFoundError, 'No config file'):
      config_lib.load_config('experiments/no_such.py')
    with self.assertRaisesRegex(ValueError, "Unknown config option 'bogus'"):
      config_lib.load_config('experiments/offline.py:bogus')
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, 'not_a_config.py')
      with open(path, 'w') as f:
        f.write('X = 1\n')
      with self.assertRaisesRegex(ValueError, 'defines no get_config'):
        config_lib.load_config(path)


class ParseArgTest(absltest.TestCase):

  def test_words_literals_and_strings(self):
    arg = config_lib.parse_arg('runlocal,seeds=3,table=/x/gt.json', runlocal=False, seeds=1,
                               table='')
    self.assertEqual((arg.runlocal, arg.seeds, arg.table), (True, 3, '/x/gt.json'))


if __name__ == '__main__':
  absltest.main()
