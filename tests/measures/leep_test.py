"""Tests for LEEP and NCE against independent NumPy references."""

import functools
import hashlib

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank import measures
from ckpt_rank.measures import _leep
from ckpt_rank.measures import _sfda


def leep_reference(probs, labels):
  """LEEP from its definition, float64, loops instead of matrix products."""
  probs = np.asarray(probs, np.float64)
  n, num_source = probs.shape
  num_classes = labels.max() + 1
  joint = np.zeros((num_classes, num_source))
  for i in range(n):
    joint[labels[i]] += probs[i] / n
  marginal = joint.sum(0)
  cond = np.zeros_like(joint)
  for z in range(num_source):
    if marginal[z] > 0:
      cond[:, z] = joint[:, z] / marginal[z]
  eep = np.array([cond[labels[i]] @ probs[i] for i in range(n)])
  return np.mean(np.where(eep > 0, np.log(np.where(eep > 0, eep, 1)), np.log(1 / num_classes)))


def nce_reference(source_labels, labels):
  """-H(Y | Z) from counts, float64."""
  n = len(labels)
  total = 0.0
  for z in np.unique(source_labels):
    in_z = source_labels == z
    p_z = in_z.mean()
    for y in np.unique(labels[in_z]):
      p_yz = np.sum(in_z & (labels == y)) / n
      total += p_yz * np.log(p_yz / p_z)
  return total


def random_problem(seed, n=60, num_source=7, num_classes=4):
  rng = np.random.default_rng(seed)
  labels = np.concatenate([np.arange(num_classes)] * 2 +
                          [rng.integers(0, num_classes, n - 2 * num_classes)])
  logits = rng.normal(size=(n, num_source)) * 2 + 3 * np.eye(num_source)[labels % num_source]
  probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=1))
  return probs, labels


class LeepTest(parameterized.TestCase):

  @parameterized.parameters(0, 1, 2, 3)
  def test_matches_reference(self, seed):
    probs, labels = random_problem(seed)
    np.testing.assert_allclose(measures.leep(probs, labels), leep_reference(probs, labels),
                               rtol=1e-5, atol=1e-6)

  @parameterized.parameters(2, 5, 10)
  def test_perfect_predictions_give_zero(self, num_classes):
    labels = np.repeat(np.arange(num_classes), 4)
    probs = np.eye(num_classes, dtype=np.float32)[labels]
    self.assertAlmostEqual(float(measures.leep(probs, labels)), 0.0, places=6)

  @parameterized.parameters(2, 5, 10)
  def test_uniform_predictions_give_log_one_over_c(self, num_classes):
    labels = np.repeat(np.arange(num_classes), 6)
    probs = np.full((len(labels), 13), 1 / 13, np.float32)
    self.assertAlmostEqual(float(measures.leep(probs, labels)), np.log(1 / num_classes), places=5)

  def test_empty_source_column_is_not_nan(self):
    probs, labels = random_problem(0, num_source=5)
    probs = np.concatenate([probs, np.zeros((len(labels), 1), np.float32)], axis=1)
    score = float(measures.leep(probs, labels))
    self.assertTrue(np.isfinite(score))
    np.testing.assert_allclose(score, leep_reference(probs, labels), rtol=1e-5)

  def test_zero_eep_takes_uniform_guess(self):
    # A row that sums to 1 always gives e_i >= max_z P[i, z]^2 / N > 0, so e_i = 0 arises only by
    # underflow; the kernel shared with NLEEP is exercised directly with an all-zero row.
    labels = jnp.array([0, 0, 1, 1, 0])
    probs = jnp.eye(2)[jnp.array([0, 0, 1, 1, 0])].at[4].set(0.0)
    expected = np.mean([0.0, 0.0, 0.0, 0.0, np.log(1 / 2)])
    np.testing.assert_allclose(_leep.leep_from_posteriors(probs, labels, 2), expected, atol=1e-6)

  def test_is_mean_of_log_not_log_of_mean(self):
    probs, labels = random_problem(5)
    score = float(measures.leep(probs, labels))
    # The "average probability" variant found in some public copies is a different number.
    n = len(labels)
    joint = np.zeros((labels.max() + 1, probs.shape[1]))
    np.add.at(joint, labels, probs / n)
    eep = (joint / joint.sum(0))[labels] * probs
    self.assertGreater(abs(score - np.log(eep.sum(1).mean())), 1e-3)

  def test_jit_and_vmap(self):
    stack = [random_problem(s)[0] for s in range(3)]
    labels = random_problem(0)[1]
    fn = jax.jit(functools.partial(measures.leep, num_classes=4))
    eager = [float(measures.leep(p, labels)) for p in stack]
    np.testing.assert_allclose(fn(stack[0], labels), eager[0], rtol=1e-6)
    batched = jax.vmap(fn, in_axes=(0, None))(jnp.stack(stack), labels)
    np.testing.assert_allclose(batched, eager, rtol=1e-6)

  def test_traced_labels_need_num_classes(self):
    probs, labels = random_problem(0)
    with self.assertRaisesRegex(ValueError, 'num_classes must be given'):
      jax.jit(measures.leep)(probs, labels)

  @parameterized.named_parameters(
      ('nan', lambda p, y: (np.where(np.arange(p.size).reshape(p.shape) == 3, np.nan, p), y),
       'non-finite'),
      ('not_summing_to_one', lambda p, y: (p * 0.9, y), 'sum to 1'),
      ('logits', lambda p, y: (np.log(p) * 3, y), r'\[0, 1\]'),
      ('one_d', lambda p, y: (p[:, 0], y), '2-D'),
      ('length_mismatch', lambda p, y: (p, y[:-1]), 'length mismatch'),
      ('negative_label', lambda p, y: (p, np.where(np.arange(len(y)) == 0, -1, y)), 'negative'),
      ('float_label', lambda p, y: (p, y + 0.5), 'non-integer'),
      ('singleton_class', lambda p, y: (p, np.append(y[:-1], 9)), 'class 9 has only 1'),
  )
  def test_bad_input(self, corrupt, message):
    probs, labels = corrupt(*random_problem(0))
    with self.assertRaisesRegex(ValueError, message):
      measures.leep(probs, labels)

  def test_label_out_of_range(self):
    probs, labels = random_problem(0)
    with self.assertRaisesRegex(ValueError, 'out of range'):
      measures.leep(probs, labels, num_classes=3)


class NceTest(parameterized.TestCase):

  @parameterized.parameters(0, 1, 2)
  def test_matches_reference(self, seed):
    probs, labels = random_problem(seed)
    source = probs.argmax(1)
    np.testing.assert_allclose(measures.nce(source, labels), nce_reference(source, labels),
                               rtol=1e-5, atol=1e-6)

  def test_range_and_known_answers(self):
    labels = np.repeat(np.arange(4), 25)
    self.assertAlmostEqual(float(measures.nce(labels, labels)), 0.0, places=6)
    self.assertAlmostEqual(float(measures.nce(np.zeros(100, int), labels)), -np.log(4), places=5)
    rng = np.random.default_rng(0)
    for _ in range(5):
      score = float(measures.nce(rng.integers(0, 6, 100), labels))
      self.assertBetween(score, -np.log(4) - 1e-6, 1e-6)

  def test_jit_and_vmap(self):
    labels = random_problem(0)[1]
    sources = np.stack([random_problem(s)[0].argmax(1) for s in range(3)])
    fn = jax.jit(functools.partial(measures.nce, num_classes=4, num_source_classes=7))
    loop = [float(measures.nce(s, labels)) for s in sources]
    np.testing.assert_allclose(jax.vmap(fn, in_axes=(0, None))(sources, labels), loop, rtol=1e-6)

  def test_bad_input(self):
    labels = random_problem(0)[1]
    with self.assertRaisesRegex(ValueError, 'source_labels .*negative'):
      measures.nce(np.full_like(labels, -1), labels)
    with self.assertRaisesRegex(ValueError, 'length mismatch'):
      measures.nce(labels[:-1], labels)
    with self.assertRaisesRegex(ValueError, 'num_source_classes must be given'):
      jax.jit(functools.partial(measures.nce, num_classes=4))(labels, labels)


class RegistryTest(parameterized.TestCase):

  def test_names_and_get(self):
    self.assertContainsSubset({'leep', 'nce', 'nleep', 'linear_probe', 'knn'}, measures.names())
    measure = measures.get('nleep(components_per_class=1, covariance_type="diag")')
    self.assertEqual(measure.name, 'nleep')
    self.assertEqual(dict(measure.kwargs), {'components_per_class': 1, 'covariance_type': 'diag'})
    self.assertFalse(measure.needs_head)
    self.assertTrue(measures.get('leep').needs_head)

  def test_score_from_logits(self):
    probs, labels = random_problem(0)
    logits = np.log(probs)
    np.testing.assert_allclose(measures.get('leep').score(labels, source_logits=logits),
                               leep_reference(probs, labels), rtol=1e-4)
    np.testing.assert_allclose(measures.get('nce').score(labels, source_logits=logits),
                               nce_reference(probs.argmax(1), labels), rtol=1e-5)
    with self.assertRaisesRegex(ValueError, 'has no head'):
      measures.get('leep').score(labels, features=probs)

  def test_code_version_hashes_the_measure_modules(self):
    # The same module: one version; hyper-parameters do not change it.
    self.assertEqual(measures.get('leep').code_version, measures.get('nce').code_version)
    self.assertEqual(measures.get('nleep').code_version,
                     measures.get('nleep(components_per_class=1)').code_version)
    self.assertNotEqual(measures.get('leep').code_version, measures.get('sfda').code_version)
    # Independently: SFDA's module and the measure module it imports, hashed in name order.
    digest = hashlib.sha1()
    for module in sorted([_sfda, _sfda._validation], key=lambda m: m.__name__):
      with open(module.__file__, 'rb') as f:
        digest.update(module.__name__.encode() + b'\0' + f.read())
    self.assertEqual(measures.get('sfda').code_version, digest.hexdigest()[:12])

  @parameterized.parameters(
      ('unknown_measure', 'Unknown measure .*known: .*leep'),
      ('nleep(bogus=1)', 'takes no hyper-parameter bogus'),
      ('nleep(1)', 'keyword arguments only'),
      ('nleep(k=len)', 'must be a Python literal'),
  )
  def test_bad_specs(self, spec, message):
    with self.assertRaisesRegex(ValueError, message):
      measures.get(spec)


if __name__ == '__main__':
  absltest.main()
