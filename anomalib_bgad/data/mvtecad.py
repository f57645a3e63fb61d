"""Few-anomaly MVTec AD datamodule: anomalib's ``MVTecAD`` with labeled defects in training."""

from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
from anomalib.data import MVTecAD
from anomalib.data.errors import MisMatchError
from anomalib.data.utils import Split, TestSplitMode, ValSplitMode
from torchvision.transforms.v2 import Transform

from anomalib_bgad.data import validation
from anomalib_bgad.data.base import FewAnomalyDataModule
from anomalib_bgad.data.datasets import FewAnomalyMVTecADDataset
from anomalib_bgad.data.foreground import MVTEC_OBJECT_CATEGORIES


def _mvtec_mask_candidates(image: Path, category_dir: Path, defect: str) -> list[Path]:
    folder = category_dir / "ground_truth" / defect
    return [folder / f"{image.stem}_mask{image.suffix}", folder / f"{image.stem}{image.suffix}"]


class FewAnomalyMVTecAD(FewAnomalyDataModule, MVTecAD):
    """anomalib's ``MVTecAD`` datamodule with a few labeled anomalies in training (BGAD's settings).

    Args:
        root (Path | str): Folder holding the categories (``<root>/<category>/train/good``, ``test/<defect>``,
            ``ground_truth/<defect>/<name>_mask.png``). Defaults to ``"./datasets/MVTecAD"``.
        category (str): Category. Defaults to ``"bottle"``.
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
        seed (int): Seed of the anomaly selection, the pseudo anomalies and anomalib's random splits.
            Defaults to ``0``.
        n_anomalies (int): Known anomalies moved from test to training. Defaults to ``10``.
        setting (Literal["multi_class", "one_class"]): ``multi_class``: drawn across all defect types
            (``n // n_types`` each, remainder at random). ``one_class``: all from ``seen_defect_type`` and every
            image of that type removed from test. Defaults to ``"multi_class"``.
        seen_defect_type (str | None): One-class seen defect type; ``None``: chosen by the seed.
            Defaults to ``None``.
        pseudo_anomalies (int | float): Pseudo anomalies per epoch of each ``pseudo_anomaly_source``: an ``int``
            is a count, a ``float`` a ratio of the known anomalies (authors' RPAG: ``5.0``); ``0`` disables.
            Defaults to ``5.0``.
        pseudo_anomaly_source (Literal["rpag", "smoothblend", "both"]): ``"rpag"``: augmented known anomalies
            pasted on normal images (BGAD). ``"smoothblend"``: a colour-jittered patch of a normal image blended
            back elsewhere (SPD; needs no known anomaly, so it works with ``n_anomalies=0`` and an int
            ``pseudo_anomalies``). ``"both"``: ``pseudo_anomalies`` of each. Defaults to ``"rpag"``.
        repeat_anomalies (int): Times each known anomaly appears per epoch (authors: ``5``); ``0`` keeps the known
            anomalies out of the training batches (they still leave the test set and still feed RPAG), e.g. to train on
            SmoothBlend pseudo anomalies alone on the same split. Defaults to ``5``.
        train_anomalies (bool | None): Put anomalies in the training batches. ``None``: only for models with
            ``trains_on_anomalies = True`` (anomalib's unsupervised models train on normal images only).
            Defaults to ``None``.
        paste_in_foreground (bool | None): Paste pseudo anomalies on the object's foreground. ``None``: for
            MVTec AD object categories, not for textures. Defaults to ``None``.
        manifest_path (Path | str | None): Where setup writes the split manifest. ``None``: into the trainer's
            ``default_root_dir`` (the run's results folder) when a trainer is attached. Defaults to ``None``.
        replay_manifest (Path | str | None): Manifest whose split to replay exactly (see :meth:`from_manifest`).
            Defaults to ``None``.
        verify_images (bool): Decode every image at setup to catch truncated files. Defaults to ``True``.
    """

    dataset_key: ClassVar[str] = "MVTecAD"

    def __init__(
        self,
        root: Path | str = "./datasets/MVTecAD",
        category: str = "bottle",
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
    ) -> None:
        MVTecAD.__init__(
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

    _LAYOUT = "<root>/<category>/train/good/*.png, test/<defect>/*.png, ground_truth/<defect>/<name>_mask.png"

    def _check_location(self) -> None:
        validation.check_root(self.root, self.name, self._LAYOUT)
        validation.check_category(self.root, self.category, "train", self.name)

    def _check_layout(self) -> None:
        category_dir = self.root / self.category
        validation.check_normal_train_images(category_dir / "train" / "good", validation.MVTEC_EXTENSIONS)
        test_dir, gt_dir = category_dir / "test", category_dir / "ground_truth"
        if not test_dir.is_dir():
            msg = f"Category '{self.category}' has no test folder '{test_dir}'; expected {self._LAYOUT}."
            raise FileNotFoundError(msg)
        validation.check_ground_truth_folder(gt_dir, self.category)
        defects = sorted(path.name for path in test_dir.iterdir() if path.is_dir() and path.name != "good")
        for defect in defects:
            matched: set[Path] = set()
            for image in validation.list_images(test_dir / defect, validation.MVTEC_EXTENSIONS):
                candidates = _mvtec_mask_candidates(image, category_dir, defect)
                found = next((path for path in candidates if path.is_file()), None)
                if found is None:
                    raise validation.missing_mask_error(image, candidates)
                matched.add(found)
            for mask in validation.list_images(gt_dir / defect, validation.MVTEC_EXTENSIONS):
                if mask not in matched:
                    raise validation.orphan_mask_error(mask, test_dir / defect)
        for folder in sorted(path for path in gt_dir.iterdir() if path.is_dir() and path.name not in defects):
            masks = validation.list_images(folder, validation.MVTEC_EXTENSIONS)
            if masks:
                raise validation.orphan_mask_error(masks[0], test_dir / folder.name)

    def _parse(self) -> tuple[Any, Any]:
        try:
            return (
                FewAnomalyMVTecADDataset(split=Split.TRAIN, root=self.root, category=self.category),
                FewAnomalyMVTecADDataset(split=Split.TEST, root=self.root, category=self.category),
            )
        except MisMatchError as error:
            msg = (
                f"anomalib could not pair the images and masks of category '{self.category}': it pairs them by "
                f"sorted file name, which fails for names such as '1.png'/'10.png'. Use zero-padded names "
                f"(e.g. '001.png' with '001_mask.png'). ({error})"
            )
            raise ValueError(msg) from error

    def _defect_types_and_masks(self, anomalous: pd.DataFrame) -> tuple[list[str], list[str]]:
        # Paired by name (the layout check made sure every image has its mask and no mask is left over).
        masks = []
        for category_dir, image, defect in zip(anomalous.path, anomalous.image_path, anomalous.label, strict=True):
            candidates = _mvtec_mask_candidates(Path(image), Path(category_dir), defect)
            masks.append(str(next((path for path in candidates if path.is_file()), candidates[0])))
        return [str(label) for label in anomalous.label], masks

    def _default_paste_in_foreground(self) -> bool:
        return self.category in MVTEC_OBJECT_CATEGORIES
