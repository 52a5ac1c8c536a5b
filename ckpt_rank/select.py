r"""Ranks checkpoints for your own data, with no fine-tuning: the binary of `selection.select`.

  python -m ckpt_rank.select --data=imagefolder:/data/my_task \
      --checkpoints=mobilenet_v2,efficientnet_lite0,dog_mobilenet_v2 --output=/tmp/choice

Prints the ranked table (scores with bootstrap intervals, the consensus rank, the checkpoints that
cannot be told apart) and, with --output, writes ranking.csv, ranking.json, results.binpb,
results.json and scores.png there (all or nothing). Bad input stops with one line naming the
problem and exit status 1. docs/select.md has a worked example; `ckpt_rank.selection` documents
every option.
"""

import sys

from absl import app
from absl import flags

from ckpt_rank import selection

_DATA = flags.DEFINE_string(
    'data', None, 'The examples: imagefolder:DIR (one sub-folder per class) or tfds:NAME:SPLIT '
    '(a prepared TFDS dataset, e.g. tfds:cifar10:train[:2000]).')
_CHECKPOINTS = flags.DEFINE_string(
    'checkpoints', None, 'Comma-separated checkpoint specs: built-in names, flax:DIR, tfhub:DIR.')
flags.mark_flags_as_required(['data', 'checkpoints'])
_MEASURES = flags.DEFINE_string(
    'measures', ','.join(selection.DEFAULT_MEASURES),
    'Comma-separated measure specs; the first orders the ranking.')
_OUTPUT = flags.DEFINE_string('output', None, 'Folder for the CSV, JSON, results proto and plot.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir of tfds: data.')
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', None, 'Resize the images to this square side (default: keep a common size, '
    'else 224).')
_INPUT_SIZE = flags.DEFINE_integer(
    'input_size', None, 'Run the networks at this resolution where they can (default: their own).')
_PER_CLASS = flags.DEFINE_integer('per_class', None, 'Use at most this many examples per class.')
_SKIP_BAD_IMAGES = flags.DEFINE_bool(
    'skip_bad_images', False, 'Skip unreadable files of an image folder (counted) instead of '
    'stopping.')
_RESAMPLES = flags.DEFINE_integer('resamples', selection.DEFAULT_RESAMPLES,
                                  'Bootstrap resamples for the intervals (0: none).')
_RESAMPLING = flags.DEFINE_enum(
    'resampling', 'half', list(selection.RESAMPLING), 'half: half of each class without '
    'replacement (default); bootstrap: each class with replacement (see ckpt_rank.selection).')
_CONFIDENCE = flags.DEFINE_float('confidence', selection.DEFAULT_CONFIDENCE,
                                 'Coverage of the intervals.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of every random choice (recorded).')
_HALVING = flags.DEFINE_bool('halving', False, 'Successive halving over growing samples.')
_HALVING_START = flags.DEFINE_integer('halving_start', selection.DEFAULT_HALVING_START,
                                      'Examples per class in the first halving round.')
_BUDGET_SECONDS = flags.DEFINE_float('budget_seconds', None,
                                     'Wall-time budget for loading, extracting and halving.')
_CONFIRM_TOP_K = flags.DEFINE_integer(
    'confirm_top_k', 0, 'Fine-tune the K best Flax checkpoints on a held-out split and report '
    'their accuracy.')
_CONFIRM_STEPS = flags.DEFINE_integer('confirm_steps', selection.DEFAULT_CONFIRM_STEPS,
                                      'Fine-tuning steps of --confirm_top_k.')
_CONFIRM_LEARNING_RATE = flags.DEFINE_float(
    'confirm_learning_rate', selection.DEFAULT_CONFIRM_LEARNING_RATE,
    'Peak learning rate of --confirm_top_k.')
_CONFIRM_BATCH_SIZE = flags.DEFINE_integer('confirm_batch_size',
                                           selection.DEFAULT_CONFIRM_BATCH_SIZE,
                                           'Batch size of --confirm_top_k.')
_CONFIRM_HOLDOUT = flags.DEFINE_float('confirm_holdout', selection.DEFAULT_CONFIRM_HOLDOUT,
                                      'Fraction of each class held out by --confirm_top_k.')
_CACHE_DIR = flags.DEFINE_string(
    'cache_dir', None, "Feature cache (default ~/.cache/ckpt_rank/features; '' for none).")
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Images per network call.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}.')
  try:
    ranking = selection.select(
        _DATA.value, selection.split_specs(_CHECKPOINTS.value),
        selection.split_specs(_MEASURES.value), data_dir=_DATA_DIR.value,
        image_size=_IMAGE_SIZE.value, input_size=_INPUT_SIZE.value, per_class=_PER_CLASS.value,
        skip_bad_images=_SKIP_BAD_IMAGES.value, resamples=_RESAMPLES.value,
        resampling=_RESAMPLING.value, confidence=_CONFIDENCE.value, seed=_SEED.value,
        halving=_HALVING.value, halving_start=_HALVING_START.value,
        budget_seconds=_BUDGET_SECONDS.value, confirm_top_k=_CONFIRM_TOP_K.value,
        confirm_steps=_CONFIRM_STEPS.value, confirm_learning_rate=_CONFIRM_LEARNING_RATE.value,
        confirm_batch_size=_CONFIRM_BATCH_SIZE.value, confirm_holdout=_CONFIRM_HOLDOUT.value,
        cache_dir=_CACHE_DIR.value, batch_size=_BATCH_SIZE.value, output=_OUTPUT.value)
  except (ValueError, FileNotFoundError) as e:
    print(f'ckpt_rank.select: error: {e}', file=sys.stderr, flush=True)
    return 1
  print(ranking, flush=True)
  if _OUTPUT.value:
    print(f'Written to {selection.check_output(_OUTPUT.value)}: '
          f'{", ".join(selection.OUTPUT_FILES)}', flush=True)
  return 0


if __name__ == '__main__':
  app.run(main)
