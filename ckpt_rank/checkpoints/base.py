"""The `Checkpoint` interface every checkpoint source returns.

A checkpoint maps RAW images to its pooled pre-logits (and, where it has a classifier head, to
the head's logits). Raw images are [N, H, W, 3] uint8 in [0, 255] or float in [0, 1], at any size
(checked by `features.check_images`: grey images must be replicated to 3 channels by the caller,
so every entry point accepts the same inputs); each checkpoint resizes and normalises them itself,
the way it was trained, inside one compiled function (a `jax.jit` or a `tf.function`) per input
shape. Running over N images goes through `features.batched_apply` in fixed-shape batches.
"""

import abc
import hashlib
import json
from typing import Any

import numpy as np

from ckpt_rank import features as features_lib

# Resizing used by every source: bilinear with half-pixel centres, antialiased when shrinking,
# i.e. `tf.image.resize(..., 'bilinear', antialias=True)` and `jax.image.resize(..., 'bilinear',
# antialias=True)` (as `models.pretrained.preprocess`), which agree to ~1e-5, so the Flax and
# TF-Hub paths of one model see the same pixels.
RESIZE_METHOD = 'bilinear'
ANTIALIAS = True


def hash_parts(*parts: Any) -> str:
  """A 16-hex-digit SHA-256 of bytes parts and JSON-serialisable parts (canonical JSON)."""
  digest = hashlib.sha256()
  for part in parts:
    if not isinstance(part, (bytes, bytearray, memoryview)):
      part = json.dumps(part, sort_keys=True, separators=(',', ':')).encode()
    digest.update(hashlib.sha256(part).digest())
  return digest.hexdigest()[:16]


class Checkpoint(abc.ABC):
  """A pre-trained network seen as a function of raw images.

  Attributes:
    name: a human-readable name (recorded in results).
    input_size: the side in pixels images are resized to before the network.
    feature_dim: D, the width of the pooled pre-logits.
    has_head: whether the source classifier's logits are available.
    num_classes: K, the number of source classes (0 without a head).
    fingerprint: 16 hex digits that change whenever the weights or the preprocessing change; a
      cache key for extracted features.
    preprocessing: a small JSON-serialisable dict describing the resize and normalisation.
  """

  name: str
  input_size: int
  feature_dim: int
  has_head: bool
  num_classes: int
  fingerprint: str
  preprocessing: dict[str, Any]

  @abc.abstractmethod
  def _apply(self, images: np.ndarray) -> dict[str, Any]:
    """`apply_batch` on images already checked by `check_images`."""

  def apply_batch(self, images) -> dict[str, Any]:
    """Runs the network on one batch of raw images.

    Args:
      images: [B, H, W, 3] uint8, or float in [0, 1].

    Returns:
      {'pre_logits': [B, D]} and, where `has_head`, 'logits': [B, K] (NumPy or JAX arrays). Each
      new input shape compiles once; feed fixed-shape batches.
    """
    return self._apply(features_lib.check_images(images))

  def apply_sharded(self, images, mesh) -> dict[str, Any]:
    """`apply_batch` with the batch split across the devices of a 1-D `mesh` (data parallel).

    The default runs `apply_batch` on the host (e.g. a TensorFlow SavedModel, which JAX cannot
    place); JAX checkpoints override it (`FlaxCheckpoint`).

    Args:
      images: [B, H, W, 3] raw images, B a multiple of the mesh size.
      mesh: a `jax.sharding.Mesh` with one axis (`ckpt_rank.parallel.local_mesh()`).
    """
    del mesh
    return self.apply_batch(images)

  def outputs(self, images, *, batch_size: int = 64) -> dict[str, np.ndarray]:
    """All outputs over N raw images in one pass: 'pre_logits' [N, D] and, with a head, 'logits'.

    Batches have min(batch_size, N) rows, the last one padded, so one shape is compiled.
    """
    images = features_lib.check_images(images)
    return features_lib.batched_apply(self._apply, images,
                                      batch_size=min(int(batch_size), images.shape[0]),
                                      progress=False, name=self.name)

  def features(self, images, *, batch_size: int = 64) -> np.ndarray:
    """Pooled pre-logits [N, D] of raw images [N, H, W, 3]."""
    return self.outputs(images, batch_size=batch_size)['pre_logits']

  def logits(self, images, *, batch_size: int = 64) -> np.ndarray:
    """Source-classifier logits [N, K] of raw images [N, H, W, 3]; ValueError without a head."""
    if not self.has_head:
      raise ValueError(f'Checkpoint {self.name!r} has no classifier head, so no logits.')
    return self.outputs(images, batch_size=batch_size)['logits']

  def __repr__(self) -> str:
    return (f'{type(self).__name__}(name={self.name!r}, input_size={self.input_size}, '
            f'feature_dim={self.feature_dim}, num_classes={self.num_classes}, '
            f'fingerprint={self.fingerprint!r})')
