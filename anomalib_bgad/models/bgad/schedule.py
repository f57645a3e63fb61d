"""BGAD's optimiser and learning-rate schedules.

- ``"one_cycle"`` (default): stepped once per training batch over the whole run: a linear warm-up from
  ``learning_rate / 25`` to ``learning_rate`` over the first ``WARMUP_FRACTION`` of the batches, then a cosine
  decay to ``learning_rate / 1000`` (the shape of torch's ``OneCycleLR``, which refuses runs of a few batches).
  Made for short budgets: the flows get a high learning rate early and a low one at the end whatever
  ``max_epochs`` is.
- ``"cosine"``: the authors' schedule for the paper protocol: cosine decay per epoch over ``max_epochs`` to
  ``learning_rate / 1000``, no warm-up (their 2-epoch warm-up never takes effect: its epoch length is taken as 2).

Adam is the fused implementation where the device supports it: its ``found_inf`` input lets a non-finite step be
skipped on the device, without a host synchronisation (:mod:`.numerics`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, Literal, get_args

import torch
from torch.optim import Adam, Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler

logger = logging.getLogger(__name__)

LrSchedule = Literal["one_cycle", "cosine"]
"""Values of ``lr_schedule`` (a ``Literal``, so that anomalib's CLI rejects any other at parsing)."""
LR_SCHEDULES = get_args(LrSchedule)
# Epochs when the trainer's limit is Lightning's fallback for "not set" (1000): see apply_default_epochs.
DEFAULT_MAX_EPOCHS = 30
LIGHTNING_FALLBACK_EPOCHS = 1000
WARMUP_FRACTION = 0.1
INITIAL_LR_FRACTION = 1 / 25  # one-cycle warm-up start (torch's OneCycleLR default)
FINAL_LR_FRACTION = 1e-3  # both schedules end at learning_rate / 1000


def one_cycle_factor(step: int, total_steps: int) -> float:
    """Learning-rate factor of the one-cycle schedule at ``step`` of ``total_steps`` (warm-up, then cosine).

    Args:
        step (int): Batches done, ``0 <= step``.
        total_steps (int): Batches of the run, ``>= 1``.

    Returns:
        float: Factor in ``[FINAL_LR_FRACTION, 1]``.
    """
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return INITIAL_LR_FRACTION + (1 - INITIAL_LR_FRACTION) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


def check_schedule(name: str) -> None:
    """Raise a ``ValueError`` naming the valid schedules unless ``name`` is one of them."""
    if name not in LR_SCHEDULES:
        msg = f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {name!r}."
        raise ValueError(msg)


def fused_adam_supported(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """Whether torch has a fused Adam kernel for these parameters' devices and dtypes (checked at its first step)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # private helper moved: the devices torch has had fused Adam kernels for
        devices = {"cpu", "cuda"}
    return all(p.device.type in devices and p.is_floating_point() for p in parameters)


def build_optimizer(parameters: Iterable[torch.nn.Parameter], learning_rate: float, fused: bool | None = None) -> Adam:
    """Adam on the flows' parameters: fused where supported (a non-finite step is skipped on the device through
    its ``found_inf`` input), plain elsewhere (the step is skipped on the host, one synchronisation per step).

    Args:
        parameters (Iterable[torch.nn.Parameter]): The flows' parameters, on their training device.
        learning_rate (float): Adam's learning rate.
        fused (bool | None): Force the fused (``True``) or plain (``False``) Adam; ``None``: fused if supported.

    Returns:
        Adam: The optimiser; ``optimizer.defaults["fused"]`` tells which.
    """
    parameters = list(parameters)
    if fused is None:
        fused = fused_adam_supported(parameters)
    return Adam(parameters, lr=learning_rate, fused=fused or None)


def build_scheduler(
    name: str,
    optimizer: Optimizer,
    learning_rate: float,
    max_epochs: int | None,
    total_batches: float,
) -> LRScheduler | None:
    """The learning-rate schedule, or ``None`` when the run has no known length (infinite training).

    Args:
        name (str): ``"one_cycle"`` (stepped per batch) or ``"cosine"`` (stepped per epoch).
        optimizer (Optimizer): The optimiser.
        learning_rate (float): Peak (one-cycle) or initial (cosine) learning rate.
        max_epochs (int | None): The trainer's epoch limit (``-1`` or ``None``: none).
        total_batches (float): Training batches of the whole run (Lightning's ``estimated_stepping_batches``).

    Returns:
        LRScheduler | None: The scheduler.
    """
    check_schedule(name)
    if name == "cosine":
        if not max_epochs or max_epochs < 0:
            logger.warning("lr_schedule='cosine' needs max_epochs; training with a constant learning rate.")
            return None
        return CosineAnnealingLR(optimizer, T_max=max(1, max_epochs), eta_min=learning_rate * FINAL_LR_FRACTION)
    if not math.isfinite(total_batches) or total_batches < 1:
        logger.warning("lr_schedule='one_cycle' needs a finite run; training with a constant learning rate.")
        return None
    total = int(total_batches)
    return LambdaLR(optimizer, lambda step: one_cycle_factor(step, total))


def apply_default_epochs(trainer: Any) -> None:
    """Give a fit without an epoch limit BGAD's default, ``DEFAULT_MAX_EPOCHS`` (logged).

    anomalib's CLI passes no epoch limit unless ``--trainer.max_epochs`` is given, and Lightning then falls back to
    1000 epochs. The learning-rate schedule spans the whole run, so BGAD treats that fallback as "not set".

    Args:
        trainer (Any): The Lightning trainer, before the fit loop starts.
    """
    if trainer.max_epochs == LIGHTNING_FALLBACK_EPOCHS and trainer.max_steps == -1:
        logger.info(
            "BGAD: max_epochs not set (Lightning's fallback %d); training %d epochs. Set --trainer.max_epochs to "
            "change it.",
            LIGHTNING_FALLBACK_EPOCHS,
            DEFAULT_MAX_EPOCHS,
        )
        trainer.fit_loop.max_epochs = DEFAULT_MAX_EPOCHS


def warn_if_phase2_never_starts(trainer: Any, phase1_epochs: int, trains_on_anomalies: bool) -> None:
    """Warn when the epoch limit ends training inside phase 1, so that the known anomalies are never used.

    Args:
        trainer (Any): The Lightning trainer, before the fit loop starts (after :func:`apply_default_epochs`).
        phase1_epochs (int): The module's phase-1 length in epochs.
        trains_on_anomalies (bool): Whether phase 2 would train on the known and pseudo anomalies.
    """
    max_epochs = trainer.max_epochs
    if trains_on_anomalies and max_epochs is not None and 0 <= max_epochs <= phase1_epochs:
        logger.warning(
            "BGAD: max_epochs=%d <= phase1_epochs=%d: training ends in phase 1 (normal images, ML loss only), so the "
            "known and pseudo anomalies are never trained on. Set --trainer.max_epochs above %d, or lower "
            "--model.phase1_epochs.",
            max_epochs,
            phase1_epochs,
            phase1_epochs,
        )
