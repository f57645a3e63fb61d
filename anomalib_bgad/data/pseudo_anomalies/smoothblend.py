"""SmoothBlend pseudo anomalies (Zou et al., "SPot-the-Difference Self-Supervised Pre-training for Anomaly
Detection and Segmentation", ECCV 2022).

SmoothBlend makes a subtle, local defect out of a normal image alone: a small patch is cut from the image,
colour-jittered, and blended back at another place of the same image through a smooth alpha. No labeled
anomaly is needed, so BGAD's phase 2 can run with zero real anomalies.

Definition used here (the SPD paper describes the idea; the numbers below are this project's choices, not
values taken from the paper):

* **Patch**: a rectangle of ``area`` (fraction of the image area, uniform in ``(0.005, 0.02)``: "small", below
  CutPaste's usual 2-15 %) and aspect ratio log-uniform in ``(1/3, 3)``, at least 4 pixels a side and at most
  half the image a side.
* **Colour jitter** of the patch, in random order: brightness, contrast and saturation factors uniform in
  ``[1 - j, 1 + j]`` and a hue shift uniform in ``[-j_h, j_h]`` (``jitter = (0.1, 0.1, 0.1, 0.1)``, the
  colour jitter of the common PyTorch CutPaste implementation; SmoothBlend extends CutPaste). Saturation and
  hue do nothing on grey images.
* **Alpha**: the patch's box blurred by a Gaussian of ``sigma = s * min(patch height, width)`` with ``s``
  uniform in ``(0.1, 0.2)``, computed with zero padding so that it falls off towards the patch border
  (``alpha`` is about 0.5 on the border and 0.25 in the corners).
* **Mask** = ``alpha > threshold`` (``threshold = 0.5``): a rounded rectangle.
* **Blend weight** ``w``: 0 outside the mask; inside, ``(alpha - threshold) / (max(alpha) - threshold)``,
  floored at ``min_weight = 0.05``. The weight rises smoothly from the mask border to 1 in the centre, and
  every pixel outside the mask is byte-identical to the source image; every mask pixel moves at least 5 %
  of the way to the patch (so it changes wherever the patch differs from the image).
* **Placement**: the patch is cut at a random place and pasted at another, at least half a patch away along
  one axis. With a ``foreground`` (object categories), both places hold at least 2/3 of the mask on the
  object, as RPAG's pastes do.

Every random number comes from the ``numpy.random.Generator`` passed in, so a sample is a pure function of
the image and that generator's seed.

Example:
    >>> import numpy as np, torch
    >>> image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    >>> out, mask = generate_smoothblend(image, np.random.default_rng(0))
    >>> bool(mask.any()), torch.equal(out[:, ~mask], image[:, ~mask])
    (True, True)
"""

import math
from typing import NamedTuple

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvf

from anomalib_bgad.data.pseudo_anomalies.foreground import paste_position

AREA = (0.005, 0.02)
ASPECT = (1.0 / 3.0, 3.0)
SIGMA_FRACTION = (0.1, 0.2)
JITTER = (0.1, 0.1, 0.1, 0.1)
THRESHOLD = 0.5
MIN_WEIGHT = 0.05
MIN_SIDE = 4
_PLACEMENT_ATTEMPTS = 20


class SmoothBlendSample(NamedTuple):
    """One SmoothBlend pseudo anomaly and how it was made.

    Attributes:
        image (torch.Tensor): ``(3, H, W)`` image with the blended patch.
        mask (torch.Tensor): ``(H, W)`` boolean mask, ``alpha > threshold`` at the target place.
        alpha (torch.Tensor): ``(h, w)`` Gaussian-smoothed alpha of the patch.
        weight (torch.Tensor): ``(h, w)`` blend weight (0 exactly where ``alpha <= threshold``).
        source (tuple[int, int, int, int]): ``(y, x, h, w)`` of the cut patch.
        target (tuple[int, int, int, int]): ``(y, x, h, w)`` of the pasted patch.
    """

    image: torch.Tensor
    mask: torch.Tensor
    alpha: torch.Tensor
    weight: torch.Tensor
    source: tuple[int, int, int, int]
    target: tuple[int, int, int, int]


def _gaussian_profile(length: int, sigma: float) -> torch.Tensor:
    """A box of ``length`` ones convolved with a normalised Gaussian, zero outside (1-D)."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    box = torch.ones(1, 1, length, dtype=torch.float64)
    return torch.nn.functional.conv1d(box, kernel.view(1, 1, -1), padding=radius).view(-1)


def smooth_alpha(height: int, width: int, sigma: float) -> torch.Tensor:
    """Gaussian-smoothed alpha of a ``height x width`` patch: its box blurred with zero padding.

    Args:
        height (int): Patch height.
        width (int): Patch width.
        sigma (float): Gaussian standard deviation in pixels (> 0).

    Returns:
        torch.Tensor: ``(height, width)`` float32 alpha in ``(0, 1)``, highest in the centre.
    """
    if sigma <= 0:
        msg = f"sigma must be > 0, got {sigma}."
        raise ValueError(msg)
    return torch.outer(_gaussian_profile(height, sigma), _gaussian_profile(width, sigma)).float()


def blend_weight(alpha: torch.Tensor, threshold: float = THRESHOLD, min_weight: float = MIN_WEIGHT) -> torch.Tensor:
    """Blend weight of an alpha: 0 where ``alpha <= threshold``, rising smoothly to 1 at the alpha's maximum.

    Args:
        alpha (torch.Tensor): Smoothed alpha.
        threshold (float): Mask threshold. Defaults to ``0.5``.
        min_weight (float): Smallest weight inside the mask. Defaults to ``0.05``.

    Returns:
        torch.Tensor: Weights in ``[0, 1]``, positive exactly on ``alpha > threshold``.

    Raises:
        ValueError: If no alpha value exceeds the threshold.
    """
    peak = float(alpha.max())
    if peak <= threshold:
        msg = f"The alpha never exceeds the threshold {threshold} (max {peak:.3f}): lower sigma or the threshold."
        raise ValueError(msg)
    inside = alpha > threshold
    weight = ((alpha - threshold) / (peak - threshold)).clamp(min_weight, 1.0)
    return torch.where(inside, weight, torch.zeros_like(weight))


def color_jitter(patch: torch.Tensor, rng: np.random.Generator, jitter: tuple[float, ...] = JITTER) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter in random order (torchvision's ColorJitter, seeded).

    Args:
        patch (torch.Tensor): ``(3, h, w)`` float image in ``[0, 1]``.
        rng (np.random.Generator): Source of randomness.
        jitter (tuple[float, ...]): ``(brightness, contrast, saturation, hue)`` strengths; factors are drawn in
            ``[1 - s, 1 + s]``, the hue shift in ``[-hue, hue]``. Defaults to ``(0.1, 0.1, 0.1, 0.1)``.

    Returns:
        torch.Tensor: Jittered patch in ``[0, 1]``.
    """
    brightness, contrast, saturation, hue = jitter
    factors = [
        float(rng.uniform(1.0 - brightness, 1.0 + brightness)),
        float(rng.uniform(1.0 - contrast, 1.0 + contrast)),
        float(rng.uniform(1.0 - saturation, 1.0 + saturation)),
        float(rng.uniform(-hue, hue)),
    ]
    operations = (
        tvf.adjust_brightness_image,
        tvf.adjust_contrast_image,
        tvf.adjust_saturation_image,
        tvf.adjust_hue_image,
    )
    neutral = (1.0, 1.0, 1.0, 0.0)
    for index in rng.permutation(4):
        if factors[index] != neutral[index]:
            patch = operations[index](patch, factors[index])
    return patch.clamp(0.0, 1.0)


def _patch_size(
    height: int,
    width: int,
    rng: np.random.Generator,
    area: tuple[float, float],
    aspect: tuple[float, float],
) -> tuple[int, int]:
    fraction = float(rng.uniform(*area))
    ratio = math.exp(float(rng.uniform(math.log(aspect[0]), math.log(aspect[1]))))
    pixels = fraction * height * width
    patch_h = round(math.sqrt(pixels * ratio))
    patch_w = round(math.sqrt(pixels / ratio))
    patch_h = int(min(max(patch_h, MIN_SIDE), max(MIN_SIDE, height // 2)))
    patch_w = int(min(max(patch_w, MIN_SIDE), max(MIN_SIDE, width // 2)))
    return patch_h, patch_w


def _far_enough(source: tuple[int, int], target: tuple[int, int], size: tuple[int, int]) -> bool:
    return abs(target[0] - source[0]) * 2 >= size[0] or abs(target[1] - source[1]) * 2 >= size[1]


def smoothblend_sample(
    image: torch.Tensor,
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
    area: tuple[float, float] = AREA,
    aspect: tuple[float, float] = ASPECT,
    sigma_fraction: tuple[float, float] = SIGMA_FRACTION,
    jitter: tuple[float, ...] = JITTER,
    threshold: float = THRESHOLD,
    min_weight: float = MIN_WEIGHT,
) -> SmoothBlendSample:
    """Make one SmoothBlend pseudo anomaly and return it with its alpha and both patch places.

    Args:
        image (torch.Tensor): ``(3, H, W)`` float image in ``[0, 1]`` (at least ``2 * 4`` pixels a side).
        rng (np.random.Generator): Source of randomness.
        foreground (np.ndarray | None): ``(H, W)`` boolean foreground (object categories): the patch is cut
            from and pasted onto it. ``None``: anywhere. Defaults to ``None``.
        area (tuple[float, float]): Range of the patch area, as a fraction of the image. Defaults to
            ``(0.005, 0.02)``.
        aspect (tuple[float, float]): Range of the patch height/width ratio (log-uniform). Defaults to
            ``(1/3, 3)``.
        sigma_fraction (tuple[float, float]): Range of the alpha's Gaussian sigma, as a fraction of the patch's
            shorter side. Defaults to ``(0.1, 0.2)``.
        jitter (tuple[float, ...]): Colour jitter ``(brightness, contrast, saturation, hue)``. Defaults to
            ``(0.1, 0.1, 0.1, 0.1)``.
        threshold (float): Mask threshold on the alpha. Defaults to ``0.5``.
        min_weight (float): Smallest blend weight inside the mask. Defaults to ``0.05``.

    Returns:
        SmoothBlendSample: Image, mask, alpha, weight and the source/target boxes.

    Raises:
        ValueError: If the image is too small for a patch.
    """
    image = torch.as_tensor(image, dtype=torch.float32)
    height, width = image.shape[-2:]
    if height < 2 * MIN_SIDE or width < 2 * MIN_SIDE:
        msg = f"SmoothBlend needs an image of at least {2 * MIN_SIDE}x{2 * MIN_SIDE} pixels, got {width}x{height}."
        raise ValueError(msg)
    patch_h, patch_w = _patch_size(height, width, rng, area, aspect)
    sigma = float(rng.uniform(*sigma_fraction)) * min(patch_h, patch_w)
    alpha = smooth_alpha(patch_h, patch_w, sigma)
    weight = blend_weight(alpha, threshold, min_weight)
    shape = (weight > 0).numpy()
    source = paste_position(shape, (height, width), rng, foreground)
    target = paste_position(shape, (height, width), rng, foreground)
    for _ in range(_PLACEMENT_ATTEMPTS):
        if _far_enough(source, target, (patch_h, patch_w)):
            break
        target = paste_position(shape, (height, width), rng, foreground)
    if target == source:  # a tiny image or foreground with a single place: move by one pixel at least
        target = (source[0], source[1] + 1) if source[1] + patch_w < width else (source[0], source[1] - 1)
    (sy, sx), (ty, tx) = source, target
    patch = color_jitter(image[:, sy : sy + patch_h, sx : sx + patch_w].clone(), rng, jitter)
    out = image.clone()
    window = out[:, ty : ty + patch_h, tx : tx + patch_w]
    blended = window * (1.0 - weight) + patch * weight
    out[:, ty : ty + patch_h, tx : tx + patch_w] = torch.where(weight > 0, blended, window)
    mask = torch.zeros((height, width), dtype=torch.bool)
    mask[ty : ty + patch_h, tx : tx + patch_w] = alpha > threshold
    return SmoothBlendSample(out, mask, alpha, weight, (sy, sx, patch_h, patch_w), (ty, tx, patch_h, patch_w))


def generate_smoothblend(
    image: torch.Tensor,
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
    **params: float | tuple[float, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make one SmoothBlend pseudo anomaly from a normal image (see :func:`smoothblend_sample`).

    Args:
        image (torch.Tensor): ``(3, H, W)`` normal image in ``[0, 1]``.
        rng (np.random.Generator): Source of randomness.
        foreground (np.ndarray | None): ``(H, W)`` boolean foreground or ``None``. Defaults to ``None``.
        **params (float | tuple[float, ...]): Overrides of :func:`smoothblend_sample`'s parameters.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``(3, H, W)`` image and ``(H, W)`` boolean mask; every pixel outside
        the mask equals ``image``.
    """
    sample = smoothblend_sample(image, rng, foreground, **params)
    return sample.image, sample.mask
