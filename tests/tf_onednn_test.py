"""TensorFlow's oneDNN bug that `ckpt_rank/__init__.py` works around, reproduced in subprocesses.

The weight gradient of a stride-2 1x1 convolution whose input channels are not a multiple of
oneDNN's block (3 or 8 here) corrupts the heap in oneDNN's `jit_1x1` backward-weights kernel: the
process aborts ("malloc(): corrupted top size", "munmap_chunk(): invalid pointer") or segfaults.
Seen with AVX-512 kernels (Sapphire Rapids, Zen 4) for 8 channels, and with oneDNN limited to
AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) for 3 channels; TensorFlow's Eigen kernels
(TF_ENABLE_ONEDNN_OPTS=0) compute it correctly. Each case runs in its own process, since the
failure takes the process down.
"""

import os
import platform
import subprocess
import sys
import textwrap

from absl.testing import absltest
from absl.testing import parameterized

# The reproduction: the gradient of sum(conv(x, w)^2) with respect to w, against NumPy's float64
# einsum over the strided input. It prints the relative error and whether oneDNN was on.
_REPRO = textwrap.dedent('''
    import sys
    if sys.argv[1] == 'ckpt_rank_first':
      import ckpt_rank  # Sets TensorFlow's default before TensorFlow is imported.
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port
    channels, stride = int(sys.argv[2]), 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 60, 60, channels)).astype(np.float32)
    w = tf.Variable(rng.normal(size=(1, 1, channels, 16)).astype(np.float32))

    @tf.function
    def grad(x):
      with tf.GradientTape() as tape:
        y = tf.nn.conv2d(x, w, strides=stride, padding='VALID')
        loss = tf.reduce_sum(y * y)
      return tape.gradient(loss, w)

    for _ in range(20):  # The corruption may surface only on a later allocation.
      g = grad(tf.constant(x)).numpy()[0, 0]
    xs = x[:, ::stride, ::stride].astype(np.float64)
    ref = np.einsum('bhwi,bhwo->io', xs, 2 * xs @ w.numpy()[0, 0].astype(np.float64))
    print('onednn', bool(_pywrap_util_port.IsMklEnabled()))
    print('relerr', float(np.max(np.abs(g - ref)) / np.max(np.abs(ref))))
''')


def _run(mode: str, channels: int, **env) -> subprocess.CompletedProcess:
  environ = {k: v for k, v in os.environ.items() if k != 'TF_ENABLE_ONEDNN_OPTS'}
  environ.update(TF_CPP_MIN_LOG_LEVEL='3', **env)
  return subprocess.run([sys.executable, '-c', _REPRO, mode, str(channels)], env=environ,
                        capture_output=True, text=True, timeout=240, check=False)


class OneDnnTest(parameterized.TestCase):

  @parameterized.parameters(3, 8, 16)
  def test_strided_1x1_weight_gradient_after_importing_ckpt_rank(self, channels):
    result = _run('ckpt_rank_first', channels)
    self.assertEqual(result.returncode, 0, f'exit {result.returncode}:\n{result.stderr[-3000:]}')
    lines = dict(line.split() for line in result.stdout.split('\n') if line)
    self.assertEqual(lines['onednn'], 'False')
    # Each gradient entry sums 8 * 30 * 30 = 7200 float32 products of O(1) terms: relative
    # error ~ sqrt(7200) * 2^-24 ~ 5e-6 typical, 7200 * 2^-24 = 4.3e-4 worst case.
    self.assertLess(float(lines['relerr']), 4.3e-4)

  def test_a_users_explicit_choice_is_kept(self):
    result = _run('ckpt_rank_first', 16, TF_ENABLE_ONEDNN_OPTS='1')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('onednn True', result.stdout)

  @absltest.skipIf(platform.machine() not in ('x86_64', 'AMD64'), 'oneDNN default of x86 builds')
  def test_tensorflow_alone_uses_onednn(self):
    # The default that the workaround changes (16 channels: a shape oneDNN computes correctly).
    result = _run('tensorflow_alone', 16)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn('onednn True', result.stdout)


if __name__ == '__main__':
  absltest.main()
