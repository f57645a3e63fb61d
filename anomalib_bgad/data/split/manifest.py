"""The split manifest: a JSON record of the exact few-anomaly split of one run.

It lists the training anomalies (with their masks), every file removed from the test set, the
final training and test image lists, and the arguments that made the split (dataset, category,
setting, seed, ...). Paths are relative to the dataset root, so a manifest stays valid when the
dataset moves. A datamodule built from a manifest (``FewAnomaly*.from_manifest``) reproduces the
split exactly and refuses to run if the files on disk no longer give the recorded lists.

Example:
    >>> manifest = SplitManifest.read("split_manifest.json")  # doctest: +SKIP
    >>> manifest.train_anomalies[0]  # doctest: +SKIP
    {'image': 'bottle/test/broken_large/003.png', 'mask': 'bottle/ground_truth/broken_large/003_mask.png', ...}
"""

import json
import os
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

MANIFEST_FILENAME = "split_manifest.json"
"""File name of the manifest a run writes into its results folder."""
MANIFEST_FORMAT = "anomalib_bgad.split_manifest"
MANIFEST_VERSION = 1
LEGACY_MASK_RULE = "anomalib_bgad-0: any channel non-zero, alpha ignored"
"""The mask rule of anomalib_bgad 0.1.0, whose manifests do not record one."""


def json_value(value: Any) -> Any:
    """JSON-friendly copy of a datamodule argument as the manifest records it (paths and enums as strings).

    Args:
        value (Any): Argument value.

    Returns:
        Any: ``str`` for paths, the value of an enum, lists for tuples, else ``value``.
    """
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    return value


def relative_path(path: str | Path, root: str | Path) -> str:
    """Express ``path`` relative to ``root`` with forward slashes (both are resolved first).

    Args:
        path (str | Path): File path.
        root (str | Path): Dataset root.

    Returns:
        str: POSIX-style relative path (may start with ``..`` if ``path`` is outside ``root``).
    """
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


@dataclass
class SplitManifest:
    """Exact few-anomaly split of a run.

    Attributes:
        datamodule (str): Import path of the datamodule class, e.g. ``anomalib_bgad.data.FewAnomalyBTAD``.
        dataset (str): Dataset name used for seeding (``MVTecAD``, ``BTAD``, ``Folder``, ``VisA``).
        category (str): Category (Folder: the dataset ``name``).
        root (str): Absolute dataset root when the manifest was written (informative only).
        setting (str): ``multi_class`` or ``one_class``.
        seed (int): Selection seed.
        n_anomalies (int): Number of known anomalies.
        seen_defect_type (str | None): One-class seen type.
        defect_types (dict[str, int]): Anomalous image count per defect type before the split.
        train_anomalies (list[dict[str, str]]): ``{"image", "mask", "defect_type"}`` per known anomaly.
        removed_from_test (list[str]): Every image removed from the test set.
        train_images (list[str]): Normal training images.
        test_images (list[str]): Final test images.
        init_args (dict[str, Any]): JSON-serialisable datamodule arguments (replayed by ``from_manifest``).
        pseudo_anomaly_source (str): Pseudo anomalies of the run: ``rpag``, ``smoothblend``, ``perlin``, ``both``
            or a ``+``-joined set (not part of the split: a replay may change it). ``rpag`` for manifests written
            before it was recorded.
        mask_rule (str): How mask files were read into defect pixels (``anomalib_bgad.data.image_io.MASK_RULE``);
            manifests written before it was recorded read masks by :data:`LEGACY_MASK_RULE`.
        package_version (str): ``anomalib_bgad`` version.
        format (str): Format tag.
        format_version (int): Format version.
    """

    datamodule: str
    dataset: str
    category: str
    root: str
    setting: str
    seed: int
    n_anomalies: int
    seen_defect_type: str | None
    defect_types: dict[str, int]
    train_anomalies: list[dict[str, str]]
    removed_from_test: list[str]
    train_images: list[str]
    test_images: list[str]
    init_args: dict[str, Any] = field(default_factory=dict)
    pseudo_anomaly_source: str = "rpag"
    mask_rule: str = LEGACY_MASK_RULE
    package_version: str = ""
    format: str = MANIFEST_FORMAT
    format_version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        """Serialise to indented JSON.

        Returns:
            str: JSON text.
        """
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a mapping of JSON values (what :meth:`from_dict` reads back).

        Returns:
            dict[str, Any]: One entry per field.
        """
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        """Write the manifest (parent folders are created).

        Args:
            path (str | Path): Output ``.json`` file.

        Returns:
            Path: The written file.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "SplitManifest":
        """Read a manifest written by :meth:`write`.

        Args:
            path (str | Path): Manifest file.

        Returns:
            SplitManifest: The manifest.

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If the file is not a split manifest of a supported version.
        """
        path = Path(path)
        if not path.is_file():
            msg = f"Split manifest '{path}' does not exist. Pass the split_manifest.json written by a previous run."
            raise FileNotFoundError(msg)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            msg = f"Split manifest '{path}' is not valid JSON ({error})."
            raise ValueError(msg) from error
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            msg = f"'{path}' is not an anomalib_bgad split manifest (missing format='{MANIFEST_FORMAT}')."
            raise ValueError(msg)
        if data.get("format_version") != MANIFEST_VERSION:
            msg = (
                f"Split manifest '{path}' has format_version={data.get('format_version')}; "
                f"this anomalib_bgad reads version {MANIFEST_VERSION}."
            )
            raise ValueError(msg)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SplitManifest":
        """The manifest of a field mapping (a read JSON file, or the copy a checkpoint holds).

        Args:
            data (dict[str, Any]): The fields; keys this version does not know are ignored.

        Returns:
            SplitManifest: The manifest.
        """
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})
