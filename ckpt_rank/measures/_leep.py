"""LEEP and NCE: transferability from a checkpoint's source classifier."""

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from ckpt_rank.measures import _validation


def conditional_from_joint(joint: jnp.ndarray) -> jnp.ndarray:
  """Q[y, z] = J[y, z] / m[z] with m[z] = sum_y J[y, z]; 0 where the source column is empty."""
  marginal = joint.sum(axis=0, keepdims=True)
  safe = jnp.where(marginal > 0, marginal, 1)
  return jnp.where(marginal > 0, joint / safe, 0)


def leep_from_posteriors(probs: jnp.ndarray, labels: jnp.ndarray, num_classes: int) -> jnp.ndarray:
  """LEEP of [N, Z] posteriors over Z "source" outcomes; also NLEEP's last step.

  An example whose expected empirical prediction e_i is 0 contributes log(1/C) (a uniform guess)
  instead of -inf.
  """
  n = probs.shape[0]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)  # [N, C]
  joint = onehot.T @ probs / n  # [C, Z]
  cond = conditional_from_joint(joint)
  eep = jnp.sum(cond[labels] * probs, axis=1)  # [N]
  log_eep = jnp.where(eep > 0, jnp.log(jnp.where(eep > 0, eep, 1)), -jnp.log(num_classes))
  return jnp.mean(log_eep)


@functools.partial(jax.jit, static_argnames=('num_classes',))
def _leep_kernel(probs, labels, num_classes):
  return leep_from_posteriors(probs, labels, num_classes)


def leep(source_probs, labels, *, num_classes: Optional[int] = None) -> jnp.ndarray:
  """Log Expected Empirical Prediction (Nguyen et al. 2020).

  With the empirical joint J[y, z] = (1/N) sum_{i: y_i = y} P[i, z] and Q[y, z] = J[y, z] / m[z],
  LEEP = mean_i log sum_z Q[y_i, z] P[i, z]. Range (-inf, 0], higher is better: one-hot source
  predictions that determine the label give 0; uniform ones give log(1/C) for balanced labels.

  Args:
    source_probs: [N, Cs] source-classifier probabilities, rows summing to 1. From logits use
      `jax.nn.softmax` (log-sum-exp stable).
    labels: [N] target labels in [0, C).
    num_classes: C; inferred from `labels` when they are concrete. Required under `jit`/`vmap`.

  Returns:
    A scalar, the mean log expected empirical prediction: float32, or float64 for float64
    probabilities under x64 (16-bit and integer ones are computed in float32).

  References:
    Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned Representations",
    ICML 2020.
  """
  if _validation.is_concrete(source_probs):
    source_probs = _validation.check_probs(source_probs)
  labels, num_classes = _validation.resolve_labels(labels, jnp.shape(source_probs)[0],
                                                   num_classes, 'leep')
  return _leep_kernel(jnp.asarray(source_probs, _validation.float_dtype(source_probs)),
                      jnp.asarray(labels), num_classes)


@functools.partial(jax.jit, static_argnames=('num_classes', 'num_source_classes'))
def _nce_kernel(source_labels, labels, num_classes, num_source_classes):
  n = labels.shape[0]
  cell = labels * num_source_classes + source_labels
  joint = jnp.zeros(num_classes * num_source_classes, jnp.float32).at[cell].add(1.0) / n
  joint = joint.reshape(num_classes, num_source_classes)
  cond = conditional_from_joint(joint)
  # Empty cells contribute 0 (J log Q with J = 0).
  terms = jnp.where(joint > 0, joint * jnp.log(jnp.where(joint > 0, cond, 1)), 0)
  return jnp.sum(terms)


def nce(source_labels, labels, *, num_classes: Optional[int] = None,
        num_source_classes: Optional[int] = None) -> jnp.ndarray:
  """Negative Conditional Entropy -H(Y | Z) (Tran et al. 2019).

  Z are hard source labels (argmax of the source classifier). From the empirical joint of (Y, Z),
  NCE = sum_{y,z} J[y,z] log(J[y,z] / m[z]). Range [-log C, 0], higher is better.

  Args:
    source_labels: [N] integer source-class predictions in [0, Cs).
    labels: [N] target labels in [0, C).
    num_classes: C; inferred from concrete `labels`, required when traced.
    num_source_classes: Cs; inferred from concrete `source_labels`, required when traced.

  Returns:
    A float32 scalar.

  References:
    Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification Tasks",
    ICCV 2019.
  """
  if _validation.is_concrete(source_labels):
    source_labels, num_source_classes = _validation.check_labels(
        source_labels, len(source_labels), num_source_classes, name='source_labels',
        min_per_class=1, min_classes=1)
  elif num_source_classes is None:
    raise ValueError('nce: num_source_classes must be given when source_labels are traced '
                     '(under jit/vmap).')
  labels, num_classes = _validation.resolve_labels(labels, jnp.shape(source_labels)[0],
                                                   num_classes, 'nce')
  return _nce_kernel(jnp.asarray(source_labels, jnp.int32), jnp.asarray(labels, jnp.int32),
                     num_classes, num_source_classes)
