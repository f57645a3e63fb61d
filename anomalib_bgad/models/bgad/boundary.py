"""The explicit boundary of BGAD: how ``b_n`` is estimated, updated, turned into ``b_a``, saved and scored.

BGAD works on the *normalised* log-likelihood of a fiber, ``ln = l / alpha`` with ``l = log p / C`` and
``alpha = 10`` (the "normalizer"), so that normal values sit roughly in ``[-1, 0]``.

- **Estimate** (paper Sec. 3.3, Eq. 6): per feature level and fiber batch, ``b_n`` is the ``beta``-quantile
  (paper: 1 %) of the normal fibers' ``ln``. Normal values below ``-1`` (outliers far from the normal mass) are
  left out; if that leaves none (early in training), all normal values are used. :meth:`Boundary.estimate`.
- **Update:** the authors recompute ``b_n`` for every fiber batch from that batch, and so does the loss here; the
  model keeps, per level, the mean of its epoch's batch estimates (:meth:`Boundary.accumulate`,
  :meth:`Boundary.finish_epoch`), which is what scoring uses.
- **b_a** (Eq. 7): the abnormal boundary ``b_a = b_n - tau``, ``tau = 0.1`` (:attr:`Boundary.b_a`). The BG-SPP
  loss pulls normal fibers above ``b_n`` and pushes anomalous ones below ``b_a`` (:mod:`.loss`).
- **Saved:** ``b_n`` is a buffer (checkpoint key ``model.boundary.b_n``; 0.1.0 checkpoints stored it as
  ``model.normal_boundary`` and are mapped on load by :func:`map_legacy_state`), exported with the model. The
  epoch's running sums are training state, saved by :meth:`Boundary.training_state`.
- **Scored:** the anomaly map is how far a position falls below the boundary, ``b_n - ln`` per level
  (:meth:`Boundary.distance`, used by :mod:`.anomaly_map`).

Every operation here stays on the device: no host synchronisation in a training step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .distributed import gather_padded, is_distributed

# Normal ln values below this are left out of the boundary statistics (authors' code).
LOWER_LIMIT = -1.0
LEGACY_STATE_KEY = "normal_boundary"  # the 0.1.0 name of ``b_n`` in BgadModel's state dict


class Boundary(nn.Module):
    """Per-level normal boundary ``b_n`` with its epoch update, ``b_a`` and the score distance.

    Args:
        num_levels (int): Number of feature levels ``K``.
        beta (float): Quantile of the normal ``ln`` that defines ``b_n``, in ``(0, 1)``. Defaults to ``0.01``
            (paper).
        tau (float): Margin ``b_n - b_a``, finite and ``>= 0``. Defaults to ``0.1`` (paper).
        normalizer (float): ``alpha`` in ``ln = l / alpha``, ``> 0``. Defaults to ``10`` (paper).

    Raises:
        ValueError: If ``beta`` is outside ``(0, 1)``, ``normalizer <= 0`` or ``tau`` is negative or not finite.
    """

    def __init__(self, num_levels: int, beta: float = 0.01, tau: float = 0.1, normalizer: float = 10.0) -> None:
        super().__init__()
        if not 0 < beta < 1:
            msg = f"beta must be in (0, 1), got {beta}."
            raise ValueError(msg)
        if normalizer <= 0:
            msg = f"normalizer must be > 0, got {normalizer}."
            raise ValueError(msg)
        if not 0 <= tau < float("inf"):
            msg = f"tau (the margin b_n - b_a, paper Eq. 7; 0.1 in the paper) must be finite and >= 0, got {tau}."
            raise ValueError(msg)
        self.beta = beta
        self.tau = tau
        self.normalizer = normalizer
        self.register_buffer("b_n", torch.zeros(num_levels))
        # The running epoch update: sum and count of the accepted batch estimates per level (training state).
        self.register_buffer("epoch_sum", torch.zeros(num_levels, dtype=torch.float64), persistent=False)
        self.register_buffer("epoch_count", torch.zeros(num_levels, dtype=torch.float64), persistent=False)

    @property
    def b_a(self) -> torch.Tensor:
        """The abnormal boundary ``b_a = b_n - tau`` per level, ``(K,)`` (paper Eq. 7)."""
        return self.b_a_of(self.b_n)

    def b_a_of(self, b_n: torch.Tensor) -> torch.Tensor:
        """``b_a = b_n - tau`` for any ``b_n``: the learned one, or one step's estimate in training (paper Eq. 7)."""
        return b_n - self.tau

    def normalize(self, log_likelihood: torch.Tensor) -> torch.Tensor:
        """``ln = l / alpha``: the unit of the boundary, the loss's boundary terms and the score."""
        return log_likelihood / self.normalizer

    def estimate(
        self,
        normalized: torch.Tensor,
        is_normal: torch.Tensor,
        across_ranks: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``b_n`` of one fiber batch: the ``beta``-quantile of its normal ``ln`` (paper Eq. 6), on the device.

        The order statistic is the one of ``torch.kthvalue`` with ``k = floor(beta * n) + 1`` over the ``n``
        selected values (normal, and ``>= -1`` unless none is).

        Args:
            normalized (torch.Tensor): ``ln`` per fiber, ``(N,)``.
            is_normal (torch.Tensor): Boolean ``(N,)``: the fibers the boundary is estimated from.
            across_ranks (bool): Under ``torch.distributed`` (DDP), take the quantile over the fibers of all
                ranks, so every rank gets what one process would compute on their union. A collective: all
                ranks must call it. Defaults to ``False``.

        Returns:
            tuple[torch.Tensor, torch.Tensor]: The scalar estimate (detached; 0 when invalid) and whether it is
            valid (a boolean scalar: False when the batch has no normal fiber).
        """
        values = normalized.detach().float()
        if across_ranks and is_distributed():
            values = gather_padded(values, 0.0)
            is_normal = gather_padded(is_normal, False)
        if values.numel() == 0:
            return normalized.new_zeros(()), torch.zeros((), dtype=torch.bool, device=values.device)
        kept = is_normal & (values >= LOWER_LIMIT)
        use_all = ~kept.any()
        selected = torch.where(use_all, is_normal, kept)
        count = selected.sum()
        ordered = torch.where(selected, values, torch.inf).sort().values
        index = torch.floor(count.double() * self.beta).long().clamp(max=(count - 1).clamp(min=0))
        valid = count > 0
        value = torch.where(valid, ordered.gather(0, index.view(1))[0], 0.0)
        return value.to(normalized.dtype), valid

    def accumulate(self, level: int, estimate: torch.Tensor, accept: torch.Tensor) -> None:
        """Add one accepted batch estimate of ``level`` to the epoch update (``accept`` is a boolean scalar)."""
        accepted = accept.double()
        self.epoch_sum[level] += torch.where(accept, estimate.double(), 0.0)
        self.epoch_count[level] += accepted

    def finish_epoch(self) -> None:
        """Set ``b_n`` of every level that had accepted estimates to their epoch mean, then reset the sums."""
        has_estimates = self.epoch_count > 0
        mean = self.epoch_sum / self.epoch_count.clamp(min=1)
        self.b_n.copy_(torch.where(has_estimates, mean.to(self.b_n.dtype), self.b_n))
        self.epoch_sum.zero_()
        self.epoch_count.zero_()

    def distance(self, level: int, normalized: torch.Tensor) -> torch.Tensor:
        """How far ``ln`` lies below the normal boundary of ``level``: ``b_n - ln`` (positive = outside).

        Args:
            level (int): Feature level.
            normalized (torch.Tensor): ``ln`` of any shape.

        Returns:
            torch.Tensor: Same shape, in normalised log-likelihood units (``b_a`` lies at ``tau``).
        """
        return self.b_n[level] - normalized

    def training_state(self) -> dict[str, Any]:
        """The epoch update in progress, as plain data for a checkpoint (loads with ``weights_only=True``)."""
        return {"epoch_sum": self.epoch_sum.tolist(), "epoch_count": self.epoch_count.tolist()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`training_state` saved."""
        self.epoch_sum.copy_(torch.tensor(state["epoch_sum"], dtype=torch.float64))
        self.epoch_count.copy_(torch.tensor(state["epoch_count"], dtype=torch.float64))


def map_legacy_state(state_dict: dict[str, Any], prefix: str) -> None:
    """Rename a 0.1.0 ``b_n`` (``<prefix>normal_boundary``) to ``<prefix>boundary.b_n``, in place.

    Args:
        state_dict (dict[str, Any]): A state dict (e.g. a checkpoint's ``"state_dict"``).
        prefix (str): Key prefix of the :class:`~.torch_model.BgadModel` in it, e.g. ``"model."``.
    """
    legacy, current = prefix + LEGACY_STATE_KEY, prefix + "boundary.b_n"
    if legacy in state_dict and current not in state_dict:
        state_dict[current] = state_dict.pop(legacy)
