"""Checks of the few-anomaly options, their renamed spellings, and the default worker count.

The options are declared once, as the keyword arguments of
:meth:`anomalib_bgad.data.datamodules.base.FewAnomalyDataModule.__init__`; every few-anomaly datamodule inherits
that signature (jsonargparse follows its ``**kwargs`` into anomalib's datamodule, so ``anomalib train --help``
lists both). This module holds what acts on them: :func:`check_options` (every value check, in one place),
:func:`resolve_renamed` (the 0.1.0 spellings, accepted with a ``FutureWarning``) and :func:`default_num_workers`.

In the option names, ``anomalies`` alone means the known (labeled) anomalies moved from test to training
(``n_anomalies``, ``repeat_anomalies``); ``pseudo_anomaly_*`` the generated ones; ``train_on_anomalies`` says
whether training batches carry either.

Example:
    >>> check_options(n_anomalies=-1)
    Traceback (most recent call last):
    ...
    ValueError: n_anomalies must be >= 0, got -1. Set n_anomalies to the number of labeled defects to train with.
"""

import os
import warnings
from typing import Any

from anomalib_bgad.data.pseudo_anomalies.perlin import DEFAULT_PERLIN_TEXTURE, check_perlin_texture
from anomalib_bgad.data.pseudo_anomalies.sources import RPAG, source_parts
from anomalib_bgad.data.split.selection import Setting

MAX_DEFAULT_WORKERS = 8
"""Upper bound of the default ``num_workers`` (anomalib's own default)."""

DEFAULT_PSEUDO_ANOMALY_RATIO = 5.0
"""RPAG pseudo anomalies per known anomaly and epoch in the authors' code."""


def usable_cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else all CPUs).

    Returns:
        int: At least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_num_workers() -> int:
    """Default dataloader workers: anomalib's 8, or fewer where fewer CPUs are usable.

    PyTorch warns when a DataLoader has more workers than usable CPUs; this default never does.

    Returns:
        int: ``min(8, usable CPUs)``.
    """
    return min(MAX_DEFAULT_WORKERS, usable_cpu_count())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def source_ratio(pseudo_anomaly_ratio: float | dict[str, float], source: str) -> float:
    """Pseudo anomalies per known anomaly and epoch that one generator makes.

    Args:
        pseudo_anomaly_ratio (float | dict[str, float]): One ratio for every source, or one per source.
        source (str): A generator name (``"rpag"``, ``"smoothblend"`` or ``"perlin"``).

    Returns:
        float: The ratio of ``source`` (``0.0`` where a per-source mapping does not name it).
    """
    if isinstance(pseudo_anomaly_ratio, dict):
        return float(pseudo_anomaly_ratio.get(source, 0.0))
    return float(pseudo_anomaly_ratio)


def _check_ratio(pseudo_anomaly_ratio: Any, pseudo_anomaly_source: str) -> None:
    """A number >= 0, or a mapping that gives every generator of ``pseudo_anomaly_source`` a number >= 0."""
    if not isinstance(pseudo_anomaly_ratio, dict):
        if not _is_number(pseudo_anomaly_ratio) or not pseudo_anomaly_ratio >= 0:
            msg = (
                f"pseudo_anomaly_ratio must be a number >= 0 (pseudo anomalies per known anomaly and epoch), got "
                f"{pseudo_anomaly_ratio!r}. Use 0 to disable pseudo anomalies."
            )
            raise ValueError(msg)
        return
    parts = source_parts(pseudo_anomaly_source)
    example = ", ".join(f"{part}: 1.0" for part in parts)
    if set(pseudo_anomaly_ratio) != set(parts):
        msg = (
            f"pseudo_anomaly_ratio as a mapping gives each generator of pseudo_anomaly_source="
            f"{pseudo_anomaly_source!r} its own ratio, so it must name exactly {list(parts)} "
            f"(it names {sorted(pseudo_anomaly_ratio)}). Example: {{{example}}}; or give one number for every source."
        )
        raise ValueError(msg)
    wrong = {key: value for key, value in pseudo_anomaly_ratio.items() if not _is_number(value) or not value >= 0}
    if wrong:
        msg = (
            f"pseudo_anomaly_ratio values must be numbers >= 0 (pseudo anomalies per known anomaly and epoch), "
            f"got {wrong}. Example: {{{example}}}; use 0 for a generator that should make none."
        )
        raise ValueError(msg)


def _renamed_warning(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated (anomalib_bgad 0.1.0 spelling) and will be removed; use {new}.",
        FutureWarning,
        stacklevel=4,
    )


def resolve_renamed(
    pseudo_anomalies: float | None,
    train_anomalies: bool | None,
    pseudo_anomaly_ratio: float | dict[str, float],
    pseudo_anomaly_count: int | None,
    train_on_anomalies: bool | None,
) -> tuple[float | dict[str, float], int | None, bool | None]:
    """Map the 0.1.0 options onto their new names (with a ``FutureWarning``); refuse old and new together.

    * ``pseudo_anomalies`` was a count when an ``int`` and a ratio when a ``float``: an ``int`` becomes
      ``pseudo_anomaly_count``, a ``float`` ``pseudo_anomaly_ratio``.
    * ``train_anomalies`` is now ``train_on_anomalies`` (the model declares ``trains_on_anomalies``).

    Args:
        pseudo_anomalies (float | None): Old option, ``None`` when not given.
        train_anomalies (bool | None): Old option, ``None`` when not given.
        pseudo_anomaly_ratio (float | dict[str, float]): New option as given.
        pseudo_anomaly_count (int | None): New option as given.
        train_on_anomalies (bool | None): New option as given.

    Returns:
        tuple[float | dict[str, float], int | None, bool | None]: ``pseudo_anomaly_ratio``, ``pseudo_anomaly_count``,
        ``train_on_anomalies``.

    Raises:
        ValueError: If an old option is given together with its new one, or ``pseudo_anomalies`` is no number.
    """
    if pseudo_anomalies is not None:
        if not _is_number(pseudo_anomalies):
            msg = f"pseudo_anomalies must be a number, got {pseudo_anomalies!r}; use pseudo_anomaly_ratio instead."
            raise ValueError(msg)
        if pseudo_anomaly_count is not None or pseudo_anomaly_ratio != DEFAULT_PSEUDO_ANOMALY_RATIO:
            msg = (
                "pseudo_anomalies (deprecated) cannot be combined with pseudo_anomaly_ratio or pseudo_anomaly_count: "
                "remove pseudo_anomalies."
            )
            raise ValueError(msg)
        if _is_int(pseudo_anomalies):
            _renamed_warning(f"pseudo_anomalies={pseudo_anomalies} (an int, a count)", "pseudo_anomaly_count")
            pseudo_anomaly_count = pseudo_anomalies
        else:
            _renamed_warning(f"pseudo_anomalies={pseudo_anomalies} (a float, a ratio)", "pseudo_anomaly_ratio")
            pseudo_anomaly_ratio = pseudo_anomalies
    if train_anomalies is not None:
        if train_on_anomalies is not None and train_on_anomalies != train_anomalies:
            msg = (
                f"train_anomalies={train_anomalies} (deprecated) contradicts train_on_anomalies={train_on_anomalies}: "
                "remove train_anomalies."
            )
            raise ValueError(msg)
        _renamed_warning("train_anomalies", "train_on_anomalies")
        train_on_anomalies = train_anomalies
    return pseudo_anomaly_ratio, pseudo_anomaly_count, train_on_anomalies


RENAMED_INIT_ARGS = {"train_anomalies": "train_on_anomalies"}
"""0.1.0 init arguments found in old split manifests, with their new name (``pseudo_anomalies`` aside)."""


def upgrade_init_args(init_args: dict[str, Any]) -> dict[str, Any]:
    """Init arguments recorded by an older manifest, in today's spelling (no warning: the user wrote none).

    Args:
        init_args (dict[str, Any]): ``SplitManifest.init_args``.

    Returns:
        dict[str, Any]: A copy with ``pseudo_anomalies`` and ``train_anomalies`` renamed, and ``perlin_texture``
        ``"normal_image"`` where the manifest predates it (0.4.3 and older had no other fill).
    """
    args = dict(init_args)
    args.setdefault("perlin_texture", "normal_image")  # the only Perlin fill before 0.4.4
    for old, new in RENAMED_INIT_ARGS.items():
        if old in args:
            args.setdefault(new, args.pop(old))
    if "pseudo_anomalies" in args:
        value = args.pop("pseudo_anomalies")
        if _is_int(value):
            args.setdefault("pseudo_anomaly_count", value)
        elif value is not None:
            args.setdefault("pseudo_anomaly_ratio", float(value))
    return args


def check_options(
    n_anomalies: int = 10,
    setting: str = "multi_class",
    seed: int = 0,
    pseudo_anomaly_source: str = RPAG,
    pseudo_anomaly_ratio: float | dict[str, float] = DEFAULT_PSEUDO_ANOMALY_RATIO,
    pseudo_anomaly_count: int | None = None,
    repeat_anomalies: int = 5,
    perlin_texture: str = DEFAULT_PERLIN_TEXTURE,
    num_workers: int = 0,
) -> None:
    """Check the few-anomaly options, alone and together.

    Args:
        n_anomalies (int): Known anomalies. Defaults to ``10``.
        setting (str): ``multi_class`` or ``one_class``. Defaults to ``"multi_class"``.
        seed (int): Selection seed. Defaults to ``0``.
        pseudo_anomaly_source (str): ``rpag``, ``smoothblend``, ``perlin``, ``both`` or a ``+``-joined set.
            Defaults to ``"rpag"``.
        pseudo_anomaly_ratio (float | dict[str, float]): Pseudo anomalies per known anomaly, per source and epoch;
            a mapping gives each source of ``pseudo_anomaly_source`` its own. Defaults to ``5.0``.
        pseudo_anomaly_count (int | None): Pseudo anomalies per source and epoch, replacing the ratio.
            Defaults to ``None``.
        repeat_anomalies (int): Times each known anomaly appears per epoch. Defaults to ``5``.
        perlin_texture (str): What fills the Perlin blobs, ``noise`` or ``normal_image``. Defaults to ``"noise"``.
        num_workers (int): Dataloader workers. Defaults to ``0``.

    Raises:
        ValueError: On an invalid value, or a combination that would silently make no pseudo anomaly.
    """
    if not _is_int(n_anomalies):
        msg = f"n_anomalies must be an integer, got {n_anomalies!r}."
        raise ValueError(msg)
    if n_anomalies < 0:
        msg = (
            f"n_anomalies must be >= 0, got {n_anomalies}. "
            "Set n_anomalies to the number of labeled defects to train with."
        )
        raise ValueError(msg)
    valid = [item.value for item in Setting]
    if setting not in valid:
        msg = f"setting must be one of {valid}, got {setting!r}."
        raise ValueError(msg)
    if not _is_int(seed) or seed < 0:
        msg = f"seed must be an integer >= 0 (it fixes the anomaly selection), got {seed!r}."
        raise ValueError(msg)
    _check_ratio(pseudo_anomaly_ratio, pseudo_anomaly_source)
    if pseudo_anomaly_count is not None and (not _is_int(pseudo_anomaly_count) or pseudo_anomaly_count < 0):
        msg = (
            f"pseudo_anomaly_count must be an integer >= 0 (pseudo anomalies per source and epoch) or None (use "
            f"pseudo_anomaly_ratio), got {pseudo_anomaly_count!r}."
        )
        raise ValueError(msg)
    if not _is_int(repeat_anomalies) or repeat_anomalies < 0:
        msg = (
            f"repeat_anomalies must be an integer >= 0, got {repeat_anomalies!r}: the times each known anomaly "
            "appears per epoch (0 keeps them out of the training batches; they still leave the test set)."
        )
        raise ValueError(msg)
    check_perlin_texture(perlin_texture)
    if not _is_int(num_workers) or num_workers < 0:
        msg = f"num_workers must be an integer >= 0 (dataloader worker processes), got {num_workers!r}."
        raise ValueError(msg)
    parts = source_parts(pseudo_anomaly_source)
    if n_anomalies > 0:
        return
    if RPAG in parts and pseudo_anomaly_count:
        msg = (
            f"pseudo_anomaly_source={pseudo_anomaly_source!r} asks for {pseudo_anomaly_count} RPAG pseudo anomalies "
            "per epoch (pseudo_anomaly_count), but n_anomalies=0: RPAG pastes known anomalies and there is none. Set "
            "n_anomalies >= 1, pseudo_anomaly_source='smoothblend' or 'perlin' (pseudo anomalies from normal images "
            "alone), or pseudo_anomaly_count=0."
        )
        raise ValueError(msg)
    from_normals = [part for part in parts if part != RPAG]
    ratios = [source_ratio(pseudo_anomaly_ratio, part) for part in from_normals]
    if from_normals and pseudo_anomaly_count is None and any(ratio > 0 for ratio in ratios):
        names = "+".join(from_normals)
        msg = (
            f"pseudo_anomaly_ratio={pseudo_anomaly_ratio!r} is a ratio of the known anomalies, and n_anomalies=0: "
            f"pseudo_anomaly_source={pseudo_anomaly_source!r} would make no {names} pseudo anomaly. Set a count "
            "per epoch instead (pseudo_anomaly_count, e.g. 50)"
            + (f", and pseudo_anomaly_source={names!r} (RPAG needs known anomalies)." if RPAG in parts else ".")
        )
        raise ValueError(msg)
