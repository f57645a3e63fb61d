"""Pseudo anomalies made fresh every epoch: RPAG copies of known anomalies; SmoothBlend and Perlin from normal images.

* :mod:`.rpag`: BGAD's augmented cut-paste of a known anomaly onto a normal image;
* :mod:`.smoothblend`: SPD's colour-jittered patch blended back into a normal image (needs no known anomaly);
* :mod:`.perlin`: DRAEM's Perlin-noise blobs filled with an augmented texture, by default the noise itself (needs none);
* :mod:`.foreground`: where on an object image to paste;
* :mod:`.train_set`: the training set and sampler that add them to every epoch.
"""

from anomalib_bgad.data.pseudo_anomalies.foreground import compute_foreground
from anomalib_bgad.data.pseudo_anomalies.perlin import generate_perlin
from anomalib_bgad.data.pseudo_anomalies.rpag import AUGMENTATIONS, generate_pseudo_anomaly
from anomalib_bgad.data.pseudo_anomalies.smoothblend import generate_smoothblend, smoothblend_sample
from anomalib_bgad.data.pseudo_anomalies.sources import (
    BOTH,
    GENERATORS,
    PERLIN,
    PSEUDO_ANOMALY_SOURCES,
    RPAG,
    SMOOTHBLEND,
    source_parts,
)
from anomalib_bgad.data.pseudo_anomalies.train_set import EpochSampler, FewAnomalyTrainSet

__all__ = [
    "AUGMENTATIONS",
    "BOTH",
    "GENERATORS",
    "PERLIN",
    "PSEUDO_ANOMALY_SOURCES",
    "RPAG",
    "SMOOTHBLEND",
    "EpochSampler",
    "FewAnomalyTrainSet",
    "compute_foreground",
    "generate_perlin",
    "generate_pseudo_anomaly",
    "generate_smoothblend",
    "smoothblend_sample",
    "source_parts",
]
