"""The files of one generated category: PNG images and masks, ``defects.csv`` and ``.embedded.json``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from anomalib_bgad.embedded.defects import EMBEDDED_DEFECT_TYPES
from anomalib_bgad.embedded.samples import render_sample
from anomalib_bgad.embedded.visibility import (
    DEFECT_AREA_RANGE,
    REFERENCE_SIZE,
    RING_WIDTH,
    SUBTLE_PERIOD,
    TEXTURE_STD_FLOOR,
    VISIBILITY_CLASSES,
)

GENERATOR_VERSION = 2
"""Bumped whenever the generated pixels change for the same parameters."""

METADATA_FILENAME = ".embedded.json"
"""Parameters that fully determine a category's files, in ``<root>/<category>/``."""

DEFECTS_FILENAME = "defects.csv"
"""One row per defective test image (class, measured visibility, area, crop box), in ``<root>/<category>/``."""

DEFECTS_COLUMNS = (
    "image",
    "mask",
    "defect_type",
    "visibility_class",
    "visibility",
    "contrast",
    "change",
    "area_px",
    "crop_top",
    "crop_left",
)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a ``uint8`` array as a PNG, creating parent folders.

    Args:
        path (Path): Output file.
        image (np.ndarray): ``uint8`` image of shape ``(H, W)``.

    Raises:
        OSError: If the file could not be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        msg = f"Could not write {path}."
        raise OSError(msg)


def category_metadata(
    category: str,
    seed: int,
    image_size: int,
    n_train: int,
    n_test_good: int,
    n_test_per_defect: int,
) -> dict:
    """Build the parameter record stored in ``<root>/<category>/.embedded.json``.

    Args:
        category (str): Category name.
        seed (int): Global seed.
        image_size (int): Image side length in pixels.
        n_train (int): Number of training images.
        n_test_good (int): Number of normal test images.
        n_test_per_defect (int): Number of test images per defect type.

    Returns:
        dict: JSON-serialisable parameters (lists, not tuples) that fully determine the category's files.
    """
    return {
        "generator": "anomalib_bgad.embedded",
        "version": GENERATOR_VERSION,
        "category": category,
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_per_defect": n_test_per_defect,
        "defect_types": list(EMBEDDED_DEFECT_TYPES),
        "visibility_rule": {
            "classes": {name: list(bounds) for name, bounds in VISIBILITY_CLASSES.items()},
            "subtle_period": SUBTLE_PERIOD,
            "ring_width_at_256px": RING_WIDTH,
            "texture_std_floor": TEXTURE_STD_FLOOR,
            "area_range_px_at_256px": {name: list(bounds) for name, bounds in DEFECT_AREA_RANGE.items()},
            "reference_size": REFERENCE_SIZE,
        },
    }


def read_metadata(folder: Path) -> dict | None:
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


def write_category(folder: Path, params: dict) -> None:
    """Write all images, masks, ``defects.csv`` and the metadata file of one category into ``folder``.

    Args:
        folder (Path): Destination category folder (a temporary folder during generation).
        params (dict): Metadata as built by :func:`category_metadata`.

    Raises:
        OSError: If a file could not be written.
    """
    category, seed, image_size = params["category"], params["seed"], params["image_size"]
    jobs = [("train", "good", params["n_train"]), ("test", "good", params["n_test_good"])]
    jobs += [("test", defect, params["n_test_per_defect"]) for defect in params["defect_types"]]
    rows = []
    for split, label, count in jobs:
        for index in range(count):
            sample = render_sample(category, split, label, index, seed=seed, image_size=image_size)
            image = f"{split}/{label}/{index:03d}.png"
            write_png(folder / image, sample.image)
            if sample.mask is None:
                continue
            mask = f"ground_truth/{label}/{index:03d}_mask.png"
            write_png(folder / mask, sample.mask.astype(np.uint8) * 255)
            seen, box = sample.visibility, sample.box
            measured = [f"{value:.4f}" for value in (seen.value, seen.contrast, seen.change)]
            rows.append(
                (image, mask, label, sample.visibility_class, *measured, int(sample.mask.sum()), box.top, box.left)
            )
    with (folder / DEFECTS_FILENAME).open("w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(DEFECTS_COLUMNS)
        writer.writerows(rows)
    (folder / METADATA_FILENAME).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
