"""Few-anomaly MVTec AD datamodule: anomalib's ``MVTecAD`` with labeled defects in training."""

from typing import Any, ClassVar

from anomalib.data import MVTecAD
from anomalib.data.errors import MisMatchError
from anomalib.data.utils import Split

from anomalib_bgad.data.datamodules import validation
from anomalib_bgad.data.datamodules.base import FewAnomalyDataModule
from anomalib_bgad.data.datamodules.datasets import FewAnomalyMVTecADDataset
from anomalib_bgad.data.datamodules.layout import GroundTruthLayout
from anomalib_bgad.data.pseudo_anomalies.foreground import MVTEC_OBJECT_CATEGORIES


class FewAnomalyMVTecAD(FewAnomalyDataModule, MVTecAD):
    """anomalib's ``MVTecAD`` datamodule with a few labeled anomalies in training (BGAD's settings).

    Takes anomalib's ``MVTecAD`` arguments (``root``: the folder holding the categories, default
    ``"./datasets/MVTecAD"``; ``category``, default ``"bottle"``; batch sizes, augmentations, split modes) and the
    few-anomaly options of :meth:`FewAnomalyDataModule.__init__`. Layout: ``<root>/<category>/train/good``,
    ``test/<defect>``, ``ground_truth/<defect>/<name>_mask.png``. ``paste_in_foreground=None`` pastes on the
    object for the object categories, anywhere for the textures.

    Example:
        >>> datamodule = FewAnomalyMVTecAD(root="./datasets/MVTecAD", category="bottle")  # doctest: +SKIP
    """

    dataset_key: ClassVar[str] = "MVTecAD"
    layout: ClassVar[GroundTruthLayout] = GroundTruthLayout(
        normal="good",
        extensions=validation.MVTEC_EXTENSIONS,
        mask_names=("{stem}_mask{suffix}", "{stem}{suffix}"),
        description="<root>/<category>/train/good/*.png, test/<defect>/*.png, ground_truth/<defect>/<name>_mask.png",
    )

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

    def _default_paste_in_foreground(self) -> bool:
        return self.category in MVTEC_OBJECT_CATEGORIES
