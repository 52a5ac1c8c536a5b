"""Tests for the leave-one-out kNN accuracy."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import distance as scipy_distance

from ckpt_rank import measures
from ckpt_rank.measures import _knn


def reference_knn(features, labels, k, metric):
  """Brute-force NumPy LOO kNN with the documented rules (self by index, ties to the nearest)."""
  features = np.asarray(features, np.float64)
  n = len(features)
  if metric == 'cosine':
    norms = np.linalg.norm(features, axis=1)
    dist = np.ones((n, n))  # A zero-norm row is at distance 1 from everything.
    nonzero = norms > 0
    dist[np.ix_(nonzero, nonzero)] = scipy_distance.cdist(features[nonzero], features[nonzero],
                                                          'cosine')
  else:
    dist = scipy_distance.cdist(features, features, 'sqeuclidean')
  np.fill_diagonal(dist, np.inf)
  num_classes = labels.max() + 1
  correct = 0
  for i in range(n):
    neighbours = np.argsort(dist[i], kind='stable')[:k]
    votes = np.bincount(labels[neighbours], minlength=num_classes)
    tied = [j for j in neighbours if votes[labels[j]] == votes.max()]
    correct += labels[tied[0]] == labels[i]
  return correct / n


def make_data(n=53, d=6, c=3, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % c
  rng.shuffle(labels)
  means = rng.normal(size=(c, d))
  features = means[labels] + 1.2 * rng.normal(size=(n, d))
  return features.astype(np.float32), labels


class KnnTest(parameterized.TestCase):

  @parameterized.product(metric=['cosine', 'l2'], k=[1, 4, 7], block_size=[7, 1024])
  def test_matches_brute_force_reference(self, metric, k, block_size):
    # 53 examples: blocks of 7 leave a padded last block; 1024 is one block capped at N.
    features, labels = make_data()
    got = measures.knn(features, labels, k=k, metric=metric, block_size=block_size)
    self.assertAlmostEqual(float(got), reference_knn(features, labels, k, metric), places=6)

  @parameterized.parameters('cosine', 'l2')
  def test_exact_duplicates_count_as_neighbours(self, metric):
    # Every point appears twice with the same label: its twin is at distance 0 and must be found
    # (exclusion is by index, not by distance), so 1-NN is perfect although the classes overlap.
    rng = np.random.default_rng(1)
    base = rng.normal(size=(20, 4)).astype(np.float32)
    base_labels = rng.integers(0, 3, 20)
    features, labels = np.concatenate([base, base]), np.concatenate([base_labels, base_labels])
    self.assertEqual(float(measures.knn(features, labels, k=1, metric=metric, block_size=6)), 1.0)
    for k in (2, 3, 5):
      self.assertAlmostEqual(float(measures.knn(features, labels, k=k, metric=metric)),
                             reference_knn(features, labels, k, metric), places=6)

  @parameterized.parameters(([0, 1, 2, 2, 1], 1), ([0, 2, 1, 1, 2], 2))
  def test_vote_tie_goes_to_nearest_neighbours_class(self, key_labels, expected):
    # Query at 0 (index 0, itself excluded); neighbours at squared distances 1, 4, 9, 16. With
    # k = 4 the two classes get two votes each, and the class of the nearest neighbour wins.
    keys = jnp.array([[0.], [1.], [-2.], [3.], [-4.]])
    prediction = _knn._block_predictions(
        keys[:1], jnp.array([0]), keys, jnp.sum(keys**2, axis=1), jnp.array(key_labels), k=4,
        metric='l2', num_classes=3)
    self.assertEqual(int(prediction[0]), expected)

  def test_known_answers(self):
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 10)
    separated = (10 * np.eye(4)[labels] + 0.1 * rng.normal(size=(40, 4))).astype(np.float32)
    for metric in ('cosine', 'l2'):
      self.assertEqual(float(measures.knn(separated, labels, k=5, metric=metric)), 1.0)
    noise = rng.normal(size=(400, 8)).astype(np.float32)
    random_labels = rng.integers(0, 4, 400)
    self.assertAlmostEqual(float(measures.knn(noise, random_labels, k=5)), 0.25, delta=0.08)

  def test_zero_norm_rows_under_cosine_give_no_nan(self):
    features, labels = make_data(n=30)
    features[[3, 17]] = 0
    got = measures.knn(features, labels, k=3, metric='cosine', block_size=8)
    self.assertTrue(np.isfinite(float(got)))
    self.assertAlmostEqual(float(got), reference_knn(features, labels, 3, 'cosine'), places=6)

  def test_jit_equals_eager(self):
    features, labels = make_data()
    fn = jax.jit(lambda f, l: measures.knn(f, l, k=3, metric='l2', num_classes=3, block_size=16))
    self.assertEqual(float(fn(features, labels)),
                     float(measures.knn(features, labels, k=3, metric='l2', block_size=16)))

  def test_vmap_over_feature_sets_equals_loop(self):
    labels = make_data()[1]
    stack = np.stack([make_data(seed=s)[0] for s in range(3)])
    batched = jax.jit(jax.vmap(
        lambda f: measures.knn(f, labels, k=5, num_classes=3, block_size=16)))(stack)
    looped = [float(measures.knn(f, labels, k=5, block_size=16)) for f in stack]
    np.testing.assert_allclose(np.asarray(batched), looped, atol=1e-7)

  def test_registered(self):
    features, labels = make_data()
    measure = measures.get("knn(k=3, metric='l2')")
    self.assertEqual(float(measure.score(labels, features=features)),
                     float(measures.knn(features, labels, k=3, metric='l2')))

  def test_traced_labels_need_num_classes(self):
    features, labels = make_data()
    with self.assertRaisesRegex(ValueError, 'num_classes must be given'):
      jax.jit(lambda f, l: measures.knn(f, l))(features, labels)

  @parameterized.named_parameters(
      ('nan', lambda f, l: (np.where(np.arange(f.size).reshape(f.shape) == 5, np.nan, f), l),
       'non-finite'),
      ('inf', lambda f, l: (np.where(np.arange(f.size).reshape(f.shape) == 5, np.inf, f), l),
       'non-finite'),
      ('one_d', lambda f, l: (f[:, 0], l), r'must be 2-D'),
      ('negative_label', lambda f, l: (f, np.where(np.arange(len(l)) == 0, -1, l)), 'negative'),
      ('non_integer_label', lambda f, l: (f, l + 0.5), 'non-integer'),
      ('length_mismatch', lambda f, l: (f, l[:-1]), 'length mismatch'),
      ('single_example_class', lambda f, l: (f, np.where(np.arange(len(l)) == 0, 7, l)),
       'only 1 example'),
  )
  def test_bad_inputs_raise(self, corrupt, message):
    features, labels = corrupt(*make_data(n=30))
    with self.assertRaisesRegex(ValueError, message):
      measures.knn(features, labels)

  def test_label_out_of_range_raises(self):
    features, labels = make_data(n=30)
    with self.assertRaisesRegex(ValueError, 'out of range'):
      measures.knn(features, labels, num_classes=2)

  @parameterized.named_parameters(
      ('zero', dict(k=0), r'k must be an integer in \[1, N - 1 = 29\]'),
      ('n', dict(k=30), r'k must be an integer in \[1, N - 1 = 29\]'),
      ('float', dict(k=2.0), 'k must be an integer'),
      ('metric', dict(metric='manhattan'), "metric must be one of 'cosine', 'l2'"),
      ('block_size', dict(block_size=0), 'block_size must be a positive integer'),
  )
  def test_bad_hyper_parameters_raise(self, kwargs, message):
    features, labels = make_data(n=30)
    with self.assertRaisesRegex(ValueError, message):
      measures.knn(features, labels, **kwargs)


if __name__ == '__main__':
  absltest.main()
