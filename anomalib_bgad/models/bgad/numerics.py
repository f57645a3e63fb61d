"""The numerics guard of BGAD's training: nothing non-finite is ever stepped on, checkpointed or scored.

- A step whose log-likelihood, loss or gradient norm is NaN/Inf is **skipped**: the optimiser leaves weights and
  moments alone (``found_inf``, as for mixed-precision loss scaling, so the decision stays on the device) and the
  step's boundary estimates are not used.
- Skips are counted on the device and checked once per batch (one host synchronisation): ``patience`` skipped
  steps in a row, or more than half of an epoch's steps, stop training with :class:`NonFiniteTrainingError`,
  whose message names the likely cause and the knobs.
- Backbone fibers with NaN/Inf (degenerate input images) are left out of the loss and the boundary, and their
  images are named once in a warning (:class:`NonFiniteFibers`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.autograd.graph import increment_version

from .distributed import all_ranks_true

logger = logging.getLogger(__name__)

# Stop rule, part 2: an epoch in which more than this fraction of the optimiser steps had to be skipped stops
# training. Part 1 is ``patience`` skipped steps in a row.
MAX_SKIPPED_FRACTION = 0.5
# What was non-finite, in the order it is checked; index 0 means "nothing".
PROBLEMS = ("", "log-likelihood", "loss", "gradient norm")


class NonFiniteTrainingError(FloatingPointError):
    """Training produced NaN/Inf persistently; raised instead of writing a NaN model or NaN scores."""


class NonFiniteGuard:
    """Device-side bookkeeping of skipped optimiser steps and the stop rule.

    Args:
        patience (int): Skipped steps in a row that stop training, ``>= 1``.
        advice (str): The likely causes and the knobs, appended to every error message.

    Raises:
        ValueError: If ``patience < 1``.
    """

    def __init__(self, patience: int, advice: str) -> None:
        if patience < 1:
            msg = f"nonfinite_patience must be >= 1, got {patience}."
            raise ValueError(msg)
        self.patience = patience
        self.advice = advice
        self.steps = 0  # optimiser steps tried this epoch (host count: known without a sync)
        self._skipped: torch.Tensor | None = None  # skipped this epoch
        self._run: torch.Tensor | None = None  # skipped in a row up to now
        self._worst_run: torch.Tensor | None = None  # longest run since the last check
        self._problem: torch.Tensor | None = None  # PROBLEMS index of the last skip
        self._restored: dict[str, int] = {}

    def _tensors(self, device: torch.device) -> None:
        if self._skipped is None or self._skipped.device != device:
            restored = self._restored
            self._skipped = torch.tensor(restored.get("skipped", 0), device=device)
            self._run = torch.tensor(restored.get("run", 0), device=device)
            self._worst_run = self._run.clone()
            self._problem = torch.tensor(restored.get("problem", 0), device=device)
            self._restored = {}

    def check_step(
        self,
        log_likelihood_finite: torch.Tensor,
        loss_finite: torch.Tensor,
        gradient_finite: torch.Tensor,
    ) -> None:
        """Count one optimiser step; the arguments are boolean scalars (and-ed over ranks under DDP)."""
        self._tensors(log_likelihood_finite.device)
        ok = log_likelihood_finite & loss_finite & gradient_finite
        problem = torch.where(~log_likelihood_finite, 1, torch.where(~loss_finite, 2, 3))
        self.steps += 1
        self._skipped += (~ok).long()
        self._run = torch.where(ok, 0, self._run + 1)
        self._worst_run = torch.maximum(self._worst_run, self._run)
        self._problem = torch.where(ok, self._problem, problem)

    def check_batch(self, where: str) -> None:
        """Stop rule, part 1 (one host synchronisation): ``patience`` skipped steps in a row.

        Args:
            where (str): Where training stands, for the message (e.g. ``"epoch 3, batch 7"``).

        Raises:
            NonFiniteTrainingError: If the rule fires.
        """
        if self._worst_run is None:
            return
        worst, skipped, problem = (int(value) for value in torch.stack([self._worst_run, self._skipped, self._problem]))
        self._worst_run = self._run.clone()
        if worst >= self.patience:
            reason = f"{worst} optimiser steps in a row had a non-finite {PROBLEMS[problem]} (last: {where})"
            raise NonFiniteTrainingError(self.message(reason, skipped))
        if skipped:
            logger.debug("Skipped %d non-finite optimiser steps so far this epoch (%s).", skipped, where)

    def finish_epoch(self, epoch: int) -> int:
        """Stop rule, part 2, then reset the epoch counts.

        Args:
            epoch (int): The epoch that ends.

        Returns:
            int: Steps skipped in the epoch.

        Raises:
            NonFiniteTrainingError: If more than half of the epoch's steps were skipped.
        """
        skipped = int(self._skipped) if self._skipped is not None else 0
        steps = self.steps
        if steps and skipped > MAX_SKIPPED_FRACTION * steps:
            reason = (
                f"more than {MAX_SKIPPED_FRACTION:.0%} of epoch {epoch}'s optimiser steps had a non-finite "
                "log-likelihood, loss or gradient"
            )
            raise NonFiniteTrainingError(self.message(reason, skipped))
        if skipped:
            logger.warning(
                "BGAD epoch %d: skipped %d of %d optimiser steps with non-finite values (see nonfinite_patience).",
                epoch,
                skipped,
                steps,
            )
        self.steps = 0
        if self._skipped is not None:
            self._skipped.zero_()
        return skipped

    def message(self, reason: str, skipped: int | None = None) -> str:
        """The error of the stop rule: what happened, that nothing non-finite was kept, and the advice."""
        skips = (
            f"; each was skipped without an optimiser step ({skipped} of {self.steps} steps skipped this epoch)"
            if skipped is not None
            else ""
        )
        return f"BGAD training stopped: {reason}{skips}. {self.advice} No checkpoint with NaN weights was written."

    def training_state(self) -> dict[str, Any]:
        """The counters as plain data for a checkpoint."""
        if self._skipped is None:
            return {"steps": self.steps, **self._restored}
        return {
            "steps": self.steps,
            "skipped": int(self._skipped),
            "run": int(self._run),
            "problem": int(self._problem),
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`training_state` saved (applied on the next step's device)."""
        self.steps = int(state.get("steps", 0))
        self._restored = {key: int(state[key]) for key in ("skipped", "run", "problem") if key in state}
        self._skipped = self._run = self._worst_run = self._problem = None

    @property
    def skipped(self) -> int:
        """Steps skipped this epoch (a host synchronisation)."""
        return int(self._skipped) if self._skipped is not None else self._restored.get("skipped", 0)


def training_advice(learning_rate: float, backbone: str, gradient_clip_norm: float, clamp_alpha: float) -> str:
    """The likely causes of non-finite training and the knobs, as the stop rule's message ends."""
    return (
        f"Likely cause: the learning rate is too high for the normalising flows (learning_rate={learning_rate:g}), "
        f"or degenerate features (NaN/Inf or extreme values from the input images or the backbone '{backbone}'). "
        f"Lower --model.learning_rate, set or lower --model.gradient_clip_norm (now {gradient_clip_norm:g}; 0 "
        f"disables clipping), lower --model.clamp_alpha (now {clamp_alpha}), and check the training images."
    )


class NonFiniteFibers:
    """Drop backbone fibers with NaN/Inf from training: count them, and name each image with some once.

    Attributes:
        count (int): Non-finite fibers dropped since the last :meth:`reset_count`.
    """

    def __init__(self) -> None:
        self.count = 0
        self._warned: set[str] = set()

    def __call__(
        self,
        features: Sequence[torch.Tensor],
        paths: Sequence[str],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Zero the non-finite fibers of a batch (one host synchronisation).

        Args:
            features (Sequence[torch.Tensor]): Per level ``(B, C_k, H_k, W_k)``.
            paths (Sequence[str]): Image paths of the batch (may be shorter than ``B``).

        Returns:
            tuple[list[torch.Tensor], list[torch.Tensor]]: The features with non-finite fibers zeroed, and per level
            a boolean ``(B, H_k, W_k)`` of the finite fibers, which alone may count in the loss and the boundary.
        """
        finite = [torch.isfinite(level).all(dim=1) for level in features]
        bad = torch.stack([~level.flatten(1).all(dim=1) for level in finite]).any(dim=0)
        indices = bad.nonzero().flatten().tolist()
        if not indices:
            return list(features), finite
        self.count += int(sum((~level).sum() for level in finite))
        names = [paths[i] if i < len(paths) else f"<batch item {i}>" for i in indices]
        if new := [name for name in names if name not in self._warned]:
            self._warned.update(new)
            logger.warning(
                "BGAD: backbone features of %d training image(s) contain NaN/Inf; those feature positions are left "
                "out of training and of the boundary. Check these files (corrupt or degenerate input): %s",
                len(new),
                ", ".join(new),
            )
        return [torch.where(ok.unsqueeze(1), level, 0.0) for level, ok in zip(features, finite, strict=True)], finite

    def reset_count(self) -> int:
        """Return the count and start a new one (per epoch)."""
        count, self.count = self.count, 0
        return count


def step_unless_nonfinite(optimizer: Any, ok: torch.Tensor) -> None:
    """Step ``optimizer`` only if ``ok``: on the device for the fused Adam, on the host otherwise.

    The fused Adam (:func:`.schedule.build_optimizer`) reads ``found_inf`` and, when it is set, leaves weights,
    moments and its step count alone, as under mixed-precision loss scaling, so the decision needs no host
    synchronisation. The plain Adam (devices without a fused kernel) is skipped by reading ``ok`` on the host.

    Args:
        optimizer (Any): A ``torch.optim.Adam`` or Lightning's wrapper of one.
        ok (torch.Tensor): Boolean scalar: the step's log-likelihood, loss and gradients are finite.
    """
    adam = getattr(optimizer, "optimizer", optimizer)
    if adam.defaults.get("fused"):
        adam.found_inf = (~ok).float()
        optimizer.step()
    elif bool(ok):
        optimizer.step()


def guarded_step(
    optimizer: Any,
    parameters: Iterable[torch.Tensor],
    log_likelihood_finite: torch.Tensor,
    loss_finite: torch.Tensor,
    guard: NonFiniteGuard,
    gradient_clip_norm: float,
) -> torch.Tensor:
    """Clip the gradients, count the step in ``guard`` and step ``optimizer`` only if everything is finite.

    Call after the backward pass. Under DDP the finiteness flags are and-ed over ranks (the gradients are already
    all-reduced), so every rank takes the same decision.

    Args:
        optimizer (Any): A ``torch.optim.Adam`` or Lightning's wrapper of one.
        parameters (Iterable[torch.Tensor]): The trained parameters (the flows').
        log_likelihood_finite (torch.Tensor): Boolean scalar: the step's log-likelihoods are finite.
        loss_finite (torch.Tensor): Boolean scalar: the step's loss is finite.
        guard (NonFiniteGuard): Counts the step and its skip.
        gradient_clip_norm (float): Largest gradient norm; ``0`` disables clipping.

    Returns:
        torch.Tensor: Boolean scalar: whether the step was taken (on the device, no host synchronisation).
    """
    parameters = list(parameters)
    max_norm = gradient_clip_norm if gradient_clip_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm, foreach=True)
    ll_finite, loss_finite = all_ranks_true(log_likelihood_finite), all_ranks_true(loss_finite)
    ok = ll_finite & loss_finite & torch.isfinite(grad_norm)
    guard.check_step(ll_finite, loss_finite, ok)
    step_unless_nonfinite(optimizer, ok)
    # Fused Adam updates the weights without bumping their autograd version counters, which the folded
    # inference cache (:mod:`.folded_flow`) keys on.
    increment_version(parameters)
    return ok


def check_finite_flows(flows: torch.nn.Module, guard: NonFiniteGuard) -> None:
    """Stop training once the flows' weights hold NaN/Inf (one host synchronisation; run once per epoch).

    Raises:
        NonFiniteTrainingError: If any weight is non-finite.
    """
    if not bool(torch.stack([torch.isfinite(p).all() for p in flows.parameters()]).all()):
        raise NonFiniteTrainingError(guard.message("the flow weights became non-finite"))


def check_finite_weights(state_dict: dict[str, Any], guard: NonFiniteGuard) -> None:
    """Refuse to checkpoint a model whose weights or boundary (keys ``model.*``) hold NaN/Inf.

    Raises:
        NonFiniteTrainingError: Naming the first offending tensors.
    """
    bad = [
        key
        for key, value in state_dict.items()
        # the model's weights and boundary; not the post-processor's statistics (inf/NaN until validation)
        if key.startswith("model.")
        and torch.is_tensor(value)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise NonFiniteTrainingError(
            guard.message(f"refusing to write a checkpoint with non-finite values in {', '.join(bad[:5])}")
        )


def check_finite_scores(
    pred_score: torch.Tensor, anomaly_map: torch.Tensor, images: torch.Tensor, paths: Sequence[str]
) -> None:
    """Raise a clear error naming the images instead of returning NaN/Inf scores or maps.

    Args:
        pred_score (torch.Tensor): ``(B,)`` scores.
        anomaly_map (torch.Tensor): ``(B, 1, H, W)`` maps.
        images (torch.Tensor): The pre-processed images ``(B, 3, H, W)`` (to tell a bad input from a bad model).
        paths (Sequence[str]): Their paths (may be shorter than ``B``).

    Raises:
        ValueError: If any score or map value is non-finite, naming the images and the likely cause.
    """
    bad = ~torch.isfinite(pred_score.reshape(pred_score.shape[0], -1)).all(dim=1)
    bad |= ~torch.isfinite(anomaly_map.reshape(anomaly_map.shape[0], -1)).all(dim=1)
    if not bool(bad.any()):
        return
    indices = bad.nonzero().flatten().tolist()
    names = [str(paths[i]) if i < len(paths) else f"<batch item {i}>" for i in indices]
    image_bad = ~torch.isfinite(images.reshape(images.shape[0], -1)).all(dim=1)
    if bool(image_bad[indices].all()):
        cause = "the input images themselves contain NaN/Inf after pre-processing (corrupt or degenerate files)"
    else:
        cause = (
            "the backbone features or the flows give NaN/Inf for them (degenerate input, or a corrupt model: "
            "retrain with a lower --model.learning_rate)"
        )
    msg = f"BGAD cannot score {len(names)} image(s), {cause}: {', '.join(names)}. No NaN scores are reported."
    raise ValueError(msg)
