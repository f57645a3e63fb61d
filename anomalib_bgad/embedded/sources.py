"""The real surfaces: CC0 photographs shipped with scikit-image, and the crops cut from them.

Each category is one 512x512 greyscale photograph of ``skimage.data`` (``brick``, ``grass``,
``gravel``), all under the Creative Commons CC0 licence and part of the scikit-image wheel, so
nothing is downloaded (origins in ``SOURCE_ORIGINS``). Training crops come from the left 60 % of
the photo and every test crop from the right 40 %, so no test pixel was ever seen during training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from skimage import data as skimage_data

EMBEDDED_CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel")
"""Category names; each is one CC0 photograph from ``skimage.data``."""

SOURCE_ORIGINS: dict[str, str] = {
    "brick": "CC0Textures Bricks25 (https://cc0textures.com/view.php?tex=Bricks25), perspective-corrected",
    "grass": "'Grass 01' by linolafett on DeviantArt (https://www.deviantart.com/linolafett/art/Grass-01-434853879)",
    "gravel": "CC0Textures Gravel04 (https://cc0textures.com/view.php?tex=Gravel04)",
}
"""Where scikit-image took each photograph from (all CC0), as its ``skimage.data`` docstrings state."""

SPLITS: tuple[str, ...] = ("train", "test")
TRAIN_FRACTION = 0.6
"""Fraction of the photo's width (from the left) that training crops are taken from."""
CROP_SIZE = 160
"""Side of a crop in source pixels (of 512), before resizing to the image size."""
BRIGHTNESS_GAIN = (0.94, 1.06)
"""Range of the random gain applied to every crop."""
BRIGHTNESS_OFFSET = (-6.0, 6.0)
"""Range of the random offset (grey levels) added to every crop."""

_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "brick": skimage_data.brick,
    "grass": skimage_data.grass,
    "gravel": skimage_data.gravel,
}
# Brick courses have a direction, so brick crops are only flipped; grass and gravel are isotropic.
_ROTATABLE = frozenset({"grass", "gravel"})


@dataclass(frozen=True)
class CropBox:
    """Square crop of a source photograph, in source pixel coordinates.

    Args:
        top (int): First row of the crop.
        left (int): First column of the crop.
        size (int): Side length of the crop.
    """

    top: int
    left: int
    size: int

    @property
    def right(self) -> int:
        """Column one past the last column of the crop."""
        return self.left + self.size

    @property
    def bottom(self) -> int:
        """Row one past the last row of the crop."""
        return self.top + self.size


def check_category(category: str) -> None:
    """Raise a ``ValueError`` listing the valid names if ``category`` is unknown.

    Args:
        category (str): Category name to check.

    Raises:
        ValueError: If ``category`` is not in ``EMBEDDED_CATEGORIES``.
    """
    if category not in EMBEDDED_CATEGORIES:
        msg = f"categories: unknown category {category!r}; valid categories are {list(EMBEDDED_CATEGORIES)}."
        raise ValueError(msg)


@cache
def load_source(category: str) -> np.ndarray:
    """Load the greyscale source photograph of a category.

    Args:
        category (str): One of ``EMBEDDED_CATEGORIES``.

    Returns:
        np.ndarray: Read-only ``uint8`` array of shape ``(512, 512)``.

    Raises:
        ValueError: If ``category`` is unknown.
    """
    check_category(category)
    image = np.asarray(_LOADERS[category](), dtype=np.uint8)
    if image.ndim != 2:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    image.setflags(write=False)
    return image


def source_region(split: str, source_shape: tuple[int, int]) -> tuple[int, int]:
    """Return the column range of the source photo that a split may crop from.

    The two ranges are disjoint: ``train`` uses ``[0, 0.6 * W)`` and ``test`` uses ``[0.6 * W, W)``.

    Args:
        split (str): ``"train"`` or ``"test"``.
        source_shape (tuple[int, int]): ``(height, width)`` of the photograph.

    Returns:
        tuple[int, int]: ``(first_column, end_column)``, end exclusive.
    """
    width = source_shape[1]
    boundary = round(TRAIN_FRACTION * width)
    return (0, boundary) if split == "train" else (boundary, width)


def sample_crop_box(rng: np.random.Generator, split: str, source_shape: tuple[int, int]) -> CropBox:
    """Draw a crop box that lies entirely inside the split's source region.

    Args:
        rng (np.random.Generator): Random stream of the sample.
        split (str): ``"train"`` or ``"test"``.
        source_shape (tuple[int, int]): ``(height, width)`` of the photograph.

    Returns:
        CropBox: The crop box.
    """
    first, end = source_region(split, source_shape)
    top = int(rng.integers(0, source_shape[0] - CROP_SIZE + 1))
    left = int(rng.integers(first, end - CROP_SIZE + 1))
    return CropBox(top=top, left=left, size=CROP_SIZE)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a square float image to ``size`` (area filter to shrink, bicubic to enlarge).

    Args:
        image (np.ndarray): Square ``float32`` image.
        size (int): Output side length.

    Returns:
        np.ndarray: ``float32`` image of shape ``(size, size)``.
    """
    interpolation = cv2.INTER_AREA if size < image.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interpolation)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip a float image to ``uint8``.

    Args:
        image (np.ndarray): Float image in grey levels.

    Returns:
        np.ndarray: ``uint8`` image.
    """
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_crop(category: str, box: CropBox, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Cut, augment (flips, rotations by 90 degrees where the texture allows, brightness jitter) and resize a crop.

    Args:
        category (str): One of ``EMBEDDED_CATEGORIES``.
        box (CropBox): Crop box in the category's photograph.
        image_size (int): Output side length.
        rng (np.random.Generator): Random stream of the sample.

    Returns:
        np.ndarray: ``uint8`` image of shape ``(image_size, image_size)``.
    """
    crop = load_source(category)[box.top : box.bottom, box.left : box.right].astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    if category in _ROTATABLE:
        crop = np.rot90(crop, k=int(rng.integers(0, 4)))
    crop = resize(np.ascontiguousarray(crop), image_size)
    gain, offset = rng.uniform(*BRIGHTNESS_GAIN), rng.uniform(*BRIGHTNESS_OFFSET)
    return to_uint8(crop * gain + offset)
