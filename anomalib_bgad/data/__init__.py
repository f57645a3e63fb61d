"""Few-anomaly data for anomalib: labeled defects in training, RPAG and SmoothBlend pseudo anomalies,
reproducible splits, on MVTec AD, BTAD, VisA and plain folders.

Example:
    >>> from anomalib_bgad.data import FewAnomalyMVTecAD
    >>> datamodule = FewAnomalyMVTecAD(root="./datasets/MVTecAD", category="bottle", n_anomalies=10)  # doctest: +SKIP
"""

from anomalib_bgad.data.base import MANIFEST_FILENAME, FewAnomalyDataModule
from anomalib_bgad.data.btad import FewAnomalyBTAD
from anomalib_bgad.data.folder import FewAnomalyFolder
from anomalib_bgad.data.foreground import compute_foreground
from anomalib_bgad.data.manifest import SplitManifest
from anomalib_bgad.data.mvtecad import FewAnomalyMVTecAD
from anomalib_bgad.data.preview import preview_pseudo_anomalies
from anomalib_bgad.data.pseudo_anomalies import PSEUDO_ANOMALY_SOURCES
from anomalib_bgad.data.rpag import AUGMENTATIONS, generate_pseudo_anomaly
from anomalib_bgad.data.selection import Selection, Setting, select_known_anomalies, stable_hash
from anomalib_bgad.data.smoothblend import generate_smoothblend, smoothblend_sample
from anomalib_bgad.data.visa import FewAnomalyVisa

__all__ = [
    "AUGMENTATIONS",
    "MANIFEST_FILENAME",
    "PSEUDO_ANOMALY_SOURCES",
    "FewAnomalyBTAD",
    "FewAnomalyDataModule",
    "FewAnomalyFolder",
    "FewAnomalyMVTecAD",
    "FewAnomalyVisa",
    "Selection",
    "Setting",
    "SplitManifest",
    "compute_foreground",
    "generate_pseudo_anomaly",
    "generate_smoothblend",
    "preview_pseudo_anomalies",
    "select_known_anomalies",
    "smoothblend_sample",
    "stable_hash",
]
