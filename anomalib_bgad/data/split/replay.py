"""Replaying a recorded split: the datamodule arguments a split manifest fixes, merged with the ones given.

A split manifest records the arguments that made its split (``init_args``) and the dataset root. A datamodule
built with ``replay_manifest`` takes them from it, so that ``anomalib test`` and ``anomalib predict`` need one
argument (``--data.replay_manifest <path>``) instead of the training command's root, category, ``n_anomalies``,
seed and setting. The rule, per recorded argument:

* given value equal to the recorded one: kept;
* given value equal to the argument's default: the recorded value is taken (a CLI passes every default, so a
  default cannot be told from an omitted argument), unless the caller named the argument explicitly
  (:func:`explicit_arguments`, as ``FewAnomalyDataModule.from_manifest`` does with its overrides);
* any other given value: for a split-defining argument (:data:`SPLIT_ARGS`) an error that names the argument
  and both values; for the others (``root`` of a moved dataset, batch sizes, pseudo anomalies) the given value
  wins.

Example:
    >>> replayed_arguments({"seed": 0}, {"seed": 0}, {"seed": 3}, "m.json")
    {'seed': 3}
"""

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from anomalib_bgad.data.split.manifest import json_value

logger = logging.getLogger(__name__)

SPLIT_ARGS = (
    "category",
    "setting",
    "seed",
    "n_anomalies",
    "seen_defect_type",
    "test_split_mode",
    "test_split_ratio",
    "val_split_mode",
    "val_split_ratio",
    "name",
    "normal_dir",
    "abnormal_dir",
    "normal_test_dir",
    "mask_dir",
    "extensions",
)
"""Arguments that define the split: a replay cannot change them."""

_EXPLICIT: ContextVar[frozenset[str]] = ContextVar("explicit_replay_arguments", default=frozenset())


@contextmanager
def explicit_arguments(names: Iterable[str]) -> Iterator[None]:
    """Within the block, datamodules built with ``replay_manifest`` keep these arguments as given, defaults too.

    Args:
        names (Iterable[str]): Argument names the caller passed on purpose (``from_manifest``'s overrides).

    Yields:
        None
    """
    token = _EXPLICIT.set(frozenset(names))
    try:
        yield
    finally:
        _EXPLICIT.reset(token)


def explicit_argument_names() -> frozenset[str]:
    """The names set by the innermost :func:`explicit_arguments` block (empty outside one)."""
    return _EXPLICIT.get()


def _same(first: Any, second: Any) -> bool:
    """Equal as the manifest records them; paths compare as paths (``./data`` is ``data``)."""
    if isinstance(first, Path) or isinstance(second, Path):
        try:
            return Path(first) == Path(second)
        except TypeError:
            return False
    return json_value(first) == json_value(second)


def changed_split_args(overrides: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """Split-defining arguments of ``overrides`` whose value differs from the recorded one.

    Args:
        overrides (dict[str, Any]): Arguments given explicitly (e.g. to ``from_manifest``).
        recorded (dict[str, Any]): The manifest's ``init_args``.

    Returns:
        list[str]: Names of the arguments that would change the split.
    """
    return [
        key
        for key, value in overrides.items()
        if key in SPLIT_ARGS and key in recorded and json_value(value) != recorded[key]
    ]


def replayed_arguments(
    given: dict[str, Any],
    defaults: dict[str, Any],
    recorded: dict[str, Any],
    path: str | Path,
    explicit: Iterable[str] = (),
) -> dict[str, Any]:
    """Merge a datamodule's arguments with those a manifest recorded (rule in the module docstring).

    Args:
        given (dict[str, Any]): Every argument value the datamodule received (defaults included).
        defaults (dict[str, Any]): Default of each argument that has one.
        recorded (dict[str, Any]): The manifest's ``init_args`` (today's spelling) and ``root``.
        path (str | Path): The manifest, for messages.
        explicit (Iterable[str]): Arguments given on purpose: their value stays even when it is the default.

    Returns:
        dict[str, Any]: ``given`` with the recorded values taken in.

    Raises:
        ValueError: If a split-defining argument was given another value than the recorded one; the message
            lists each with both values.
    """
    merged = dict(given)
    explicit = frozenset(explicit)
    conflicts, taken = [], []
    for key, value in recorded.items():
        if key not in given or _same(given[key], value):
            continue
        if key not in explicit and key in defaults and _same(given[key], defaults[key]):
            merged[key] = value
            taken.append(f"{key}={value!r}")
        elif key in SPLIT_ARGS:
            conflicts.append((key, value, given[key]))
    if conflicts:
        listing = "; ".join(f"{key}: manifest {value!r}, datamodule {mine!r}" for key, value, mine in conflicts)
        options = ", ".join(f"--data.{key}" for key, _, _ in conflicts)
        recorded_values = " ".join(f"--data.{key} {value}" for key, value, _ in conflicts)
        msg = (
            f"replay_manifest '{path}' was written for another split ({listing}). The manifest fixes these "
            f"arguments: to replay its split, remove them from the command line and the --config file (CLI: "
            f"{options}) or set them to the manifest's values (CLI: {recorded_values}); or remove replay_manifest "
            "to make a new split."
        )
        raise ValueError(msg)
    if taken:
        logger.info("Replaying the split of %s: %s taken from it.", path, ", ".join(taken))
    return merged
