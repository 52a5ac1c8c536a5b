"""TFDS builders over image data installed on this machine (no download, ever).

Importing this package registers the builders with TFDS, so `tfds.builder('animal_mnist')`
finds them. Prepare one with `ckpt_rank.data.load` (which calls `prepare`) or directly:

  builder = tfds.builder('mnist_5k', data_dir=...)
  builder.download_and_prepare(download_config=builders.OFFLINE_DOWNLOAD_CONFIG)
"""

import tensorflow_datasets as tfds

from ckpt_rank.data.builders._base import LocalImageBuilder
from ckpt_rank.data.builders.animal_mnist import AnimalMnist
from ckpt_rank.data.builders.fashion_mnist_local import FashionMnistLocal
from ckpt_rank.data.builders.lfw_faces import LfwFaces
from ckpt_rank.data.builders.mnist_5k import Mnist5k
from ckpt_rank.data.builders.sklearn_digits import SklearnDigits

# Builder name -> class, for the names TFDS registered.
BUILDERS: dict[str, type[LocalImageBuilder]] = {
    cls.name: cls for cls in (FashionMnistLocal, AnimalMnist, Mnist5k, LfwFaces, SklearnDigits)
}


def offline_download_config(**kwargs) -> tfds.download.DownloadConfig:
  """A DownloadConfig that never reaches the network.

  Our builders do not call the download manager at all; this also turns off the GCS lookup and
  the statistics pass (which would read every example once more).

  Args:
    **kwargs: further DownloadConfig fields, e.g. max_examples_per_split for tests.
  """
  return tfds.download.DownloadConfig(
      try_download_gcs=False,
      compute_stats=tfds.download.ComputeStatsMode.SKIP,
      **kwargs)
