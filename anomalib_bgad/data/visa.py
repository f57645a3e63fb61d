"""Few-anomaly VisA datamodule: anomalib's ``Visa`` with labeled defects in training.

VisA (Zou et al., ECCV 2022) ships in a *raw* layout — ``<root>/<category>/Data/Images/{Normal,Anomaly}``,
``Data/Masks/Anomaly`` and the split file ``<root>/split_csv/1cls.csv`` — that anomalib converts into an
MVTec-like *processed* copy (``visa_pytorch/<category>/{train/good, test/good, test/bad, ground_truth/bad}``)
with its own ``Visa.apply_cls1_split``. anomalib writes that copy into the dataset root; this project never
writes into the user's dataset folder, so:

* if ``<root>/visa_pytorch/<category>`` exists (anomalib made it before) it is used as is, read-only;
  ``root`` may also be a ``visa_pytorch`` folder itself;
* otherwise the category's raw files and its ``1cls.csv`` rows are copied to a staging folder under
  ``cache_dir``, anomalib's ``Visa.apply_cls1_split`` converts them there, and only the processed category is
  kept (``<cache_dir>/<root name>-<hash of root>/<category>/visa_pytorch/<category>``, with a ``stamp.json``).
  The cache is rebuilt when the category's ``1cls.csv`` rows, the size or modification time of one of its
  files, or the anomalib version change. Nothing under ``root`` is created, changed or linked.

Nothing is ever downloaded: a missing root fails with a message that says what to put there.

anomalib's processed split has a single anomalous folder, ``bad``: the multi-class setting works as for the
other datasets, the one-class setting is refused (see :class:`FewAnomalyVisa`).

Split manifests list paths relative to the processed ``visa_pytorch`` folder (``capsules/test/bad/000.JPG``),
so they are the same wherever the processed copy lives.
"""

import csv
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import anomalib
import pandas as pd
from anomalib.data import Visa
from anomalib.data.datasets.image.visa import EXTENSIONS as VISA_EXTENSIONS
from anomalib.data.datasets.image.visa import VisaDataset
from anomalib.data.errors import MisMatchError
from anomalib.data.utils import Split, TestSplitMode, ValSplitMode
from anomalib.data.utils.path import resolve_path_under_root
from torchvision.transforms.v2 import Transform

from anomalib_bgad.data import validation
from anomalib_bgad.data.base import FewAnomalyDataModule
from anomalib_bgad.data.datasets import RobustImageReadMixin
from anomalib_bgad.data.manifest import SplitManifest
from anomalib_bgad.data.selection import stable_hash

SPLIT_CSV = Path("split_csv") / "1cls.csv"
CSV_HEADER = ["object", "split", "label", "image", "mask"]
PROCESSED_DIR = "visa_pytorch"
STAMP_FILE = "stamp.json"
_STAMP_FORMAT = "anomalib_bgad.visa_cache"
_RAW_LAYOUT = (
    "<root>/split_csv/1cls.csv and <root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG, "
    "<root>/<category>/Data/Masks/Anomaly/*.png (VisA as downloaded), or anomalib's processed copy "
    "<root>/visa_pytorch/<category>/{train/good, test/good, test/bad, ground_truth/bad}"
)

ONE_CLASS_MESSAGE = (
    "setting='one_class' is not possible with FewAnomalyVisa: anomalib's VisA split (split_csv/1cls.csv, "
    "converted into <category>/test/bad) puts every anomalous image into a single folder, 'bad', so the "
    "datamodule sees one defect type, and one-class would move every anomaly of the test set into training or "
    "out of the test set, leaving no unseen type to test on. One-class needs each image's defect type: VisA's "
    "raw '<root>/<category>/image_anno.csv' lists it (column 'label'; some images have several). Sort the "
    "anomalous images with a single defect type into one folder per type, with their masks, and use "
    "FewAnomalyFolder(abnormal_dir=[...], mask_dir=[...], setting='one_class'); or use setting='multi_class'."
)


class FewAnomalyVisaDataset(RobustImageReadMixin, VisaDataset):
    """anomalib's ``VisaDataset`` (processed VisA layout) with robust image reading."""


def default_cache_dir() -> Path:
    """Where processed VisA copies go when ``cache_dir`` is not given.

    Returns:
        Path: ``$ANOMALIB_BGAD_CACHE/visa``, else ``$XDG_CACHE_HOME/anomalib_bgad/visa``, else
        ``~/.cache/anomalib_bgad/visa``.
    """
    if os.environ.get("ANOMALIB_BGAD_CACHE"):
        return Path(os.environ["ANOMALIB_BGAD_CACHE"]).expanduser() / "visa"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "anomalib_bgad" / "visa"


class FewAnomalyVisa(FewAnomalyDataModule, Visa):
    """anomalib's ``Visa`` datamodule with a few labeled anomalies in training.

    ``setting="one_class"`` is refused: anomalib's processed VisA split has a single anomalous folder
    (``bad``), so there is no defect type left unseen. The message says how to build a one-class split.

    Args:
        root (Path | str): VisA as downloaded (``<root>/split_csv/1cls.csv``, ``<root>/<category>/Data/...``), or
            a folder holding anomalib's processed copy (``<root>/visa_pytorch/<category>``), or that
            ``visa_pytorch`` folder itself. Never written to. Defaults to ``"./datasets/visa"``.
        category (str): Category, e.g. ``"capsules"`` or ``"pcb1"``. Defaults to ``"capsules"``.
        train_batch_size (int): Training batch size. Defaults to ``32``.
        eval_batch_size (int): Evaluation batch size. Defaults to ``32``.
        num_workers (int): Dataloader workers. Defaults to ``8``.
        train_augmentations (Transform | None): Training augmentations. Defaults to ``None``.
        val_augmentations (Transform | None): Validation augmentations. Defaults to ``None``.
        test_augmentations (Transform | None): Test augmentations. Defaults to ``None``.
        augmentations (Transform | None): Augmentations of every split without its own. Defaults to ``None``.
        test_split_mode (TestSplitMode | str): anomalib's test split mode. Defaults to ``"from_dir"``.
        test_split_ratio (float): anomalib's test split ratio. Defaults to ``0.2``.
        val_split_mode (ValSplitMode | str): anomalib's validation split mode. Defaults to ``"same_as_test"``.
        val_split_ratio (float): anomalib's validation split ratio. Defaults to ``0.5``.
        seed (int): Seed of the selection, the pseudo anomalies and anomalib's random splits. Defaults to ``0``.
        n_anomalies (int): Known anomalies moved from test to training. Defaults to ``10``.
        setting (Literal["multi_class", "one_class"]): Only ``"multi_class"`` is possible (see above).
            Defaults to ``"multi_class"``.
        seen_defect_type (str | None): Must stay ``None`` (multi-class). Defaults to ``None``.
        pseudo_anomalies (int | float): Pseudo anomalies per epoch of each source (count or ratio of the known
            anomalies). Defaults to ``5.0``.
        pseudo_anomaly_source (Literal["rpag", "smoothblend", "both"]): See :class:`FewAnomalyMVTecAD`.
            Defaults to ``"rpag"``.
        repeat_anomalies (int): Times each known anomaly appears per epoch; ``0`` keeps the known anomalies out of the
            training batches (they still leave the test set and still feed RPAG), e.g. to train on SmoothBlend pseudo
            anomalies alone on the same split. Defaults to ``5``.
        train_anomalies (bool | None): See :class:`FewAnomalyMVTecAD`. Defaults to ``None``.
        paste_in_foreground (bool | None): ``None``: yes (every VisA category is an object category).
            Defaults to ``None``.
        manifest_path (Path | str | None): See :class:`FewAnomalyMVTecAD`. Defaults to ``None``.
        replay_manifest (Path | str | None): See :class:`FewAnomalyMVTecAD`. Defaults to ``None``.
        verify_images (bool): Decode every image at setup. Defaults to ``True``.
        cache_dir (Path | str | None): Where the processed copy of a raw VisA tree is made (outside ``root``).
            ``None``: :func:`default_cache_dir`. Defaults to ``None``.
    """

    dataset_key: ClassVar[str] = "VisA"

    def __init__(
        self,
        root: Path | str = "./datasets/visa",
        category: str = "capsules",
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.SAME_AS_TEST,
        val_split_ratio: float = 0.5,
        seed: int = 0,
        n_anomalies: int = 10,
        setting: Literal["multi_class", "one_class"] = "multi_class",
        seen_defect_type: str | None = None,
        pseudo_anomalies: int | float = 5.0,
        pseudo_anomaly_source: Literal["rpag", "smoothblend", "both"] = "rpag",
        repeat_anomalies: int = 5,
        train_anomalies: bool | None = None,
        paste_in_foreground: bool | None = None,
        manifest_path: Path | str | None = None,
        replay_manifest: Path | str | None = None,
        verify_images: bool = True,
        cache_dir: Path | str | None = None,
    ) -> None:
        if getattr(setting, "value", setting) == "one_class":
            raise ValueError(ONE_CLASS_MESSAGE)
        Visa.__init__(
            self,
            root=root,
            category=category,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._init_few_anomaly(
            n_anomalies,
            setting,
            seen_defect_type,
            pseudo_anomalies,
            repeat_anomalies,
            train_anomalies,
            paste_in_foreground,
            manifest_path,
            replay_manifest,
            verify_images,
            pseudo_anomaly_source,
        )

    # ----------------------------------------------------------------------------------------------------------
    # Where the processed split is
    # ----------------------------------------------------------------------------------------------------------
    def _processed_in_root(self) -> Path | None:
        """anomalib's processed folder if it already holds the category (read-only use), else ``None``."""
        for folder in (self.root / PROCESSED_DIR, self.root):
            if (folder / self.category / "train").is_dir() and (folder / self.category / "test").is_dir():
                return folder
        return None

    def _is_raw(self) -> bool:
        return (self.root / self.category).is_dir() and (self.root / SPLIT_CSV).is_file()

    @property
    def cache_entry(self) -> Path:
        """Cache folder of this root and category (holds ``visa_pytorch/<category>`` and ``stamp.json``)."""
        resolved = Path(self.root).resolve()
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", resolved.name) or "root"
        base = self.cache_dir if self.cache_dir is not None else default_cache_dir()
        return base / f"{slug}-{stable_hash(str(resolved)):016x}" / self.category

    @property
    def processed_root(self) -> Path:
        """The ``visa_pytorch`` folder used: under ``root`` if anomalib made it there, else in the cache."""
        found = self._processed_in_root()
        return found if found is not None else self.cache_entry / PROCESSED_DIR

    @property
    def dataset_root(self) -> Path:
        """The processed ``visa_pytorch`` folder: manifest paths are relative to it."""
        return self.processed_root.resolve()

    def _check_location(self) -> None:
        validation.check_root(self.root, self.name, _RAW_LAYOUT)
        if self._processed_in_root() is not None or self._is_raw():
            return
        if (self.root / self.category).is_dir():
            msg = (
                f"VisA category folder '{self.root / self.category}' exists but the split file "
                f"'{self.root / SPLIT_CSV}' does not. It comes with VisA (and with github.com/amazon-science/"
                "spot-diff); put it there so that anomalib's 1-class split can be made."
            )
            raise FileNotFoundError(msg)
        found = sorted(
            {path.name for path in self.root.iterdir() if (path / "Data" / "Images").is_dir()}
            | {path.parent.name for path in self.root.glob(f"{PROCESSED_DIR}/*/train")}
            | {path.parent.name for path in self.root.glob("*/train/good")}
        )
        listing = ", ".join(found) if found else "none"
        msg = (
            f"Unknown category '{self.category}' for {self.name}: neither '{self.root / self.category}' (raw VisA) "
            f"nor '{self.root / PROCESSED_DIR / self.category}' (anomalib's processed copy) exists. Categories "
            f"found under '{self.root}': {listing}. Set category (CLI: --data.category) to one of them; the layout "
            f"is {_RAW_LAYOUT}."
        )
        raise FileNotFoundError(msg)

    def prepare_data(self) -> None:
        """Check the dataset and make the processed copy in the cache if needed (nothing is downloaded)."""
        self._check_location()
        self._ensure_processed()

    # ----------------------------------------------------------------------------------------------------------
    # Raw layout -> processed copy in the cache, by anomalib's own conversion
    # ----------------------------------------------------------------------------------------------------------
    def _category_rows(self) -> list[list[str]]:
        """The category's ``1cls.csv`` rows, checked: known split/label, files present under ``root``."""
        split_file = self.root / SPLIT_CSV
        with split_file.open(encoding="utf-8", newline="") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            rows = [row for row in reader if row]
        if header is None or [field.strip() for field in header] != CSV_HEADER:
            msg = f"'{split_file}' does not start with VisA's header '{','.join(CSV_HEADER)}' (got {header!r})."
            raise ValueError(msg)
        mine = [row for row in rows if row[0] == self.category]
        if not mine:
            categories = ", ".join(sorted({row[0] for row in rows})) or "none"
            msg = f"'{split_file}' has no row for category '{self.category}'. Categories in it: {categories}."
            raise ValueError(msg)
        for number, row in enumerate(mine, start=1):
            if len(row) != len(CSV_HEADER):
                msg = f"Row {row!r} of '{split_file}' has {len(row)} fields; expected {len(CSV_HEADER)}."
                raise ValueError(msg)
            _, split, label, image, mask = row
            where = f"row {number} of category '{self.category}' in '{split_file}' ({','.join(row)})"
            if split not in {"train", "test"} or label not in {"normal", "anomaly"}:
                msg = f"Unexpected split '{split}' or label '{label}' in {where}: expected train/test, normal/anomaly."
                raise ValueError(msg)
            if label == "anomaly" and (split != "test" or not mask):
                msg = f"Every anomalous image must be a test image with a mask; {where} is not."
                raise ValueError(msg)
            for relative in (image, mask) if mask else (image,):
                try:
                    path = resolve_path_under_root(self.root, relative, should_exist=False)
                except ValueError as error:
                    msg = f"'{relative}' in {where} points outside the dataset root '{self.root}'."
                    raise ValueError(msg) from error
                if not path.is_file():
                    msg = (
                        f"'{path}' listed in {where} does not exist. The VisA copy under '{self.root}' is "
                        "incomplete: restore the file or the dataset."
                    )
                    raise FileNotFoundError(msg)
        return mine

    def _fingerprint(self, rows: list[list[str]]) -> str:
        digest = hashlib.sha256(f"anomalib {anomalib.__version__}\n".encode())
        for row in rows:
            digest.update((",".join(row) + "\n").encode("utf-8"))
            for relative in row[3:]:
                if relative:
                    stat = (self.root / relative).stat()
                    digest.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def _cache_is_current(self, entry: Path, fingerprint: str) -> bool:
        try:
            stamp = json.loads((entry / STAMP_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (
            stamp.get("format") == _STAMP_FORMAT
            and stamp.get("fingerprint") == fingerprint
            and (entry / PROCESSED_DIR / self.category / "train").is_dir()
        )

    def _ensure_processed(self) -> Path:
        """The processed ``visa_pytorch`` folder, made in the cache by anomalib's conversion if needed."""
        found = self._processed_in_root()
        if found is not None:
            return found
        rows = self._category_rows()
        fingerprint = self._fingerprint(rows)
        entry = self.cache_entry
        if self._cache_is_current(entry, fingerprint):
            return entry / PROCESSED_DIR
        if entry.resolve().is_relative_to(Path(self.root).resolve()):
            msg = (
                f"cache_dir '{entry.parents[1]}' is inside the dataset root '{self.root}', which is never written to. "
                "Set cache_dir (CLI: --data.cache_dir) to a folder outside it."
            )
            raise ValueError(msg)
        entry.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{self.category}-staging-", dir=entry.parent))
        try:
            self._convert(rows, stage)
            (stage / STAMP_FILE).write_text(
                json.dumps(
                    {
                        "format": _STAMP_FORMAT,
                        "root": str(Path(self.root).resolve()),
                        "category": self.category,
                        "fingerprint": fingerprint,
                        "anomalib_version": anomalib.__version__,
                        "images": len(rows),
                    },
                    indent=2,
                )
                + "\n",
                encoding="utf-8",
            )
            if entry.exists():  # stale: move it aside first (a rename is atomic, a removal is not)
                stale = Path(tempfile.mkdtemp(prefix=f".{self.category}-stale-", dir=entry.parent))
                entry.rename(stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            try:
                stage.rename(entry)
            except OSError:
                if not self._cache_is_current(entry, fingerprint):  # not made by a concurrent run either
                    raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return entry / PROCESSED_DIR

    def _convert(self, rows: list[list[str]], stage: Path) -> None:
        """Run anomalib's ``Visa.apply_cls1_split`` on a staged copy of the category's raw files."""
        for row in rows:
            for relative in row[3:]:
                if relative:
                    target = stage / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(self.root / relative, target)
        (stage / SPLIT_CSV).parent.mkdir(parents=True)
        with (stage / SPLIT_CSV).open("w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(CSV_HEADER)
            writer.writerows(rows)
        converter = Visa.__new__(Visa)
        converter.root = stage
        converter.split_root = stage / PROCESSED_DIR
        Visa.apply_cls1_split(converter)
        # Keep only the processed category (apply_cls1_split makes empty folders for all twelve).
        for path in stage.iterdir():
            if path.name != PROCESSED_DIR:
                shutil.rmtree(path)
        for path in (stage / PROCESSED_DIR).iterdir():
            if path.name != self.category:
                shutil.rmtree(path)

    # ----------------------------------------------------------------------------------------------------------
    # Processed layout
    # ----------------------------------------------------------------------------------------------------------
    @staticmethod
    def _mask_candidates(image: Path, category_dir: Path, defect: str) -> list[Path]:
        folder = category_dir / "ground_truth" / defect
        return [folder / f"{image.stem}.png", folder / f"{image.stem}_mask.png"]

    def _check_layout(self) -> None:
        category_dir = self._ensure_processed() / self.category
        validation.check_normal_train_images(category_dir / "train" / "good", VISA_EXTENSIONS)
        test_dir, gt_dir = category_dir / "test", category_dir / "ground_truth"
        if not test_dir.is_dir():
            msg = f"Category '{self.category}' has no test folder '{test_dir}'; expected {_RAW_LAYOUT}."
            raise FileNotFoundError(msg)
        validation.check_ground_truth_folder(gt_dir, self.category)
        defects = sorted(path.name for path in test_dir.iterdir() if path.is_dir() and path.name != "good")
        for defect in defects:
            matched: set[Path] = set()
            for image in validation.list_images(test_dir / defect, VISA_EXTENSIONS):
                candidates = self._mask_candidates(image, category_dir, defect)
                found = next((path for path in candidates if path.is_file()), None)
                if found is None:
                    raise validation.missing_mask_error(image, candidates)
                matched.add(found)
            for mask in validation.list_images(gt_dir / defect, VISA_EXTENSIONS):
                if mask not in matched:
                    raise validation.orphan_mask_error(mask, test_dir / defect)

    def _parse(self) -> tuple[Any, Any]:
        root = self.processed_root  # made by _check_layout
        try:
            return (
                FewAnomalyVisaDataset(split=Split.TRAIN, root=root, category=self.category),
                FewAnomalyVisaDataset(split=Split.TEST, root=root, category=self.category),
            )
        except MisMatchError as error:
            msg = (
                f"anomalib could not pair the images and masks of VisA category '{self.category}' under '{root}': "
                f"it pairs them by sorted file name. Use the mask names VisA ships (image '000.JPG', mask "
                f"'000.png'). ({error})"
            )
            raise ValueError(msg) from error

    def _defect_types_and_masks(self, anomalous: pd.DataFrame) -> tuple[list[str], list[str]]:
        masks = []
        for category_dir, image, defect in zip(anomalous.path, anomalous.image_path, anomalous.label, strict=True):
            candidates = self._mask_candidates(Path(image), Path(category_dir), defect)
            masks.append(str(next((path for path in candidates if path.is_file()), candidates[0])))
        return [str(label) for label in anomalous.label], masks

    def _dataset_args(self) -> dict[str, Any]:
        return {"category": self.category, "cache_dir": str(self.cache_dir) if self.cache_dir is not None else None}

    def _build_manifest(self) -> SplitManifest:
        # File paths are relative to the processed folder; ``root`` is the user's root, which from_manifest reuses.
        return dataclasses.replace(super()._build_manifest(), root=str(Path(self.root).resolve()))

    def _default_paste_in_foreground(self) -> bool:
        return True
