"""The README's library example runs as written and ranks what it says it ranks."""

import contextlib
import io
import os
import re
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np
import pytest

_README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')


def _example() -> str:
  """The first python block after the '## Using the measures' heading."""
  with open(_README, encoding='utf-8') as f:
    text = f.read()
  section = text[text.index('## Using the measures'):]
  return re.search(r'```python\n(.*?)```', section, re.DOTALL).group(1)


class ReadmeExampleTest(absltest.TestCase):

  def test_is_ten_lines(self):
    code = [l for l in _example().splitlines() if l.strip()]
    self.assertLessEqual(len(code), 10)

  @pytest.mark.slow
  def test_runs_as_written(self):
    namespace = {}
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as data_dir:
      with mock.patch.dict(os.environ, {'CKPT_RANK_DATA_DIR': data_dir}):
        with contextlib.redirect_stdout(out):
          exec(compile(_example(), 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
    pool = namespace['pool']
    self.assertLen(namespace['labels'], 300)
    for scores in (namespace['logme'], namespace['nleep']):
      self.assertEqual(set(scores), set(pool))
      self.assertTrue(np.all(np.isfinite(list(scores.values()))))
    self.assertEqual({f.shape for f in namespace['feats'].values()}, {(300, 1280)})
    # The last two lines (TFDS reports preparing the dataset before them on a first run).
    printed = out.getvalue().splitlines()[-2:]
    ranks = {m: sorted(pool, key=namespace[m].get, reverse=True) for m in ('logme', 'nleep')}
    self.assertEqual(printed, [f'LogME ranks {ranks["logme"]}', f'NLEEP ranks {ranks["nleep"]}'])


if __name__ == '__main__':
  absltest.main()
