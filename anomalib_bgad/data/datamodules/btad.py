"""Few-anomaly BTAD datamodule: anomalib's ``BTech`` with labeled defects in training."""

from typing import Any, ClassVar

from anomalib.data import BTech
from anomalib.data.utils import Split

from anomalib_bgad.data.datamodules import validation
from anomalib_bgad.data.datamodules.base import FewAnomalyDataModule
from anomalib_bgad.data.datamodules.datasets import FewAnomalyBTADDataset
from anomalib_bgad.data.datamodules.layout import GroundTruthLayout


class FewAnomalyBTAD(FewAnomalyDataModule, BTech):
    """anomalib's ``BTech`` (BTAD) datamodule with a few labeled anomalies in training.

    Takes anomalib's ``BTech`` arguments (``root``, default ``"./datasets/BTech"``; ``category``: ``"01"``,
    ``"02"`` or ``"03"``; batch sizes, augmentations, split modes) and the few-anomaly options of
    :meth:`FewAnomalyDataModule.__init__`. Layout: ``<root>/<category>/train/ok``, ``test/ok``, ``test/ko``,
    ``ground_truth/ko/<name>.png``. ``paste_in_foreground=None`` pastes anywhere, as the authors do on BTAD.

    BTAD has a single defect type (``ko``), so ``setting="one_class"`` is refused at setup: it would remove every
    anomaly from the test set.
    """

    dataset_key: ClassVar[str] = "BTAD"
    # anomalib derives BTAD mask names with str.rstrip("png"/"bmp"), which mangles stems ending in those letters;
    # the masks are paired by exact stem here instead (so an extra mask cannot shift the pairs).
    layout: ClassVar[GroundTruthLayout] = GroundTruthLayout(
        normal="ok",
        extensions=validation.BTAD_EXTENSIONS,
        mask_names=("{stem}.png", "{stem}.bmp"),
        description="<root>/<category>/train/ok, test/ok, test/ko, ground_truth/ko/<name>.png",
        pairs_by_order=False,
    )

    def _parse(self) -> tuple[Any, Any]:
        return (
            FewAnomalyBTADDataset(split=Split.TRAIN, root=self.root, category=self.category),
            FewAnomalyBTADDataset(split=Split.TEST, root=self.root, category=self.category),
        )
