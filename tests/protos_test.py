"""Tests for ckpt_rank/protos: the checked-in generated code is current, and messages round-trip."""

import importlib.util
import math
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
from google.protobuf import json_format

from ckpt_rank.protos import results_pb2

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_ROOT, 'tools', 'gen_protos.sh')
_GENERATED = os.path.join('ckpt_rank', 'protos', 'results_pb2.py')


def _pinned_version() -> str:
  with open(_SCRIPT) as f:
    for line in f:
      if line.startswith('GRPCIO_TOOLS_VERSION='):
        return line.split('=', 1)[1].strip()
  raise AssertionError(f'{_SCRIPT} does not set GRPCIO_TOOLS_VERSION.')


def _full_results(nan: float = 0.25) -> results_pb2.Results:
  """A Results message with every message type and field kind set (maps, repeated, Timestamp)."""
  results = results_pb2.Results(measures=['nleep(pca_energy=0.8)', 'leep'])
  run = results.run
  run.config_json = '{"seed": 0}'
  run.config['seed'].number_value = 0
  run.config['fine_tune.learning_rates'].list_value.values.add().number_value = 0.01
  run.config['name'].string_value = 'offline'
  run.versions.jax = '0.10.2'
  run.versions.other['optax'] = '0.2.8'
  run.devices.extend(['TFRT_CPU_0'])
  run.host, run.git_commit, run.wall_seconds = 'vm', 'abc123-dirty', 12.5
  run.start_time.FromJsonString('2026-11-27T08:00:00.250Z')
  run.end_time.FromJsonString('2026-11-27T08:00:12.750Z')
  results.tasks.add(name='fashion_mnist', num_classes=10, num_train=1000, num_test=500,
                    details_json='{"split": "train800val200"}')
  results.checkpoints.add(name='mobilenet_v2', spec='mobilenet_v2_imagenet', fingerprint='ab' * 8,
                          feature_dim=1280, has_head=True, preprocessing_json='{"size": 224}')
  results.groups.add(name='architectures', description='ImageNet', checkpoints=['mobilenet_v2'])
  results.features.add(checkpoint='mobilenet_v2', task='fashion_mnist', role='train800',
                       num_examples=800, feature_dim=1280, logits_dim=1000, seconds=3.5,
                       images_per_second=228.6, cache_hit=True, cache_path='/tmp/x.npz')
  score = results.scores.add(measure='nleep(pca_energy=0.8)', checkpoint='mobilenet_v2',
                             task='fashion_mnist', value=-1.5, spread=0.1,
                             per_seed=[-1.4, -1.6], seeds=[4294967295, 7], wall_seconds=0.3,
                             details_json='{"pca_dim": 12}')
  score.hyper_parameters['pca_energy'].number_value = 0.8
  results.scores.add(measure='leep', checkpoint='pixels', task='fashion_mnist',
                     skipped_reason='no head')
  truth = results.ground_truth.add(checkpoint='mobilenet_v2', task='fashion_mnist', accuracy=0.9,
                                   wall_seconds=100.0, source='committed table gt.csv')
  truth.best_settings['learning_rate'].number_value = 0.01
  entry = truth.sweep.add(accuracy=0.9, wall_seconds=50.0)
  entry.settings['learning_rate'].number_value = 0.01
  entry.settings['schedule'].string_value = 'warmup_step'
  entry.metrics['train_accuracy'] = 0.99
  evaluation = results.rankings.add(measure='leep', task='fashion_mnist', group='architectures',
                                    checkpoints=['a', 'b'], seeds=[1, 2],
                                    warnings=['pearson: scores are constant'])
  evaluation.metrics['recall@1'].CopyFrom(
      results_pb2.Statistic(mean=0.5, spread=0.5, per_seed=[0.0, 1.0]))
  evaluation.metrics['pearson'].CopyFrom(results_pb2.Statistic(mean=nan, per_seed=[nan, nan]))
  results.rankings.add(measure='leep', task='mnist', skipped_reason='1 checkpoint')
  return results


class GeneratedCodeTest(absltest.TestCase):

  def test_checked_in_code_is_what_the_pinned_generator_writes(self):
    pin = _pinned_version()
    if importlib.util.find_spec('grpc_tools') is None:
      self.fail(f'grpcio-tools is not installed, so the checked-in {_GENERATED} cannot be '
                f'checked: install the pinned generator with `{sys.executable} -m pip install '
                f'grpcio-tools=={pin}` (it is in requirements-test.txt).')
    with tempfile.TemporaryDirectory() as out:
      # The script itself refuses another grpcio-tools version and says which to install.
      process = subprocess.run(['bash', _SCRIPT, out], capture_output=True, text=True,
                               env=dict(os.environ, PYTHON=sys.executable), timeout=120)
      self.assertEqual(process.returncode, 0, f'tools/gen_protos.sh failed:\n{process.stderr}')
      with open(os.path.join(out, _GENERATED), 'rb') as f:
        regenerated = f.read()
    with open(os.path.join(_ROOT, _GENERATED), 'rb') as f:
      checked_in = f.read()
    self.assertEqual(checked_in, regenerated,
                     f'{_GENERATED} is stale: run tools/gen_protos.sh after editing results.proto.')

  def test_descriptor_matches_proto_file(self):
    # Independent of the generator: every message declared in the .proto exists in the module.
    with open(os.path.join(_ROOT, 'ckpt_rank', 'protos', 'results.proto')) as f:
      declared = [line.split()[1] for line in f if line.startswith('message ')]
    self.assertEqual(sorted(declared),
                     sorted(results_pb2.DESCRIPTOR.message_types_by_name))
    self.assertEqual(results_pb2.DESCRIPTOR.package, 'ckpt_rank')


class RoundTripTest(absltest.TestCase):

  def test_binary_round_trip(self):
    results = _full_results()
    parsed = results_pb2.Results.FromString(results.SerializeToString())
    self.assertEqual(parsed, results)
    self.assertEqual(parsed.scores[0].seeds, [4294967295, 7])  # uint32 range kept.

  def test_json_round_trip(self):
    results = _full_results()
    text = json_format.MessageToJson(results, preserving_proto_field_name=True)
    self.assertIn('"start_time": "2026-11-27T08:00:00.250Z"', text)
    self.assertIn('"recall@1"', text)
    parsed = json_format.Parse(text, results_pb2.Results())
    self.assertEqual(parsed, results)
    # The camelCase JSON form parses to the same message.
    self.assertEqual(json_format.Parse(json_format.MessageToJson(results), results_pb2.Results()),
                     results)

  def test_nan_survives_both_forms(self):
    # NaN != NaN, so compare the canonical bytes and check the NaNs explicitly.
    results = _full_results(nan=float('nan'))
    binary = results.SerializeToString(deterministic=True)
    from_binary = results_pb2.Results.FromString(binary)
    from_json = json_format.Parse(json_format.MessageToJson(results), results_pb2.Results())
    for parsed in (from_binary, from_json):
      self.assertEqual(parsed.SerializeToString(deterministic=True), binary)
      self.assertTrue(math.isnan(parsed.rankings[0].metrics['pearson'].mean))
    self.assertIn('"NaN"', json_format.MessageToJson(results))

  def test_empty_results_round_trip(self):
    empty = results_pb2.Results()
    self.assertEqual(results_pb2.Results.FromString(empty.SerializeToString()), empty)
    self.assertEqual(json_format.Parse(json_format.MessageToJson(empty), results_pb2.Results()),
                     empty)


if __name__ == '__main__':
  absltest.main()
