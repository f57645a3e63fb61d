"""What one training epoch of BGAD accumulates besides the boundary: loss sums and counts, for the epoch's log.

Kept on the device during the epoch (no host synchronisation per step) and read once, when the epoch ends.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

TERMS = ("loss", "ml_loss", "pull_loss", "push_loss")


class EpochRecord:
    """Loss terms summed over the optimiser steps taken, the steps taken, and the anomalous fibers seen.

    Attributes:
        finished_epoch (int): Last epoch whose end-of-epoch update was applied (``-1``: none yet).
        warned_no_anomalies (bool): Whether the "phase 2 without anomalies" warning was given.
    """

    def __init__(self) -> None:
        self._sums: torch.Tensor | None = None
        self.finished_epoch = -1
        self.warned_no_anomalies = False

    def add_step(self, terms: torch.Tensor, taken: torch.Tensor, anomalous_fibers: torch.Tensor) -> None:
        """Add one step: its ``(4,)`` loss terms (counted only if ``taken``) and its anomalous fiber count."""
        sums = torch.cat([torch.where(taken, terms, 0.0), taken.float().view(1), anomalous_fibers.view(1)])
        # Sums restored from a checkpoint are loaded before Lightning moves the module to its accelerator.
        self._sums = sums if self._sums is None else self._sums.to(sums.device) + sums

    def finish(self, phase2_with_anomalies: bool) -> dict[str, float]:
        """The epoch's mean loss terms (one host synchronisation); warns once if phase 2 saw no anomaly. Resets.

        Args:
            phase2_with_anomalies (bool): Whether the epoch was meant to train on anomalies (phase 2, ``bgad``).

        Returns:
            dict[str, float]: ``train_loss``, ``train_ml_loss``, ``train_pull_loss``, ``train_push_loss``.
        """
        sums = self._sums.tolist() if self._sums is not None else [0.0] * (len(TERMS) + 2)
        self._sums = None
        if phase2_with_anomalies and sums[-1] == 0 and not self.warned_no_anomalies:
            logger.warning(
                "BGAD phase 2 saw no anomalous pixels in the training data: training on normal images only "
                "(BG-SPP pull term, no push). Use a few-anomaly datamodule, e.g. anomalib_bgad.data."
                "FewAnomalyMVTecAD(n_anomalies=10), to train with labeled defects.",
            )
            self.warned_no_anomalies = True
        steps = max(sums[len(TERMS)], 1.0)
        return {f"train_{name}": value / steps for name, value in zip(TERMS, sums, strict=False)}

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return {
            "epoch_sums": self._sums.tolist() if self._sums is not None else None,
            "finished_epoch": self.finished_epoch,
            "warned_no_anomalies": self.warned_no_anomalies,
        }

    def load(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore what :meth:`state` saved."""
        sums = state["epoch_sums"]
        self._sums = torch.tensor(sums, device=device) if sums is not None else None
        self.finished_epoch = state["finished_epoch"]
        self.warned_no_anomalies = state["warned_no_anomalies"]
