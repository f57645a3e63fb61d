"""RPAG copy-paste pseudo anomalies (BGAD paper §3.5).

For each pseudo sample, three distinct random augmentations from the pool below are applied
jointly to a known anomaly and its mask; the anomalous pixels are cut out and pasted at a random
location of a normal image (inside its foreground for object categories). The pool follows the
authors' albumentations list, built on torchvision's v2 functional kernels (image kernels are
bilinear, mask kernels nearest):

``flip``, ``rotate90``, ``transpose``, ``distortion`` (elastic), ``noise`` (Gaussian), ``blur``
(Gaussian), ``shift_scale_rotate``, ``sharpen_brightness_contrast`` (one of the three),
``hue_saturation``.

Every random number comes from the ``numpy.random.Generator`` passed in, so a pseudo sample is a
pure function of its inputs and that generator's seed (no global torch or numpy state is used).

Example:
    >>> import numpy as np, torch
    >>> anomaly = torch.rand(3, 64, 64); mask = torch.zeros(64, 64, dtype=torch.bool); mask[20:30, 20:30] = True
    >>> normal = torch.zeros(3, 64, 64)
    >>> image, pasted = generate_pseudo_anomaly(anomaly, mask, normal, np.random.default_rng(0))
    >>> bool(pasted.any()), bool((image[:, ~pasted] == 0).all())
    (True, True)
"""

from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from anomalib_bgad.data.pseudo_anomalies.foreground import paste_position

Augmentation = Callable[[torch.Tensor, torch.Tensor, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]

NUM_AUGMENTATIONS = 3
_MAX_ATTEMPTS = 5  # augmentation draws before falling back to the un-augmented anomaly


def _flip(image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    mode = int(rng.integers(3))  # horizontal, vertical, both
    if mode in {0, 2}:
        image, mask = tvf.horizontal_flip_image(image), tvf.horizontal_flip_mask(mask)
    if mode in {1, 2}:
        image, mask = tvf.vertical_flip_image(image), tvf.vertical_flip_mask(mask)
    return image, mask


def _rotate90(image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    angle = 90.0 * int(rng.integers(1, 4))
    return tvf.rotate_image(image, angle, expand=True), tvf.rotate_mask(mask, angle, expand=True)


def _transpose(image: torch.Tensor, mask: torch.Tensor, _rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return image.transpose(-1, -2).contiguous(), mask.transpose(-1, -2).contiguous()


def _distortion(image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # Same displacement field as torchvision's ElasticTransform, drawn from ``rng``.
    height, width = image.shape[-2:]
    alpha, sigma = float(rng.uniform(20.0, 60.0)), float(rng.uniform(4.0, 6.0))
    field = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(2, height, width)).astype(np.float32))
    kernel = int(8 * sigma + 1) | 1
    field = tvf.gaussian_blur_image(field, [kernel, kernel], [sigma, sigma])
    field[0] *= alpha / width
    field[1] *= alpha / height
    displacement = field.permute(1, 2, 0).unsqueeze(0)
    return tvf.elastic_image(image, displacement), tvf.elastic_mask(mask, displacement)


def _noise(image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    sigma = float(rng.uniform(0.02, 0.08))
    noise = torch.from_numpy(rng.normal(0.0, sigma, size=tuple(image.shape)).astype(np.float32))
    return (image + noise).clamp(0.0, 1.0), mask


def _blur(image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    kernel = int(rng.choice([3, 5]))
    sigma = float(rng.uniform(0.5, 1.5))
    return tvf.gaussian_blur_image(image, [kernel, kernel], [sigma, sigma]), mask


def _shift_scale_rotate(
    image: torch.Tensor,
    mask: torch.Tensor,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    height, width = image.shape[-2:]
    angle = float(rng.uniform(-45.0, 45.0))
    scale = float(rng.uniform(0.8, 1.2))
    translate = [float(rng.uniform(-0.0625, 0.0625)) * width, float(rng.uniform(-0.0625, 0.0625)) * height]
    image = tvf.affine_image(image, angle, translate, scale, [0.0, 0.0], interpolation=InterpolationMode.BILINEAR)
    return image, tvf.affine_mask(mask, angle, translate, scale, [0.0, 0.0])


def _sharpen_brightness_contrast(
    image: torch.Tensor,
    mask: torch.Tensor,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    choice = int(rng.integers(3))
    if choice == 0:
        return tvf.adjust_sharpness_image(image, float(rng.uniform(1.5, 3.0))), mask
    if choice == 1:
        return tvf.adjust_brightness_image(image, float(rng.uniform(0.8, 1.2))), mask
    return tvf.adjust_contrast_image(image, float(rng.uniform(0.8, 1.2))), mask


def _hue_saturation(
    image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    image = tvf.adjust_hue_image(image, float(rng.uniform(-0.05, 0.05)))
    return tvf.adjust_saturation_image(image, float(rng.uniform(0.7, 1.3))), mask


AUGMENTATIONS: dict[str, Augmentation] = {
    "flip": _flip,
    "rotate90": _rotate90,
    "transpose": _transpose,
    "distortion": _distortion,
    "noise": _noise,
    "blur": _blur,
    "shift_scale_rotate": _shift_scale_rotate,
    "sharpen_brightness_contrast": _sharpen_brightness_contrast,
    "hue_saturation": _hue_saturation,
}
"""The RPAG augmentation pool, name -> ``(image, mask, rng) -> (image, mask)``."""


def augment_anomaly(
    image: torch.Tensor,
    mask: torch.Tensor,
    rng: np.random.Generator,
    num_augmentations: int = NUM_AUGMENTATIONS,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Apply ``num_augmentations`` distinct random augmentations jointly to an anomaly and its mask.

    Args:
        image (torch.Tensor): ``(3, H, W)`` float image in ``[0, 1]``.
        mask (torch.Tensor): ``(H, W)`` boolean or 0/1 mask.
        rng (np.random.Generator): Source of randomness.
        num_augmentations (int): Number of augmentations drawn from :data:`AUGMENTATIONS`.
            Defaults to ``3``.

    Returns:
        tuple[torch.Tensor, torch.Tensor, list[str]]: Augmented image, boolean mask (same spatial
        size as the image) and the names of the applied augmentations, in order.
    """
    names = list(AUGMENTATIONS)
    chosen = [names[i] for i in rng.choice(len(names), size=num_augmentations, replace=False)]
    mask = mask.to(torch.uint8).unsqueeze(0)
    for name in chosen:
        image, mask = AUGMENTATIONS[name](image, mask, rng)
    return image.clamp(0.0, 1.0), mask.squeeze(0) > 0, chosen


def paste_anomaly(
    anomaly: torch.Tensor,
    mask: torch.Tensor,
    target: torch.Tensor,
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the anomalous pixels of ``anomaly`` and paste them at a random location of ``target``.

    Args:
        anomaly (torch.Tensor): ``(3, h, w)`` image holding the defect.
        mask (torch.Tensor): ``(h, w)`` boolean defect mask (non-empty).
        target (torch.Tensor): ``(3, H, W)`` normal image.
        rng (np.random.Generator): Source of randomness.
        foreground (np.ndarray | None): ``(H, W)`` boolean foreground of ``target``; the paste is placed
            where at least 2/3 of the defect lies on it (or as much as possible). ``None``: anywhere.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: New image and its ``(H, W)`` boolean mask of pasted pixels.
    """
    height, width = target.shape[-2:]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    y_min, y_max, x_min, x_max = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    # A defect larger than the target (e.g. after a 90 degree turn of a non-square image) is cut to fit.
    if y_max - y_min > height:
        y_min = (y_min + y_max - height) // 2
        y_max = y_min + height
    if x_max - x_min > width:
        x_min = (x_min + x_max - width) // 2
        x_max = x_min + width
    crop = anomaly[:, y_min:y_max, x_min:x_max]
    crop_mask = mask[y_min:y_max, x_min:x_max]
    y0, x0 = paste_position(crop_mask.numpy(), (height, width), rng, foreground)
    image = target.clone()
    pasted = torch.zeros((height, width), dtype=torch.bool)
    window = image[:, y0 : y0 + crop_mask.shape[0], x0 : x0 + crop_mask.shape[1]]
    window[:, crop_mask] = crop[:, crop_mask]
    pasted[y0 : y0 + crop_mask.shape[0], x0 : x0 + crop_mask.shape[1]] = crop_mask
    return image, pasted


def generate_pseudo_anomaly(
    anomaly: torch.Tensor,
    mask: torch.Tensor,
    normal: torch.Tensor,
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
    num_augmentations: int = NUM_AUGMENTATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make one RPAG pseudo anomaly: augment a known defect, cut it, paste it on a normal image.

    Args:
        anomaly (torch.Tensor): ``(3, h, w)`` anomalous image in ``[0, 1]``.
        mask (torch.Tensor): ``(h, w)`` mask of ``anomaly`` (non-zero = defect).
        normal (torch.Tensor): ``(3, H, W)`` normal image in ``[0, 1]``.
        rng (np.random.Generator): Source of randomness.
        foreground (np.ndarray | None): ``(H, W)`` boolean foreground of ``normal`` (object categories),
            ``None`` to paste anywhere. Defaults to ``None``.
        num_augmentations (int): Augmentations per sample. Defaults to ``3``.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``(3, H, W)`` image and ``(H, W)`` boolean mask of the pasted
        defect pixels (the only pixels that differ from ``normal``).

    Raises:
        ValueError: If ``mask`` is empty.
    """
    mask = torch.as_tensor(mask) > 0
    if not mask.any():
        msg = "The known anomaly's mask is empty: there is no defect to paste."
        raise ValueError(msg)
    anomaly = torch.as_tensor(anomaly, dtype=torch.float32)
    if anomaly.shape[-2:] != normal.shape[-2:]:
        # Bring the defect to the normal image's scale (kept as is if it would vanish).
        size = list(normal.shape[-2:])
        resized_mask = tvf.resize_mask(mask.to(torch.uint8).unsqueeze(0), size).squeeze(0) > 0
        if resized_mask.any():
            anomaly, mask = tvf.resize_image(anomaly, size, antialias=True).clamp(0.0, 1.0), resized_mask
    for _ in range(_MAX_ATTEMPTS):
        augmented, augmented_mask, _names = augment_anomaly(anomaly, mask, rng, num_augmentations)
        if augmented_mask.any():
            return paste_anomaly(augmented, augmented_mask, normal, rng, foreground)
    return paste_anomaly(anomaly, mask, normal, rng, foreground)
