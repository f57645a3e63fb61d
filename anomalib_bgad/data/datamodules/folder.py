"""Few-anomaly Folder datamodule: anomalib's ``Folder`` with labeled defects in training."""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from anomalib.data import Folder
from anomalib.data.utils import Split
from anomalib.data.utils.path import resolve_path

from anomalib_bgad.data.datamodules import validation
from anomalib_bgad.data.datamodules.base import FewAnomalyDataModule
from anomalib_bgad.data.datamodules.datasets import FewAnomalyFolderDataset
from anomalib_bgad.data.split.manifest import relative_path


class FewAnomalyFolder(FewAnomalyDataModule, Folder):
    """anomalib's ``Folder`` datamodule with a few labeled anomalies in training.

    The defect type of an anomalous image is the name of its ``abnormal_dir`` (or, for images in
    sub-folders of an abnormal dir, the first sub-folder's name). Its mask is the file of the same stem
    (optionally with ``_mask``), in any mask format (PNG, BMP, TIFF, JPEG, ... whatever ``extensions`` says about
    the images), at the same relative place in ``mask_dir`` — or in ``mask_dir/<abnormal dir name>``;
    with one mask dir per abnormal dir, ``mask_dir[i]`` holds the masks of ``abnormal_dir[i]``. (anomalib
    itself pairs images and masks by sorted position; pairing by name is safer.)

    Takes anomalib's ``Folder`` arguments (``name``, ``normal_dir``, ``root``, ``abnormal_dir``, ``normal_test_dir``,
    ``mask_dir``, batch sizes, augmentations, split modes) and the few-anomaly options of
    :meth:`FewAnomalyDataModule.__init__`. ``abnormal_dir`` and ``mask_dir`` are required; ``root=None`` makes the
    common parent of all dirs the root that manifest paths are relative to. ``paste_in_foreground=None`` pastes
    anywhere.
    """

    dataset_key: ClassVar[str] = "Folder"

    def __init__(
        self,
        name: str | None = None,
        normal_dir: str | Path | Sequence[str | Path] | None = None,
        *,
        extensions: tuple[str, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        """Few-anomaly ``Folder``.

        Args:
            name (str | None): Dataset name (results folder, selection seed). Required unless ``replay_manifest``
                gives it. Defaults to ``None``.
            normal_dir (str | Path | Sequence[str | Path] | None): Normal training images. Required unless
                ``replay_manifest`` gives it. Defaults to ``None``.
            extensions (tuple[str, ...] | None): Image suffixes, e.g. ``(".png", ".jpg")`` (anomalib's annotation
                takes one). ``None``: torchvision's list. Defaults to ``None``.
            **kwargs (Any): anomalib ``Folder`` arguments and the few-anomaly options.

        Raises:
            ValueError: If ``name`` or ``normal_dir`` is missing and no ``replay_manifest`` gives it.
        """
        if kwargs.get("replay_manifest") is None:
            for arg, value in (("name", name), ("normal_dir", normal_dir)):
                if value is None:
                    msg = f"{type(self).__name__} needs {arg} (CLI: --data.{arg}), or a replay_manifest that has it."
                    raise ValueError(msg)
        extensions = tuple(extensions) if extensions is not None else None
        super().__init__(name=name, normal_dir=normal_dir, extensions=extensions, **kwargs)

    @staticmethod
    def _as_list(dirs: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
        if dirs is None:
            return []
        if isinstance(dirs, str | Path):
            return [dirs]
        return list(dirs)

    def _dirs(self, dirs: str | Path | Sequence[str | Path] | None) -> list[Path]:
        return [resolve_path(folder, self.root).resolve() for folder in self._as_list(dirs)]

    @property
    def dataset_root(self) -> Path:
        """``root``, or the common parent of all dirs when ``root`` is ``None``."""
        if self.root is not None:
            return Path(self.root).resolve()
        dirs = [
            *self._dirs(self.normal_dir),
            *self._dirs(self.abnormal_dir),
            *self._dirs(self.normal_test_dir),
            *self._dirs(self.mask_dir),
        ]
        return Path(os.path.commonpath([str(path) for path in dirs])) if dirs else Path.cwd()

    @property
    def selection_category(self) -> str:
        """The Folder dataset's ``name``."""
        return self.name

    @property
    def _extensions(self) -> tuple[str, ...]:
        return tuple(ext.lower() for ext in self.extensions) if self.extensions else validation.FOLDER_EXTENSIONS

    def _check_location(self) -> None:
        layout = "<root>/<normal_dir>, <root>/<abnormal_dir> (one per defect type), <root>/<mask_dir>"
        if self.root is not None:
            validation.check_root(Path(self.root), self.name, layout)
        for arg in ("normal_dir", "abnormal_dir", "mask_dir", "normal_test_dir"):
            for folder in self._dirs(getattr(self, arg)):
                if not folder.is_dir():
                    msg = (
                        f"{arg} '{folder}' of {self.name} does not exist. "
                        f"Set {arg} (CLI: --data.{arg}) to an existing folder."
                    )
                    raise FileNotFoundError(msg)
        for arg, meaning in (("abnormal_dir", "anomalous images"), ("mask_dir", "their ground-truth masks")):
            if not self._as_list(getattr(self, arg)):
                msg = (
                    f"{type(self).__name__} needs {arg} (the folder(s) of {meaning}): few-anomaly training moves "
                    f"labeled defects with pixel masks into the training set. Set {arg} (CLI: --data.{arg})."
                )
                raise ValueError(msg)

    def _check_layout(self) -> None:
        for folder in self._dirs(self.normal_dir):
            validation.check_normal_train_images(folder, self._extensions, recursive=True)

    def _parse(self) -> tuple[Any, Any]:
        # Masks are paired by name in _defect_types_and_masks, not by anomalib's sorted-position pairing.
        args = {
            "name": self.name,
            "root": self.root,
            "normal_dir": self.normal_dir,
            "abnormal_dir": self.abnormal_dir,
            "normal_test_dir": self.normal_test_dir,
            "mask_dir": None,
            "extensions": self.extensions,
        }
        return FewAnomalyFolderDataset(split=Split.TRAIN, **args), FewAnomalyFolderDataset(split=Split.TEST, **args)

    @staticmethod
    def _mask_index(mask_dir: Path) -> dict[tuple[str, str], list[Path]]:
        """Masks of a mask dir by (sub-folder, stem without ``_mask``), in every mask format whatever ``extensions``."""
        index: dict[tuple[str, str], list[Path]] = {}
        for mask in validation.list_images(mask_dir, validation.MASK_EXTENSIONS, recursive=True):
            key = (mask.relative_to(mask_dir).parent.as_posix(), mask.stem.removesuffix("_mask"))
            index.setdefault(key, []).append(mask)
        return index

    def _defect_types_and_masks(self, anomalous: pd.DataFrame) -> tuple[list[str], list[str]]:
        abnormal_dirs, mask_dirs = self._dirs(self.abnormal_dir), self._dirs(self.mask_dir)
        indexes = [self._mask_index(folder) for folder in mask_dirs]
        one_per_dir = len(mask_dirs) == len(abnormal_dirs)
        defect_types, masks = [], []
        for image_path in anomalous.image_path:
            image = Path(image_path).resolve()
            position = next(i for i, folder in enumerate(abnormal_dirs) if image.is_relative_to(folder))
            folder = abnormal_dirs[position]
            relative = image.relative_to(folder)
            defect_types.append(relative.parts[0] if len(relative.parts) > 1 else folder.name)
            # Same relative place in the mask dir, or under a sub-folder named after the abnormal dir.
            places = [
                (mask_dirs[i], sub)
                for i in ([position] if one_per_dir else range(len(mask_dirs)))
                for sub in (relative.parent, Path(folder.name) / relative.parent)
            ]
            found = [
                indexes[mask_dirs.index(mask_dir)].get((sub.as_posix(), image.stem), []) for mask_dir, sub in places
            ]
            candidates = next((matches for matches in found if matches), None)
            if candidates is None:
                raise validation.unmatched_mask_error(image, [mask_dir / sub for mask_dir, sub in places])
            if len(candidates) > 1:
                listing = ", ".join(f"'{path}'" for path in candidates)
                msg = f"Anomalous image '{image}' has {len(candidates)} masks ({listing}): keep one of them."
                raise ValueError(msg)
            masks.append(str(candidates[0]))
        return defect_types, masks

    def _dataset_args(self) -> dict[str, Any]:
        root = self.dataset_root

        def relative(dirs: str | Path | Sequence[str | Path] | None) -> list[str] | None:
            resolved = self._dirs(dirs)
            return [relative_path(folder, root) for folder in resolved] if resolved else None

        return {
            "name": self.name,
            "normal_dir": relative(self.normal_dir),
            "abnormal_dir": relative(self.abnormal_dir),
            "normal_test_dir": relative(self.normal_test_dir),
            "mask_dir": relative(self.mask_dir),
            "extensions": list(self.extensions) if self.extensions else None,
        }
