"""Few-anomaly VisA datamodule: anomalib's ``Visa`` with labeled defects in training.

The category is read from anomalib's processed (``visa_pytorch``) copy of VisA, found under ``root`` or made
outside it by :mod:`.visa_cache`; nothing is ever downloaded or written under ``root``.

anomalib's processed split has a single anomalous folder, ``bad``: the multi-class setting works as for the
other datasets, the one-class setting is refused (see :class:`FewAnomalyVisa`).

Split manifests list paths relative to the processed ``visa_pytorch`` folder (``capsules/test/bad/000.JPG``),
so they are the same wherever the processed copy lives.
"""

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from anomalib.data import Visa
from anomalib.data.datasets.image.visa import EXTENSIONS as VISA_EXTENSIONS
from anomalib.data.errors import MisMatchError
from anomalib.data.utils import Split

from anomalib_bgad.data.datamodules.base import FewAnomalyDataModule
from anomalib_bgad.data.datamodules.datasets import FewAnomalyVisaDataset
from anomalib_bgad.data.datamodules.layout import GroundTruthLayout
from anomalib_bgad.data.datamodules.visa_cache import RAW_LAYOUT, VisaCache
from anomalib_bgad.data.split.manifest import SplitManifest

ONE_CLASS_MESSAGE = (
    "setting='one_class' is not possible with FewAnomalyVisa: anomalib's VisA split (split_csv/1cls.csv, "
    "converted into <category>/test/bad) puts every anomalous image into a single folder, 'bad', so the "
    "datamodule sees one defect type, and one-class would move every anomaly of the test set into training or "
    "out of the test set, leaving no unseen type to test on. One-class needs each image's defect type: VisA's "
    "raw '<root>/<category>/image_anno.csv' lists it (column 'label'; some images have several). Sort the "
    "anomalous images with a single defect type into one folder per type, with their masks, and use "
    "FewAnomalyFolder(abnormal_dir=[...], mask_dir=[...], setting='one_class'); or use setting='multi_class'."
)


class FewAnomalyVisa(FewAnomalyDataModule, Visa):
    """anomalib's ``Visa`` datamodule with a few labeled anomalies in training.

    Takes anomalib's ``Visa`` arguments (``root``, default ``"./datasets/visa"``: VisA as downloaded, a folder
    holding anomalib's processed ``visa_pytorch`` copy, or that folder itself, never written to; ``category``,
    e.g. ``"capsules"``; batch sizes, augmentations, split modes), ``cache_dir`` and the few-anomaly options of
    :meth:`FewAnomalyDataModule.__init__`. ``paste_in_foreground=None`` pastes on the object (every VisA
    category is an object category).

    ``setting="one_class"`` is refused: anomalib's processed VisA split has a single anomalous folder
    (``bad``), so there is no defect type left unseen. The message says how to build a one-class split.
    """

    dataset_key: ClassVar[str] = "VisA"
    layout: ClassVar[GroundTruthLayout] = GroundTruthLayout(
        normal="good",
        extensions=tuple(VISA_EXTENSIONS),
        mask_names=("{stem}.png", "{stem}_mask.png"),
        description=RAW_LAYOUT,
    )

    def __init__(self, *args: Any, cache_dir: Path | str | None = None, **kwargs: Any) -> None:
        """Few-anomaly ``Visa`` with a cache for the processed copy.

        Args:
            *args (Any): anomalib ``Visa`` arguments.
            cache_dir (Path | str | None): Where the processed copy of a raw VisA tree is made (outside ``root``).
                ``None``: the replayed manifest's, else :func:`.visa_cache.default_cache_dir`. Defaults to ``None``.
            **kwargs (Any): anomalib ``Visa`` arguments and the few-anomaly options.

        Raises:
            ValueError: If ``setting="one_class"`` (see the class docstring).
        """
        if getattr(kwargs.get("setting"), "value", kwargs.get("setting")) == "one_class":
            raise ValueError(ONE_CLASS_MESSAGE)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        super().__init__(*args, **kwargs)
        recorded = self._replay.init_args.get("cache_dir") if self._replay is not None else None
        if cache_dir is None and recorded is not None:
            self.cache_dir = Path(recorded)

    @property
    def cache(self) -> VisaCache:
        """The processed copy of this root and category."""
        return VisaCache(Path(self.root), self.category, self.cache_dir)

    @property
    def cache_entry(self) -> Path:
        """Cache folder of this root and category (holds ``visa_pytorch/<category>`` and ``stamp.json``)."""
        return self.cache.entry

    @property
    def processed_root(self) -> Path:
        """The ``visa_pytorch`` folder used: under ``root`` if anomalib made it there, else in the cache."""
        return self.cache.processed_root

    @property
    def dataset_root(self) -> Path:
        """The processed ``visa_pytorch`` folder: manifest paths are relative to it."""
        return self.processed_root.resolve()

    def _check_location(self) -> None:
        self.cache.check_location(self.name)

    def prepare_data(self) -> None:
        """Check the dataset and make the processed copy in the cache if needed (nothing is downloaded)."""
        self._check_location()
        self.cache.ensure()

    def _category_dir(self) -> Path:
        return self.cache.ensure() / self.category

    def _parse(self) -> tuple[Any, Any]:
        root = self.processed_root  # made by _check_layout
        try:
            return (
                FewAnomalyVisaDataset(split=Split.TRAIN, root=root, category=self.category),
                FewAnomalyVisaDataset(split=Split.TEST, root=root, category=self.category),
            )
        except MisMatchError as error:
            msg = (
                f"anomalib could not pair the images and masks of VisA category '{self.category}' under '{root}': "
                f"it pairs them by sorted file name. Use the mask names VisA ships (image '000.JPG', mask "
                f"'000.png'). ({error})"
            )
            raise ValueError(msg) from error

    def _dataset_args(self) -> dict[str, Any]:
        return {"category": self.category, "cache_dir": str(self.cache_dir) if self.cache_dir is not None else None}

    def _build_manifest(self) -> SplitManifest:
        # File paths are relative to the processed folder; ``root`` is the user's root, which from_manifest reuses.
        return dataclasses.replace(super()._build_manifest(), root=str(Path(self.root).resolve()))

    def _default_paste_in_foreground(self) -> bool:
        return True
