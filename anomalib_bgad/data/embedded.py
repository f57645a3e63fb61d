"""Offline, MVTec-AD-format dataset built from real photographs shipped with scikit-image.

``generate_embedded_dataset`` writes a small anomaly-detection dataset in exactly the
folder layout of MVTec AD, so :class:`anomalib.data.MVTecAD` reads it unchanged::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png
    <root>/<category>/.embedded.json

What it is:
    * **Real surfaces.** Every image is a crop of a real photograph that is part of the
      scikit-image wheel (``skimage.data.brick``, ``grass`` and ``gravel``; 512x512
      greyscale, released under CC0 by cc0textures.com). Nothing is downloaded.
    * **Disjoint train/test regions.** Training crops come from the left 60 % of the photo
      and every test crop (normal or defective) from the right 40 %, so no test pixel was
      ever seen during training. Crops are augmented with flips (and rotations by 90
      degrees for the isotropic textures) and a slight brightness jitter.
    * **Synthetic defects with exact masks.** ``scratch``, ``crack``, ``hole``, ``stain``
      and ``cut_paste`` (an irregular patch of *another* category's photo). Size, contrast
      and position vary per image; some defects are small and low-contrast. The mask is
      exactly the set of changed pixels: a pixel is in the mask if and only if its value
      differs from the clean crop.
    * **Deterministic.** The same seed gives byte-identical PNGs; every image has its own
      random stream derived from ``(seed, category, split, label, index)``, so the content
      of a category does not depend on which other categories are generated, nor in which
      order.
    * **Greyscale PNGs.** Images are stored as 8-bit single-channel PNGs, like the grey
      MVTec AD categories (grid, screw, zipper); anomalib converts them to 3-channel RGB on
      read. The defects are grey as well, so colour alone never gives a defect away.

What it is NOT:
    * Not a substitute for MVTec AD or any other benchmark: the defects are synthetic,
      there are only three textures, and the test set is tiny.
    * Numbers measured on it are **not comparable** to numbers reported in papers. Use it
      for smoke tests, demos, CI and offline tutorials.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib_bgad.data.embedded import generate_embedded_dataset
    >>> root = generate_embedded_dataset("./datasets/embedded", seed=0)
    >>> datamodule = MVTecAD(root=root, category="brick")
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skimage_data

__all__ = [
    "EMBEDDED_CATEGORIES",
    "EMBEDDED_DEFECT_TYPES",
    "GENERATOR_VERSION",
    "CropBox",
    "EmbeddedSample",
    "generate_embedded_dataset",
    "render_sample",
    "source_region",
]

GENERATOR_VERSION = 1
"""Bumped whenever the generated pixels change for the same parameters."""

EMBEDDED_CATEGORIES: tuple[str, ...] = ("brick", "grass", "gravel")
"""Category names; each is one CC0 photograph from ``skimage.data``."""

EMBEDDED_DEFECT_TYPES: tuple[str, ...] = ("scratch", "crack", "hole", "stain", "cut_paste")
"""Defect types written to ``test/<defect>`` and ``ground_truth/<defect>`` of every category."""

METADATA_FILENAME = ".embedded.json"
MIN_IMAGE_SIZE = 32
TRAIN_FRACTION = 0.6
"""Fraction of the photo's width (from the left) that training crops are taken from."""
CROP_SIZE = 160
"""Side of a crop in source pixels (of 512), before resizing to ``image_size``."""
MASK_THRESHOLD = 0.25
"""Defect opacity (of its maximum) below which a pixel is left untouched and outside the mask."""

_SPLITS = ("train", "test")
_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "brick": skimage_data.brick,
    "grass": skimage_data.grass,
    "gravel": skimage_data.gravel,
}
# Brick courses have a direction, so brick crops are only flipped; grass and gravel are isotropic.
_ROTATABLE = frozenset({"grass", "gravel"})
_MAX_DEFECT_ATTEMPTS = 20


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


@dataclass(frozen=True)
class EmbeddedSample:
    """One generated image with its provenance.

    Args:
        image (np.ndarray): ``uint8`` image of shape ``(H, W)`` as written to disk.
        clean (np.ndarray): The crop before a defect was applied (equal to ``image`` for normal samples).
        mask (np.ndarray | None): Boolean defect mask of shape ``(H, W)``; ``None`` for normal samples.
        box (CropBox): Where the crop was taken from in the source photograph.
    """

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray | None
    box: CropBox


# --------------------------------------------------------------------------------------------------
# Seeding and sources
# --------------------------------------------------------------------------------------------------
def _stable_hash(text: str) -> int:
    """Hash a string to a 32-bit integer that is stable across processes (unlike ``hash``).

    Args:
        text (str): Text to hash.

    Returns:
        int: Non-negative 32-bit integer.
    """
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little")


def _sample_rng(seed: int, category: str, split: str, label: str, index: int) -> np.random.Generator:
    """Create the random stream of one image.

    Args:
        seed (int): Global seed.
        category (str): Category name.
        split (str): ``"train"`` or ``"test"``.
        label (str): ``"good"`` or a defect type.
        index (int): Index of the image inside its folder.

    Returns:
        np.random.Generator: Generator that depends on nothing but its arguments.
    """
    return np.random.default_rng([seed, _stable_hash(category), _stable_hash(split), _stable_hash(label), index])


@cache
def _load_source(category: str) -> np.ndarray:
    """Load the greyscale source photograph of a category.

    Args:
        category (str): One of ``EMBEDDED_CATEGORIES``.

    Returns:
        np.ndarray: Read-only ``uint8`` array of shape ``(512, 512)``.
    """
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


def _sample_crop_box(rng: np.random.Generator, split: str, source_shape: tuple[int, int]) -> CropBox:
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


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a square float image to ``size`` (area filter to shrink, bicubic to enlarge).

    Args:
        image (np.ndarray): Square ``float32`` image.
        size (int): Output side length.

    Returns:
        np.ndarray: ``float32`` image of shape ``(size, size)``.
    """
    interpolation = cv2.INTER_AREA if size < image.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interpolation)


def _render_crop(
    source: np.ndarray,
    box: CropBox,
    image_size: int,
    rng: np.random.Generator,
    rotatable: bool,
) -> np.ndarray:
    """Cut, augment (flip/rot90, brightness jitter) and resize one crop.

    Args:
        source (np.ndarray): Source photograph.
        box (CropBox): Crop box.
        image_size (int): Output side length.
        rng (np.random.Generator): Random stream of the sample.
        rotatable (bool): Whether rotations by 90 degrees are allowed.

    Returns:
        np.ndarray: ``uint8`` image of shape ``(image_size, image_size)``.
    """
    crop = source[box.top : box.bottom, box.left : box.right].astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    if rotatable:
        crop = np.rot90(crop, k=int(rng.integers(0, 4)))
    crop = _resize(np.ascontiguousarray(crop), image_size)
    gain, offset = rng.uniform(0.94, 1.06), rng.uniform(-6.0, 6.0)
    return _to_uint8(crop * gain + offset)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip a float image to ``uint8``.

    Args:
        image (np.ndarray): Float image in grey levels.

    Returns:
        np.ndarray: ``uint8`` image.
    """
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------
_SHIFT = 4  # sub-pixel bits for cv2 drawing


def _to_fixed_point(points: np.ndarray) -> np.ndarray:
    """Convert float ``(x, y)`` points to cv2's fixed-point ``int32`` format.

    Args:
        points (np.ndarray): Float array of shape ``(N, 2)``.

    Returns:
        np.ndarray: ``int32`` array of shape ``(N, 1, 2)``.
    """
    return np.rint(points * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _draw_polylines(size: int, lines: Sequence[np.ndarray], thickness: int) -> np.ndarray:
    """Draw anti-aliased open polylines into an opacity map.

    Args:
        size (int): Side of the square canvas.
        lines (Sequence[np.ndarray]): Polylines, each an ``(N, 2)`` float array of ``(x, y)`` points.
        thickness (int): Line thickness in pixels.

    Returns:
        np.ndarray: ``float32`` opacity map in ``[0, 1]``.
    """
    canvas = np.zeros((size, size), np.uint8)
    cv2.polylines(canvas, [_to_fixed_point(p) for p in lines], False, 255, thickness, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def _fill_polygons(size: int, polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Fill anti-aliased polygons into an opacity map.

    Args:
        size (int): Side of the square canvas.
        polygons (Sequence[np.ndarray]): Polygons, each an ``(N, 2)`` float array of ``(x, y)`` vertices.

    Returns:
        np.ndarray: ``float32`` opacity map in ``[0, 1]``.
    """
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [_to_fixed_point(p) for p in polygons], 255, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (no-op for ``sigma <= 0``).

    Args:
        image (np.ndarray): ``float32`` image.
        sigma (float): Standard deviation in pixels.

    Returns:
        np.ndarray: Blurred image.
    """
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image


def _irregular_polygon(
    rng: np.random.Generator,
    center: np.ndarray,
    radius: float,
    aspect: float,
    roughness: float,
) -> np.ndarray:
    """Make a random star-shaped polygon with a smoothly varying radius.

    Args:
        rng (np.random.Generator): Random stream.
        center (np.ndarray): ``(x, y)`` centre.
        radius (float): Mean radius in pixels along the major axis.
        aspect (float): Minor/major axis ratio in ``(0, 1]``.
        roughness (float): Relative amplitude of the radius variation.

    Returns:
        np.ndarray: ``(N, 2)`` float array of vertices.
    """
    n_vertices = 48
    angles = np.linspace(0.0, 2.0 * np.pi, n_vertices, endpoint=False)
    profile = np.zeros(n_vertices)
    for harmonic in range(2, 6):
        profile += rng.normal(0.0, 1.0 / harmonic) * np.cos(harmonic * angles + rng.uniform(0, 2 * np.pi))
    radii = radius * np.clip(1.0 + roughness * profile, 0.35, 1.8)
    rotation = rng.uniform(0, np.pi)
    x, y = radii * np.cos(angles), aspect * radii * np.sin(angles)
    cos, sin = np.cos(rotation), np.sin(rotation)
    return np.stack([center[0] + cos * x - sin * y, center[1] + sin * x + cos * y], axis=1)


def _random_walk(
    rng: np.random.Generator,
    start: np.ndarray,
    angle: float,
    length: float,
    step: float,
    wiggle: float,
) -> np.ndarray:
    """Make a persistent random walk (direction drifts by ``wiggle`` radians per step).

    Args:
        rng (np.random.Generator): Random stream.
        start (np.ndarray): ``(x, y)`` start point.
        angle (float): Initial direction in radians.
        length (float): Total length in pixels.
        step (float): Step length in pixels.
        wiggle (float): Standard deviation of the direction change per step.

    Returns:
        np.ndarray: ``(N, 2)`` float array of points.
    """
    n_steps = max(2, int(length / step))
    angles = angle + np.cumsum(rng.normal(0.0, wiggle, n_steps))
    steps = step * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _inner_point(rng: np.random.Generator, size: int, margin: float = 0.15) -> np.ndarray:
    """Draw an ``(x, y)`` point at least ``margin * size`` away from the border.

    Args:
        rng (np.random.Generator): Random stream.
        size (int): Image side length.
        margin (float): Margin as a fraction of ``size``.

    Returns:
        np.ndarray: Float ``(x, y)`` point.
    """
    return rng.uniform(margin * size, (1.0 - margin) * size, 2)


# --------------------------------------------------------------------------------------------------
# Defects: each returns (opacity in [0, 1], target image); the defect pulls the clean image
# towards the target with that opacity.
# --------------------------------------------------------------------------------------------------
def _scratch(rng: np.random.Generator, clean: np.ndarray, _donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thin, slightly curved bright or dark line (one to three strokes)."""
    size = clean.shape[0]
    scale = size / 256.0
    strokes = []
    start, angle = _inner_point(rng, size, 0.2), rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(1, 4))):
        stroke = _random_walk(rng, start, angle, rng.uniform(0.1, 0.35) * size, max(1.0, 3 * scale), 0.03)
        strokes.append(stroke)
        start, angle = stroke[-1], angle + rng.normal(0.0, 0.25)
    thickness = max(1, round(rng.uniform(0.6, 2.2) * scale))
    opacity = _blur(_draw_polylines(size, strokes, thickness), 0.4 * scale)
    contrast = rng.uniform(18.0, 80.0) * rng.choice([-1.0, 1.0], p=[0.4, 0.6])
    return opacity, clean + contrast


def _crack(rng: np.random.Generator, clean: np.ndarray, _donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dark, jagged random-walk line with up to three branches."""
    size = clean.shape[0]
    scale = size / 256.0
    step = max(1.0, 2.5 * scale)
    trunk = _random_walk(
        rng, _inner_point(rng, size), rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.55) * size, step, 0.3
    )
    lines = [trunk]
    for _ in range(int(rng.integers(0, 4))):
        origin = trunk[int(rng.integers(1, len(trunk)))]
        branch_angle = rng.uniform(0, 2 * np.pi)
        lines.append(_random_walk(rng, origin, branch_angle, rng.uniform(0.05, 0.2) * size, step, 0.35))
    thickness = max(1, round(rng.uniform(0.8, 2.0) * scale))
    opacity = _draw_polylines(size, lines, thickness)
    depth = rng.uniform(0.3, 0.75)
    return opacity, clean * (1.0 - depth)


def _hole(rng: np.random.Generator, clean: np.ndarray, _donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dark irregular ellipse with a soft rim."""
    size = clean.shape[0]
    radius = rng.uniform(0.025, 0.1) * size
    polygon = _irregular_polygon(rng, _inner_point(rng, size), radius, rng.uniform(0.55, 1.0), 0.15)
    opacity = _blur(_fill_polygons(size, [polygon]), rng.uniform(0.1, 0.3) * radius)
    darkness = rng.uniform(0.1, 0.6)
    return opacity, clean * darkness


def _stain(rng: np.random.Generator, clean: np.ndarray, _donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Low-contrast blurry blob that shifts the brightness and flattens the texture."""
    size = clean.shape[0]
    center = _inner_point(rng, size)
    radius = rng.uniform(0.06, 0.16) * size
    blobs = [
        _irregular_polygon(rng, center + rng.normal(0.0, 0.4 * radius, 2), radius * rng.uniform(0.5, 1.0), 1.0, 0.3)
        for _ in range(int(rng.integers(1, 4)))
    ]
    opacity = _blur(_fill_polygons(size, blobs), rng.uniform(0.15, 0.35) * radius)
    local_mean, _ = _weighted_stats(clean, opacity / max(float(opacity.sum()), 1e-6))
    smoothed = _blur(clean, rng.uniform(0.5, 2.5) * size / 256.0)
    shift = rng.uniform(12.0, 40.0) * rng.choice([-1.0, 1.0])
    return opacity, local_mean + (smoothed - local_mean) * rng.uniform(0.6, 1.0) + shift


def _cut_paste(rng: np.random.Generator, clean: np.ndarray, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Irregular patch of another category's photo, brightness-matched to the surroundings."""
    size = clean.shape[0]
    radius = rng.uniform(0.05, 0.14) * size
    center = _inner_point(rng, size)
    polygon = _irregular_polygon(rng, center, radius, rng.uniform(0.5, 1.0), 0.25)
    opacity = _blur(_fill_polygons(size, [polygon]), 0.5 * size / 256.0)
    top, left = rng.integers(0, donor.shape[0] - CROP_SIZE + 1, 2)
    patch = np.rot90(donor[top : top + CROP_SIZE, left : left + CROP_SIZE], k=int(rng.integers(0, 4)))
    patch = _resize(np.ascontiguousarray(patch, dtype=np.float32), size)
    weights = opacity / max(float(opacity.sum()), 1e-6)
    host_mean, host_std = _weighted_stats(clean, weights)
    patch_mean, patch_std = _weighted_stats(patch, weights)
    matched = (patch - patch_mean) / patch_std * host_std * rng.uniform(0.8, 1.25)
    return opacity, host_mean + rng.uniform(-15.0, 15.0) + matched


def _weighted_stats(image: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Weighted mean and standard deviation (floored at 1 grey level) of an image.

    Args:
        image (np.ndarray): Float image.
        weights (np.ndarray): Non-negative weights summing to 1 (or all zero).

    Returns:
        tuple[float, float]: Mean and standard deviation.
    """
    mean = float((image * weights).sum())
    std = float(np.sqrt(((image - mean) ** 2 * weights).sum()))
    return mean, max(std, 1.0)


_DEFECTS: dict[str, Callable[[np.random.Generator, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "cut_paste": _cut_paste,
}


def _composite(clean: np.ndarray, opacity: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend a defect into a clean image and return the exact mask of changed pixels.

    The opacity is normalised to a maximum of 1 and soft-thresholded at ``MASK_THRESHOLD``: pixels
    below the threshold are left untouched, pixels above are blended with an opacity that rises
    continuously from 0 (so the rim stays soft). A masked pixel that rounding would leave unchanged is
    moved by one grey level towards the target, so the mask equals ``defective != clean`` exactly.

    Args:
        clean (np.ndarray): ``uint8`` clean image.
        opacity (np.ndarray): ``float32`` raw defect opacity.
        target (np.ndarray): Float image the defect shows at full opacity.

    Returns:
        tuple[np.ndarray, np.ndarray]: ``uint8`` defective image and boolean mask.
    """
    peak = float(opacity.max())
    if peak <= 0:
        return clean.copy(), np.zeros(clean.shape, bool)
    alpha = np.clip((opacity / peak - MASK_THRESHOLD) / (1.0 - MASK_THRESHOLD), 0.0, 1.0)
    mask = alpha > 0
    base = clean.astype(np.float32)
    defective = _to_uint8(base + alpha * (target - base))
    stuck = mask & (defective == clean)
    direction = np.where(target >= base, 1, -1)
    direction = np.where(clean == 255, -1, np.where(clean == 0, 1, direction))
    defective[stuck] = (clean[stuck].astype(np.int16) + direction[stuck]).astype(np.uint8)
    return defective, mask


def _apply_defect(
    rng: np.random.Generator,
    clean: np.ndarray,
    defect: str,
    donor: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one defect, redrawing its shape in the (unlikely) case it lands outside the image.

    Args:
        rng (np.random.Generator): Random stream of the sample.
        clean (np.ndarray): ``uint8`` clean image.
        defect (str): One of ``EMBEDDED_DEFECT_TYPES``.
        donor (np.ndarray): Photograph of another category (used by ``cut_paste``).

    Returns:
        tuple[np.ndarray, np.ndarray]: ``uint8`` defective image and non-empty boolean mask.

    Raises:
        RuntimeError: If no non-empty defect could be drawn.
    """
    base = clean.astype(np.float32)
    for _ in range(_MAX_DEFECT_ATTEMPTS):
        opacity, target = _DEFECTS[defect](rng, base, donor)
        defective, mask = _composite(clean, opacity, target)
        if mask.any():
            return defective, mask
    msg = f"Could not draw a non-empty {defect!r} defect in {_MAX_DEFECT_ATTEMPTS} attempts."
    raise RuntimeError(msg)


# --------------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------------
def render_sample(
    category: str,
    split: str,
    label: str,
    index: int,
    seed: int = 0,
    image_size: int = 256,
) -> EmbeddedSample:
    """Render one image exactly as ``generate_embedded_dataset`` writes it.

    Args:
        category (str): One of ``EMBEDDED_CATEGORIES``.
        split (str): ``"train"`` or ``"test"``.
        label (str): ``"good"`` or (for ``split="test"``) one of ``EMBEDDED_DEFECT_TYPES``.
        index (int): Index of the image inside its folder (``000.png`` is index 0).
        seed (int): Global seed. Defaults to ``0``.
        image_size (int): Side length of the image. Defaults to ``256``.

    Returns:
        EmbeddedSample: The image, its clean version, its mask and its crop box.

    Raises:
        ValueError: If ``category``, ``split`` or ``label`` is unknown.
    """
    _check_category(category)
    if split not in _SPLITS:
        msg = f"split must be one of {_SPLITS}, got {split!r}."
        raise ValueError(msg)
    if label != "good" and (split == "train" or label not in EMBEDDED_DEFECT_TYPES):
        msg = f"label must be 'good' or (for split='test') one of {EMBEDDED_DEFECT_TYPES}, got {label!r}."
        raise ValueError(msg)
    rng = _sample_rng(seed, category, split, label, index)
    source = _load_source(category)
    box = _sample_crop_box(rng, split, source.shape)
    clean = _render_crop(source, box, image_size, rng, rotatable=category in _ROTATABLE)
    if label == "good":
        return EmbeddedSample(image=clean, clean=clean, mask=None, box=box)
    others = [name for name in EMBEDDED_CATEGORIES if name != category]
    donor = _load_source(others[int(rng.integers(0, len(others)))])
    defective, mask = _apply_defect(rng, clean, label, donor)
    return EmbeddedSample(image=defective, clean=clean, mask=mask, box=box)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------
def _write_png(path: Path, image: np.ndarray) -> None:
    """Write a ``uint8`` array as a PNG, creating parent folders.

    Args:
        path (Path): Output file.
        image (np.ndarray): ``uint8`` image.

    Raises:
        OSError: If the file could not be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        msg = f"Could not write {path}."
        raise OSError(msg)


def _write_category(folder: Path, category: str, params: dict) -> None:
    """Write all images, masks and the metadata file of one category into ``folder``.

    Args:
        folder (Path): Destination category folder (a temporary folder during generation).
        category (str): Category name.
        params (dict): Metadata as built by ``_metadata``.
    """
    seed, image_size = params["seed"], params["image_size"]
    jobs = [("train", "good", params["n_train"]), ("test", "good", params["n_test_good"])]
    jobs += [("test", defect, params["n_test_per_defect"]) for defect in params["defect_types"]]
    for split, label, count in jobs:
        for index in range(count):
            sample = render_sample(category, split, label, index, seed=seed, image_size=image_size)
            _write_png(folder / split / label / f"{index:03d}.png", sample.image)
            if sample.mask is not None:
                mask = sample.mask.astype(np.uint8) * 255
                _write_png(folder / "ground_truth" / label / f"{index:03d}_mask.png", mask)
    (folder / METADATA_FILENAME).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def _metadata(category: str, seed: int, image_size: int, n_train: int, n_test_good: int, n_test: int) -> dict:
    """Build the parameter record stored in ``<root>/<category>/.embedded.json``.

    Args:
        category (str): Category name.
        seed (int): Global seed.
        image_size (int): Image side length.
        n_train (int): Number of training images.
        n_test_good (int): Number of normal test images.
        n_test (int): Number of test images per defect type.

    Returns:
        dict: JSON-serialisable parameters that fully determine the category's files.
    """
    return {
        "generator": "anomalib_bgad.data.embedded",
        "version": GENERATOR_VERSION,
        "category": category,
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test,
        "defect_types": list(EMBEDDED_DEFECT_TYPES),
    }


def _read_metadata(folder: Path) -> dict | None:
    """Read a category's metadata file.

    Args:
        folder (Path): Category folder.

    Returns:
        dict | None: The stored parameters, or ``None`` if missing or unreadable.
    """
    try:
        return json.loads((folder / METADATA_FILENAME).read_text())
    except (OSError, ValueError):
        return None


def _is_empty_dir(path: Path) -> bool:
    """Return whether ``path`` is a folder without entries."""
    return path.is_dir() and not any(path.iterdir())


def _remove(path: Path) -> None:
    """Delete a file or folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _install(tmp: Path, target: Path, params: dict) -> None:
    """Move a finished temporary category folder into place.

    An existing ``target`` (only present when overwriting) is first renamed aside, so the final
    folder is always either the old complete tree or the new complete tree.

    Args:
        tmp (Path): Finished temporary folder.
        target (Path): Final category folder.
        params (dict): Parameters of the new tree.

    Raises:
        OSError: If ``target`` could not be replaced.
    """
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{tmp.name[-8:]}")
        target.rename(old)
    try:
        tmp.rename(target)
    except OSError:
        if old is not None:
            old.rename(target)
            raise
        # Another process may have installed the same tree concurrently; that is fine.
        if _read_metadata(target) != params:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        _remove(old)


def _generate_category(root: Path, category: str, params: dict, overwrite: bool) -> None:
    """Generate one category folder atomically, or keep it if it already matches ``params``.

    Args:
        root (Path): Dataset root.
        category (str): Category name.
        params (dict): Parameters of the tree to generate.
        overwrite (bool): Replace an existing folder.

    Raises:
        FileExistsError: If the folder exists, is not empty, differs from ``params`` and
            ``overwrite`` is ``False``.
    """
    target = root / category
    exists = (target.exists() or target.is_symlink()) and not _is_empty_dir(target)
    if exists and not overwrite:
        if _read_metadata(target) == params:
            return
        msg = (
            f"{target} already exists and was not generated by generate_embedded_dataset with these parameters "
            f"({params}). Pass overwrite=True to replace it, or choose another root."
        )
        raise FileExistsError(msg)
    if _is_empty_dir(target):
        target.rmdir()
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}.tmp-", dir=root))
    try:
        _write_category(tmp, category, params)
        _install(tmp, target, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------
# Validation and public entry point
# --------------------------------------------------------------------------------------------------
def _check_category(category: str) -> None:
    """Raise a ``ValueError`` listing valid names if ``category`` is unknown."""
    if category not in EMBEDDED_CATEGORIES:
        msg = f"categories: unknown category {category!r}; valid categories are {list(EMBEDDED_CATEGORIES)}."
        raise ValueError(msg)


def _check_int(name: str, value: object, minimum: int) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        msg = f"{name} must be an integer >= {minimum}, got {value!r}."
        raise ValueError(msg)


def _normalize_categories(categories: Sequence[str] | str | None) -> list[str]:
    """Validate ``categories`` and return them without duplicates (a single name is accepted).

    Args:
        categories (Sequence[str] | str | None): Requested categories; ``None`` means all.

    Returns:
        list[str]: Category names in the requested order.

    Raises:
        ValueError: If the list is empty or contains an unknown name.
    """
    if categories is None:
        return list(EMBEDDED_CATEGORIES)
    names = [categories] if isinstance(categories, str) else list(categories)
    if not names:
        msg = f"categories must not be empty; valid categories are {list(EMBEDDED_CATEGORIES)}."
        raise ValueError(msg)
    for name in names:
        _check_category(name)
    return list(dict.fromkeys(names))


def generate_embedded_dataset(
    root: str | Path,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    image_size: int = 256,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_per_defect: int = 8,
    overwrite: bool = False,
) -> Path:
    """Write an MVTec-AD-format dataset of real CC0 textures with synthetic defects.

    Each category is generated into a temporary folder next to ``<root>/<category>`` and renamed
    into place when complete, so an interrupted run never leaves a partial tree behind. A
    category folder that already holds a tree generated with the same parameters is left
    untouched, which makes repeated calls cheap.

    Args:
        root (str | Path): Dataset root; pass it as ``root`` to :class:`anomalib.data.MVTecAD`.
        seed (int): Seed; equal seeds give byte-identical files. Defaults to ``0``.
        categories (Sequence[str] | None): Subset of ``EMBEDDED_CATEGORIES``; ``None`` means all.
            Defaults to ``None``.
        image_size (int): Side length of the square images, at least 32. Defaults to ``256``.
        n_train (int): Normal training images per category. Defaults to ``60``.
        n_test_good (int): Normal test images per category. Defaults to ``20``.
        n_test_per_defect (int): Test images per defect type and category (there are
            ``len(EMBEDDED_DEFECT_TYPES)`` defect types). Defaults to ``8``.
        overwrite (bool): Replace existing category folders. Defaults to ``False``.

    Returns:
        Path: ``root``.

    Raises:
        ValueError: If an argument is invalid (the message names it).
        FileExistsError: If a non-empty ``<root>/<category>`` exists that was not generated with
            the same parameters and ``overwrite`` is ``False``.

    Example:
        >>> root = generate_embedded_dataset("/tmp/embedded", categories=["brick"], image_size=64, n_train=6)
        >>> sorted(p.name for p in (root / "brick" / "test").iterdir())
        ['crack', 'cut_paste', 'good', 'hole', 'scratch', 'stain']
    """
    names = _normalize_categories(categories)
    _check_int("seed", seed, 0)
    _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    _check_int("n_train", n_train, 1)
    _check_int("n_test_good", n_test_good, 1)
    _check_int("n_test_per_defect", n_test_per_defect, 1)
    root = Path(root)
    if root.exists() and not root.is_dir():
        msg = f"root must be a folder, but {root} is a file."
        raise ValueError(msg)
    root.mkdir(parents=True, exist_ok=True)
    for category in names:
        params = _metadata(category, int(seed), int(image_size), int(n_train), int(n_test_good), int(n_test_per_defect))
        _generate_category(root, category, params, overwrite)
    return root
