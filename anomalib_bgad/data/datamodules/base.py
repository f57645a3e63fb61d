"""Shared behaviour of the few-anomaly datamodules (MVTec AD, BTAD, Folder, VisA).

Each class is a thin layer over anomalib's datamodule of the same format: anomalib parses the folders
and builds the test split as usual; then a few anomalous test images (with their masks) move to the
training set, following BGAD's multi-class or one-class setting (:mod:`anomalib_bgad.data.split.selection`).
The validation split is made after the move, so the known anomalies leave validation too.

Training batches carry ``gt_label`` (1 for anomalies) and ``gt_mask``. Models that do not train on
anomalies (all of anomalib's unsupervised models) get normal images only, from the same split, so that
side-by-side comparisons use identical test data; see ``train_on_anomalies``.

Pseudo anomalies are added to every training epoch (``pseudo_anomaly_source``): ``"rpag"`` pastes
augmented known anomalies on normal images (BGAD's RPAG), ``"smoothblend"`` blends a colour-jittered patch
of a normal image back elsewhere in it (SPD's SmoothBlend), ``"perlin"`` blends an augmented texture (the noise
itself, or another normal image: ``perlin_texture``) into Perlin-noise blobs (DRAEM's); the last two need no known
anomaly, so BGAD's phase 2 also runs with ``n_anomalies=0``. Several join with ``+`` (``"rpag+perlin"``; ``"both"``
is ``"rpag+smoothblend"``). Each source makes ``pseudo_anomaly_ratio`` times the number of known anomalies per
epoch, or ``pseudo_anomaly_count`` when that is set (so with ``n_anomalies=0`` SmoothBlend and Perlin need a count).

The few-anomaly options are declared once, in :meth:`FewAnomalyDataModule.__init__`; the concrete classes put
it in front of an anomalib datamodule (``class FewAnomalyMVTecAD(FewAnomalyDataModule, MVTecAD)``), which takes
the remaining arguments through ``**kwargs``. jsonargparse follows that call, so anomalib's CLI lists and types
both (``--data.n_anomalies``, ``--data.root``, ...).

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib.models import Patchcore
    >>> from anomalib_bgad.data import FewAnomalyMVTecAD
    >>> datamodule = FewAnomalyMVTecAD(root="./datasets/MVTecAD", category="bottle", n_anomalies=10)  # doctest: +SKIP
    >>> Engine().fit(Patchcore(), datamodule=datamodule)  # trains on normal images only  # doctest: +SKIP
"""

import importlib
import inspect
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.utils import LabelName
from torch.utils.data import DataLoader

from anomalib_bgad.data.datamodules import validation
from anomalib_bgad.data.datamodules.layout import GroundTruthLayout
from anomalib_bgad.data.datamodules.options import (
    DEFAULT_PSEUDO_ANOMALY_RATIO,
    check_options,
    default_num_workers,
    resolve_renamed,
    source_ratio,
    upgrade_init_args,
)
from anomalib_bgad.data.image_io import MASK_RULE
from anomalib_bgad.data.pseudo_anomalies.perlin import DEFAULT_PERLIN_TEXTURE, PerlinTexture
from anomalib_bgad.data.pseudo_anomalies.sources import GENERATORS, PERLIN, RPAG, SMOOTHBLEND, source_parts
from anomalib_bgad.data.pseudo_anomalies.train_set import EpochSampler, FewAnomalyTrainSet
from anomalib_bgad.data.split.manifest import MANIFEST_FILENAME, SplitManifest, json_value, relative_path
from anomalib_bgad.data.split.replay import (
    changed_split_args,
    explicit_argument_names,
    explicit_arguments,
    replayed_arguments,
)
from anomalib_bgad.data.split.selection import Selection, Setting, select_known_anomalies
from anomalib_bgad.data.split.trained_split import manifest_near, split_difference

logger = logging.getLogger(__name__)


def _package_version() -> str:
    """The running ``anomalib_bgad``'s version (its ``__version__``, also when run from a source tree)."""
    from anomalib_bgad import __version__

    return __version__


def _qualified_name(cls: type) -> str:
    """Import path of a datamodule class (``anomalib_bgad.data.<Name>`` for this package's classes)."""
    if cls.__module__.startswith("anomalib_bgad.data"):
        return f"anomalib_bgad.data.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


class FewAnomalyDataModule(AnomalibDataModule):
    """Shared few-anomaly behaviour; the concrete classes put it in front of an anomalib datamodule.

    Subclasses define the format: :meth:`_check_location`, :meth:`_parse`, :meth:`_dataset_args`, and either
    :attr:`layout` (the ``train``/``test``/``ground_truth`` layout) or :meth:`_check_layout` and
    :meth:`_defect_types_and_masks`.
    """

    dataset_key: ClassVar[str] = ""
    """Dataset name used in the selection seed and the manifest."""

    layout: ClassVar[GroundTruthLayout | None] = None
    """The dataset's ground-truth folder layout, when it has one."""

    train_data: Any
    test_data: Any
    val_data: Any

    def __init__(
        self,
        *args: Any,
        n_anomalies: int = 10,
        setting: Literal["multi_class", "one_class"] = "multi_class",
        seen_defect_type: str | None = None,
        seed: int = 0,
        pseudo_anomaly_source: str = "rpag",
        pseudo_anomaly_ratio: float | dict[str, float] = DEFAULT_PSEUDO_ANOMALY_RATIO,
        pseudo_anomaly_count: int | None = None,
        repeat_anomalies: int = 5,
        perlin_texture: PerlinTexture = DEFAULT_PERLIN_TEXTURE,
        train_on_anomalies: bool | None = None,
        paste_in_foreground: bool | None = None,
        num_workers: int | None = None,
        manifest_path: Path | str | None = None,
        replay_manifest: Path | str | None = None,
        verify_images: bool = True,
        pseudo_anomalies: int | float | None = None,
        train_anomalies: bool | None = None,
        **kwargs: Any,
    ) -> None:
        """Declare and check the few-anomaly options; pass the rest to the anomalib datamodule.

        Args:
            *args (Any): Positional arguments of the anomalib datamodule (``root``, ``category``, ...).
            n_anomalies (int): Known anomalies moved from test to training. Defaults to ``10``.
            setting (Literal["multi_class", "one_class"]): ``multi_class``: drawn across all defect types
                (``n // n_types`` each, remainder at random). ``one_class``: all from ``seen_defect_type`` and every
                image of that type removed from test. Defaults to ``"multi_class"``.
            seen_defect_type (str | None): One-class seen defect type; ``None``: chosen by the seed.
                Defaults to ``None``.
            seed (int): Seed of the anomaly selection, the pseudo anomalies and anomalib's random splits.
                Defaults to ``0``.
            pseudo_anomaly_source (str): ``"rpag"``: augmented known anomalies pasted on normal images (BGAD).
                ``"smoothblend"``: a colour-jittered patch of a normal image blended back elsewhere (SPD).
                ``"perlin"``: an augmented texture blended into Perlin-noise blobs (DRAEM; ``perlin_texture``).
                The last two need no known anomaly, so they work with ``n_anomalies=0`` and a
                ``pseudo_anomaly_count``. Several joined by ``+`` (``"rpag+perlin"``; ``"both"`` =
                ``"rpag+smoothblend"``): each source makes its own. Defaults to ``"rpag"``.
            pseudo_anomaly_ratio (float | dict[str, float]): Pseudo anomalies per known anomaly, made per epoch by
                each source (authors' RPAG: ``5.0``); ``0`` disables them. A mapping naming every source of
                ``pseudo_anomaly_source`` gives each its own (``{rpag: 1.0, perlin: 5.0}``). Defaults to ``5.0``.
            pseudo_anomaly_count (int | None): Pseudo anomalies per epoch made by each source, in place of the
                ratio; ``None``: use ``pseudo_anomaly_ratio``. Defaults to ``None``.
            repeat_anomalies (int): Times each known anomaly appears per epoch (authors: ``5``); ``0`` keeps the
                known anomalies out of the training batches (they still leave the test set and still feed RPAG).
                Defaults to ``5``.
            perlin_texture (PerlinTexture): What fills the Perlin pseudo anomalies' blobs: ``"noise"`` (the Perlin noise
                itself, augmented: anomalib's fill without an anomaly source; no surface has it) or
                ``"normal_image"`` (another normal training image, augmented: on a texture often the same surface,
                so a blob can look normal; the only fill before 0.4.4). Defaults to ``"noise"``.
            train_on_anomalies (bool | None): Put the known and pseudo anomalies in the training batches.
                ``None``: only for models that declare ``trains_on_anomalies = True`` (anomalib's unsupervised
                models train on normal images only). Defaults to ``None``.
            paste_in_foreground (bool | None): Paste pseudo anomalies on the object's foreground. ``None``: the
                dataset's default (MVTec AD object categories and VisA: yes). Defaults to ``None``.
            num_workers (int | None): Dataloader workers. ``None``: ``min(8, usable CPUs)``. Defaults to ``None``.
            manifest_path (Path | str | None): Where setup writes the split manifest. ``None``: into the trainer's
                ``default_root_dir`` (the run's results folder) when a trainer is attached. Defaults to ``None``.
            replay_manifest (Path | str | None): Manifest whose split to replay exactly (see
                :meth:`from_manifest`). Defaults to ``None``.
            verify_images (bool): Decode every image at setup to catch truncated files. Defaults to ``True``.
            pseudo_anomalies (int | float | None): Deprecated 0.1.0 spelling: an int is ``pseudo_anomaly_count``,
                a float ``pseudo_anomaly_ratio``. Defaults to ``None``.
            train_anomalies (bool | None): Deprecated 0.1.0 spelling of ``train_on_anomalies``. Defaults to ``None``.
            **kwargs (Any): Keyword arguments of the anomalib datamodule.

        Raises:
            ValueError: On an invalid option or combination of options.
            FileNotFoundError: If the dataset root (or category) does not exist; nothing is created.
        """
        declared = {name: value for name, value in locals().items() if name in FEW_ANOMALY_OPTIONS}
        renamed = resolve_renamed(
            pseudo_anomalies, train_anomalies, pseudo_anomaly_ratio, pseudo_anomaly_count, train_on_anomalies
        )
        options = {
            **declared,
            **dict(zip(("pseudo_anomaly_ratio", "pseudo_anomaly_count", "train_on_anomalies"), renamed, strict=True)),
            "setting": setting.value if isinstance(setting, Setting) else setting,
        }
        self._replay: SplitManifest | None = None
        if replay_manifest is not None:
            self._replay = SplitManifest.read(replay_manifest)
            options, kwargs = self._replayed(self._replay, replay_manifest, options, args, kwargs)
            args = ()
        workers = default_num_workers() if num_workers is None else num_workers
        super().__init__(*args, seed=options["seed"], num_workers=workers, **kwargs)
        check_options(**{key: options[key] for key in CHECKED_OPTIONS}, num_workers=workers)
        for key, value in options.items():
            setattr(self, key, value)
        ratio = self.pseudo_anomaly_ratio
        self.pseudo_anomaly_ratio = {k: float(v) for k, v in ratio.items()} if isinstance(ratio, dict) else float(ratio)
        self.manifest_path = Path(manifest_path) if manifest_path is not None else None
        self.replay_manifest = Path(replay_manifest) if replay_manifest is not None else None
        self.verify_images = verify_images
        self.manifest: SplitManifest | None = None
        self.selection: Selection | None = None
        self._known_anomalies: pd.DataFrame | None = None
        self._defect_counts: dict[str, int] = {}
        self._setup_stage: str | None = None
        self._warned_other_split = False
        self._check_location()

    def _replayed(
        self,
        manifest: SplitManifest,
        path: Path | str,
        options: dict[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The few-anomaly options and anomalib arguments, with the values the manifest fixes taken in.

        See :mod:`anomalib_bgad.data.split.replay` for the rule.
        """
        written_by = _qualified_name(type(self))
        if manifest.datamodule != written_by:
            msg = (
                f"replay_manifest '{path}' was written by {manifest.datamodule}, not by {written_by}. Use that "
                f"datamodule (CLI: --data {manifest.datamodule}), or FewAnomalyDataModule.from_manifest(path)."
            )
            raise ValueError(msg)
        parent = inspect.signature(super().__init__).parameters
        anomalib_args = inspect.signature(super().__init__).bind_partial(*args, **kwargs).arguments
        own = inspect.signature(FewAnomalyDataModule.__init__).parameters
        # A required argument has no default; None stands for "not given" (e.g. FewAnomalyFolder's name).
        defaults = {
            name: None if param.default is inspect.Parameter.empty else param.default
            for name, param in {**parent, **own}.items()
            if param.kind in {param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY}
        }
        given = {**{name: defaults[name] for name in parent if name in defaults}, **anomalib_args, **options}
        recorded = {**upgrade_init_args(manifest.init_args), "root": manifest.root}
        merged = replayed_arguments(given, defaults, recorded, path, explicit=explicit_argument_names())
        passed = {name: merged[name] for name in parent if name in merged and name not in {"seed", "num_workers"}}
        return {key: merged[key] for key in options}, passed

    # ----------------------------------------------------------------------------------------------------------
    # Format-specific hooks
    # ----------------------------------------------------------------------------------------------------------
    @property
    def dataset_root(self) -> Path:
        """Resolved dataset root; manifest paths are relative to it."""
        return Path(self.root).resolve()

    @property
    def selection_category(self) -> str:
        """Category used in the selection seed and the manifest."""
        return self.category

    def _check_location(self) -> None:
        """Check the root (and category) exist, without creating anything."""
        if self.layout is None:
            raise NotImplementedError
        validation.check_root(Path(self.root), self.name, self.layout.description)
        validation.check_category(Path(self.root), self.category, "train", self.name)

    def _category_dir(self) -> Path:
        """Folder of the category in :attr:`layout`."""
        return Path(self.root) / self.category

    def _check_layout(self) -> None:
        """Check the folder layout and masks before anomalib parses it."""
        if self.layout is None:
            raise NotImplementedError
        self.layout.check(self._category_dir(), self.category)

    def _parse(self) -> tuple[Any, Any]:
        """Build anomalib's train and test datasets."""
        raise NotImplementedError

    def _defect_types_and_masks(self, anomalous: pd.DataFrame) -> tuple[list[str], list[str]]:
        """Defect type and mask path of every anomalous test row (masks paired by file name)."""
        if self.layout is None:
            raise NotImplementedError
        return self.layout.defect_types_and_masks(anomalous)

    def _dataset_args(self) -> dict[str, Any]:
        """Format-specific init args recorded in the manifest."""
        return {"category": self.category}

    def _default_paste_in_foreground(self) -> bool:
        return False

    # ----------------------------------------------------------------------------------------------------------
    # Setup
    # ----------------------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Check that the dataset exists. Unlike anomalib's datamodules, nothing is downloaded or created."""
        self._check_location()

    def _setup(self, stage: str | None = None) -> None:
        """Parse with anomalib, validate every file, choose the known anomalies and hold them out of test."""
        self._setup_stage = str(getattr(stage, "value", stage)) if stage is not None else None
        self._warned_other_split = False  # one warning per setup, though the run folder and the checkpoint both check
        self._check_location()
        self._check_layout()
        self.train_data, self.test_data = self._parse()
        test = self.test_data.samples.copy()
        anomalous = test.label_index == LabelName.ABNORMAL
        defect_types, masks = self._defect_types_and_masks(test[anomalous])
        test["defect_type"] = None
        test.loc[anomalous, "defect_type"] = defect_types
        test.loc[anomalous, "mask_path"] = masks
        test.attrs["task"] = "segmentation"
        train = self.train_data.samples
        # Every split carries masks (zeros for normal images), also when anomalib's parse saw none (Folder).
        train.attrs["task"] = "segmentation"
        if not (train.label_index == LabelName.NORMAL).any():
            msg = f"No normal training images found for {self.name} under '{self.dataset_root}'."
            raise ValueError(msg)
        anomalous_masks = dict(zip(test[anomalous].image_path.astype(str), masks, strict=True))
        validation.check_files(
            [*train.image_path.astype(str), *test.image_path.astype(str)], anomalous_masks, decode=self.verify_images
        )
        self._select(test)
        # Masks checked for content: every known anomaly's (RPAG's sources too); the test masks with verify_images.
        known = self._known_anomalies
        known_masks = dict(zip(known.image_path.astype(str), known.mask_path.astype(str), strict=True))
        validation.check_mask_content(known_masks, anomalous_masks if self.verify_images else None)

    def _select(self, test: pd.DataFrame) -> None:
        root = self.dataset_root
        test["relative_path"] = [relative_path(path, root) for path in test.image_path]
        anomalous = test[test.label_index == LabelName.ABNORMAL]
        candidates: dict[str, list[str]] = {}
        for defect, relative in zip(anomalous.defect_type, anomalous.relative_path, strict=True):
            candidates.setdefault(defect, []).append(relative)
        self._defect_counts = {defect: len(paths) for defect, paths in sorted(candidates.items())}
        if self._replay is not None:
            selection = self._replayed_selection(self._replay, set(anomalous.relative_path))
        else:
            selection = select_known_anomalies(
                candidates,
                self.n_anomalies,
                self.setting,
                seed=self.seed,
                dataset=self.dataset_key,
                category=self.selection_category,
                seen_defect_type=self.seen_defect_type,
            )
        self.selection = selection
        train_set, removed = set(selection.train), set(selection.removed_from_test)
        known = test[test.relative_path.isin(train_set)].drop(columns=["relative_path"])
        kept = test[~test.relative_path.isin(removed)].drop(columns=["relative_path", "defect_type"])
        kept.attrs["task"] = "segmentation"
        self.test_data.samples = kept
        self.test_data.samples.attrs["task"] = "segmentation"
        self._known_anomalies = known.reset_index(drop=True)
        logger.info(
            "%s %s: %d known anomalies for training (%s), %d images removed from test, setting=%s, seed=%d.",
            self.name,
            self.selection_category,
            len(known),
            ", ".join(f"{d}: {n}" for d, n in known.defect_type.value_counts().sort_index().items()) or "none",
            len(removed),
            self.setting,
            self.seed,
        )

    def _replayed_selection(self, manifest: SplitManifest, anomalous: set[str]) -> Selection:
        train = [entry["image"] for entry in manifest.train_anomalies]
        missing = sorted(set(train + manifest.removed_from_test) - anomalous)
        if missing:
            msg = (
                f"replay_manifest '{self.replay_manifest}' lists {len(missing)} anomalous image(s) that are not "
                f"anomalous test images under root '{self.dataset_root}' (first: '{missing[0]}'). Point root to the "
                "dataset the manifest was written for."
            )
            raise ValueError(msg)
        return Selection(
            train=tuple(sorted(train)),
            removed_from_test=tuple(sorted(manifest.removed_from_test)),
            seen_defect_type=manifest.seen_defect_type,
        )

    def _create_val_split(self) -> None:
        """Make anomalib's validation split, then add the known anomalies to the training set.

        Adding them only now keeps them out of every split anomalib derives from the training set
        (``val_split_mode=from_train``/``synthetic``, Folder's normal test images taken from training).
        """
        super()._create_val_split()
        if self._known_anomalies is not None and len(self._known_anomalies):
            train = self.train_data.samples
            known = self._known_anomalies.drop(columns=["defect_type"])
            known["split"] = train["split"].iloc[0]
            merged = pd.concat([train, known[train.columns.intersection(known.columns)]], ignore_index=True)
            merged.attrs["task"] = "segmentation"
            self.train_data.samples = merged
            self.train_data.samples.attrs["task"] = "segmentation"
        self.manifest = self._build_manifest()
        if self._replay is not None:
            self._check_replay(self._replay, self.manifest)
        self._record_manifest()

    def _record_manifest(self) -> None:
        """Write the manifest to ``manifest_path``, or into the run's folder (``trainer.default_root_dir``).

        In the run's folder, a manifest already there is only replaced by a training run: ``anomalib test`` and
        ``predict`` work in the training run's folder (anomalib's ``latest``), whose manifest records the split
        the model was trained on. If this split differs from it, a warning says so.
        """
        if self.manifest_path is not None:
            self.write_manifest(self.manifest_path)
            return
        trainer = getattr(self, "trainer", None)
        root_dir = getattr(trainer, "default_root_dir", None) if trainer is not None else None
        if not root_dir:
            return
        target = Path(root_dir) / MANIFEST_FILENAME
        if self._setup_stage in {None, "fit"} or not target.is_file():
            self.write_manifest(target)
            return
        self._warn_on_other_split(SplitManifest.read(target), str(target), target)

    def _warn_on_other_split(self, trained: SplitManifest, where: str, replay: Path | None) -> None:
        """Log a warning when this split is not ``trained``, the split the model was trained on (``where``)."""
        difference = split_difference(trained, self.manifest)
        if difference is None or self._warned_other_split:
            return
        self._warned_other_split = True
        manifest = replay if replay is not None else "<the training run's split_manifest.json>"
        logger.warning(
            "This %s split differs from the one the model was trained on (%s): %s. Replay the training split with "
            "replay_manifest (CLI: --data.replay_manifest %s; with a --config whose data values differ from the "
            "manifest's, set those to the manifest's too). The metrics of this run are not the model's on its "
            "test split.",
            self._setup_stage,
            where,
            difference,
            manifest,
        )

    def state_dict(self) -> dict[str, Any]:
        """The split, saved by Lightning in every checkpoint: ``{"split_manifest": <the manifest's fields>}``.

        Returns:
            dict[str, Any]: Empty before ``setup``.
        """
        return {} if self.manifest is None else {"split_manifest": self.manifest.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Warn when a restored checkpoint was trained on another split (Lightning calls this after ``setup``).

        Args:
            state_dict (dict[str, Any]): What :meth:`state_dict` saved; checkpoints without it are not checked.
        """
        recorded = state_dict.get("split_manifest")
        if not recorded or self.manifest is None:
            return
        trained = SplitManifest.from_dict(recorded)
        checkpoint = getattr(getattr(self, "trainer", None), "ckpt_path", None)
        where = f"checkpoint {checkpoint}" if checkpoint else "the restored checkpoint"
        self._warn_on_other_split(trained, where, manifest_near(checkpoint))

    # ----------------------------------------------------------------------------------------------------------
    # Manifest
    # ----------------------------------------------------------------------------------------------------------
    def _init_args(self) -> dict[str, Any]:
        args = {
            **self._dataset_args(),
            **{name: getattr(self, name) for name in FEW_ANOMALY_OPTIONS},
            "test_split_mode": self.test_split_mode,
            "test_split_ratio": self.test_split_ratio,
            "val_split_mode": self.val_split_mode,
            "val_split_ratio": self.val_split_ratio,
        }
        return {key: json_value(value) for key, value in args.items()}

    def _build_manifest(self) -> SplitManifest:
        root = self.dataset_root
        if self.selection is None:
            msg = "The split manifest is built after the anomaly selection of _setup()."
            raise RuntimeError(msg)
        known = self._known_anomalies if self._known_anomalies is not None else pd.DataFrame()
        train_anomalies = [
            {
                "image": relative_path(row.image_path, root),
                "mask": relative_path(row.mask_path, root),
                "defect_type": str(row.defect_type),
            }
            for row in known.sort_values("image_path").itertuples()
        ]
        train = self.train_data.samples
        normal_train = train[train.label_index == LabelName.NORMAL]
        return SplitManifest(
            datamodule=_qualified_name(type(self)),
            dataset=self.dataset_key,
            category=self.selection_category,
            root=str(root),
            setting=self.setting,
            seed=self.seed,
            n_anomalies=self.n_anomalies,
            seen_defect_type=self.selection.seen_defect_type,
            defect_types=dict(self._defect_counts),
            train_anomalies=train_anomalies,
            removed_from_test=list(self.selection.removed_from_test),
            train_images=sorted(relative_path(path, root) for path in normal_train.image_path),
            test_images=sorted(relative_path(path, root) for path in self.test_data.samples.image_path),
            init_args=self._init_args(),
            pseudo_anomaly_source=self.pseudo_anomaly_source,
            mask_rule=MASK_RULE,
            package_version=_package_version(),
        )

    def _check_replay(self, replay: SplitManifest, manifest: SplitManifest) -> None:
        if replay.mask_rule != manifest.mask_rule:
            logger.warning(
                "Replaying '%s', written when masks were read as '%s'; they are now read as '%s': the known "
                "anomalies' defect pixels may differ from that run's.",
                self.replay_manifest,
                replay.mask_rule,
                manifest.mask_rule,
            )
        for key in ("train_anomalies", "removed_from_test", "train_images", "test_images"):
            expected, actual = getattr(replay, key), getattr(manifest, key)
            if expected != actual:
                extra = [item for item in actual if item not in expected]
                lacking = [item for item in expected if item not in actual]
                msg = (
                    f"Replaying '{self.replay_manifest}' does not reproduce its {key}: {len(lacking)} recorded "
                    f"file(s) missing (first: {lacking[:1]}), {len(extra)} new file(s) (first: {extra[:1]}). "
                    f"The dataset under '{self.dataset_root}' changed since the manifest was written."
                )
                raise ValueError(msg)

    def write_manifest(self, path: str | Path) -> Path:
        """Write the split manifest of this datamodule (after ``setup``).

        Args:
            path (str | Path): Output JSON file; a directory gets ``split_manifest.json`` inside it.

        Returns:
            Path: The written file.

        Raises:
            RuntimeError: If ``setup`` has not run yet.
        """
        if self.manifest is None:
            msg = f"{self.name}.write_manifest() needs the split: call setup() first."
            raise RuntimeError(msg)
        path = Path(path)
        if path.is_dir():
            path /= MANIFEST_FILENAME
        written = self.manifest.write(path)
        logger.info("Wrote the split manifest to %s", written)
        return written

    @classmethod
    def from_manifest(cls, path: str | Path, **overrides: Any) -> "FewAnomalyDataModule":
        """Build the datamodule that replays a manifest's split exactly.

        Args:
            path (str | Path): Manifest written by a previous run.
            **overrides (Any): Init arguments to change, e.g. ``root`` (dataset moved), ``num_workers``,
                ``train_batch_size``, ``pseudo_anomaly_ratio``. Split-defining arguments (category, setting, seed,
                n_anomalies, seen_defect_type, split modes, Folder dirs) cannot change.

        Returns:
            FewAnomalyDataModule: Datamodule of the manifest's class; its ``setup`` checks that the files on
            disk give exactly the recorded training and test lists.

        Raises:
            ValueError: If the manifest is of another datamodule class or an override changes the split.
        """
        manifest = SplitManifest.read(path)
        module_name, _, class_name = manifest.datamodule.rpartition(".")
        target = getattr(importlib.import_module(module_name), class_name, None)
        if not (isinstance(target, type) and issubclass(target, cls)):
            msg = f"Manifest '{path}' was written by {manifest.datamodule}, not by a {cls.__name__}."
            raise ValueError(msg)
        changed = changed_split_args(overrides, upgrade_init_args(manifest.init_args))
        if changed:
            msg = (
                f"Cannot override {', '.join(changed)} when replaying '{path}': the manifest fixes the split. "
                "Build a new datamodule without from_manifest to make another split."
            )
            raise ValueError(msg)
        with explicit_arguments(overrides):
            return target(**overrides, replay_manifest=path)

    # ----------------------------------------------------------------------------------------------------------
    # Training data
    # ----------------------------------------------------------------------------------------------------------
    def anomalies_in_training(self) -> bool:
        """Whether training batches include the known (and pseudo) anomalies.

        ``train_on_anomalies`` decides when set. When ``None``, the model attached to the trainer decides: a
        model with a truthy ``trains_on_anomalies`` attribute (or anomalib's SuperSimpleNet with
        ``supervised=True``) gets them; any other model (PatchCore, PaDiM, ...) gets normal images only.
        Without a trainer the anomalies are included.

        Returns:
            bool: ``True`` to train on anomalies.
        """
        if self.train_on_anomalies is not None:
            return bool(self.train_on_anomalies)
        trainer = getattr(self, "trainer", None)
        model = getattr(trainer, "lightning_module", None) if trainer is not None else None
        if model is None:
            return True
        flag = getattr(model, "trains_on_anomalies", None)
        if flag is None:
            flag = getattr(model, "supervised", False)
        return bool(flag)

    def _log_normal_only(self, normal: int, known: int) -> None:
        trainer = getattr(self, "trainer", None)
        model = getattr(trainer, "lightning_module", None) if trainer is not None else None
        if self.train_on_anomalies is False or model is None:
            logger.info("%s: training on %d normal images only (train_on_anomalies=False).", self.name, normal)
            return
        # anomalib's own models are unsupervised by design; say more for any other model.
        log = logger.info if type(model).__module__.startswith("anomalib.") else logger.warning
        log(
            "%s: %s does not declare trains_on_anomalies = True: training on %d normal images only; the %d known "
            "anomalies stay out of the test set but are not used. Set train_on_anomalies=True (CLI: "
            "--data.train_on_anomalies true) to train with them.",
            self.name,
            type(model).__name__,
            normal,
            known,
        )

    @property
    def pseudo_anomaly_counts(self) -> dict[str, int]:
        """Pseudo anomalies per epoch of each generator (``{"rpag": n, "smoothblend": m, "perlin": k}``).

        Each selected source makes ``pseudo_anomaly_count`` of them when it is set, else its
        ``pseudo_anomaly_ratio`` times the number of known anomalies (rounded). RPAG makes none without known
        anomalies.
        """
        known = 0 if self._known_anomalies is None else len(self._known_anomalies)
        parts = source_parts(self.pseudo_anomaly_source)

        def count(name: str) -> int:
            if self.pseudo_anomaly_count is not None:
                return self.pseudo_anomaly_count
            return round(source_ratio(self.pseudo_anomaly_ratio, name) * known)

        return {name: count(name) if name in parts and (known or name != RPAG) else 0 for name in GENERATORS}

    @property
    def num_pseudo_anomalies(self) -> int:
        """All pseudo anomalies per epoch (see :attr:`pseudo_anomaly_counts`)."""
        return sum(self.pseudo_anomaly_counts.values())

    def _paste_in_foreground(self) -> bool:
        if self.paste_in_foreground is not None:
            return self.paste_in_foreground
        return self._default_paste_in_foreground()

    def train_dataloader(self) -> DataLoader:
        """Training batches with known and pseudo anomalies, or normal images only (:meth:`anomalies_in_training`).

        Returns:
            DataLoader: Dataloader of anomalib ``ImageItem`` batches.
        """
        loader_args = {
            "batch_size": self.train_batch_size,
            "num_workers": self.num_workers,
            "collate_fn": self.external_collate_fn or self.train_data.collate_fn,
        }
        if not self.anomalies_in_training():
            labels = self.train_data.samples.label_index.to_numpy()
            normal = self.train_data.subsample([int(i) for i in (labels == LabelName.NORMAL).nonzero()[0]])
            self._log_normal_only(len(normal), len(labels) - len(normal))
            return DataLoader(normal, shuffle=True, **loader_args)
        counts = self.pseudo_anomaly_counts
        train_set = FewAnomalyTrainSet(
            self.train_data,
            seed=self.seed,
            num_rpag=counts[RPAG],
            num_smoothblend=counts[SMOOTHBLEND],
            num_perlin=counts[PERLIN],
            paste_in_foreground=self._paste_in_foreground(),
            perlin_texture=self.perlin_texture,
        )
        if self.repeat_anomalies == 0 and len(train_set.anomaly_rows):
            logger.info(
                "%s: repeat_anomalies=0: the %d known anomalies stay out of the training batches (and out of the "
                "test set); training on normal images and %d pseudo anomalies per epoch.",
                self.name,
                len(train_set.anomaly_rows),
                train_set.num_pseudo,
            )
        sampler = EpochSampler(train_set, repeat_anomalies=self.repeat_anomalies, seed=self.seed)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            sampler.set_epoch(trainer.current_epoch)
        return DataLoader(train_set, sampler=sampler, **loader_args)


# The few-anomaly options that define the split and the training set, recorded in the manifest: every keyword of
# ``FewAnomalyDataModule.__init__`` but these. A new option is declared there, once.
_NOT_RECORDED = {"self", "args", "kwargs", "num_workers", "manifest_path", "replay_manifest", "verify_images"}
_DEPRECATED = {"pseudo_anomalies", "train_anomalies"}
FEW_ANOMALY_OPTIONS = tuple(
    name
    for name in inspect.signature(FewAnomalyDataModule.__init__).parameters
    if name not in _NOT_RECORDED | _DEPRECATED
)
# Those that :func:`.options.check_options` checks (its keywords, but ``num_workers``).
CHECKED_OPTIONS = tuple(name for name in inspect.signature(check_options).parameters if name != "num_workers")
