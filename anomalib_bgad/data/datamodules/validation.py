"""Fail-fast checks of few-anomaly datasets on disk, with messages that name the fix.

All checks only read the file system: nothing is created, moved or written under the dataset root.

Example:
    >>> list_images(Path("/nowhere"), (".png",))
    []
"""

import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from PIL import Image

from anomalib_bgad.data.image_io import MASK_RULE, ImageReadError, image_size, read_mask

MVTEC_EXTENSIONS = (".png", ".PNG")
BTAD_EXTENSIONS = (".bmp", ".png")
FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".webp", ".gif", ".pgm", ".pbm", ".ppm", ".pnm")
"""Mask formats FewAnomalyFolder matches by stem (any case), whatever the images' ``extensions``."""

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

MAX_PLAUSIBLE_SHARE = 0.5
"""A mask marking more of its image than this as defect is reported (inverted mask, white background)."""

logger = logging.getLogger(__name__)


def list_images(folder: Path, extensions: Sequence[str], recursive: bool = False) -> list[Path]:
    """Sorted image files of a folder (case-sensitive suffix match unless ``extensions`` are lower-case).

    Args:
        folder (Path): Folder to list.
        extensions (Sequence[str]): Accepted suffixes (with the dot).
        recursive (bool): Include sub-folders. Defaults to ``False``.

    Returns:
        list[Path]: Sorted files.
    """
    if not folder.is_dir():
        return []
    pattern = "**/*" if recursive else "*"
    lower = all(ext == ext.lower() for ext in extensions)
    return sorted(
        path
        for path in folder.glob(pattern)
        if path.is_file() and (path.suffix.lower() if lower else path.suffix) in extensions
    )


def check_root(root: Path, dataset: str, layout: str) -> None:
    """Check that the dataset root exists (nothing is downloaded or created).

    Args:
        root (Path): Dataset root.
        dataset (str): Datamodule name for the message.
        layout (str): Expected layout, for the message.

    Raises:
        FileNotFoundError: If ``root`` is not a directory.
    """
    if not root.is_dir():
        msg = (
            f"Dataset root '{root}' does not exist (or is not a folder). Set root (CLI: --data.root) to the folder "
            f"that holds the dataset, laid out as {layout}. {dataset} never downloads or creates datasets."
        )
        raise FileNotFoundError(msg)


def check_category(root: Path, category: str, marker: str, dataset: str) -> None:
    """Check that ``root/category`` exists; list the categories found otherwise.

    Args:
        root (Path): Dataset root.
        category (str): Category name.
        marker (str): Sub-folder that identifies a category folder (e.g. ``train``).
        dataset (str): Datamodule name for the message.

    Raises:
        FileNotFoundError: If the category folder does not exist.
    """
    if not category or not (root / category).is_dir():
        available = sorted(path.name for path in root.iterdir() if (path / marker).is_dir())
        listing = ", ".join(available) if available else f"none (no sub-folder of '{root}' has a '{marker}' folder)"
        msg = (
            f"Unknown category '{category}' for {dataset}: '{root / category}' does not exist. "
            f"Categories found under '{root}': {listing}. Set category (CLI: --data.category) to one of them."
        )
        raise FileNotFoundError(msg)


def check_normal_train_images(folder: Path, extensions: Sequence[str], recursive: bool = False) -> None:
    """Check that the normal training folder holds images.

    Args:
        folder (Path): Normal training folder.
        extensions (Sequence[str]): Accepted suffixes.
        recursive (bool): Look in sub-folders too. Defaults to ``False``.

    Raises:
        FileNotFoundError: If the folder does not exist.
        ValueError: If it holds no image.
    """
    if not folder.is_dir():
        msg = f"Normal training folder '{folder}' does not exist. Every category needs normal training images there."
        raise FileNotFoundError(msg)
    if not list_images(folder, extensions, recursive):
        msg = (
            f"Normal training folder '{folder}' holds no images (looked for {', '.join(extensions)}). "
            "Add the normal (defect-free) training images there."
        )
        raise ValueError(msg)


def check_ground_truth_folder(folder: Path, category: str) -> None:
    """Check that the ground-truth mask folder exists.

    Args:
        folder (Path): ``<root>/<category>/ground_truth``.
        category (str): Category name for the message.

    Raises:
        FileNotFoundError: If it does not exist.
    """
    if not folder.is_dir():
        msg = (
            f"Category '{category}' has no ground-truth masks: '{folder}' does not exist. Few-anomaly training needs "
            f"a pixel mask for every anomalous image ('{folder}/<defect_type>/<image_name>...png')."
        )
        raise FileNotFoundError(msg)


def missing_mask_error(image: Path, expected: Iterable[Path]) -> FileNotFoundError:
    """Error for an anomalous image without mask.

    Args:
        image (Path): The anomalous image.
        expected (Iterable[Path]): Mask paths that were looked for.

    Returns:
        FileNotFoundError: The error to raise.
    """
    looked = " or ".join(f"'{path}'" for path in expected)
    msg = (
        f"Mask missing for anomalous image '{image}': expected {looked}. Every anomalous image needs a "
        "ground-truth mask of the same size; add it or remove the image from the test set."
    )
    return FileNotFoundError(msg)


def unmatched_mask_error(image: Path, folders: Sequence[Path]) -> FileNotFoundError:
    """Error for an anomalous image of a Folder dataset whose mask is not found by name.

    Args:
        image (Path): The anomalous image.
        folders (Sequence[Path]): Every folder its mask was looked for in.

    Returns:
        FileNotFoundError: The error to raise; it lists the folders, the names and the extensions tried.
    """
    places = ", ".join(f"'{folder}'" for folder in dict.fromkeys(folders))
    msg = (
        f"Mask missing for anomalous image '{image}': looked in {places} for '{image.stem}' or "
        f"'{image.stem}_mask' with any of {', '.join(MASK_EXTENSIONS)} (any case; the images' extensions do not "
        "apply to masks). Every anomalous image needs a ground-truth mask of the same size; add it or remove the image."
    )
    return FileNotFoundError(msg)


def orphan_mask_error(mask: Path, image_folder: Path) -> ValueError:
    """Error for a mask without anomalous image (anomalib pairs masks by position, so it would shift them).

    Args:
        mask (Path): The mask file.
        image_folder (Path): Folder where its image was expected.

    Returns:
        ValueError: The error to raise.
    """
    msg = (
        f"Mask '{mask}' has no anomalous image in '{image_folder}'. Remove the mask or add its image: anomalib "
        "pairs images and masks by sorted order, so an extra mask would misalign them."
    )
    return ValueError(msg)


def _size(path: str, decode: bool) -> tuple[str, tuple[int, int] | None, str | None]:
    try:
        return path, image_size(path, decode=decode), None
    except ImageReadError:
        raise  # decodes, but its values have no reading: the message names the file and the fix
    except _DECODE_ERRORS as error:
        return path, None, f"{type(error).__name__}: {error}"


def check_files(
    images: Sequence[str],
    masks: dict[str, str],
    decode: bool = True,
    workers: int = 4,
) -> None:
    """Check that images (and anomalous images' masks) are readable and that masks match their image size.

    Args:
        images (Sequence[str]): Every image of the split.
        masks (dict[str, str]): Anomalous image -> its mask.
        decode (bool): Decode all pixel data (catches truncated files); ``False`` reads headers only.
            Defaults to ``True``.
        workers (int): Decoding threads. Defaults to ``4``.

    Raises:
        FileNotFoundError: If a mask is missing.
        ValueError: If a file is unreadable/truncated or a mask's size differs from its image's.
    """
    for image, mask in masks.items():
        if not mask or not Path(mask).is_file():
            raise missing_mask_error(Path(image), [Path(mask)] if mask else [])
    paths = list(dict.fromkeys([*images, *masks.values()]))
    if decode:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(partial(_size, decode=True), paths))
    else:
        results = [_size(path, decode=False) for path in paths]
    sizes: dict[str, tuple[int, int]] = {}
    for path, size, error in results:
        if error is not None or size is None:
            msg = (
                f"Cannot read image '{path}' ({error}). The file is truncated or not a valid image: "
                "replace it or remove it from the dataset."
            )
            raise ValueError(msg)
        sizes[path] = size
    for image, mask in masks.items():
        if sizes[image] != sizes[mask]:
            (image_w, image_h), (mask_w, mask_h) = sizes[image], sizes[mask]
            msg = (
                f"Mask '{mask}' is {mask_w}x{mask_h} pixels but its image '{image}' is {image_w}x{image_h}. "
                "A mask must have the size of its image: fix or re-export the mask."
            )
            raise ValueError(msg)


def mask_share(path: str | Path) -> float:
    """Share of a mask's pixels that are defect under the mask rule.

    Args:
        path (str | Path): Mask file.

    Returns:
        float: Defect pixels / all pixels, in ``[0, 1]``.
    """
    return float(read_mask(path).float().mean())


def check_mask_content(known: Mapping[str, str], others: Mapping[str, str] | None = None, workers: int = 4) -> None:
    """Check what masks cover: every known anomaly's mask must mark a defect; implausible shares are reported.

    Args:
        known (Mapping[str, str]): Known anomaly image -> its mask (an empty one is an error: training would
            paste nothing from it, or learn it as normal).
        others (Mapping[str, str] | None): Other anomalous image -> mask (test images; an empty one is a warning:
            pixel metrics count the image as defect-free). Defaults to ``None``.
        workers (int): Reading threads. Defaults to ``4``.

    Raises:
        ValueError: If a known anomaly's mask is empty; the message lists every such file.
    """
    others = dict(others or {})
    masks = {**others, **known}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        shares = dict(zip(masks, pool.map(mask_share, masks.values()), strict=True))
    empty_known = [image for image in known if shares[image] == 0.0]
    if empty_known:
        listing = ", ".join(f"'{known[image]}' (of '{image}')" for image in empty_known[:5])
        more = f" and {len(empty_known) - 5} more" if len(empty_known) > 5 else ""
        msg = (
            f"{len(empty_known)} known anomaly mask(s) mark no defect pixel: {listing}{more}. Mask rule: {MASK_RULE}. "
            "Draw the defect in the mask (non-zero, or opaque over a transparent background), or remove the image "
            "from the anomalous images."
        )
        raise ValueError(msg)
    for image, share in shares.items():
        if share == 0.0:
            logger.warning(
                "Mask '%s' of anomalous test image '%s' marks no defect pixel (mask rule: %s): pixel metrics count "
                "the image as defect-free.",
                masks[image],
                image,
                MASK_RULE,
            )
        elif share > MAX_PLAUSIBLE_SHARE:
            logger.warning(
                "Mask '%s' marks %.0f%% of its image as defect: an inverted mask (white background) or a coloured "
                "background? Mask rule: %s.",
                masks[image],
                100 * share,
                MASK_RULE,
            )
