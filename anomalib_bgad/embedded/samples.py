"""One generated image: its own random stream, the clean crop and (for test defects) the defect.

Every image has a random stream derived from ``(seed, category, split, label, index)`` only, so the
content of a category does not depend on which other categories are generated, nor in which order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anomalib_bgad.data.split.selection import stable_hash
from anomalib_bgad.embedded.defects import DEFECTS, EMBEDDED_DEFECT_TYPES, blend_alpha
from anomalib_bgad.embedded.sources import (
    EMBEDDED_CATEGORIES,
    SPLITS,
    CropBox,
    check_category,
    load_source,
    render_crop,
    sample_crop_box,
)
from anomalib_bgad.embedded.visibility import (
    VISIBILITY_CLASSES,
    Visibility,
    area_range,
    fit_strength,
    measure_visibility,
    visibility_class,
)

MAX_DEFECT_ATTEMPTS = 200
"""Shapes drawn for one defect before giving up on the visibility rule."""


@dataclass(frozen=True)
class EmbeddedSample:
    """One generated image with its provenance.

    Args:
        image (np.ndarray): ``uint8`` image of shape ``(H, W)`` as written to disk.
        clean (np.ndarray): The crop before a defect was applied (equal to ``image`` for normal samples).
        mask (np.ndarray | None): Boolean defect mask of shape ``(H, W)``; ``None`` for normal samples.
        box (CropBox): Where the crop was taken from in the source photograph.
        visibility_class (str | None): ``"clear"`` or ``"subtle"``; ``None`` for normal samples.
        visibility (Visibility | None): Measured visibility ``V`` of the defect with its two parts (see
            :mod:`anomalib_bgad.embedded.visibility`); ``None`` for normal samples.
    """

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray | None
    box: CropBox
    visibility_class: str | None = None
    visibility: Visibility | None = None


def sample_rng(seed: int, category: str, split: str, label: str, index: int) -> np.random.Generator:
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
    return np.random.default_rng([seed, stable_hash(category), stable_hash(split), stable_hash(label), index])


def apply_defect(
    rng: np.random.Generator,
    clean: np.ndarray,
    defect: str,
    donor: np.ndarray,
    klass: str,
) -> tuple[np.ndarray, np.ndarray, Visibility]:
    """Draw one defect that obeys the visibility rule: area in range, visibility in its class's range.

    Args:
        rng (np.random.Generator): Random stream of the sample.
        clean (np.ndarray): ``uint8`` clean image of shape ``(H, W)``.
        defect (str): One of ``EMBEDDED_DEFECT_TYPES``.
        donor (np.ndarray): Photograph of another category (used by ``cut_paste``).
        klass (str): Visibility class, a key of ``VISIBILITY_CLASSES``.

    Returns:
        tuple[np.ndarray, np.ndarray, Visibility]: ``uint8`` defective image, boolean mask (exactly the
        changed pixels) and the measured visibility.

    Raises:
        RuntimeError: If no shape met the rule in ``MAX_DEFECT_ATTEMPTS`` draws.
    """
    low, high = VISIBILITY_CLASSES[klass]
    min_area, max_area = area_range(defect, clean.shape[0])
    base = clean.astype(np.float32)
    for _ in range(MAX_DEFECT_ATTEMPTS):
        layer = DEFECTS[defect](rng, base, donor)
        target = rng.uniform(low, high)
        alpha = blend_alpha(layer.opacity)
        mask = alpha > 0
        if not min_area <= mask.sum() <= max_area:
            continue
        defective = fit_strength(clean, layer, alpha, target)
        if defective is None:
            continue
        visibility = measure_visibility(defective, clean, mask)
        if low <= visibility.value <= high:
            return defective, mask, visibility
    msg = (
        f"Could not draw a {klass} {defect!r} defect (visibility in [{low}, {high}], area in "
        f"[{min_area:.0f}, {max_area:.0f}] px) in {MAX_DEFECT_ATTEMPTS} attempts."
    )
    raise RuntimeError(msg)


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
        EmbeddedSample: The image, its clean version, its mask, its crop box and its visibility.

    Raises:
        ValueError: If ``category``, ``split`` or ``label`` is unknown.
        RuntimeError: If no defect meeting the visibility rule could be drawn.
    """
    check_category(category)
    if split not in SPLITS:
        msg = f"split must be one of {SPLITS}, got {split!r}."
        raise ValueError(msg)
    if label != "good" and (split == "train" or label not in EMBEDDED_DEFECT_TYPES):
        msg = f"label must be 'good' or (for split='test') one of {EMBEDDED_DEFECT_TYPES}, got {label!r}."
        raise ValueError(msg)
    rng = sample_rng(seed, category, split, label, index)
    box = sample_crop_box(rng, split, load_source(category).shape)
    clean = render_crop(category, box, image_size, rng)
    if label == "good":
        return EmbeddedSample(image=clean, clean=clean, mask=None, box=box)
    others = [name for name in EMBEDDED_CATEGORIES if name != category]
    donor = load_source(others[int(rng.integers(0, len(others)))])
    klass = visibility_class(index)
    defective, mask, visibility = apply_defect(rng, clean, label, donor, klass)
    return EmbeddedSample(defective, clean, mask, box, visibility_class=klass, visibility=visibility)
