"""Offline, MVTec-AD-format dataset: real CC0 photographs shipped with scikit-image, synthetic defects.

``generate_embedded_dataset`` writes a small anomaly-detection dataset in exactly the folder layout
of MVTec AD, so :class:`anomalib.data.MVTecAD` reads it unchanged::

    <root>/README.md                                 layout, sources, licence, defect types, visibility rule
    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png
    <root>/<category>/defects.csv                    class, measured visibility and area of each defect
    <root>/<category>/.embedded.json                 the parameters that determine every file

What it is:
    * **Real surfaces** (:mod:`~anomalib_bgad.embedded.sources`). Every image is a crop of a CC0
      photograph in the scikit-image wheel (``brick``, ``grass``, ``gravel``); nothing is downloaded.
      Training crops come from the left 60 % of the photo, every test crop from the right 40 %.
    * **Synthetic defects with exact masks** (:mod:`~anomalib_bgad.embedded.defects`): ``scratch``,
      ``crack``, ``hole``, ``stain`` and ``cut_paste`` (a patch of *another* category's photo). The
      mask is exactly the set of changed pixels.
    * **Stated visibility** (:mod:`~anomalib_bgad.embedded.visibility`). A defect's visibility ``V``
      is the smaller of two brightness steps of its mean, against the 8-px ring of texture around it
      and against the clean surface it covers, in units of the ring's standard deviation (floored at
      8 grey levels). Like MVTec AD, most defects are clearly visible and some subtle: of each defect type's test
      images, 75 % are ``clear`` (``1.75 <= V <= 3.0``) and 25 % (indices 3, 7, 11, ...) ``subtle``
      (``0.75 <= V <= 1.25``). Mask areas lie in stated ranges per type, in pixels at 256 px
      (scratch 60-1200, crack 100-1400, hole 200-2700, stain 600-9000, cut_paste 400-4200). The
      generator enforces both by setting each defect's strength by bisection on the final image and
      redrawing shapes that cannot meet them; the dataset's README states the rule too.
    * **Deterministic** (:mod:`~anomalib_bgad.embedded.samples`). The same seed gives byte-identical
      PNGs; every image has its own random stream derived from ``(seed, category, split, label,
      index)``, independent of which other categories are generated and in which order.
    * **Greyscale PNGs**, like the grey MVTec AD categories; anomalib converts them to RGB on read.

What it is NOT:
    * Not a substitute for MVTec AD or any other benchmark: the defects are synthetic, there are only
      three textures, and the test set is small.
    * Numbers measured on it are **not comparable** to numbers reported in papers. Use it for smoke
      tests, demos, CI and offline tutorials.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib_bgad.embedded import generate_embedded_dataset
    >>> root = generate_embedded_dataset("./datasets/embedded", seed=0)
    >>> datamodule = MVTecAD(root=root, category="brick")
"""

from anomalib_bgad.embedded.defects import EMBEDDED_DEFECT_TYPES
from anomalib_bgad.embedded.generate import generate_embedded_dataset
from anomalib_bgad.embedded.samples import EmbeddedSample, render_sample
from anomalib_bgad.embedded.sources import EMBEDDED_CATEGORIES, CropBox, source_region
from anomalib_bgad.embedded.visibility import VISIBILITY_CLASSES, Visibility, measure_visibility
from anomalib_bgad.embedded.writer import GENERATOR_VERSION

__all__ = [
    "EMBEDDED_CATEGORIES",
    "EMBEDDED_DEFECT_TYPES",
    "GENERATOR_VERSION",
    "VISIBILITY_CLASSES",
    "CropBox",
    "EmbeddedSample",
    "Visibility",
    "generate_embedded_dataset",
    "measure_visibility",
    "render_sample",
    "source_region",
]
