"""The visibility rule: how visible each generated defect is, measured on the written image.

**Measure.** A defect must stand out from the texture around it *and* must have changed the surface
it covers; its visibility is the smaller of the two brightness steps, in standard deviations of the
surrounding texture::

    contrast = |mean(image[M]) - mean(image[R])|     step against the surroundings
    change   = |mean(image[M]) - mean(clean[M])|     step against what was there before
    V = min(contrast, change) / max(std(image[R]), 8)

``M`` is the defect mask (exactly the changed pixels), ``clean`` the crop before the defect and
``R`` the ring of pixels outside ``M`` within 8 px of it (Euclidean distance ``0 < d <= 8`` at
256 px; ``max(2, round(8 * size / 256))`` at other sizes). ``R`` is untouched by the defect, so its
statistics are the local texture's. The ``change`` term keeps a dark hole in a shadow, or a bright
line on a bright stone, from counting as visible; the standard deviation is floored at 8 grey
levels (about 3 % of the range) so that on a flat patch a defect still needs an absolute step.

**Classes.** Like MVTec AD, most defects are clearly visible and some are subtle: the test image
with index ``i`` of every defect type is ``subtle`` if ``i % 4 == 3`` (one in four, 25 %) and
``clear`` otherwise (75 %). A clear defect has ``1.75 <= V <= 3.0``, a subtle one
``0.75 <= V <= 1.25``; the gap between the classes keeps them apart.

**Size.** The mask area of each defect type lies in ``DEFECT_AREA_RANGE`` (pixels at 256 px; at
another side ``s`` the lower bound scales with ``min(k, k**2)`` and the upper with ``max(k, k**2)``,
``k = s / 256``, because lines keep a thickness of at least one pixel).

**Enforcement.** For every defect a target ``V`` is drawn uniformly in its class's range; the
shape, position and polarity are drawn by the defect's renderer, and the defect's strength is then
found by bisection so that the measured ``V`` of the final ``uint8`` image reaches the target. A
shape whose area is out of range, or whose target cannot be reached (e.g. a dark hole on a
texture that is already dark), is redrawn. The rule is about the data only; it was not tuned by
any model's score.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anomalib_bgad.embedded.defects import DefectLayer, blend

VISIBILITY_CLASSES: dict[str, tuple[float, float]] = {"clear": (1.75, 3.0), "subtle": (0.75, 1.25)}
"""Range ``(low, high)`` of the visibility ``V`` of each class, in standard deviations of the local texture."""

SUBTLE_PERIOD = 4
"""Test image ``i`` of each defect type is ``subtle`` when ``i % SUBTLE_PERIOD == SUBTLE_PERIOD - 1``."""

RING_WIDTH = 8
"""Width of the surrounding ring in pixels at 256 px."""

TEXTURE_STD_FLOOR = 8.0
"""Lower bound of the ring's standard deviation, in grey levels."""

REFERENCE_SIZE = 256
"""Image side at which ``RING_WIDTH`` and ``DEFECT_AREA_RANGE`` are stated."""

DEFECT_AREA_RANGE: dict[str, tuple[int, int]] = {
    "scratch": (60, 1200),
    "crack": (100, 1400),
    "hole": (200, 2700),
    "stain": (600, 9000),
    "cut_paste": (400, 4200),
}
"""Mask area ``(low, high)`` in pixels at 256 px of each defect type."""

_BISECTION_STEPS = 24


@dataclass(frozen=True)
class Visibility:
    """The measured visibility of one defect and its two parts, in ring standard deviations.

    Args:
        value (float): ``V = min(contrast, change)``.
        contrast (float): Step of the defect's mean against the ring's mean.
        change (float): Step of the defect's mean against the clean crop's mean under the mask.
    """

    value: float
    contrast: float
    change: float


def visibility_class(index: int) -> str:
    """Return the visibility class (``"clear"`` or ``"subtle"``) of test image ``index`` of a defect type.

    Args:
        index (int): Index of the image inside its defect folder.

    Returns:
        str: ``"subtle"`` for one index in ``SUBTLE_PERIOD``, else ``"clear"``.
    """
    return "subtle" if index % SUBTLE_PERIOD == SUBTLE_PERIOD - 1 else "clear"


def ring_width(image_size: int) -> int:
    """Return the ring width in pixels for images of side ``image_size``."""
    return max(2, round(RING_WIDTH * image_size / REFERENCE_SIZE))


def area_range(defect: str, image_size: int) -> tuple[float, float]:
    """Return the allowed mask area ``(low, high)`` in pixels of ``defect`` at side ``image_size``.

    Args:
        defect (str): One of the keys of ``DEFECT_AREA_RANGE``.
        image_size (int): Image side in pixels.

    Returns:
        tuple[float, float]: Inclusive bounds (``DEFECT_AREA_RANGE`` at 256 px).
    """
    k = image_size / REFERENCE_SIZE
    low, high = DEFECT_AREA_RANGE[defect]
    return low * min(k, k * k), high * max(k, k * k)


def surrounding_ring(mask: np.ndarray, width: int) -> np.ndarray:
    """Return the pixels outside ``mask`` within Euclidean distance ``width`` of it.

    Args:
        mask (np.ndarray): Boolean mask of shape ``(H, W)``.
        width (int): Ring width in pixels.

    Returns:
        np.ndarray: Boolean ring of shape ``(H, W)``.
    """
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return (distance > 0) & (distance <= width)


class _Reference:
    """What a defect is compared with: the ring's mean and floored std, and the clean mean under the mask."""

    def __init__(self, clean: np.ndarray, mask: np.ndarray) -> None:
        ring = surrounding_ring(mask, ring_width(clean.shape[0]))
        if not mask.any() or not ring.any():
            msg = "The visibility of a defect needs a non-empty mask with pixels around it."
            raise ValueError(msg)
        values = clean[ring].astype(np.float64)
        self.mask = mask
        self.ring_mean = float(values.mean())
        self.ring_std = max(float(values.std()), TEXTURE_STD_FLOOR)
        self.clean_mean = float(clean[mask].astype(np.float64).mean())

    def signed_steps(self, image: np.ndarray) -> tuple[float, float]:
        """Return ``(mean inside - ring mean, mean inside - clean mean)`` of ``image`` in ring stds."""
        inside = float(image[self.mask].astype(np.float64).mean())
        return (inside - self.ring_mean) / self.ring_std, (inside - self.clean_mean) / self.ring_std


def measure_visibility(image: np.ndarray, clean: np.ndarray, mask: np.ndarray) -> Visibility:
    """Measure a defect's visibility ``V`` (see the module docstring) on the image as written.

    Args:
        image (np.ndarray): ``uint8`` defective image of shape ``(H, W)``.
        clean (np.ndarray): ``uint8`` crop before the defect, shape ``(H, W)``.
        mask (np.ndarray): Boolean mask of shape ``(H, W)``: exactly the pixels the defect changed.

    Returns:
        Visibility: ``V`` with its ``contrast`` and ``change`` parts, in ring standard deviations.

    Raises:
        ValueError: If the mask is empty or leaves no ring pixels.
    """
    contrast, change = (abs(step) for step in _Reference(clean, mask).signed_steps(image))
    return Visibility(value=min(contrast, change), contrast=contrast, change=change)


def fit_strength(clean: np.ndarray, layer: DefectLayer, alpha: np.ndarray, target: float) -> np.ndarray | None:
    """Find the defect strength whose image has visibility ``target`` (bisection on the ``uint8`` result).

    Both steps, signed by the defect's polarity, grow with the strength, and so does their minimum;
    the smallest strength whose minimum reaches ``target`` is found by bisection, so the image's
    visibility lies in ``[target, target + one rounding step]``.

    Args:
        clean (np.ndarray): ``uint8`` clean image of shape ``(H, W)``.
        layer (DefectLayer): The drawn defect.
        alpha (np.ndarray): Its blend weight (``blend_alpha(layer.opacity)``), non-empty.
        target (float): Visibility to reach, in ring standard deviations.

    Returns:
        np.ndarray | None: ``uint8`` defective image, or ``None`` if ``target`` is out of reach (even
        strength 0 is more visible, the largest strength is less visible, or the mask has no ring).
    """
    mask = alpha > 0
    try:
        reference = _Reference(clean, mask)
    except ValueError:
        return None

    def render(strength: float) -> tuple[np.ndarray, float]:
        image = blend(clean, alpha, layer.target(strength))
        contrast, change = reference.signed_steps(image)
        return image, min(layer.polarity * contrast, layer.polarity * change)

    weakest, weak_visibility = render(0.0)
    if weak_visibility >= target:
        return weakest if weak_visibility == target else None
    (strongest, strong_visibility), low, high = render(layer.max_strength), 0.0, layer.max_strength
    if strong_visibility < target:
        return None
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        image, visibility = render(middle)
        if visibility >= target:
            high, strongest = middle, image
        else:
            low = middle
    return strongest
