"""Few-anomaly data for anomalib: labeled defects in training, RPAG pseudo anomalies, reproducible splits.

Example:
    >>> from anomalib_bgad.data import FewAnomalyMVTecAD
    >>> datamodule = FewAnomalyMVTecAD(root="./datasets/MVTecAD", category="bottle", n_anomalies=10)  # doctest: +SKIP
"""

from anomalib_bgad.data.base import MANIFEST_FILENAME, FewAnomalyDataModule
from anomalib_bgad.data.btad import FewAnomalyBTAD
from anomalib_bgad.data.embedded import EMBEDDED_CATEGORIES, generate_embedded_dataset
from anomalib_bgad.data.folder import FewAnomalyFolder
from anomalib_bgad.data.foreground import compute_foreground
from anomalib_bgad.data.manifest import SplitManifest
from anomalib_bgad.data.mvtecad import FewAnomalyMVTecAD
from anomalib_bgad.data.preview import preview_pseudo_anomalies
from anomalib_bgad.data.rpag import AUGMENTATIONS, generate_pseudo_anomaly
from anomalib_bgad.data.selection import Selection, Setting, select_known_anomalies, stable_hash

__all__ = [
    "AUGMENTATIONS",
    "EMBEDDED_CATEGORIES",
    "MANIFEST_FILENAME",
    "FewAnomalyBTAD",
    "FewAnomalyDataModule",
    "FewAnomalyFolder",
    "FewAnomalyMVTecAD",
    "Selection",
    "Setting",
    "SplitManifest",
    "compute_foreground",
    "generate_embedded_dataset",
    "generate_pseudo_anomaly",
    "preview_pseudo_anomalies",
    "select_known_anomalies",
    "stable_hash",
]
