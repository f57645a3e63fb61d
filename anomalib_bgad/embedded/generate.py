"""``generate_embedded_dataset``: argument checks, then every category and the dataset README."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anomalib_bgad.embedded.install import generate_category, write_text_atomically
from anomalib_bgad.embedded.readme import README_FILENAME, README_MARKER, dataset_readme
from anomalib_bgad.embedded.sources import EMBEDDED_CATEGORIES, check_category
from anomalib_bgad.embedded.writer import category_metadata

MIN_IMAGE_SIZE = 32


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
        check_category(name)
    return list(dict.fromkeys(names))


def _check_readme(path: Path) -> None:
    """Refuse to replace a ``README.md`` this generator did not write.

    Args:
        path (Path): ``<root>/README.md``.

    Raises:
        FileExistsError: If ``path`` exists and does not start with ``README_MARKER``.
    """
    if not (path.exists() or path.is_symlink()):
        return
    try:
        with path.open(encoding="utf-8") as file:
            ours = file.read(len(README_MARKER)) == README_MARKER
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        msg = (
            f"{path} exists and was not written by generate_embedded_dataset, which writes the dataset's README "
            f"there. Move that file away, or choose another root."
        )
        raise FileExistsError(msg)


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
    """Write an MVTec-AD-format dataset of real CC0 textures with synthetic defects of stated visibility.

    Each category is generated into a temporary folder next to ``<root>/<category>`` and renamed
    into place when complete, so an interrupted run never leaves a partial tree behind. A
    category folder that already holds a tree generated with the same parameters is left
    untouched, which makes repeated calls cheap. ``<root>/README.md`` describes the layout, the
    sources, the defect types and the visibility rule (see :mod:`anomalib_bgad.embedded`).

    Args:
        root (str | Path): Dataset root; pass it as ``root`` to :class:`anomalib.data.MVTecAD`.
        seed (int): Seed; equal seeds give byte-identical files. Defaults to ``0``.
        categories (Sequence[str] | None): Subset of ``EMBEDDED_CATEGORIES``; ``None`` means all.
            Defaults to ``None``.
        image_size (int): Side length of the square images in pixels, at least 32. Defaults to ``256``.
        n_train (int): Normal training images per category. Defaults to ``60``.
        n_test_good (int): Normal test images per category. Defaults to ``20``.
        n_test_per_defect (int): Test images per defect type and category (there are
            ``len(EMBEDDED_DEFECT_TYPES)`` defect types; every fourth is subtle). Defaults to ``8``.
        overwrite (bool): Replace existing category folders. Defaults to ``False``.

    Returns:
        Path: ``root``.

    Raises:
        ValueError: If an argument is invalid (the message names it).
        FileExistsError: If a non-empty ``<root>/<category>`` exists that was not generated with
            the same parameters and ``overwrite`` is ``False``, or if ``<root>/README.md`` exists and
            was not written by this generator.

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
    _check_readme(root / README_FILENAME)
    root.mkdir(parents=True, exist_ok=True)
    for category in names:
        params = category_metadata(
            category, int(seed), int(image_size), int(n_train), int(n_test_good), int(n_test_per_defect)
        )
        generate_category(root, params, overwrite)
    readme = dataset_readme()
    path = root / README_FILENAME
    if not path.is_file() or path.read_text(encoding="utf-8") != readme:
        write_text_atomically(path, readme)
    return root
