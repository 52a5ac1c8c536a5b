"""Executes every notebook in colabs/ top to bottom with nbclient, offline, in quick mode.

The test sets `CKPT_RANK_QUICK=1` (the notebooks then use fewer images and checkpoints) and
points the feature caches and the TFDS data dir at a temporary directory, so a run reads nothing
a previous run left. A cell that raises fails the test with the cell's source and
traceback. The committed notebooks must have their outputs cleared.
"""

import glob
import os
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import nbclient
import nbformat
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_COLABS = os.path.join(_ROOT, 'colabs')
_NOTEBOOKS = sorted(os.path.splitext(os.path.basename(p))[0]
                    for p in glob.glob(os.path.join(_COLABS, '*.ipynb')))
_CELL_TIMEOUT_S = 300
_WITH_PLOTS = ('analyze_results', 'quickstart')
_BADGE = ('https://colab.research.google.com/github/ckpt-rank/ckpt_rank/blob/main/colabs/'
          '{}.ipynb')


def _images(nb) -> int:
  return sum('image/png' in output.get('data', {})
             for cell in nb.cells if cell.cell_type == 'code' for output in cell.outputs)


class NotebooksTest(parameterized.TestCase):
  """What every committed notebook must be, read without running it."""

  def test_the_three_notebooks_are_there(self):
    self.assertEqual(_NOTEBOOKS, ['analyze_results', 'neucrab', 'quickstart'])

  @parameterized.parameters(*_NOTEBOOKS)
  def test_committed_clean_with_badge_and_install_cell(self, name):
    nb = nbformat.read(os.path.join(_COLABS, f'{name}.ipynb'), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
      if cell.cell_type == 'code':
        self.assertEqual((cell.outputs, cell.execution_count), ([], None), cell.source[:80])
    self.assertIn(_BADGE.format(name), nb.cells[0].source)
    self.assertIn("find_spec('ckpt_rank') is None", nb.cells[1].source)
    # Notebooks import the library, never redefine it.
    self.assertFalse([c.source for c in nb.cells if c.cell_type == 'code' and
                      ('\nclass ' in '\n' + c.source)])


class _Execute(absltest.TestCase):
  """Runs one notebook; one subclass per notebook, so that the test workers share them out."""

  NAME = ''

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls.env = {'CKPT_RANK_QUICK': '1', 'CKPT_RANK_DATA_DIR': os.path.join(cls._tmp.name, 'tfds'),
               'CKPT_RANK_FEATURE_CACHE': os.path.join(cls._tmp.name, 'features'),
               'CKPT_RANK_RESULTS': os.path.join(_COLABS, 'data', 'offline_results.json'),
               'MPLBACKEND': 'module://matplotlib_inline.backend_inline'}

  @classmethod
  def tearDownClass(cls):
    cls._tmp.cleanup()
    super().tearDownClass()

  def _execute(self):
    name = self.NAME
    nb = nbformat.read(os.path.join(_COLABS, f'{name}.ipynb'), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=_CELL_TIMEOUT_S, kernel_name='python3',
                                     resources={'metadata': {'path': self._tmp.name}})
    with mock.patch.dict(os.environ, self.env):
      try:
        client.execute()
      except nbclient.exceptions.CellExecutionError as e:
        self.fail(f'{name}.ipynb failed:\n{e}')
    errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
              if o.output_type == 'error']
    self.assertEqual(errors, [])
    if name in _WITH_PLOTS:
      self.assertGreaterEqual(_images(nb), 1, f'{name}.ipynb showed no plot.')


class QuickstartTest(_Execute):
  NAME = 'quickstart'

  @pytest.mark.slow(seconds=100)
  def test_executes_top_to_bottom(self):
    self._execute()


class AnalyzeResultsTest(_Execute):
  NAME = 'analyze_results'

  def test_executes_top_to_bottom(self):
    self._execute()


class NeucrabTest(_Execute):
  NAME = 'neucrab'

  @pytest.mark.slow(seconds=100)
  def test_executes_top_to_bottom(self):
    self._execute()


if __name__ == '__main__':
  absltest.main()
