"""Images in a folder with one sub-folder per class, read into arrays (`load`).

The layout of torchvision's `ImageFolder` and Keras' `image_dataset_from_directory`:

  ROOT/<class name>/<any sub-folders>/<image file>

Classes are the sub-folders of ROOT in sorted order (label i is the i-th name); every file under a
class folder, at any depth, is one image of that class. Names starting with '.' (`.DS_Store`,
`.ipynb_checkpoints/`) are ignored, and so are files directly in ROOT (a README, a labels file).

Every other file must decode as an image (Pillow: PNG, JPEG, GIF, BMP, TIFF, WebP, PPM, ...):
one that does not (a corrupt download, a text file) is an error naming the file, unless
`skip_bad_images` is set, which skips such files and reports them with their reason. A file is
judged by its contents, not its extension.

Images of any mode come out RGB uint8: grey ('L', '1') is replicated to 3 channels, palette ('P')
expanded, CMYK / YCbCr converted, 16-bit grey scaled by 255 / 65535, and an alpha channel
('RGBA', 'LA', 'PA', palette transparency) composited onto black, so transparent pixels get one
defined value whatever colour they hide. EXIF orientation is applied (a phone's portrait photo
stands upright). Animated images give their first frame. What was converted is counted in
`ImageFolder.modes`.

Sizes: images that all share one size are kept as they are; otherwise (or when `image_size` is
given) each is resized to `image_size` x `image_size` (default `DEFAULT_IMAGE_SIZE`, the input
size of the built-in ImageNet checkpoints), bilinear and antialiased as `ckpt_rank.data.load`
resizes, ignoring the aspect ratio as VTAB does. Checkpoints resize again to their own input size.
The folder is read twice: once for the image headers only (sizes, and the files that are not
images at all), then decoded one image at a time, so memory holds the resized arrays and one
original image. Every bad file is found before the error is raised, so one message names them
all.
"""

import dataclasses
import os
from typing import Optional

import numpy as np
from PIL import Image
from PIL import ImageOps

# The side images of several sizes are resized to when no `image_size` is given: the input size
# of the built-in ImageNet checkpoints, so they see the images at their own resolution.
DEFAULT_IMAGE_SIZE = 224
# How many bad files an error message lists before it says how many more there are.
_LISTED = 5


class BadImageError(ValueError):
  """A file under a class folder that is not a readable image."""


@dataclasses.dataclass(frozen=True)
class ImageFolder:
  """What `load` read.

  Attributes:
    images: [N, H, W, 3] uint8 RGB images.
    labels: [N] int32 class indices into `class_names`.
    class_names: the class sub-folder names, sorted; label i is class_names[i].
    paths: [N] each image's path relative to the root.
    skipped: (relative path, reason) of each file skipped as unreadable (`skip_bad_images`).
    modes: Pillow mode -> how many images had it ('RGB' images were used as they are).
    image_size: the side every image was resized to, or None when they were kept at their size.
    root: the folder's absolute path.
  """
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  paths: tuple[str, ...]
  skipped: tuple[tuple[str, str], ...]
  modes: dict[str, int]
  image_size: Optional[int]
  root: str


def _hidden(name: str) -> bool:
  return name.startswith('.')


def list_files(root: str) -> tuple[list[str], list[list[str]]]:
  """(class names, per class the files under its folder, relative to `root`), both sorted.

  Raises:
    FileNotFoundError: `root` does not exist.
    ValueError: `root` is not a folder, or has no class sub-folders.
  """
  if not os.path.exists(root):
    raise FileNotFoundError(f'Image folder {root!r} does not exist.')
  if not os.path.isdir(root):
    raise ValueError(f'Image folder {root!r} is not a folder; expected ROOT/<class>/<image>.')
  classes = sorted(name for name in os.listdir(root)
                   if not _hidden(name) and os.path.isdir(os.path.join(root, name)))
  if not classes:
    raise ValueError(f'Image folder {root!r} has no class sub-folders; expected one sub-folder '
                     'per class holding its images (ROOT/<class>/<image>).')
  files = []
  for name in classes:
    found = []
    for directory, subdirs, filenames in os.walk(os.path.join(root, name), followlinks=True):
      subdirs[:] = sorted(d for d in subdirs if not _hidden(d))
      found.extend(os.path.relpath(os.path.join(directory, f), root)
                   for f in sorted(filenames) if not _hidden(f))
    files.append(found)
  return classes, files


def _oriented_size(image: Image.Image) -> tuple[int, int]:
  """(width, height) after the EXIF orientation is applied (tags 5-8 swap the axes)."""
  try:
    orientation = image.getexif().get(0x0112, 1)
  except Exception:  # pylint: disable=broad-except  (a malformed EXIF block: no orientation)
    orientation = 1
  width, height = image.size
  return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _describe(error: Exception) -> str:
  text = str(error).strip() or type(error).__name__
  return f'{type(error).__name__}: {text}' if type(error).__name__ not in text else text


def read_header(path: str) -> tuple[int, int]:
  """The (width, height) of the image at `path`, as it will stand (EXIF orientation applied).

  Raises:
    BadImageError: the file is not an image Pillow can identify.
  """
  try:
    with Image.open(path) as image:
      return _oriented_size(image)
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many types for bad files)
    raise BadImageError(f'not a readable image ({_describe(e)})') from None


def to_rgb(image: Image.Image) -> np.ndarray:
  """[H, W, 3] uint8 of a Pillow image of any mode (see the module docstring for the rules)."""
  mode = image.mode
  if mode in ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I'):
    values = np.asarray(image, np.float64)
    # 'I' holds 32-bit integers: 8-bit data when it fits, else taken as 16-bit.
    scale = 1.0 if mode == 'I' and values.max(initial=0) <= 255 else 255.0 / 65535.0
    grey = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode == 'F':
    grey = np.clip(np.round(np.asarray(image, np.float64)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if mode == 'P':
    image = image.convert('RGBA' if 'transparency' in image.info else 'RGB')
  elif mode in ('LA', 'PA', 'La', 'RGBa') or (mode == 'L' and 'transparency' in image.info):
    image = image.convert('RGBA')
  if image.mode == 'RGBA':
    rgba = np.asarray(image, np.float64)
    rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)  # Composited onto black.
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
  if image.mode != 'RGB':
    image = image.convert('RGB')
  return np.asarray(image, np.uint8)


def read_image(path: str, size: Optional[int] = None) -> tuple[np.ndarray, str]:
  """(the image at `path` as [H, W, 3] uint8 RGB, its Pillow mode), resized to `size` if given.

  Raises:
    BadImageError: the file is not an image, or its data is corrupt or truncated.
  """
  try:
    with Image.open(path) as image:
      mode = image.mode
      image = ImageOps.exif_transpose(image)
      if size is not None and image.size != (size, size):
        # Pillow's resampling widens its filter when shrinking: antialiased, as the data loader.
        if image.mode not in ('RGB', 'RGBA', 'L', 'LA'):
          image = Image.fromarray(to_rgb(image))
        image = image.resize((size, size), Image.Resampling.BILINEAR)
      return to_rgb(image), mode
  except Exception as e:  # pylint: disable=broad-except  (Pillow raises many types for bad files)
    raise BadImageError(f'not a readable image ({_describe(e)})') from None


def _bad_files_error(root: str, bad: list[tuple[str, str]], total: int) -> BadImageError:
  bad = sorted(bad)
  listed = '; '.join(f'{path}: {reason}' for path, reason in bad[:_LISTED])
  more = f' and {len(bad) - _LISTED} more' if len(bad) > _LISTED else ''
  return BadImageError(
      f'Image folder {root!r}: {len(bad)} of {total} files are not readable images: '
      f'{listed}{more}. Remove or fix them, or skip them (skip_bad_images=True, '
      '--skip_bad_images).')


def load(root: str, *, image_size: Optional[int] = None,
         skip_bad_images: bool = False) -> ImageFolder:
  """Reads every image under `root`'s class sub-folders (see the module docstring).

  Args:
    root: the folder, ROOT/<class>/<image>.
    image_size: resize every image to image_size x image_size; None keeps images that all share
      one size and resizes images of several sizes to `DEFAULT_IMAGE_SIZE`.
    skip_bad_images: skip files that are not readable images (listed in `ImageFolder.skipped`)
      instead of raising.

  Returns:
    The `ImageFolder`.

  Raises:
    FileNotFoundError: `root` does not exist.
    ValueError: `root` is not a folder or has no class sub-folders; a class folder without
      images (after skipping); a bad `image_size`.
    BadImageError (a ValueError): files that are not readable images, each named with its reason,
      unless `skip_bad_images`.
  """
  if image_size is not None and (isinstance(image_size, bool) or int(image_size) != image_size
                                 or image_size < 1):
    raise ValueError(f'image_size must be a positive integer or None, got {image_size!r}.')
  root = os.path.abspath(os.path.expanduser(root))
  classes, files = list_files(root)
  total = sum(len(f) for f in files)
  bad, sizes, kept = [], set(), []
  for label, class_files in enumerate(files):
    for relative in class_files:
      try:
        sizes.add(read_header(os.path.join(root, relative)))
        kept.append((relative, label))
      except BadImageError as e:
        bad.append((relative, str(e)))
  if image_size is None and len(sizes) > 1:
    image_size = DEFAULT_IMAGE_SIZE
  size = None if image_size is None else int(image_size)

  images, labels, paths, modes = [], [], [], {}
  for relative, label in kept:
    try:
      array, mode = read_image(os.path.join(root, relative), size)
    except BadImageError as e:  # Its header read, its data did not (truncated, corrupt).
      bad.append((relative, str(e)))
      continue
    if bad and not skip_bad_images:
      continue  # Only looking for more bad files, to name them all at once.
    images.append(array)
    labels.append(label)
    paths.append(relative)
    modes[mode] = modes.get(mode, 0) + 1
  if bad and not skip_bad_images:
    raise _bad_files_error(root, bad, total)
  counts = np.bincount(np.asarray(labels, np.int64), minlength=len(classes))
  empty = [classes[i] for i in np.flatnonzero(counts == 0)]
  if empty:
    skipped = ' (after skipping unreadable files)' if bad else ''
    raise ValueError(f'Image folder {root!r}: class folder(s) {", ".join(map(repr, empty))} hold '
                     f'no images{skipped}; every class needs images.')
  return ImageFolder(images=np.stack(images).astype(np.uint8),
                     labels=np.asarray(labels, np.int32), class_names=tuple(classes),
                     paths=tuple(paths), skipped=tuple(sorted(bad)), modes=modes, image_size=size,
                     root=root)
