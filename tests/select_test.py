"""Tests of the ckpt_rank.select binary, run as a subprocess the way a user runs it."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image
import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
  env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  return subprocess.run([sys.executable, '-m', 'ckpt_rank.select', *args], cwd=_REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def _folder(root, per_class=(8, 8, 8), size=16):
  """Class k's images have a bright quadrant k, on noise; written as PNG files."""
  rng = np.random.default_rng(0)
  for k, count in enumerate(per_class):
    os.makedirs(os.path.join(root, f'class_{k}'))
    for i in range(count):
      image = rng.integers(0, 120, (size, size, 3))
      r, q = divmod(k % 4, 2)
      image[r * size // 2:(r + 1) * size // 2, q * size // 2:(q + 1) * size // 2] += 100
      Image.fromarray(image.astype(np.uint8)).save(os.path.join(root, f'class_{k}', f'{i}.png'))


@pytest.mark.slow(seconds=40)  # Measured: 33-38 s with a fine-tuning job on the other core.
class SelectBinaryTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix='select_test_')
    cls.data = os.path.join(cls.tmp, 'data')
    _folder(cls.data)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_ranks_a_folder_prints_the_table_and_writes_every_file(self):
    out = os.path.join(self.tmp, 'out')
    specs = ['mobilenet_v2_random(seed=0)', 'mobilenet_v2_random(seed=1)']
    proc = _run(f'--data=imagefolder:{self.data}', f'--checkpoints={",".join(specs)}',
                '--measures=shrinkage_h_score,logme', '--input_size=32', '--per_class=6',
                '--resamples=3', '--seed=3', f'--output={out}',
                f'--cache_dir={os.path.join(self.tmp, "cache")}')
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn('18 examples of 3 classes, ordered by shrinkage_h_score', proc.stdout)
    for spec in specs:
      self.assertIn(spec, proc.stdout)
    self.assertIn(f'Written to {out}', proc.stdout)
    with open(os.path.join(out, 'ranking.json')) as f:
      stored = json.load(f)
    settings = stored['settings']
    self.assertEqual((settings['seed'], settings['resamples'], settings['input_size'],
                      settings['per_class']), (3, 3, 32, 6))
    self.assertEqual(stored['measures'], ['shrinkage_h_score', 'logme'])
    self.assertCountEqual([e['checkpoint'] for e in stored['entries']], specs)
    self.assertCountEqual(os.listdir(out), ['ranking.csv', 'ranking.json', 'results.binpb',
                                            'results.json', 'scores.png'])

  def test_bad_input_is_one_line_exit_1_and_nothing_written(self):
    out = os.path.join(self.tmp, 'never')
    proc = _run(f'--data=imagefolder:{self.data}', '--checkpoints=mobilenet_v2,no_such_ckpt',
                f'--output={out}')
    self.assertEqual(proc.returncode, 1)
    self.assertIn("ckpt_rank.select: error: Bad checkpoints: unknown checkpoint spec "
                  "'no_such_ckpt'", proc.stderr)
    self.assertNotIn('Traceback', proc.stderr)
    single = os.path.join(self.tmp, 'single')
    _folder(single, per_class=(3,))
    proc = _run(f'--data=imagefolder:{single}', '--checkpoints=mobilenet_v2', f'--output={out}')
    self.assertEqual(proc.returncode, 1)
    self.assertIn("only 1 class ('class_0')", proc.stderr)
    self.assertFalse(os.path.exists(out))
    self.assertFalse([n for n in os.listdir(self.tmp) if n.startswith('.never')])


if __name__ == '__main__':
  absltest.main()
