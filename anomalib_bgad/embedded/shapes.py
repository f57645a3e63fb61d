"""Random defect shapes drawn as anti-aliased opacity maps (``float32`` in ``[0, 1]``).

Coordinates are ``(x, y)`` in pixels of the square image; cv2 draws with 4 sub-pixel bits.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_SHIFT = 4  # sub-pixel bits for cv2 drawing


def _to_fixed_point(points: np.ndarray) -> np.ndarray:
    """Convert float ``(x, y)`` points to cv2's fixed-point ``int32`` format.

    Args:
        points (np.ndarray): Float array of shape ``(N, 2)``.

    Returns:
        np.ndarray: ``int32`` array of shape ``(N, 1, 2)``.
    """
    return np.rint(points * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def draw_polylines(size: int, lines: Sequence[np.ndarray], thickness: int) -> np.ndarray:
    """Draw anti-aliased open polylines into an opacity map.

    Args:
        size (int): Side of the square canvas.
        lines (Sequence[np.ndarray]): Polylines, each an ``(N, 2)`` float array of ``(x, y)`` points.
        thickness (int): Line thickness in pixels.

    Returns:
        np.ndarray: ``float32`` opacity map of shape ``(size, size)`` in ``[0, 1]``.
    """
    canvas = np.zeros((size, size), np.uint8)
    cv2.polylines(canvas, [_to_fixed_point(p) for p in lines], False, 255, thickness, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def fill_polygons(size: int, polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Fill anti-aliased polygons into an opacity map.

    Args:
        size (int): Side of the square canvas.
        polygons (Sequence[np.ndarray]): Polygons, each an ``(N, 2)`` float array of ``(x, y)`` vertices.

    Returns:
        np.ndarray: ``float32`` opacity map of shape ``(size, size)`` in ``[0, 1]``.
    """
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [_to_fixed_point(p) for p in polygons], 255, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (no-op for ``sigma <= 0``).

    Args:
        image (np.ndarray): ``float32`` image.
        sigma (float): Standard deviation in pixels.

    Returns:
        np.ndarray: Blurred image of the same shape.
    """
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image


def irregular_polygon(
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
        np.ndarray: ``(48, 2)`` float array of vertices.
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


def random_walk(
    rng: np.random.Generator,
    start: np.ndarray,
    angle: float,
    length: float,
    step: float,
    wiggle: float,
) -> np.ndarray:
    """Make a persistent random walk (its direction drifts by ``wiggle`` radians per step).

    Args:
        rng (np.random.Generator): Random stream.
        start (np.ndarray): ``(x, y)`` start point.
        angle (float): Initial direction in radians.
        length (float): Total length in pixels.
        step (float): Step length in pixels.
        wiggle (float): Standard deviation of the direction change per step, in radians.

    Returns:
        np.ndarray: ``(N, 2)`` float array of points.
    """
    n_steps = max(2, int(length / step))
    angles = angle + np.cumsum(rng.normal(0.0, wiggle, n_steps))
    steps = step * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def inner_point(rng: np.random.Generator, size: int, margin: float = 0.15) -> np.ndarray:
    """Draw an ``(x, y)`` point at least ``margin * size`` away from the border.

    Args:
        rng (np.random.Generator): Random stream.
        size (int): Image side length.
        margin (float): Margin as a fraction of ``size``. Defaults to ``0.15``.

    Returns:
        np.ndarray: Float ``(x, y)`` point.
    """
    return rng.uniform(margin * size, (1.0 - margin) * size, 2)
