"""ckpt_rank: rank pre-trained checkpoints by how well they will transfer to a downstream task."""

import os as _os

# TensorFlow's oneDNN kernels (on by default in x86 builds) corrupt the heap when they compute the
# weight gradient of a strided 1x1 convolution whose input channels are not a multiple of the
# kernel's block (e.g. 3 or 8 channels, stride 2: fer's emotion CNN has one). The process then
# aborts or segfaults inside `finetune_tf`'s training step: with AVX-512 kernels (Intel Sapphire
# Rapids, AMD Zen 4) for 8 channels, and even with oneDNN limited to AVX2 for 3 channels.
# tests/tf_onednn_test.py holds the reproduction. TensorFlow's own Eigen kernels compute the same
# operations (other summation order, float32 rounding only), so every TF path of ckpt_rank (TF-Hub
# extraction, TF fine-tuning, SavedModel export) runs without oneDNN unless the user chose
# otherwise. The variable is read when TensorFlow is imported, hence here: importing any ckpt_rank
# module first covers every later `import tensorflow`. `finetune_tf` warns when TensorFlow was
# imported earlier with oneDNN on.
_os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

__version__ = '0.1.0'
