"""Downstream tasks: the task table (`tasks`), local TFDS builders (`builders`) and `load`.

  from ckpt_rank import data
  data.tasks.names('vtab1k')                      # the 19 VTAB-1k tasks
  images, labels = data.load('animal_mnist', 'train800')
"""

from ckpt_rank.data import builders
from ckpt_rank.data import tasks
from ckpt_rank.data.pipeline import builder
from ckpt_rank.data.pipeline import DATA_DIR_ENV_VAR
from ckpt_rank.data.pipeline import default_data_dir
from ckpt_rank.data.pipeline import Examples
from ckpt_rank.data.pipeline import iterate
from ckpt_rank.data.pipeline import load
from ckpt_rank.data.pipeline import shard_split
from ckpt_rank.data.pipeline import Stream
from ckpt_rank.data.tasks import Task
