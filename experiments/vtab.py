r"""NeuCRaB as the paper built it (Li et al., "Ranking Neural Checkpoints", CVPR 2021).

Needs TF-Hub (or a filled $TFHUB_CACHE_DIR) and the four TFDS datasets prepared in the data dir;
`ckpt_rank.preflight` checks both before any work and says what is missing. Run:

  python -m ckpt_rank.main --config=experiments/vtab.py:archive_dir=/data/rank_ckpt,table=GT.json \
      --workdir=/tmp/neucrab

Quick try on a machine with TF-Hub / TFDS access (3 TF-Hub modules and 2 built-in Flax
checkpoints, 200 Caltech101 images; fine-tunes the two built-ins in the run for 20 steps):

  python -m ckpt_rank.main --config=experiments/vtab.py:runlocal --workdir=/tmp/neucrab_local

Options after the colon, comma separated (`config_lib.parse_arg`):
  archive_dir=DIR   the authors' archive checkpoints, exported as SavedModels (see below);
  group3=tfhub      Group III from TF-Hub (default; Inception-v4 from the archive), or
  group3=archive    Group III from the archive: the paper's own weights (needs archive_dir);
  table=PATH        ground-truth table (`config.ground_truth.table`), see "Ground truth";
  runlocal          the quick variant above.
Fields can be overridden as usual, e.g. `--config.measures="('nleep', 'linear_probe')"`.

The pool (docs/benchmark.md; the authors' README lists the same checkpoints):
- Group I, mixed supervision (16): the 14 VTAB representation modules
  ``https://tfhub.dev/vtab/<name>/1`` (TF1 Hub format, ResNet-50 based, [0, 1] inputs). The six
  generative ones (wae-ukl, wae-gan, cond-biggan, wae-mmd, vae, uncond-biggan) take 128 x 128
  inputs, the others 224 x 224; TF1 Hub modules fix their input size, so loading a generative one
  at `config.image_size` = 224 would fail. Images are read at 224 and each checkpoint resizes them
  to its own input size: ``config.pool.load_options.<name>.input_size = 128`` says so for the six
  (`preflight.load_overrides` gives the `checkpoints.load` arguments; the experiment must use
  them). Plus supervised ResNet-50s trained on iNaturalist and on Places365 (archive, 300k steps).
- Group II, training stages (12): archive ResNet-50s after 90k/180k/270k/300k steps on ImageNet
  and iNaturalist, 60k/120k/180k/200k on Places365. Its iNaturalist 300k checkpoint is the same
  file as Group I's Sup-100%-Inat (the README gives both the same path): one pool entry,
  ``inat_res50_300k``, in both groups. Hence 40 distinct checkpoints, 41 group places.
- Group III, architectures (13), ImageNet TF-Slim: Inception v1-v4, Inception-ResNet-v2,
  MobileNet v1 (1.0, 0.25), v2 (1.0, 0.35), v3 small and large, ResNet-v1-50/101. The paper used
  its own TF-Slim runs (in the archive: ``group3=archive``). TF-Hub has the same architectures
  trained by Google as ``https://tfhub.dev/google/imagenet/<arch>/feature_vector/5`` (TF2
  SavedModels whose call returns the pooled pre-logits; variable input size except MobileNet v3,
  fixed at 224, which is the size used here for all): the default. TF-Hub has no Inception-v4,
  which comes from the archive (left out without it). The matching ``classification/5`` handles
  (`GROUP3`, column `classification`) return logits only: `checkpoints.load` takes one callable
  per checkpoint, so they cannot serve features and head at once, and the features are what
  every measure needs.

Which measures apply: every feature measure (NLEEP, linear probe, kNN, LogME, ...) applies to
every checkpoint. LEEP and NCE need the source classifier: TF-Hub modules that expose a 'logits'
output get one (detected at load time; most of Group I has none, as the paper notes), archive
exports that return 'logits' too; the Group III TF-Hub feature vectors have none, so LEEP / NCE
rank Group III only with ``group3=archive``.

Archive checkpoints (``archive_dir``): the authors' zip (see their README, "rank_ckpt") holds
TF-Slim checkpoints (``<run>/model.ckpt-<step>``), which `tfhub:` cannot read. Export each one to
a SavedModel (TF2, or TF1 Hub format) at ``<archive_dir>/<run>/<step>/`` (e.g.
``imagenet_res50/90000/saved_model.pb``; `ARCHIVE` lists all) that, like the VTAB modules, takes
float images in [0, 1] as its single input (default signature, or a callable) and returns a dict
with 'pre_logits' [B, D] and, for LEEP / NCE, 'logits' [B, K]. Other conventions are set per
checkpoint with ``config.pool.load_options`` (input_range, output_key, logits_key, signature).
Without ``archive_dir`` those checkpoints are left out, with a logged line naming them: Group I
keeps its 14 TF-Hub modules, Group II is dropped, Group III keeps 12 (26 checkpoints). With it,
a missing export fails the preflight check, naming its path.

Ground truth: fine-tuning in the run (``table=''``) covers only what `ckpt_rank.finetune` can
fine-tune: Flax checkpoints, and TF2 SavedModels where a TensorFlow path exists. VTAB's modules
are TF1 Hub-format modules, which load without a training mode, so the paper's ground truth needs
``table=PATH``: a ground_truth.json in `ckpt_rank.finetune`'s format with this config's protocol
fields. Without it the run fine-tunes what it can (the Group III TF-Hub feature vectors, TF2
SavedModels, if `ckpt_rank.finetune_tf` trains them) and records the VTAB modules' cells as
skipped; the preflight check stops a run with table='' only when, by spec, fewer than two
checkpoints could be fine-tuned (`finetune_main.not_fine_tunable`). The recipe recorded below is
the paper's VTAB one (docs/ground_truth.md).

Tasks: Caltech101, Oxford Flowers102, Patch Camelyon, SUN397 with VTAB's splits (VTAB-1k:
train800val200 scored and fine-tuned on, evaluated on test).
"""

import os

from absl import logging
import ml_collections

from ckpt_rank import config_lib
from ckpt_rank import measures

IMAGE_SIZE = 224
GENERATIVE_INPUT_SIZE = 128
VTAB_HANDLE = 'https://tfhub.dev/vtab/{}/1'
TASKS = ('caltech101', 'oxford_flowers102', 'patch_camelyon', 'sun397')

# Group I on TF-Hub: (pool name, VTAB module name, generative: trained at 128 px).
GROUP1_TFHUB = (
    ('wae_ukl', 'wae-ukl', True),
    ('wae_gan', 'wae-gan', True),
    ('cond_biggan', 'cond-biggan', True),
    ('wae_mmd', 'wae-mmd', True),
    ('vae', 'vae', True),
    ('uncond_biggan', 'uncond-biggan', True),
    ('jigsaw', 'jigsaw', False),
    ('relative_patch_location', 'relative-patch-location', False),
    ('exemplar', 'exemplar', False),
    ('rotation', 'rotation', False),
    ('semi_rotation_10', 'semi-rotation-10', False),
    ('semi_exemplar_10', 'semi-exemplar-10', False),
    ('sup_100', 'sup-100', False),
    ('sup_exemplar_100', 'sup-exemplar-100', False),
)

# The authors' archive: pool name -> (run directory, step), as in their README.
ARCHIVE = {
    'inat_res50_300k': ('inat_res50', 300000),
    'places_res50_300k': ('places_res50', 300000),
    'imagenet_res50_90k': ('imagenet_res50', 90000),
    'imagenet_res50_180k': ('imagenet_res50', 180000),
    'imagenet_res50_270k': ('imagenet_res50', 270000),
    'imagenet_res50_300k': ('imagenet_res50', 300000),
    'inat_res50_90k': ('inat_res50', 90000),
    'inat_res50_180k': ('inat_res50', 180000),
    'inat_res50_270k': ('inat_res50', 270000),
    'places_res50_60k': ('places_res50', 60000),
    'places_res50_120k': ('places_res50', 120000),
    'places_res50_180k': ('places_res50', 180000),
    'places_res50_200k': ('places_res50', 200000),
    'inception_v1': ('imagenet_inception_v1', 300000),
    'inception_v2': ('imagenet_inception_v2', 300000),
    'inception_v3': ('imagenet_inception_v3', 300000),
    'inception_v4': ('imagenet_inception_v4', 300000),
    'inception_resnet_v2': ('imagenet_inception_resnet_v2', 90000),  # 90k in the README.
    'mobilenet_v1': ('imagenet_mobilenet_v1', 300000),
    'mobilenet_v1_025': ('imagenet_mobilenet_v1_025', 300000),
    'mobilenet_v2': ('imagenet_mobilenet_v2', 300000),
    'mobilenet_v2_035': ('imagenet_mobilenet_v2_035', 300000),
    'mobilenet_v3_small': ('imagenet_mobilenet_v3_small', 300000),
    'mobilenet_v3_large': ('imagenet_mobilenet_v3_large', 300000),
    'resnet_v1_50': ('imagenet_resnet_v1_50', 300000),
    'resnet_v1_101': ('imagenet_resnet_v1_101', 300000),
}
GROUP1_ARCHIVE = ('inat_res50_300k', 'places_res50_300k')  # Sup-100%-Inat, Sup-100%-Pla.
GROUP2 = ('imagenet_res50_90k', 'imagenet_res50_180k', 'imagenet_res50_270k',
          'imagenet_res50_300k', 'inat_res50_90k', 'inat_res50_180k', 'inat_res50_270k',
          'inat_res50_300k', 'places_res50_60k', 'places_res50_120k', 'places_res50_180k',
          'places_res50_200k')

_IMAGENET_HUB = 'https://tfhub.dev/google/imagenet/{}/{}/5'
# Group III: pool name -> TF-Hub architecture name (None: not on TF-Hub, archive only).
_GROUP3_HUB = {
    'inception_v1': 'inception_v1',
    'inception_v2': 'inception_v2',
    'inception_v3': 'inception_v3',
    'inception_v4': None,
    'inception_resnet_v2': 'inception_resnet_v2',
    'mobilenet_v1': 'mobilenet_v1_100_224',
    'mobilenet_v1_025': 'mobilenet_v1_025_224',
    'mobilenet_v2': 'mobilenet_v2_100_224',
    'mobilenet_v2_035': 'mobilenet_v2_035_224',
    'mobilenet_v3_small': 'mobilenet_v3_small_100_224',
    'mobilenet_v3_large': 'mobilenet_v3_large_100_224',
    'resnet_v1_50': 'resnet_v1_50',
    'resnet_v1_101': 'resnet_v1_101',
}
# Group III: pool name -> {'feature_vector': handle used, 'classification': its twin with the
# ImageNet head (recorded, not loaded: see the module docstring)}; {} where TF-Hub has none.
GROUP3 = {name: ({} if arch is None else {kind: _IMAGENET_HUB.format(arch, kind)
                                          for kind in ('feature_vector', 'classification')})
          for name, arch in _GROUP3_HUB.items()}

_GROUP_DESCRIPTIONS = {
    'mixed_supervision': 'Group I: VTAB representations (generative, self-, semi-, fully '
                         'supervised) and supervised iNaturalist / Places365 ResNet-50s',
    'training_stages': 'Group II: ResNet-50 at several steps of ImageNet, iNaturalist and '
                       'Places365 pre-training',
    'architectures': 'Group III: 13 TF-Slim ImageNet architectures',
}


def archive_path(archive_dir: str, name: str) -> str:
  """Where the SavedModel export of archive checkpoint `name` is expected."""
  run, step = ARCHIVE[name]
  return os.path.join(os.path.abspath(os.path.expanduser(archive_dir)), run, str(step))


def _pool(archive_dir: str, group3: str) -> tuple[list[tuple[str, str]], dict[str, tuple]]:
  """([(name, spec)], {group: names}) of the full pool; archive entries only with archive_dir."""
  specs: dict[str, str] = {}
  left_out: list[str] = []

  def archive(name: str) -> bool:
    if archive_dir:
      specs.setdefault(name, 'tfhub:' + archive_path(archive_dir, name))
    elif name not in left_out:
      left_out.append(name)
    return bool(archive_dir)

  groups = {'mixed_supervision': [], 'training_stages': [], 'architectures': []}
  for name, module, _ in GROUP1_TFHUB:
    specs[name] = 'tfhub:' + VTAB_HANDLE.format(module)
    groups['mixed_supervision'].append(name)
  groups['mixed_supervision'] += [n for n in GROUP1_ARCHIVE if archive(n)]
  groups['training_stages'] += [n for n in GROUP2 if archive(n)]
  for name, handles in GROUP3.items():
    if group3 == 'tfhub' and handles:
      specs[name] = 'tfhub:' + handles['feature_vector']
      groups['architectures'].append(name)
    elif archive(name):
      groups['architectures'].append(name)
  if left_out:
    logging.warning(
        'experiments/vtab.py: no archive_dir given, so %d archive checkpoints are left out: %s. '
        'Groups: %s.', len(left_out), ', '.join(left_out),
        ', '.join(f'{g} {len(m)}' for g, m in groups.items()))
  return list(specs.items()), {g: tuple(m) for g, m in groups.items() if m}


def get_config(arg=None):
  """NeuCRaB; `arg`: "archive_dir=DIR,group3=tfhub|archive,table=PATH,runlocal" (any subset)."""
  arg = config_lib.parse_arg(arg, runlocal=False, archive_dir='', group3='tfhub', table='')
  if arg.group3 not in ('tfhub', 'archive'):
    raise ValueError(f'group3 must be "tfhub" or "archive", got {arg.group3!r}.')
  if arg.group3 == 'archive' and not arg.archive_dir:
    raise ValueError('group3=archive needs archive_dir=DIR (the exported archive checkpoints).')
  config = ml_collections.ConfigDict()
  config.seed = 0  # Every random choice of the measures derives from it.
  config.image_size = IMAGE_SIZE  # Images are read at 224; each network resizes to its own size.
  config.data_dir = ''  # TFDS data dir; '' = $CKPT_RANK_DATA_DIR or ~/tensorflow_datasets.

  config.pool = ml_collections.ConfigDict()
  checkpoints, groups = _pool(str(arg.archive_dir), arg.group3)
  config.pool.checkpoints = tuple(checkpoints)
  config.pool.snapshots = ml_collections.ConfigDict()
  config.pool.groups = ml_collections.ConfigDict({
      name: ml_collections.ConfigDict(dict(description=_GROUP_DESCRIPTIONS[name],
                                           checkpoints=members))
      for name, members in groups.items()})
  # Per-checkpoint `checkpoints.load` options over input_size=config.image_size.
  config.pool.load_options = ml_collections.ConfigDict({
      name: ml_collections.ConfigDict(dict(input_size=GENERATIVE_INPUT_SIZE))
      for name, _, generative in GROUP1_TFHUB if generative})

  config.tasks = TASKS
  config.train_role = 'train800val200'  # VTAB-1k: 1000 training images.
  config.max_train_examples = None
  config.eval_role = 'test'
  config.max_eval_examples = None

  config.features = ml_collections.ConfigDict()
  config.features.batch_size = 64

  # The paper's LEEP, NCE, NLEEP, linear probe and kNN, and the later measures beside them.
  config.measures = tuple(measures.names())
  config.measure_seeds = 5  # For measures that take a key (NLEEP, linear probe, PARC).
  config.ranking_ks = (1, 3)

  # Scale (ckpt_rank.parallel; see the README "Several devices and hosts"): features of 8
  # checkpoints at a time in memory (NLEEP runs them as one batch split across every device),
  # NLEEP's EM and kNN's distances in chunks that fit 2 GiB per call, and images read from TFDS
  # batch by batch for each checkpoint (never a whole split in memory; features go to the cache
  # as they come).
  config.scale = ml_collections.ConfigDict()
  config.scale.checkpoints_per_batch = 8
  config.scale.memory_budget_mb = 2048.0
  config.scale.stream_images = True

  config.ground_truth = ml_collections.ConfigDict()
  config.ground_truth.table = str(arg.table)  # '' = fine-tune in the run (see the docstring).
  # A table cell fine-tuned from other weights than the run scores: 'error', 'leave_out' or
  # 'finetune' (in the run).
  config.ground_truth.on_mismatch = 'error'

  # The VTAB recipe (MEASURES.md "Ground truth"): new zero head on the pre-logits, all weights
  # trained, SGD momentum 0.9, weight decay 1e-4, linear warm-up, x0.1 decays; the best test
  # accuracy over learning rates x step budgets. The paper names two budgets without giving them
  # here; VTAB's scripts/run_all_tasks.sh trains 1000 steps at batch 64 with 80 warm-up steps and
  # decays at steps 300/600/900: that schedule, and 2.5 times longer.
  config.fine_tune = ml_collections.ConfigDict()
  config.fine_tune.learning_rates = (0.1, 0.05, 0.01, 0.005)
  config.fine_tune.step_budgets = (1000, 2500)
  config.fine_tune.batch_size = 64
  config.fine_tune.warmup_steps = 80
  config.fine_tune.decay_fractions = (0.3, 0.6, 0.9)
  config.fine_tune.momentum = 0.9
  config.fine_tune.weight_decay = 1e-4
  config.fine_tune.seed = 0

  if arg.runlocal:
    # Three TF-Hub modules (one generative, at 128 px) and two built-in Flax checkpoints, which
    # the run fine-tunes for the ground truth (the VTAB modules' cells are recorded as skipped).
    local = ('sup_100', 'rotation', 'vae')
    config.pool.checkpoints = tuple((n, s) for n, s in checkpoints if n in local) + (
        ('mobilenet_v2', 'mobilenet_v2'), ('efficientnet_lite0', 'efficientnet_lite0'))
    config.pool.groups = ml_collections.ConfigDict({
        'mixed_supervision': ml_collections.ConfigDict(dict(
            description='VTAB sup-100, rotation and VAE', checkpoints=local)),
        'builtin_imagenet': ml_collections.ConfigDict(dict(
            description='built-in ImageNet MobileNetV2 and EfficientNet-Lite0 (Flax)',
            checkpoints=('mobilenet_v2', 'efficientnet_lite0')))})
    config.pool.load_options = ml_collections.ConfigDict({
        'vae': ml_collections.ConfigDict(dict(input_size=GENERATIVE_INPUT_SIZE))})
    config.tasks = ('caltech101',)
    config.max_train_examples = 200
    config.max_eval_examples = 200
    config.measure_seeds = 2
    config.fine_tune.learning_rates = (0.01,)
    config.fine_tune.step_budgets = (20,)
    config.fine_tune.batch_size = 16
    config.fine_tune.warmup_steps = 2
  return config
