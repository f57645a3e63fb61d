"""Choice of the known (training) anomalies, exactly as BGAD's paper defines its two settings.

* ``multi_class``: ``n_anomalies`` drawn across all defect types, ``n // n_types`` per type and the
  remainder at random among the images left; the chosen images leave the test set.
* ``one_class``: all ``n_anomalies`` from one defect type (``seen_defect_type``, by default chosen
  by the seed), and **every** image of that type leaves the test set, so that the test set holds
  unseen defect types only.

The draw depends only on ``(dataset, category, setting, seed)`` and the set of candidate files: the
random generator is seeded with stable (SHA-256) hashes, never Python's salted ``hash()``, and it
draws from sorted lists, so neither category order, worker count nor file-system listing order
changes it.

Example:
    >>> candidates = {"crack": ["test/crack/000.png", "test/crack/001.png"], "hole": ["test/hole/000.png"]}
    >>> selection = select_known_anomalies(candidates, 2, "multi_class", seed=0, dataset="MVTecAD", category="x")
    >>> sorted(selection.train)
    ['test/crack/000.png', 'test/hole/000.png']
"""

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np


class Setting(str, Enum):
    """BGAD's two supervision settings."""

    MULTI_CLASS = "multi_class"
    ONE_CLASS = "one_class"


def stable_hash(text: str, bits: int = 64) -> int:
    """Hash a string to an integer that is the same in every process and Python version (unlike ``hash``).

    The project's one stable hash: it seeds the anomaly selection, names VisA cache folders and seeds the
    embedded dataset's images.

    Args:
        text (str): Text to hash.
        bits (int): Width of the result, a multiple of 8 up to 256. Defaults to ``64``.

    Returns:
        int: The first ``bits / 8`` bytes of the SHA-256 digest, little endian (so the 32-bit hash is the low
        half of the 64-bit one).

    Raises:
        ValueError: If ``bits`` is not a multiple of 8 in ``8..256``.
    """
    if bits % 8 or not 8 <= bits <= 256:
        msg = f"bits must be a multiple of 8 between 8 and 256, got {bits}."
        raise ValueError(msg)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[: bits // 8], "little")


def selection_rng(seed: int, dataset: str, category: str, setting: str) -> np.random.Generator:
    """Random generator for the anomaly selection of one (dataset, category, setting, seed).

    Args:
        seed (int): User seed (non-negative).
        dataset (str): Dataset name, e.g. ``"MVTecAD"``.
        category (str): Category name.
        setting (str): ``"multi_class"`` or ``"one_class"``.

    Returns:
        np.random.Generator: Generator seeded with the stable hashes of the arguments.
    """
    return np.random.default_rng([seed, stable_hash(dataset), stable_hash(category), stable_hash(setting)])


@dataclass(frozen=True)
class Selection:
    """Outcome of the anomaly selection.

    Attributes:
        train (tuple[str, ...]): Chosen anomalies (candidate keys), sorted.
        removed_from_test (tuple[str, ...]): Every key that leaves the test set (includes ``train``), sorted.
        seen_defect_type (str | None): The seen type in the one-class setting, else ``None``.
    """

    train: tuple[str, ...]
    removed_from_test: tuple[str, ...]
    seen_defect_type: str | None


def _count_summary(candidates: Mapping[str, Sequence[str]]) -> str:
    return ", ".join(f"{defect}: {len(paths)}" for defect, paths in sorted(candidates.items()))


def _pick(rng: np.random.Generator, items: Sequence[str], count: int) -> list[str]:
    """Draw ``count`` items without replacement from the sorted ``items``."""
    ordered = sorted(items)
    return [ordered[i] for i in sorted(rng.permutation(len(ordered))[:count].tolist())]


def select_known_anomalies(
    candidates: Mapping[str, Sequence[str]],
    n_anomalies: int,
    setting: Setting | str,
    seed: int,
    dataset: str,
    category: str,
    seen_defect_type: str | None = None,
) -> Selection:
    """Choose the training anomalies among the anomalous test images.

    Args:
        candidates (Mapping[str, Sequence[str]]): Defect type -> anomalous images of that type (any
            stable keys, e.g. paths relative to the dataset root).
        n_anomalies (int): Number of known anomalies.
        setting (Setting | str): ``"multi_class"`` or ``"one_class"``.
        seed (int): Seed (non-negative).
        dataset (str): Dataset name used in the seed.
        category (str): Category name used in the seed.
        seen_defect_type (str | None): One-class setting: the seen defect type; ``None`` lets the seed
            choose among the types that have at least ``n_anomalies`` images. Must be ``None`` in the
            multi-class setting.

    Returns:
        Selection: Training anomalies and removed test images.

    Raises:
        ValueError: If the arguments cannot give a valid split; the message says which and how to fix it.
    """
    setting = Setting(setting)
    where = f"category '{category}' of {dataset}"
    if n_anomalies < 0:
        msg = f"n_anomalies must be >= 0, got {n_anomalies}."
        raise ValueError(msg)
    candidates = {defect: sorted(paths) for defect, paths in candidates.items() if len(paths) > 0}
    total = sum(len(paths) for paths in candidates.values())
    if not candidates:
        msg = (
            f"No anomalous test images found in {where}: few-anomaly training needs labeled defects. "
            "Check the dataset root and category."
        )
        raise ValueError(msg)
    defect_types = sorted(candidates)
    rng = selection_rng(seed, dataset, category, setting.value)

    if setting == Setting.MULTI_CLASS:
        if seen_defect_type is not None:
            msg = (
                f"seen_defect_type='{seen_defect_type}' is only used with setting='one_class'; "
                "remove it or set setting='one_class'."
            )
            raise ValueError(msg)
        if n_anomalies >= total:
            msg = (
                f"n_anomalies={n_anomalies} is too large: {where} has only {total} anomalous images "
                f"({_count_summary(candidates)}) and at least one must stay in the test set. "
                f"Use n_anomalies <= {total - 1}."
            )
            raise ValueError(msg)
        quota = n_anomalies // len(defect_types)
        chosen: list[str] = []
        for defect in defect_types:
            chosen += _pick(rng, candidates[defect], min(quota, len(candidates[defect])))
        taken = set(chosen)
        rest = [path for defect in defect_types for path in candidates[defect] if path not in taken]
        chosen += _pick(rng, rest, n_anomalies - len(chosen))
        train = tuple(sorted(chosen))
        return Selection(train=train, removed_from_test=train, seen_defect_type=None)

    # one-class
    if len(defect_types) < 2:
        msg = (
            f"setting='one_class' would leave no anomalous images in the test set: {where} has a single "
            f"defect type ('{defect_types[0]}') and one-class removes every image of the seen type from test. "
            "Use setting='multi_class'."
        )
        raise ValueError(msg)
    if seen_defect_type is None:
        eligible = [defect for defect in defect_types if len(candidates[defect]) >= n_anomalies]
        if not eligible:
            largest = max(len(paths) for paths in candidates.values())
            msg = (
                f"n_anomalies={n_anomalies} is too large for setting='one_class': no defect type of {where} "
                f"has that many images ({_count_summary(candidates)}). Use n_anomalies <= {largest}."
            )
            raise ValueError(msg)
        seen_defect_type = eligible[int(rng.integers(len(eligible)))]
    elif seen_defect_type not in candidates:
        msg = (
            f"seen_defect_type='{seen_defect_type}' is not a defect type of {where}. "
            f"Valid defect types: {', '.join(defect_types)}."
        )
        raise ValueError(msg)
    available = len(candidates[seen_defect_type])
    if n_anomalies > available:
        msg = (
            f"n_anomalies={n_anomalies} is too large: defect type '{seen_defect_type}' of {where} has only "
            f"{available} images ({_count_summary(candidates)}). Use n_anomalies <= {available} "
            "or another seen_defect_type."
        )
        raise ValueError(msg)
    train = tuple(sorted(_pick(rng, candidates[seen_defect_type], n_anomalies)))
    return Selection(
        train=train,
        removed_from_test=tuple(candidates[seen_defect_type]),
        seen_defect_type=seen_defect_type,
    )
