"""Few-anomaly BTAD datamodule: anomalib's ``BTech`` with labeled defects in training."""

from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
from anomalib.data import BTech
from anomalib.data.utils import Split, TestSplitMode, ValSplitMode
from torchvision.transforms.v2 import Transform

from anomalib_bgad.data import validation
from anomalib_bgad.data.base import FewAnomalyDataModule
from anomalib_bgad.data.datasets import FewAnomalyBTADDataset


class FewAnomalyBTAD(FewAnomalyDataModule, BTech):
    """anomalib's ``BTech`` (BTAD) datamodule with a few labeled anomalies in training.

    BTAD has a single defect type (``ko``), so ``setting="one_class"`` is refused: it would remove every
    anomaly from the test set.

    Args:
        root (Path | str): Folder holding the categories (``<root>/<category>/train/ok``, ``test/ok``,
            ``test/ko``, ``ground_truth/ko/<name>.png``). Defaults to ``"./datasets/BTech"``.
        category (str): Category (``"01"``, ``"02"`` or ``"03"``). Defaults to ``"01"``.
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
        setting (Literal["multi_class", "one_class"]): See :class:`FewAnomalyMVTecAD`. Defaults to ``"multi_class"``.
        seen_defect_type (str | None): One-class seen defect type. Defaults to ``None``.
        pseudo_anomalies (int | float): Pseudo anomalies per epoch (count or ratio). Defaults to ``5.0``.
        pseudo_anomaly_source (Literal["rpag", "smoothblend", "both"]): See :class:`FewAnomalyMVTecAD`.
            Defaults to ``"rpag"``.
        repeat_anomalies (int): Times each known anomaly appears per epoch; ``0`` keeps the known anomalies out of the
            training batches (they still leave the test set and still feed RPAG), e.g. to train on SmoothBlend pseudo
            anomalies alone on the same split. Defaults to ``5``.
        train_anomalies (bool | None): See :class:`FewAnomalyMVTecAD`. Defaults to ``None``.
        paste_in_foreground (bool | None): ``None``: no (the authors paste anywhere on BTAD). Defaults to ``None``.
        manifest_path (Path | str | None): See :class:`FewAnomalyMVTecAD`. Defaults to ``None``.
        replay_manifest (Path | str | None): See :class:`FewAnomalyMVTecAD`. Defaults to ``None``.
        verify_images (bool): Decode every image at setup. Defaults to ``True``.
    """

    dataset_key: ClassVar[str] = "BTAD"

    def __init__(
        self,
        root: Path | str = "./datasets/BTech",
        category: str = "01",
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
        BTech.__init__(
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

    _LAYOUT = "<root>/<category>/train/ok, test/ok, test/ko, ground_truth/ko/<name>.png"

    def _check_location(self) -> None:
        validation.check_root(self.root, self.name, self._LAYOUT)
        validation.check_category(self.root, self.category, "train", self.name)

    @staticmethod
    def _mask_candidates(image: Path, category_dir: Path, defect: str) -> list[Path]:
        folder = category_dir / "ground_truth" / defect
        return [folder / f"{image.stem}.png", folder / f"{image.stem}.bmp"]

    def _check_layout(self) -> None:
        category_dir = self.root / self.category
        validation.check_normal_train_images(category_dir / "train" / "ok", validation.BTAD_EXTENSIONS)
        test_dir = category_dir / "test"
        if not test_dir.is_dir():
            msg = f"Category '{self.category}' has no test folder '{test_dir}'; expected {self._LAYOUT}."
            raise FileNotFoundError(msg)
        validation.check_ground_truth_folder(category_dir / "ground_truth", self.category)
        for folder in sorted(path for path in test_dir.iterdir() if path.is_dir() and path.name != "ok"):
            for image in validation.list_images(folder, validation.BTAD_EXTENSIONS):
                candidates = self._mask_candidates(image, category_dir, folder.name)
                if not any(path.is_file() for path in candidates):
                    raise validation.missing_mask_error(image, candidates)

    def _parse(self) -> tuple[Any, Any]:
        return (
            FewAnomalyBTADDataset(split=Split.TRAIN, root=self.root, category=self.category),
            FewAnomalyBTADDataset(split=Split.TEST, root=self.root, category=self.category),
        )

    def _defect_types_and_masks(self, anomalous: pd.DataFrame) -> tuple[list[str], list[str]]:
        # anomalib derives BTAD mask names with str.rstrip("png"/"bmp"), which mangles stems ending in those
        # letters; the masks are paired by exact stem here instead.
        masks = []
        for category_dir, image, defect in zip(anomalous.path, anomalous.image_path, anomalous.label, strict=True):
            candidates = self._mask_candidates(Path(image), Path(category_dir), defect)
            masks.append(str(next((path for path in candidates if path.is_file()), candidates[0])))
        return [str(label) for label in anomalous.label], masks
