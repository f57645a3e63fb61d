"""Losses of BGAD: maximum likelihood and the boundary-guided semi-push-pull terms (paper Eq. 5-8).

The loss takes per-fiber log-likelihoods ``l = log p(x) / C`` (one value per feature position, divided by the
channel count C so that feature levels are comparable), their normalised values ``ln = l / alpha``, which fibers
are normal and which anomalous (the pixel mask of anomalous and pseudo-anomalous images downsampled to the
feature level; positions outside the mask count as normal), and the boundaries ``b_n`` and ``b_a`` of
:mod:`.boundary`.

Every mean over a selection that may be empty returns 0, never NaN, and nothing here synchronises with the host.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


class LossMode(str, Enum):
    """Training objectives: the full method and the paper's ablations.

    - ``bgad``: ML + BG-SPP (pull normals above ``b_n``, push anomalies below ``b_a``), Eq. 8.
    - ``nfad``: ML loss only, no anomalies (the unsupervised normalising-flow baseline).
    - ``bgad_wo``: ML + the normal pull term only, no anomalies ("BGAD w/o").
    - ``bgad_dagger``: ML + pull + a conventional contrastive push of every anomalous fiber,
      with no margin bound ("BGAD-dagger").
    """

    BGAD = "bgad"
    NFAD = "nfad"
    BGAD_WO = "bgad_wo"
    BGAD_DAGGER = "bgad_dagger"

    @property
    def uses_anomalies(self) -> bool:
        """Whether the objective trains on anomalous images at all."""
        return self in {LossMode.BGAD, LossMode.BGAD_DAGGER}

    @property
    def uses_boundary(self) -> bool:
        """Whether the objective has boundary (pull/push) terms."""
        return self is not LossMode.NFAD


LossModeName = Literal["bgad", "nfad", "bgad_wo", "bgad_dagger"]
"""The values of :class:`LossMode`, as the type of ``Bgad``'s ``loss_mode``: a ``Literal``, so that anomalib's CLI
rejects any other at parsing."""


class LossTerms(NamedTuple):
    """The total loss and its parts, for logging."""

    total: torch.Tensor
    ml: torch.Tensor
    pull: torch.Tensor
    push: torch.Tensor


def masked_mean(values: torch.Tensor, selection: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``values[selection]``, weighted by ``weights[selection]`` if given (``sum(w * v) / sum(w)``); 0 (with
    gradient) for an empty selection or one of zero total weight. Unselected values never leak in, not even as NaN
    or Inf."""
    if weights is None:
        total = torch.where(selection, values, 0.0).sum()
        return total / selection.sum().clamp(min=1).to(values.dtype)
    total = torch.where(selection, values * weights, 0.0).sum()
    return total / torch.where(selection, weights, 0.0).sum().clamp(min=torch.finfo(values.dtype).tiny)


def normal_focal_weights(normalized: torch.Tensor) -> torch.Tensor:
    """Focal weights for normal fibers (authors' ``normal_fl_weighting``, gamma 0.5, alpha 11.7).

    Fibers near the boundary region (``ln <= -0.2``) get ``11.7 * (1 - exp(ln))**0.5 * |ln|``, others 1.

    Args:
        normalized (torch.Tensor): ``ln`` per fiber.

    Returns:
        torch.Tensor: Weights, same shape (no gradient).
    """
    normalized = normalized.detach()
    focal = 11.7 * (1 - normalized.exp()).clamp(min=0).pow(0.5) * normalized.abs()
    return torch.where(normalized > -0.2, torch.ones_like(normalized), focal)


def abnormal_focal_weights(normalized: torch.Tensor) -> torch.Tensor:
    """Focal weights for anomalous fibers (authors' ``abnormal_fl_weighting``, gamma 2, alpha 0.53).

    Anomalous fibers still above ``ln = -1`` get ``0.53 * (1 + exp(ln))**2 / |ln|``, others 1.

    Args:
        normalized (torch.Tensor): ``ln`` per fiber.

    Returns:
        torch.Tensor: Weights, same shape (no gradient).
    """
    normalized = normalized.detach()
    focal = 0.53 * (1 + normalized.exp()).pow(2) / normalized.abs().clamp(min=1e-6)
    return torch.where(normalized <= -1.0, torch.ones_like(normalized), focal)


class BgadLoss(nn.Module):
    """Maximum-likelihood loss plus the boundary-guided semi-push-pull terms.

    ``L = L_ml + lambda * (L_n + L_a)`` with (paper Eq. 5-8, ``ln = l / alpha``):

    - ``L_ml = mean_normal(-log sigmoid(l))``
    - ``L_n = mean over normal fibers with ln < b_n of (b_n - ln)`` (pull)
    - ``L_a = mean over anomalous fibers with ln > b_a of (ln - b_a)`` (push; ``bgad_dagger``: every anomalous
      fiber, no bound)

    Args:
        mode (LossMode | str): Objective, see :class:`LossMode`. Defaults to ``"bgad"``.
        bgspp_weight (float): ``lambda``. Defaults to ``1`` (paper).
        focal_weighting (bool): Weight terms with the authors' focal weights. Defaults to ``False``.

    Raises:
        ValueError: If ``mode`` is not a :class:`LossMode`.
    """

    def __init__(
        self,
        mode: LossMode | str = LossMode.BGAD,
        bgspp_weight: float = 1.0,
        focal_weighting: bool = False,
    ) -> None:
        super().__init__()
        self.mode = LossMode(mode)
        self.bgspp_weight = bgspp_weight
        self.focal_weighting = focal_weighting

    def forward(
        self,
        log_likelihood: torch.Tensor,
        normalized: torch.Tensor,
        is_normal: torch.Tensor,
        is_anomalous: torch.Tensor,
        b_n: torch.Tensor,
        b_a: torch.Tensor,
        with_boundary_terms: bool = True,
        fiber_weights: torch.Tensor | None = None,
    ) -> LossTerms:
        """Compute the loss of one fiber batch of one level.

        Args:
            log_likelihood (torch.Tensor): ``l = log p / C`` per fiber, shape ``(N,)``.
            normalized (torch.Tensor): ``ln = l / alpha`` per fiber, ``(N,)``.
            is_normal (torch.Tensor): Boolean ``(N,)``: normal fibers (ML and pull terms).
            is_anomalous (torch.Tensor): Boolean ``(N,)``: anomalous fibers (push term). Fibers in neither
                selection (e.g. dropped as non-finite) do not count.
            b_n (torch.Tensor): Scalar normal boundary (detached).
            b_a (torch.Tensor): Scalar abnormal boundary ``b_n - tau``.
            with_boundary_terms (bool): ``False`` in phase 1 (ML loss only). Defaults to ``True``.
            fiber_weights (torch.Tensor | None): ``(N,)`` non-negative weights: every term becomes the weighted
                mean over its selection (:func:`.fibers.border_weights`). ``None`` (the paper) weighs all alike.

        Returns:
            LossTerms: total, ml, pull and push terms (scalars).
        """
        zero = log_likelihood.new_zeros(())
        normal_weights = normal_focal_weights(normalized) if self.focal_weighting else 1.0
        ml = masked_mean(-F.logsigmoid(log_likelihood) * normal_weights, is_normal, fiber_weights)
        if not (with_boundary_terms and self.mode.uses_boundary):
            return LossTerms(ml, ml, zero, zero)
        pull = masked_mean((b_n - normalized) * normal_weights, is_normal & (normalized < b_n), fiber_weights)
        push = zero
        if self.mode.uses_anomalies:
            abnormal_weights = abnormal_focal_weights(normalized) if self.focal_weighting else 1.0
            pushed = is_anomalous if self.mode is LossMode.BGAD_DAGGER else is_anomalous & (normalized > b_a)
            push = masked_mean((normalized - b_a) * abnormal_weights, pushed, fiber_weights)
        return LossTerms(ml + self.bgspp_weight * (pull + push), ml, pull, push)
