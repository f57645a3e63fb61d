"""Wall-clock stamps of training epochs: a Lightning callback for epoch times and time-budget calibration."""

from __future__ import annotations

import itertools
import time

from lightning.pytorch import Callback, LightningModule, Trainer


class EpochClock(Callback):
    """Record ``time.perf_counter()`` at the start and end of every training epoch.

    Attributes:
        starts (list[float]): Seconds (``perf_counter``) at each ``on_train_epoch_start``.
        ends (list[float]): Seconds (``perf_counter``) at each ``on_train_epoch_end``.
    """

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del trainer, pl_module
        self.starts.append(time.perf_counter())

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        del trainer, pl_module
        self.ends.append(time.perf_counter())

    @property
    def seconds(self) -> list[float]:
        """Duration of each finished epoch, start to end (data loading included, validation excluded)."""
        return [end - start for start, end in zip(self.starts, self.ends, strict=False)]

    def durations_from(self, fit_start: float) -> list[float]:
        """Each finished epoch end to end: the first from ``fit_start`` (setup included), then end to end."""
        return [later - earlier for earlier, later in itertools.pairwise([fit_start, *self.ends])]
