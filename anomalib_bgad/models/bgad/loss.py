"""Losses of BGAD: maximum likelihood, the explicit boundary and BG-SPP (paper Eq. 5-8).

All functions take per-fiber log-likelihoods ``l = log p(x) / C`` (one value per feature
position, divided by the channel count C so that feature levels are comparable) and a boolean
``is_anomalous`` of the same shape (pixel mask of anomalous and pseudo-anomalous images,
downsampled to the feature level; positions outside the mask count as normal).

Every mean over a selection that may be empty returns 0, never NaN.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import torch
import torch.distributed as dist
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


class LossTerms(NamedTuple):
    """The total loss and its parts, for logging."""

    total: torch.Tensor
    ml: torch.Tensor
    pull: torch.Tensor
    push: torch.Tensor


def masked_mean(values: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[selection]``; 0 (with gradient) for an empty selection."""
    selection = selection.to(values.dtype)
    return (values * selection).sum() / selection.sum().clamp(min=1.0)


def normal_focal_weights(log_likelihood: torch.Tensor, normalizer: float = 10.0) -> torch.Tensor:
    """Focal weights for normal fibers (authors' ``normal_fl_weighting``, gamma 0.5, alpha 11.7).

    Fibers near the boundary region (``ln <= -0.2``) get ``11.7 * (1 - exp(ln))**0.5 * |ln|``, others 1.
    """
    normalized = log_likelihood.detach() / normalizer
    focal = 11.7 * (1 - normalized.exp()).clamp(min=0).pow(0.5) * normalized.abs()
    return torch.where(normalized > -0.2, torch.ones_like(normalized), focal)


def abnormal_focal_weights(log_likelihood: torch.Tensor, normalizer: float = 10.0) -> torch.Tensor:
    """Focal weights for anomalous fibers (authors' ``abnormal_fl_weighting``, gamma 2, alpha 0.53).

    Anomalous fibers still above ``ln = -1`` get ``0.53 * (1 + exp(ln))**2 / |ln|``, others 1.
    """
    normalized = log_likelihood.detach() / normalizer
    focal = 0.53 * (1 + normalized.exp()).pow(2) / normalized.abs().clamp(min=1e-6)
    return torch.where(normalized <= -1.0, torch.ones_like(normalized), focal)


def normal_boundary(
    normalized: torch.Tensor,
    is_anomalous: torch.Tensor,
    beta: float,
    lower_limit: float = -1.0,
) -> torch.Tensor | None:
    """The normal boundary ``b_n``: the beta-quantile of the normalised normal log-likelihoods.

    Normal values below ``lower_limit`` (outliers far from the normal mass) are left out of the
    statistic. If that leaves nothing (early in training every value may be below it), all normal
    values are used.

    Args:
        normalized (torch.Tensor): Normalised log-likelihoods ``ln = l / alpha``, shape ``(N,)``.
        is_anomalous (torch.Tensor): Boolean, shape ``(N,)``.
        beta (float): Quantile position in ``(0, 1)`` (paper: 0.01).
        lower_limit (float): Values below this are excluded. Defaults to ``-1``.

    Returns:
        torch.Tensor | None: Scalar boundary (detached), or ``None`` if there is no normal fiber.
    """
    normal = normalized.detach()[~is_anomalous]
    if normal.numel() == 0:
        return None
    kept = normal[normal >= lower_limit]
    if kept.numel() == 0:
        kept = normal
    # torch.quantile refuses very large inputs; kthvalue gives the same order statistic.
    k = max(1, min(kept.numel(), int(beta * kept.numel()) + 1))
    return kept.float().kthvalue(k).values.to(normalized.dtype)


def is_distributed() -> bool:
    """Whether ``torch.distributed`` runs with more than one process (e.g. Lightning DDP)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor over all ranks, rank 0 first; sizes may differ between ranks.

    Every rank gets the same result. Sizes are gathered first, then the values padded to the largest
    size (padding is cut off again, so it never reaches a statistic). Without ``torch.distributed``
    (or with one process) the tensor itself is returned. A collective: all ranks must call it.

    Args:
        values (torch.Tensor): 1-D tensor of this rank.

    Returns:
        torch.Tensor: The values of all ranks, concatenated.
    """
    if not is_distributed():
        return values
    world_size = dist.get_world_size()
    size = torch.tensor([values.numel()], dtype=torch.long, device=values.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    counts = [int(count.item()) for count in sizes]
    padded = values.new_full((max(max(counts), 1),), float("nan"))
    padded[: values.numel()] = values
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:count] for part, count in zip(gathered, counts, strict=True)])


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """``flag`` and-ed over all ranks under ``torch.distributed`` (a collective); ``flag`` itself otherwise."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def max_over_ranks(count: int, device: torch.device) -> int:
    """Maximum of ``count`` over all ranks under ``torch.distributed`` (a collective); ``count`` otherwise."""
    if not is_distributed():
        return count
    value = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


class BgadLoss(nn.Module):
    """Maximum-likelihood loss plus the boundary-guided semi-push-pull terms.

    ``L = L_ml + lambda * (L_n + L_a)`` with (paper Eq. 5-8, ``ln = l / alpha``):

    - ``L_ml = mean_normal(-log sigmoid(l))``
    - ``L_n = mean over normal fibers with ln < b_n of (b_n - ln)`` (pull)
    - ``L_a = mean over anomalous fibers with ln > b_a of (ln - b_a)``, ``b_a = b_n - tau`` (push)

    Args:
        mode (LossMode | str): Objective, see :class:`LossMode`. Defaults to ``"bgad"``.
        beta (float): Boundary quantile. Defaults to ``0.01`` (paper, 1%).
        tau (float): Margin between normal and abnormal boundary. Defaults to ``0.1``.
        normalizer (float): ``alpha`` in ``ln = l / alpha``. Defaults to ``10``.
        bgspp_weight (float): ``lambda``. Defaults to ``1``.
        focal_weighting (bool): Weight terms with the authors' focal weights. Defaults to ``False``.
    """

    def __init__(
        self,
        mode: LossMode | str = LossMode.BGAD,
        beta: float = 0.01,
        tau: float = 0.1,
        normalizer: float = 10.0,
        bgspp_weight: float = 1.0,
        focal_weighting: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < beta < 1:
            msg = f"beta must be in (0, 1), got {beta}."
            raise ValueError(msg)
        if normalizer <= 0:
            msg = f"normalizer must be > 0, got {normalizer}."
            raise ValueError(msg)
        self.mode = LossMode(mode)
        self.beta = beta
        self.tau = tau
        self.normalizer = normalizer
        self.bgspp_weight = bgspp_weight
        self.focal_weighting = focal_weighting

    def boundary(
        self,
        log_likelihood: torch.Tensor,
        is_anomalous: torch.Tensor,
        across_ranks: bool = False,
    ) -> torch.Tensor | None:
        """Normal boundary ``b_n`` of a fiber batch, in normalised units (see :func:`normal_boundary`).

        Args:
            log_likelihood (torch.Tensor): ``l`` per fiber, shape ``(N,)``.
            is_anomalous (torch.Tensor): Boolean per fiber, shape ``(N,)``.
            across_ranks (bool): Under ``torch.distributed`` (DDP), take the quantile over the normal values of
                all ranks (all-gathered), so that every rank gets the boundary a single process would compute
                on the union of the ranks' fibers. A collective: all ranks must call it. Defaults to ``False``.

        Returns:
            torch.Tensor | None: Scalar boundary, or ``None`` if there is no normal fiber (on any rank).
        """
        normal = (log_likelihood.detach() / self.normalizer)[~is_anomalous.bool()]
        if across_ranks:
            normal = gather_across_ranks(normal)
        return normal_boundary(normal, torch.zeros_like(normal, dtype=torch.bool), self.beta)

    def forward(
        self,
        log_likelihood: torch.Tensor,
        is_anomalous: torch.Tensor,
        boundary: torch.Tensor | None = None,
        with_boundary_terms: bool = True,
    ) -> LossTerms:
        """Compute the loss of one fiber batch.

        Args:
            log_likelihood (torch.Tensor): ``l = log p / C`` per fiber, shape ``(N,)``.
            is_anomalous (torch.Tensor): Boolean per fiber, shape ``(N,)``.
            boundary (torch.Tensor | None): ``b_n``. Defaults to the batch's own (authors' behaviour).
            with_boundary_terms (bool): ``False`` in phase 1 (ML loss only).

        Returns:
            LossTerms: total, ml, pull and push terms.
        """
        is_anomalous = is_anomalous.bool()
        is_normal = ~is_anomalous
        zero = log_likelihood.new_zeros(())
        normal_weights = normal_focal_weights(log_likelihood, self.normalizer) if self.focal_weighting else 1.0
        ml = masked_mean(-F.logsigmoid(log_likelihood) * normal_weights, is_normal)
        if not (with_boundary_terms and self.mode.uses_boundary):
            return LossTerms(ml, ml, zero, zero)

        if boundary is None:
            boundary = self.boundary(log_likelihood, is_anomalous)
        if boundary is None:  # no normal fiber in this batch: nothing to anchor the boundary on
            return LossTerms(ml, ml, zero, zero)
        normalized = log_likelihood / self.normalizer
        pull = masked_mean((boundary - normalized) * normal_weights, is_normal & (normalized < boundary))

        push = zero
        if self.mode.uses_anomalies:
            abnormal_boundary = boundary - self.tau
            abnormal_weights = abnormal_focal_weights(log_likelihood, self.normalizer) if self.focal_weighting else 1.0
            pushed = (
                is_anomalous if self.mode is LossMode.BGAD_DAGGER else is_anomalous & (normalized > abnormal_boundary)
            )
            push = masked_mean((normalized - abnormal_boundary) * abnormal_weights, pushed)

        return LossTerms(ml + self.bgspp_weight * (pull + push), ml, pull, push)
