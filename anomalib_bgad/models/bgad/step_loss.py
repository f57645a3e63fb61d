"""The loss of one optimiser step: every level's fibers at one position group (:mod:`.fibers`), scored by the
flows, with the boundary ``b_n`` estimated on the step's normal fibers (:mod:`.boundary`) and the ML + BG-SPP
loss (:mod:`.loss`, paper Eq. 8) summed over the levels.

Nothing here synchronises with the host: the finiteness flags stay on the device for :mod:`.numerics`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .fibers import LabeledFibers, gather_position_values, gather_positions
from .loss import BgadLoss
from .torch_model import BgadModel


class StepLoss(NamedTuple):
    """The loss of one optimiser step and what the step's bookkeeping needs.

    Attributes:
        total (torch.Tensor): Scalar loss summed over the levels (differentiable).
        b_n (list[tuple[torch.Tensor, torch.Tensor]]): Per level, the step's boundary estimate and whether it is
            valid (the step had normal fibers at that level), for :meth:`.boundary.Boundary.accumulate`.
        terms (torch.Tensor): ``(4,)`` detached sums over the levels of total, ML, pull and push.
        anomalous_fibers (torch.Tensor): Scalar count of the step's anomalous fibers.
        log_likelihood_finite (torch.Tensor): Boolean scalar: every fiber's ``l`` is finite.
        loss_finite (torch.Tensor): Boolean scalar: the loss and every ``b_n`` are finite.
    """

    total: torch.Tensor
    b_n: list[tuple[torch.Tensor, torch.Tensor]]
    terms: torch.Tensor
    anomalous_fibers: torch.Tensor
    log_likelihood_finite: torch.Tensor
    loss_finite: torch.Tensor


def position_group_loss(
    model: BgadModel,
    loss: BgadLoss,
    fibers: LabeledFibers,
    groups: list[torch.Tensor],
    with_boundary_terms: bool,
) -> StepLoss:
    """Loss of one position group of every level (the authors' code takes one level's chunk of 4096 fibers).

    Under DDP ``b_n`` is the quantile over the normal fibers of all ranks (:meth:`.boundary.Boundary.estimate`).
    The quantile is unweighted; ``fibers.weights`` (border weighting) weigh the loss terms only.

    Args:
        model (BgadModel): The flows and the boundary.
        loss (BgadLoss): The loss of one level.
        fibers (LabeledFibers): The batch's feature maps and fiber labels (:func:`.fibers.label_fibers`).
        groups (list[torch.Tensor]): Per level, ``(P_k,)`` grid positions on the features' device.
        with_boundary_terms (bool): ``False`` in phase 1 (ML loss only).

    Returns:
        StepLoss: The summed loss, the boundary estimates and the step's flags.
    """
    boundary, device = model.boundary, fibers.features[0].device
    total, estimates, terms_sum = 0.0, [], torch.zeros(4, device=device)
    ll_finite = loss_finite = torch.ones((), dtype=torch.bool, device=device)
    anomalous_fibers = torch.zeros((), device=device)
    for level, group in enumerate(groups):
        features = gather_positions(fibers.features[level], group)
        is_normal = gather_position_values(fibers.normal[level], group)
        is_anomalous = gather_position_values(fibers.anomalous[level], group)
        log_likelihood = model.position_group_log_likelihood(level, features, fibers.grids[level], group)
        weights = None
        if fibers.weights is not None:
            weights = gather_position_values(fibers.weights[level].expand_as(fibers.normal[level]), group)
        normalized = boundary.normalize(log_likelihood)
        b_n, valid = boundary.estimate(normalized, is_normal, across_ranks=True)
        b_a = boundary.b_a_of(b_n)
        terms = loss(log_likelihood, normalized, is_normal, is_anomalous, b_n, b_a, with_boundary_terms, weights)
        total = total + terms.total
        estimates.append((b_n, valid))
        terms_sum += torch.stack(list(terms)).detach()
        anomalous_fibers += is_anomalous.sum()
        ll_finite = ll_finite & torch.isfinite(log_likelihood).all()
        loss_finite = loss_finite & torch.isfinite(terms.total) & torch.isfinite(b_n)
    return StepLoss(total, estimates, terms_sum, anomalous_fibers, ll_finite, loss_finite)
