"""The five synthetic defect types, and how a defect is blended into a clean crop with an exact mask.

Every renderer draws a shape and returns a :class:`DefectLayer`: an opacity map and a target image
that is linear in one *strength* parameter (``target = base + strength * direction``). The shape,
its position and its kind are random; the strength is left free so that the visibility rule
(:mod:`anomalib_bgad.embedded.visibility`) can set it until the defect's measured contrast falls
in its drawn range. Sizes are given at 256 px and scale with the image side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from anomalib_bgad.embedded.shapes import (
    blur,
    draw_polylines,
    fill_polygons,
    inner_point,
    irregular_polygon,
    random_walk,
)
from anomalib_bgad.embedded.sources import CROP_SIZE, resize, to_uint8

EMBEDDED_DEFECT_TYPES: tuple[str, ...] = ("scratch", "crack", "hole", "stain", "cut_paste")
"""Defect types written to ``test/<defect>`` and ``ground_truth/<defect>`` of every category."""

MASK_THRESHOLD = 0.25
"""Defect opacity (of its maximum) below which a pixel is left untouched and outside the mask."""


@dataclass(frozen=True)
class DefectLayer:
    """A drawn defect whose strength is still free.

    At strength ``s`` the defect pulls the clean image towards ``base + s * direction`` with the
    (thresholded) ``opacity``; see :func:`composite`.

    Args:
        opacity (np.ndarray): ``float32`` raw opacity of shape ``(H, W)``, any positive scale.
        base (np.ndarray): ``float32`` target image at strength 0, shape ``(H, W)``, grey levels.
        direction (np.ndarray): ``float32`` change of the target per unit of strength, shape ``(H, W)``.
        max_strength (float): Largest strength that makes sense (the target then reaches black or white).
        polarity (int): ``+1`` if more strength makes the defect brighter, ``-1`` if darker.
    """

    opacity: np.ndarray
    base: np.ndarray
    direction: np.ndarray
    max_strength: float
    polarity: int

    def target(self, strength: float) -> np.ndarray:
        """Return the image the defect shows at full opacity for ``strength`` (``float32``, grey levels)."""
        return self.base + np.float32(strength) * self.direction


def _constant(shape: tuple[int, ...], value: float) -> np.ndarray:
    """Return a ``float32`` array of ``shape`` filled with ``value``."""
    return np.full(shape, value, np.float32)


def _polarity(rng: np.random.Generator, p_bright: float) -> int:
    """Draw ``+1`` (brighter) with probability ``p_bright``, else ``-1`` (darker)."""
    return 1 if rng.random() < p_bright else -1


def _scratch(rng: np.random.Generator, clean: np.ndarray, _donor: np.ndarray) -> DefectLayer:
    """Thin, slightly curved bright or dark line: 1-3 strokes of 25-90 px each, 1-3 px thick (at 256 px)."""
    size = clean.shape[0]
    scale = size / 256.0
    strokes = []
    start, angle = inner_point(rng, size, 0.2), rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(1, 4))):
        stroke = random_walk(rng, start, angle, rng.uniform(0.1, 0.35) * size, max(1.0, 3 * scale), 0.03)
        strokes.append(stroke)
        start, angle = stroke[-1], angle + rng.normal(0.0, 0.25)
    thickness = max(1, round(rng.uniform(1.0, 3.4) * scale))
    opacity = blur(draw_polylines(size, strokes, thickness), 0.4 * scale)
    polarity = _polarity(rng, 0.6)
    return DefectLayer(opacity, clean, _constant(clean.shape, polarity), 255.0, polarity)


def _crack(rng: np.random.Generator, clean: np.ndarray, _donor: np.ndarray) -> DefectLayer:
    """Dark, jagged line of 50-140 px with up to three branches, 1-3 px thick (at 256 px); darkens the texture."""
    size = clean.shape[0]
    scale = size / 256.0
    step = max(1.0, 2.5 * scale)
    trunk = random_walk(
        rng, inner_point(rng, size), rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.55) * size, step, 0.3
    )
    lines = [trunk]
    for _ in range(int(rng.integers(0, 4))):
        origin = trunk[int(rng.integers(1, len(trunk)))]
        lines.append(random_walk(rng, origin, rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.2) * size, step, 0.35))
    thickness = max(1, round(rng.uniform(1.0, 3.4) * scale))
    opacity = draw_polylines(size, lines, thickness)
    # strength = fraction of the brightness removed (1: black)
    return DefectLayer(opacity, clean, -clean, 1.0, -1)


def _hole(rng: np.random.Generator, clean: np.ndarray, _donor: np.ndarray) -> DefectLayer:
    """Dark irregular ellipse with a soft rim, radius 8-26 px (at 256 px); darkens the texture."""
    size = clean.shape[0]
    radius = rng.uniform(0.03, 0.1) * size
    polygon = irregular_polygon(rng, inner_point(rng, size), radius, rng.uniform(0.55, 1.0), 0.15)
    opacity = blur(fill_polygons(size, [polygon]), rng.uniform(0.1, 0.3) * radius)
    return DefectLayer(opacity, clean, -clean, 1.0, -1)


def _stain(rng: np.random.Generator, clean: np.ndarray, _donor: np.ndarray) -> DefectLayer:
    """Blurry blob of 1-3 lobes, radius 15-41 px (at 256 px), that flattens the texture and shifts its brightness."""
    size = clean.shape[0]
    center = inner_point(rng, size)
    radius = rng.uniform(0.06, 0.16) * size
    blobs = [
        irregular_polygon(rng, center + rng.normal(0.0, 0.4 * radius, 2), radius * rng.uniform(0.5, 1.0), 1.0, 0.3)
        for _ in range(int(rng.integers(1, 4)))
    ]
    opacity = blur(fill_polygons(size, blobs), rng.uniform(0.15, 0.35) * radius)
    local_mean, _ = _weighted_stats(clean, opacity / max(float(opacity.sum()), 1e-6))
    smoothed = blur(clean, rng.uniform(0.5, 2.5) * size / 256.0)
    base = local_mean + (smoothed - local_mean) * rng.uniform(0.6, 1.0)
    polarity = _polarity(rng, 0.5)
    return DefectLayer(opacity, base.astype(np.float32), _constant(clean.shape, polarity), 255.0, polarity)


def _cut_paste(rng: np.random.Generator, clean: np.ndarray, donor: np.ndarray) -> DefectLayer:
    """Irregular patch of another category's photo, radius 13-36 px (at 256 px), contrast-matched to its host."""
    size = clean.shape[0]
    radius = rng.uniform(0.05, 0.14) * size
    polygon = irregular_polygon(rng, inner_point(rng, size), radius, rng.uniform(0.5, 1.0), 0.25)
    opacity = blur(fill_polygons(size, [polygon]), 0.5 * size / 256.0)
    top, left = rng.integers(0, donor.shape[0] - CROP_SIZE + 1, 2)
    patch = np.rot90(donor[top : top + CROP_SIZE, left : left + CROP_SIZE], k=int(rng.integers(0, 4)))
    patch = resize(np.ascontiguousarray(patch, dtype=np.float32), size)
    weights = opacity / max(float(opacity.sum()), 1e-6)
    host_mean, host_std = _weighted_stats(clean, weights)
    patch_mean, patch_std = _weighted_stats(patch, weights)
    base = host_mean + (patch - patch_mean) / patch_std * host_std * rng.uniform(0.8, 1.25)
    polarity = _polarity(rng, 0.5)
    return DefectLayer(opacity, base.astype(np.float32), _constant(clean.shape, polarity), 255.0, polarity)


def _weighted_stats(image: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Weighted mean and standard deviation (floored at 1 grey level) of an image.

    Args:
        image (np.ndarray): Float image.
        weights (np.ndarray): Non-negative weights summing to 1 (or all zero).

    Returns:
        tuple[float, float]: Mean and standard deviation, in grey levels.
    """
    mean = float((image * weights).sum())
    std = float(np.sqrt(((image - mean) ** 2 * weights).sum()))
    return mean, max(std, 1.0)


DEFECTS: dict[str, Callable[[np.random.Generator, np.ndarray, np.ndarray], DefectLayer]] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "cut_paste": _cut_paste,
}
"""Renderer of each defect type: ``(rng, clean float32 image, donor photograph) -> DefectLayer``."""


def blend_alpha(opacity: np.ndarray) -> np.ndarray:
    """Turn a raw opacity map into the blend weight of :func:`composite`; its support is the mask.

    The opacity is normalised to a maximum of 1 and soft-thresholded at ``MASK_THRESHOLD``: below it
    the weight is 0, above it rises continuously from 0 to 1 (so the rim stays soft).

    Args:
        opacity (np.ndarray): ``float32`` raw opacity.

    Returns:
        np.ndarray: ``float32`` weight in ``[0, 1]`` of the same shape (all zero for an empty opacity).
    """
    peak = float(opacity.max())
    if peak <= 0:
        return np.zeros(opacity.shape, np.float32)
    return np.clip((opacity / peak - MASK_THRESHOLD) / (1.0 - MASK_THRESHOLD), 0.0, 1.0).astype(np.float32)


def blend(clean: np.ndarray, alpha: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pull ``clean`` towards ``target`` with weight ``alpha`` so that exactly the pixels with ``alpha > 0`` change.

    A weighted pixel that rounding would leave unchanged is moved by one grey level towards the
    target (away from 0 or 255 when it is saturated), so ``blend(...) != clean`` equals ``alpha > 0``.

    Args:
        clean (np.ndarray): ``uint8`` clean image of shape ``(H, W)``.
        alpha (np.ndarray): ``float32`` blend weight in ``[0, 1]`` of shape ``(H, W)``.
        target (np.ndarray): Float image of shape ``(H, W)`` the defect shows at weight 1, grey levels.

    Returns:
        np.ndarray: ``uint8`` defective image of shape ``(H, W)``.
    """
    base = clean.astype(np.float32)
    defective = to_uint8(base + alpha * (target - base))
    stuck = (alpha > 0) & (defective == clean)
    direction = np.where(target >= base, 1, -1)
    direction = np.where(clean == 255, -1, np.where(clean == 0, 1, direction))
    defective[stuck] = (clean[stuck].astype(np.int16) + direction[stuck]).astype(np.uint8)
    return defective


def composite(clean: np.ndarray, opacity: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend a defect into a clean image and return the exact mask of changed pixels.

    Args:
        clean (np.ndarray): ``uint8`` clean image of shape ``(H, W)``.
        opacity (np.ndarray): ``float32`` raw defect opacity of shape ``(H, W)``.
        target (np.ndarray): Float image the defect shows at full opacity, grey levels.

    Returns:
        tuple[np.ndarray, np.ndarray]: ``uint8`` defective image and boolean mask, both ``(H, W)``;
        ``defective != clean`` equals the mask.
    """
    alpha = blend_alpha(opacity)
    return blend(clean, alpha, target), alpha > 0
