"""Few-anomaly data for anomalib: labeled defects in training, RPAG and SmoothBlend pseudo anomalies,
reproducible splits, on MVTec AD, BTAD, VisA and plain folders.

* :mod:`.datamodules`: the datamodules and their options;
* :mod:`.pseudo_anomalies`: RPAG and SmoothBlend, and the training set that adds them every epoch;
* :mod:`.split`: the choice of the known anomalies and the split manifest;
* :mod:`.image_io`: the one image and mask reader; :mod:`.predict`: prediction on files read by it.

Example:
    >>> from anomalib_bgad.data import FewAnomalyMVTecAD
    >>> datamodule = FewAnomalyMVTecAD(root="./datasets/MVTecAD", category="bottle", n_anomalies=10)  # doctest: +SKIP
"""

from anomalib_bgad.data.datamodules import (
    FewAnomalyBTAD,
    FewAnomalyDataModule,
    FewAnomalyFolder,
    FewAnomalyMVTecAD,
    FewAnomalyVisa,
)
from anomalib_bgad.data.image_io import MASK_RULE, ImageReadError, read_image, read_mask
from anomalib_bgad.data.predict import PredictDataset, ProjectReaderCallback, use_project_reader
from anomalib_bgad.data.preview import preview_pseudo_anomalies
from anomalib_bgad.data.pseudo_anomalies import (
    AUGMENTATIONS,
    PSEUDO_ANOMALY_SOURCES,
    compute_foreground,
    generate_perlin,
    generate_pseudo_anomaly,
    generate_smoothblend,
    smoothblend_sample,
)
from anomalib_bgad.data.split import (
    MANIFEST_FILENAME,
    Selection,
    Setting,
    SplitManifest,
    select_known_anomalies,
    stable_hash,
)

__all__ = [
    "AUGMENTATIONS",
    "MANIFEST_FILENAME",
    "MASK_RULE",
    "PSEUDO_ANOMALY_SOURCES",
    "FewAnomalyBTAD",
    "FewAnomalyDataModule",
    "FewAnomalyFolder",
    "FewAnomalyMVTecAD",
    "FewAnomalyVisa",
    "ImageReadError",
    "PredictDataset",
    "ProjectReaderCallback",
    "Selection",
    "Setting",
    "SplitManifest",
    "compute_foreground",
    "generate_perlin",
    "generate_pseudo_anomaly",
    "generate_smoothblend",
    "preview_pseudo_anomalies",
    "read_image",
    "read_mask",
    "select_known_anomalies",
    "smoothblend_sample",
    "stable_hash",
    "use_project_reader",
]
