"""BGAD's two-phase training loop, as the training half of the Lightning module :class:`~.lightning_model.Bgad`.

Phase 1 (*boundary generating*, the first ``phase1_epochs`` epochs) trains the flows on normal images with the
maximum-likelihood loss; phase 2 (*boundary guided optimising*) adds the known and pseudo anomalies and the BG-SPP
loss (paper Sec. 3.3-3.4, Eq. 8). Each training batch takes several optimiser steps, one per position group of the
fibers (:mod:`.fibers`, as the authors' code does); the boundary ``b_n`` of each level is the mean of the steps'
estimates over the epoch (:mod:`.boundary`). Manual optimisation: Lightning's automatic loop takes one step per
batch.
"""

from __future__ import annotations

import torch
from anomalib.data import Batch
from anomalib.models import AnomalibModule
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler

from . import numerics
from .cuda_graphs import GraphedFlows
from .distributed import is_distributed, max_over_ranks
from .epoch_record import EpochRecord
from .feature_cache import FeatureCache
from .feature_extractor import EvalModeWarningFilter
from .fibers import LabeledFibers, batch_position_groups, fiber_generator, steps_per_batch, training_fibers
from .loss import BgadLoss
from .schedule import build_optimizer, build_scheduler
from .step_loss import position_group_loss
from .torch_model import BgadModel


class TwoPhaseTraining(AnomalibModule):
    """The training loop of :class:`~.lightning_model.Bgad`: steps, epoch end, optimiser, fit hooks.

    The state it reads is set by ``Bgad.__init__`` (the loss, the schedule's arguments and the bookkeeping below);
    :mod:`.checkpoint` saves and restores the bookkeeping with every checkpoint.
    """

    model: BgadModel
    loss: BgadLoss
    phase1_epochs: int
    partial_fibers: str
    border_weight: float
    learning_rate: float
    lr_schedule: str
    fiber_batch_size: int
    gradient_clip_norm: float
    cuda_graphs: bool
    feature_cache: FeatureCache | None
    guard: numerics.NonFiniteGuard
    nonfinite_fibers: numerics.NonFiniteFibers
    epoch_record: EpochRecord
    eval_mode_warning_filter: EvalModeWarningFilter

    @property
    def in_phase2(self) -> bool:
        """Whether the current epoch is in phase 2 (boundary guided optimising)."""
        return self.current_epoch >= self.phase1_epochs

    def _select_images(self, batch: Batch) -> torch.Tensor:
        """Images this phase and loss mode train on: phase 1 and anomaly-free ablations use normal ones only."""
        labels = batch.gt_label
        if labels is None or (self.in_phase2 and self.loss.mode.uses_anomalies):
            return torch.ones(batch.image.shape[0], dtype=torch.bool)
        return labels.cpu() == 0

    def _training_fibers(self, batch: Batch, selected: torch.Tensor) -> LabeledFibers:
        """The selected images' labeled fibers (``selected``: boolean ``(B,)`` on the CPU, read without a sync)."""
        keep = selected.to(batch.image.device)
        masks = batch.gt_mask[keep] if batch.gt_mask is not None else None
        paths = [path for path, kept in zip(batch.image_path or [], selected.tolist(), strict=False) if kept]
        backbone, cache = self.model.feature_extractor, self.feature_cache
        return training_fibers(
            batch.image[keep],
            masks,
            paths,
            backbone,
            cache,
            self.nonfinite_fibers,
            self.partial_fibers,
            self.border_weight,
        )

    def training_step(self, batch: Batch, batch_idx: int) -> STEP_OUTPUT:
        """Train on one batch: several optimiser steps, each over one position group of every level.

        Numerics: nothing non-finite is stepped on (:mod:`.numerics`). Under DDP every rank takes the same steps
        (a rank without images joins with zero-weighted fibers), the boundary is the quantile over the fibers of
        all ranks and the skip decision is shared.

        Args:
            batch (Batch): Training batch with ``image``, ``gt_label`` and ``gt_mask``.
            batch_idx (int): Index of the batch in the epoch.

        Returns:
            STEP_OUTPUT: ``None``: the optimiser is stepped here, the losses are logged per epoch.
        """
        device = batch.image.device
        selected = self._select_images(batch)
        count = max_over_ranks(int(selected.sum()), device)
        if count == 0:
            self._finish_epoch_if_last_batch(batch_idx)
            return None
        fibers = self._training_fibers(batch, selected)
        finest = max(fibers.grids, key=lambda grid: grid[0] * grid[1])
        num_steps = steps_per_batch(count, finest, self.fiber_batch_size)
        generator = fiber_generator(self.current_epoch, batch_idx)
        groups = batch_position_groups(fibers.grids, num_steps, generator, device)
        for step in range(num_steps):
            self._optimizer_step(fibers, [level[step] for level in groups])
        self.guard.check_batch(f"epoch {self.current_epoch}, batch {batch_idx}")
        if self.lr_schedule == "one_cycle" and (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()
        self._finish_epoch_if_last_batch(batch_idx)
        return None

    def _optimizer_step(self, fibers: LabeledFibers, groups: list[torch.Tensor]) -> None:
        """One optimiser step over one position group of every level; skipped on the device if non-finite."""
        step = position_group_loss(self.model, self.loss, fibers, groups, self.in_phase2)
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(step.total)
        flows, finite = self.model.flows.parameters(), (step.log_likelihood_finite, step.loss_finite)
        ok = numerics.guarded_step(optimizer, flows, *finite, self.guard, self.gradient_clip_norm)
        for level, (b_n, valid) in enumerate(step.b_n):
            self.model.boundary.accumulate(level, b_n, ok & valid)
        self.epoch_record.add_step(step.terms, ok, step.anomalous_fibers)

    def _finish_epoch_if_last_batch(self, batch_idx: int) -> None:
        """Apply the epoch's boundary/LR update right after its last batch, before epoch-end validation."""
        if self._trainer is None:
            return
        last = self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if last or batch_idx + 1 >= self.trainer.num_training_batches:
            self._finish_epoch()

    def _finish_epoch(self) -> None:
        """Store the epoch's mean boundary per level, step the per-epoch LR schedule and log, once per epoch.

        Runs at the end of the epoch's last training step, so that the validation at the end of the epoch (which
        Lightning runs *before* ``on_train_epoch_end``) and any checkpoint written after that step see the
        epoch's boundary and learning rate. ``on_train_epoch_end`` calls it again (no-op) to cover epochs cut
        short, e.g. by ``max_steps``.

        Raises:
            NonFiniteTrainingError: If more than half of the epoch's steps were skipped, or the flows' weights
                became non-finite.
        """
        if self.epoch_record.finished_epoch == self.current_epoch:
            return
        skipped = self.guard.finish_epoch(self.current_epoch)
        self.model.boundary.finish_epoch()
        numerics.check_finite_flows(self.model.flows, self.guard)
        metrics = self.epoch_record.finish(self.in_phase2 and self.loss.mode.uses_anomalies)
        if self.lr_schedule == "cosine" and (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()
        self.epoch_record.finished_epoch = self.current_epoch
        metrics.update({f"boundary_level{level}": b_n for level, b_n in enumerate(self.model.boundary.b_n.tolist())})
        metrics["train_nonfinite_steps"] = float(skipped)
        metrics["train_nonfinite_fibers"] = float(self.nonfinite_fibers.reset_count())
        # Logged here (inside the last training step) so that callbacks see them in their on_train_epoch_end.
        self.log("train_loss", metrics.pop("train_loss"), on_step=False, on_epoch=True, prog_bar=True, batch_size=1)
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=1)
        if self.feature_cache is not None:
            self.feature_cache.end_epoch()

    def on_train_epoch_end(self) -> None:
        """Finish the epoch if its last step did not (e.g. stopped by ``max_steps``)."""
        self._finish_epoch()

    def on_fit_start(self) -> None:
        """Train the flows through CUDA graphs on a (single) CUDA device, if ``cuda_graphs``; silence Lightning's
        warning about the frozen backbone's eval-mode modules, which it gives just before ``on_train_start``."""
        single_cuda = self.device.type == "cuda" and not is_distributed()
        self.model.graphed_flows = GraphedFlows(self.model.flows) if self.cuda_graphs and single_cuda else None
        self.eval_mode_warning_filter.start()

    def on_train_start(self) -> None:
        """Restore the warning filters: the eval-mode warning has been given, training's own warnings show."""
        self.eval_mode_warning_filter.stop()

    def on_fit_end(self) -> None:
        """Release the graphs (and their memory pools); restore the warning filters if training never started."""
        self.model.graphed_flows = None
        self.eval_mode_warning_filter.stop()

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Adam on the flows with the ``lr_schedule`` (:mod:`.schedule`)."""
        optimizer = build_optimizer(self.model.flows.parameters(), self.learning_rate)
        trainer = self._trainer
        max_epochs = trainer.max_epochs if trainer is not None else None
        total_batches = trainer.estimated_stepping_batches if trainer is not None else float("inf")
        scheduler = build_scheduler(self.lr_schedule, optimizer, self.learning_rate, max_epochs, total_batches)
        return optimizer if scheduler is None else ([optimizer], [scheduler])
