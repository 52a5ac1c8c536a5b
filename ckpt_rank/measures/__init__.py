"""Transferability measures: pure, jit-able, vmappable functions over arrays.

Every measure returns a higher-is-better scalar. Public functions validate concrete inputs and
raise `ValueError` naming the problem; under `jit`/`vmap` pass the static sizes they ask for
(`num_classes`, ...). Configs refer to measures by spec strings, e.g.
``measures.get("nleep(components_per_class=1)")``; `names()` lists them.

Inputs every measure treats alike:

* dtypes: float16, bfloat16, float32, float64, integer (and boolean) arrays. Everything is
  computed, and scores returned, in float32, or float64 for float64 inputs with x64 enabled:
  16-bit scores would tie checkpoints that float32 ones tell apart.
* magnitudes: any finite values. The feature measures other than `linear_probe` first multiply
  the features by the power of two that brings their largest magnitude into [0.5, 1) (exact),
  so nothing overflows or underflows in float32. Of these, the scale-invariant ones (`logme`,
  `h_score`, `shrinkage_h_score`, `knn`, `parc`) give the same score at every magnitude; the
  others have a constant in feature units and say in their docstrings what it does to small or
  large features (`gbc`'s variance floor, `nleep`'s `reg_covar`, `transrate`'s `eps`, `sfda`'s
  adaptive shrinkage). `linear_probe` standardises its features in float32 as given, which
  needs magnitudes roughly between 1e-18 and 1e17.
* NaN or inf anywhere, complex values, a wrong shape: a `ValueError` naming the argument and the
  problem (on concrete inputs; a traced input cannot be inspected).
"""

import dataclasses
import functools
import hashlib
import inspect
import sys
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ckpt_rank import registry
from ckpt_rank.measures._gbc import gbc
from ckpt_rank.measures._hscore import h_score
from ckpt_rank.measures._hscore import shrinkage_h_score
from ckpt_rank.measures._knn import knn
from ckpt_rank.measures._leep import leep
from ckpt_rank.measures._leep import nce
from ckpt_rank.measures._linear import linear_probe
from ckpt_rank.measures._linear import linear_probe_result
from ckpt_rank.measures._linear import ProbeResult
from ckpt_rank.measures._logme import logme
from ckpt_rank.measures._logme import logme_fit
from ckpt_rank.measures._logme import LogMEResult
from ckpt_rank.measures._nleep import chunk_size_for_budget
from ckpt_rank.measures._nleep import nleep
from ckpt_rank.measures._nleep import nleep_batch
from ckpt_rank.measures._nleep import nleep_fit
from ckpt_rank.measures._nleep import num_mixture_components
from ckpt_rank.measures._nleep import NLEEPResult
from ckpt_rank.measures._parc import parc
from ckpt_rank.measures._sfda import sfda
from ckpt_rank.measures._transrate import transrate
from ckpt_rank.measures import _validation

# What a measure consumes from a checkpoint.
FEATURES = 'features'            # [N, D] pooled pre-logits.
SOURCE_PROBS = 'source_probs'    # [N, Cs] softmax of the source classifier's logits.
SOURCE_LABELS = 'source_labels'  # [N] argmax of the source classifier's logits.


@dataclasses.dataclass(frozen=True)
class Measure:
  """A registered measure bound to keyword hyper-parameters from its spec string."""
  name: str
  fn: Callable[..., jnp.ndarray]
  input: str
  uses_key: bool
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def needs_head(self) -> bool:
    """Whether the measure needs the checkpoint's source classifier."""
    return self.input != FEATURES

  @property
  def code_version(self) -> str:
    """A hash of the source of the measure's module and the measure modules it imports.

    Stored with every score an experiment writes, so that a score computed by other code (a
    fixed bug, a changed default) is recomputed instead of reused.
    """
    return _code_version(self.fn.__module__)

  @property
  def spec(self) -> str:
    args = ', '.join(f'{k}={v!r}' for k, v in sorted(self.kwargs.items()))
    return f'{self.name}({args})' if args else self.name

  def __call__(self, *args, **kwargs) -> jnp.ndarray:
    return self.fn(*args, **{**self.kwargs, **kwargs})

  def score(self, labels, *, features=None, source_logits=None,
            key: Optional[jax.Array] = None) -> jnp.ndarray:
    """Scores one checkpoint from what it produced on the target task."""
    if self.input == FEATURES:
      if features is None:
        raise ValueError(f'Measure {self.spec} needs features.')
      inputs = features
    else:
      if source_logits is None:
        raise ValueError(f'Measure {self.spec} needs source-classifier logits; this checkpoint '
                         'has no head.')
      if not _validation.is_concrete(source_logits):
        logits = jnp.asarray(source_logits)
        inputs = (jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
                  if self.input == SOURCE_PROBS else jnp.argmax(logits, axis=-1))
      else:
        # In float64 NumPy: logits of any finite magnitude (1e200 too) give their softmax, which
        # a float32 cast first would turn into inf and then NaN.
        logits = _validation.check_features(source_logits, 'source_logits', min_examples=1)
        logits = logits.astype(np.float64)
        if self.input == SOURCE_PROBS:
          shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
          inputs = (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
        else:
          inputs = np.argmax(logits, axis=-1)
    extra = {'key': key} if (self.uses_key and key is not None) else {}
    return self(inputs, labels, **extra)


_REGISTRY: registry.Registry[Measure] = registry.Registry('measure')


@functools.lru_cache(maxsize=None)
def _code_version(module_name: str) -> str:
  module = sys.modules[module_name]
  modules = {module_name: module}
  for value in vars(module).values():
    if inspect.ismodule(value) and value.__name__.startswith(__name__ + '.'):
      modules[value.__name__] = value
  digest = hashlib.sha1()
  for name in sorted(modules):
    with open(inspect.getsourcefile(modules[name]), 'rb') as f:
      digest.update(name.encode() + b'\0' + f.read())
  return digest.hexdigest()[:12]


def _register(name: str, fn: Callable[..., jnp.ndarray], input_kind: str) -> None:
  uses_key = 'key' in inspect.signature(fn).parameters
  _REGISTRY.register(name, Measure(name, fn, input_kind, uses_key))


_register('leep', leep, SOURCE_PROBS)
_register('nce', nce, SOURCE_LABELS)
_register('nleep', nleep, FEATURES)
_register('linear_probe', linear_probe, FEATURES)
_register('knn', knn, FEATURES)
_register('logme', logme, FEATURES)
_register('h_score', h_score, FEATURES)
_register('shrinkage_h_score', shrinkage_h_score, FEATURES)
_register('gbc', gbc, FEATURES)
_register('transrate', transrate, FEATURES)
_register('sfda', sfda, FEATURES)
_register('parc', parc, FEATURES)


def names() -> list[str]:
  """The registered measure names."""
  return _REGISTRY.names()


def get(spec: str) -> Measure:
  """Returns the measure named by ``"name"`` or ``"name(key=value, ...)"``.

  Raises:
    ValueError: unknown name (the message lists the known ones) or a keyword the measure does not
      take (the message lists the ones it does).
  """
  name, kwargs = registry.parse_spec(spec)
  base = _REGISTRY.lookup(name)
  params = inspect.signature(base.fn).parameters
  allowed = sorted(p.name for p in params.values()
                   if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name != 'key')
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f'Measure {name!r} takes no hyper-parameter {", ".join(unknown)}; it takes: '
                     f'{", ".join(allowed)}.')
  return dataclasses.replace(base, kwargs=kwargs)


__all__ = [
    'FEATURES', 'SOURCE_PROBS', 'SOURCE_LABELS', 'LogMEResult', 'Measure', 'NLEEPResult',
    'chunk_size_for_budget', 'gbc', 'get', 'h_score', 'knn', 'leep', 'linear_probe', 'logme',
    'logme_fit', 'names', 'nce', 'nleep', 'nleep_batch', 'nleep_fit', 'num_mixture_components',
    'parc', 'sfda', 'shrinkage_h_score', 'transrate',
]
