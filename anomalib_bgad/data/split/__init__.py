"""The few-anomaly split: the known anomalies moved to training (:mod:`.selection`), its record (:mod:`.manifest`)."""

from anomalib_bgad.data.split.manifest import MANIFEST_FILENAME, SplitManifest, relative_path
from anomalib_bgad.data.split.selection import Selection, Setting, select_known_anomalies, stable_hash

__all__ = [
    "MANIFEST_FILENAME",
    "Selection",
    "Setting",
    "SplitManifest",
    "relative_path",
    "select_known_anomalies",
    "stable_hash",
]
