"""Training-time budgets as epoch counts, from a calibration fit measured in the same run.

A budget ("150 s of training per category") is never enforced by stopping training on a timer: BGAD's
learning-rate schedule is a function of ``max_epochs``, and a run must give the same model for the same seed
on any machine. Instead, a short calibration fit of exactly the model and data of the budgeted cells is timed
on the same machine, in the same benchmark run: the first epoch (``t_first``, from the start of ``fit``, so
it includes setup and any one-off work such as caching backbone features) and the mean of the following
epochs (``t_epoch``). A budget then becomes the largest epoch count whose predicted time fits::

    epochs(budget) = max(1, 1 + floor((budget - t_first) / t_epoch))

Every budgeted cell also records the training seconds it actually took; tables and plots use those.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Calibration:
    """Measured epoch times of one model on one category.

    Args:
        t_first_s (float): Seconds from the start of ``fit`` to the end of the first epoch.
        t_epoch_s (float): Mean seconds of one later epoch (end of epoch ``k - 1`` to end of epoch ``k``).
        epoch_s (tuple[float, ...]): Every measured epoch in that sense, the first one first.

    Raises:
        ValueError: If ``t_first_s`` is negative or ``t_epoch_s`` is not positive (both must be finite).
    """

    t_first_s: float
    t_epoch_s: float
    epoch_s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.t_first_s) and self.t_first_s >= 0):
            msg = f"Calibration t_first_s must be a finite number >= 0, got {self.t_first_s!r}."
            raise ValueError(msg)
        if not (math.isfinite(self.t_epoch_s) and self.t_epoch_s > 0):
            msg = f"Calibration t_epoch_s must be a finite number > 0, got {self.t_epoch_s!r}."
            raise ValueError(msg)

    @classmethod
    def from_epochs(cls, epoch_s: Sequence[float]) -> Calibration:
        """Build a calibration from measured epochs, the first one timed from the start of ``fit``.

        Args:
            epoch_s (Sequence[float]): Seconds of each epoch, at least two; see ``EpochClock.durations_from``.

        Returns:
            Calibration: ``t_first_s`` = the first, ``t_epoch_s`` = the mean of the others.

        Raises:
            ValueError: With fewer than two epochs (no later epoch to time).
        """
        if len(epoch_s) < 2:
            msg = f"A calibration needs at least 2 timed epochs (the first and a later one), got {len(epoch_s)}."
            raise ValueError(msg)
        later = [float(s) for s in epoch_s[1:]]
        return cls(t_first_s=float(epoch_s[0]), t_epoch_s=sum(later) / len(later), epoch_s=tuple(map(float, epoch_s)))

    def epochs_for(self, budget_s: float) -> int:
        """The number of epochs that fit in ``budget_s`` seconds of training (at least 1).

        Raises:
            ValueError: If ``budget_s`` is not a finite positive number.
        """
        if not (math.isfinite(budget_s) and budget_s > 0):
            msg = f"A training budget must be a finite number of seconds > 0, got {budget_s!r}."
            raise ValueError(msg)
        return max(1, 1 + math.floor((budget_s - self.t_first_s) / self.t_epoch_s))

    def predicted_s(self, epochs: int) -> float:
        """Predicted training seconds of ``epochs`` epochs."""
        return self.t_first_s + (epochs - 1) * self.t_epoch_s


def format_budget(budget_s: float) -> str:
    """``30 s``, ``2.5 min``, ``10 min``: seconds under two minutes, minutes from there."""
    return f"{budget_s:g} s" if budget_s < 120 else f"{budget_s / 60:g} min"
