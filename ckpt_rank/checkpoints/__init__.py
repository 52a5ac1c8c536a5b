"""Checkpoints as functions of raw images: TF-Hub modules, Flax checkpoints and built-in names.

``load(spec, **overrides)`` accepts

* ``'tfhub:<handle or local path>'``: a TF2 SavedModel or TF1 Hub-format module (`tfhub`);
* ``'flax:<directory>'``: a Flax checkpoint written by `save_flax` (`flax_ckpt`);
* a built-in name from `names()` (`builtin`), optionally as ``'name(key=value, ...)'``, e.g.
  ``'efficientnet_lite0_random(seed=3)'``.

Every source returns a `Checkpoint` (`name`, `input_size`, `feature_dim`, `has_head`,
`num_classes`, `fingerprint`, `preprocessing`, `apply_batch`, `features`, `logits`) that resizes and
normalises raw [N, H, W, 3] uint8 (or [0, 1] float) images itself.
"""

from ckpt_rank.checkpoints.base import Checkpoint
from ckpt_rank.checkpoints.builtin import names
from ckpt_rank.checkpoints.builtin import PREFIXES
from ckpt_rank.checkpoints.flax_ckpt import FlaxCheckpoint
from ckpt_rank.checkpoints.flax_ckpt import save_flax
from ckpt_rank.checkpoints.tfhub import TFHubCheckpoint


def load(spec: str, **overrides) -> Checkpoint:
  """Loads a checkpoint from a spec string (see the module docstring).

  Args:
    spec: ``'tfhub:<handle>'``, ``'flax:<path>'`` or a built-in name.
    **overrides: source-specific options: for ``tfhub:`` name, input_size, signature, output_key,
      logits_key, input_range; for ``flax:`` name, input_size, module_fn; for built-in names
      name, input_size and (random-init controls) seed.

  Returns:
    The `Checkpoint`.

  Raises:
    ValueError: an unknown spec (the message lists the built-in names and the prefixes), or a
      corrupt checkpoint; FileNotFoundError: a missing path.
  """
  if not isinstance(spec, str):
    raise ValueError(f'A checkpoint spec must be a string, got {type(spec).__name__}.')
  if spec.startswith('tfhub:'):
    from ckpt_rank.checkpoints import tfhub  # pylint: disable=g-import-not-at-top
    return tfhub.load(spec[len('tfhub:'):], **overrides)
  if spec.startswith('flax:'):
    from ckpt_rank.checkpoints import flax_ckpt  # pylint: disable=g-import-not-at-top
    return flax_ckpt.load(spec[len('flax:'):], **overrides)
  from ckpt_rank.checkpoints import builtin  # pylint: disable=g-import-not-at-top
  return builtin.load(spec, **overrides)


__all__ = ['Checkpoint', 'FlaxCheckpoint', 'TFHubCheckpoint', 'PREFIXES', 'load', 'names',
           'save_flax']
