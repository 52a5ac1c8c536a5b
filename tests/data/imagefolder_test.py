"""Tests for ckpt_rank.data.imagefolder: classes, image modes, sizes and bad files."""

import os
import shutil
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image

from ckpt_rank.data import imagefolder


def _rng_image(seed, shape=(6, 5, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


class ImageFolderTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp(prefix='imagefolder_test_')
    self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)

  def save(self, relative, image, **kwargs):
    path = os.path.join(self.root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(image, np.ndarray):
      image = Image.fromarray(image)
    image.save(path, **kwargs)
    return path

  def test_classes_sorted_labels_paths_and_pixels(self):
    written = {}
    for name, seed in (('zebra/a.png', 0), ('cat/b.png', 1), ('cat/nested/c.bmp', 2),
                       ('dog/d.png', 3)):
      written[name] = _rng_image(seed)
      self.save(name, written[name])
    folder = imagefolder.load(self.root)
    self.assertEqual(folder.class_names, ('cat', 'dog', 'zebra'))
    self.assertEqual(folder.paths, ('cat/b.png', 'cat/nested/c.bmp', 'dog/d.png', 'zebra/a.png'))
    np.testing.assert_array_equal(folder.labels, [0, 0, 1, 2])
    self.assertIsNone(folder.image_size)  # One size: kept.
    self.assertEqual(folder.images.dtype, np.uint8)
    for path, image in zip(folder.paths, folder.images):  # PNG and BMP are lossless.
      np.testing.assert_array_equal(image, written[path])
    self.assertEqual(folder.modes, {'RGB': 4})

  def test_hidden_entries_and_top_level_files_are_ignored(self):
    self.save('a/x.png', _rng_image(0))
    self.save('b/y.png', _rng_image(1))
    for relative in ('README.txt', 'a/.DS_Store', '.hidden/z.png', 'b/.ipynb_checkpoints/w.txt'):
      path = os.path.join(self.root, relative)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'w') as f:
        f.write('not an image')
    folder = imagefolder.load(self.root)
    self.assertEqual(folder.class_names, ('a', 'b'))
    self.assertEqual(folder.paths, ('a/x.png', 'b/y.png'))

  def test_every_mode_becomes_rgb(self):
    grey = _rng_image(0, (4, 4))
    rgba = _rng_image(1, (4, 4, 4))
    grey16 = np.random.default_rng(2).integers(0, 65536, (4, 4)).astype(np.uint16)
    palette = np.arange(256 * 3, dtype=np.uint8)[::-1].copy()
    indices = _rng_image(3, (4, 4))
    self.save('c/grey.png', grey)
    self.save('c/rgba.png', rgba)
    self.save('c/grey16.png', Image.fromarray(grey16))
    p_image = Image.fromarray(indices, mode='P')
    p_image.putpalette(palette.tolist())
    self.save('c/palette.png', p_image)
    self.save('d/bilevel.png', Image.fromarray(grey > 127))
    self.save('d/la.png', Image.fromarray(np.stack([grey, 255 - grey], -1), mode='LA'))
    folder = imagefolder.load(self.root)
    got = dict(zip(folder.paths, folder.images))
    np.testing.assert_array_equal(got['c/grey.png'], np.repeat(grey[..., None], 3, -1))
    # Alpha composited onto black: value * alpha / 255, rounded.
    expected = np.round(rgba[..., :3] * (rgba[..., 3:].astype(np.float64) / 255)).astype(np.uint8)
    np.testing.assert_array_equal(got['c/rgba.png'], expected)
    scaled = np.round(grey16 * (255 / 65535)).astype(np.uint8)
    np.testing.assert_array_equal(got['c/grey16.png'], np.repeat(scaled[..., None], 3, -1))
    np.testing.assert_array_equal(got['c/palette.png'], palette.reshape(256, 3)[indices])
    np.testing.assert_array_equal(got['d/bilevel.png'],
                                  np.repeat(np.where(grey > 127, 255, 0)[..., None], 3, -1))
    la = np.round(grey * ((255 - grey) / 255)).astype(np.uint8)
    np.testing.assert_array_equal(got['d/la.png'], np.repeat(la[..., None], 3, -1))
    self.assertEqual(sum(folder.modes.values()), 6)
    self.assertIn('RGBA', folder.modes)
    self.assertIn('I;16', folder.modes)

  def test_sizes_kept_resized_to_default_or_to_image_size(self):
    self.save('a/small.png', np.full((4, 6, 3), 10, np.uint8))
    self.save('b/large.png', np.full((9, 7, 3), 200, np.uint8))
    folder = imagefolder.load(self.root)
    self.assertEqual(folder.image_size, imagefolder.DEFAULT_IMAGE_SIZE)
    self.assertEqual(folder.images.shape, (2, 224, 224, 3))
    # A constant image stays constant through bilinear resizing.
    np.testing.assert_array_equal(folder.images[0], 10)
    np.testing.assert_array_equal(folder.images[1], 200)
    folder = imagefolder.load(self.root, image_size=5)
    self.assertEqual(folder.images.shape, (2, 5, 5, 3))
    with self.assertRaisesRegex(ValueError, 'image_size must be a positive integer'):
      imagefolder.load(self.root, image_size=0)

  def test_exif_orientation_is_applied_before_sizes_are_compared(self):
    tall = _rng_image(0, (8, 4, 3))
    wide = Image.fromarray(_rng_image(1, (4, 8, 3)))
    exif = wide.getexif()
    exif[0x0112] = 6  # Rotate 90 degrees clockwise to display: stands 8 tall, 4 wide.
    self.save('a/tall.png', tall)
    self.save('b/rotated.jpg', wide, exif=exif, quality=95)
    folder = imagefolder.load(self.root)
    self.assertIsNone(folder.image_size)  # Both stand 8 x 4: no resize.
    self.assertEqual(folder.images.shape, (2, 8, 4, 3))

  def test_missing_not_a_folder_and_empty(self):
    with self.assertRaisesRegex(FileNotFoundError, 'does not exist'):
      imagefolder.load(os.path.join(self.root, 'nope'))
    path = os.path.join(self.root, 'file.png')
    self.save('file.png', _rng_image(0))
    with self.assertRaisesRegex(ValueError, 'is not a folder'):
      imagefolder.load(path)
    with self.assertRaisesRegex(ValueError, 'no class sub-folders'):
      imagefolder.load(self.root)  # Only a top-level file.
    os.makedirs(os.path.join(self.root, 'empty_class'))
    self.save('full/x.png', _rng_image(0))
    with self.assertRaisesRegex(ValueError, r"'empty_class' hold no images"):
      imagefolder.load(self.root)

  def test_bad_files_are_named_or_skipped_and_counted(self):
    self.save('a/good.png', _rng_image(0))
    self.save('b/good.png', _rng_image(1))
    with open(os.path.join(self.root, 'a', 'notes.txt'), 'w') as f:
      f.write('hello')
    # A PNG whose header reads but whose data is cut short: found only when decoded.
    truncated = self.save('b/truncated.png', _rng_image(2, (64, 64, 3)))
    with open(truncated, 'rb') as f:
      data = f.read()
    with open(truncated, 'wb') as f:
      f.write(data[:len(data) // 2])
    with self.assertRaises(imagefolder.BadImageError) as raised:
      imagefolder.load(self.root)
    message = str(raised.exception)
    self.assertIn('2 of 4 files are not readable images', message)  # Both named at once.
    self.assertIn('a/notes.txt', message)
    self.assertIn('b/truncated.png', message)
    self.assertIn('skip_bad_images', message)
    folder = imagefolder.load(self.root, skip_bad_images=True)
    self.assertEqual(folder.paths, ('a/good.png', 'b/good.png'))
    self.assertEqual(sorted(p for p, _ in folder.skipped), ['a/notes.txt', 'b/truncated.png'])
    self.assertTrue(all(reason for _, reason in folder.skipped))

  def test_class_of_only_bad_files_is_an_error_even_when_skipping(self):
    self.save('a/good.png', _rng_image(0))
    os.makedirs(os.path.join(self.root, 'b'))
    with open(os.path.join(self.root, 'b', 'x.jpg'), 'wb') as f:
      f.write(b'\xff\xd8 not really a jpeg')
    with self.assertRaisesRegex(ValueError, r"'b' hold no images \(after skipping"):
      imagefolder.load(self.root, skip_bad_images=True)


if __name__ == '__main__':
  absltest.main()
