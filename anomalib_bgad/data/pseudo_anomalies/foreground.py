"""Foreground masks of object images and paste positions on them, to put pseudo anomalies onto the object.

BGAD's authors paste pseudo anomalies inside the foreground of object categories, computed with
"OpenCV's binary threshold" (their answer in xcyao00/BGAD issue #8), but never released that code
(issue #18). This module computes it as described: grayscale, Gaussian blur, Otsu threshold, the
side of the threshold that dominates the image border is background, then morphological closing
and opening, hole filling, and removal of specks. Texture images (or a degenerate result) give the
whole image.

Example:
    >>> import numpy as np
    >>> image = np.zeros((64, 64, 3), np.float32); image[16:48, 16:48] = 1.0
    >>> mask = compute_foreground(image)
    >>> bool(mask[32, 32]), bool(mask[2, 2])
    (True, False)
"""

import cv2
import numpy as np

# MVTec AD texture categories: the whole image is foreground.
MVTEC_TEXTURE_CATEGORIES = frozenset({"carpet", "grid", "leather", "tile", "wood"})
# MVTec AD object categories: pseudo anomalies are pasted onto the object.
MVTEC_OBJECT_CATEGORIES = frozenset(
    {
        "bottle",
        "cable",
        "capsule",
        "hazelnut",
        "metal_nut",
        "pill",
        "screw",
        "toothbrush",
        "transistor",
        "zipper",
    }
)

MIN_INSIDE_FOREGROUND = 2.0 / 3.0  # authors: paste where >= 2/3 of the defect lies on the object
_WORK_SIZE = 256  # longest side at which the mask is computed
_MIN_FRACTION = 0.01  # a foreground (or background) smaller than this is treated as a failed segmentation


def _to_gray_uint8(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 3:
        array = cv2.cvtColor(np.ascontiguousarray(array[..., :3]), cv2.COLOR_RGB2GRAY)
    return array


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border."""
    padded = np.pad(mask, 1, constant_values=0).astype(np.uint8)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood == 0
    return (padded.astype(bool) | holes)[1:-1, 1:-1]


def compute_foreground(image: np.ndarray) -> np.ndarray:
    """Segment the object of an image from its (roughly uniform) background.

    Args:
        image (np.ndarray): ``(H, W, 3)`` or ``(H, W)`` image, uint8 or float in ``[0, 1]``.

    Returns:
        np.ndarray: ``(H, W)`` boolean foreground mask; all ``True`` when no object/background split
        is found (e.g. textures).
    """
    gray = _to_gray_uint8(image)
    height, width = gray.shape
    scale = min(1.0, _WORK_SIZE / max(height, width))
    small = cv2.resize(
        gray, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )
    small = cv2.GaussianBlur(small, (5, 5), 0)
    _, binary = cv2.threshold(small, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    border = np.concatenate([binary[0], binary[-1], binary[:, 0], binary[:, -1]])
    foreground = binary == 0 if border.mean() > 0.5 else binary == 1

    side = max(3, (min(small.shape) // 40) * 2 + 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    cleaned = cv2.morphologyEx(foreground.astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    cleaned = cv2.morphologyEx(cleaned, cv2.MORPH_OPEN, kernel)
    cleaned = _fill_holes(cleaned)

    count, labels, stats, _ = cv2.connectedComponentsWithStats(cleaned.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= _MIN_FRACTION * cleaned.size
    cleaned = keep[labels]

    fraction = cleaned.mean()
    if fraction < _MIN_FRACTION or fraction > 1.0 - _MIN_FRACTION:
        return np.ones((height, width), dtype=bool)
    return cv2.resize(cleaned.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def paste_position(
    crop_mask: np.ndarray,
    target_shape: tuple[int, int],
    rng: np.random.Generator,
    foreground: np.ndarray | None,
) -> tuple[int, int]:
    """Top-left corner for a crop: uniform, or where at least 2/3 of it lies on the foreground (else the most).

    Args:
        crop_mask (np.ndarray): ``(h, w)`` boolean mask of the pixels to paste.
        target_shape (tuple[int, int]): ``(H, W)`` of the image to paste on (``H >= h``, ``W >= w``).
        rng (np.random.Generator): Source of randomness.
        foreground (np.ndarray | None): ``(H, W)`` boolean foreground, ``None`` (or all ``True``): anywhere.

    Returns:
        tuple[int, int]: ``(y, x)`` of the crop's top-left corner.
    """
    height, width = target_shape
    crop_h, crop_w = crop_mask.shape
    if foreground is not None and not foreground.all():
        overlap = cv2.matchTemplate(foreground.astype(np.float32), crop_mask.astype(np.float32), cv2.TM_CCORR)
        overlap /= max(float(crop_mask.sum()), 1.0)
        candidates = np.argwhere(overlap >= MIN_INSIDE_FOREGROUND - 1e-4)
        if len(candidates) == 0:
            candidates = np.argwhere(overlap >= overlap.max() - 1e-4)
        y0, x0 = candidates[int(rng.integers(len(candidates)))]
        return int(y0), int(x0)
    return int(rng.integers(height - crop_h + 1)), int(rng.integers(width - crop_w + 1))
