"""Anomaly map of BGAD: distance below the learned normal boundary.

For every feature level k the map is ``d_k = b_n,k - ln_k`` (:meth:`.boundary.Boundary.distance`) where
``ln_k = l_k / alpha`` is the normalised log-likelihood of a feature position and ``b_n,k`` the normal boundary
learned in training. ``d_k > 0`` means "less likely than the boundary": positions outside the normal region.
The levels are upsampled (bilinear) to the input size and averaged, then smoothed with a
Gaussian (sigma 4, as anomalib's flow models do; 0 disables). The image score is the mean of the map's
highest 1 % of pixels (:mod:`.image_score`; ``image_score_top_share: 0`` gives its maximum).

In one line::

    anomaly_map = G_sigma * (1/K) sum_k up_bilinear(b_n,k - l_k / alpha),    pred_score = mean(top 1 % of anomaly_map)

The unit is the normalised log-likelihood: a score of 0.05 means the least likely 1 % of the
image lies on average 0.05 below the normal boundary (``b_a = b_n - tau`` is at ``tau = 0.1``). anomalib's
post-processor then min-max normalises scores and maps with statistics from the validation set and
thresholds them, as for any model; those statistics and the threshold are stored in the checkpoint
and exported.

Every operation is per image, so a score does not depend on the other images in the batch or
on the test set (unlike the authors' code, which normalises by the test-set maximum, and
anomalib's CFLOW, which normalises by the batch maximum). The smoothing is anomalib's
``GaussianBlur2d`` kernel applied as two 1D convolutions (same result, 25x fewer operations).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from torch import nn

from .boundary import Boundary

LevelAggregation = Literal["mean", "max", "probability"]
"""Values of ``level_aggregation`` (a ``Literal``, so that anomalib's CLI rejects any other at parsing)."""
LEVEL_AGGREGATIONS = get_args(LevelAggregation)


class AnomalyMapGenerator(nn.Module):
    """Turn per-level normalised log-likelihood maps into an anomaly map.

    Args:
        sigma (float): Standard deviation of the Gaussian smoothing, in pixels of the input image.
            ``0`` disables smoothing. Defaults to ``4``.
        level_aggregation (LevelAggregation): How the upsampled per-level distances ``d_k = b_n,k - ln_k`` combine:
            ``"mean"`` (default), ``"max"``, or ``"probability"``: the mean of ``1 - exp(-alpha * max(d_k, 0))``,
            the authors' likelihood-ratio aggregation (per level ``exp(l)``, summed, subtracted from a constant)
            taken relative to each level's boundary instead of the test set's maximum, so it stays per image.

    Raises:
        ValueError: For an unknown ``level_aggregation``.
    """

    def __init__(self, sigma: float = 4.0, level_aggregation: LevelAggregation = "mean") -> None:
        super().__init__()
        if level_aggregation not in LEVEL_AGGREGATIONS:
            msg = f"level_aggregation must be one of {', '.join(LEVEL_AGGREGATIONS)}; got {level_aggregation!r}."
            raise ValueError(msg)
        self.level_aggregation = level_aggregation
        self.blur: nn.Module | None = None
        if sigma > 0:
            self.blur = GaussianBlur2d(sigma=sigma, channels=1, kernel_size=2 * math.ceil(3 * sigma) + 1)

    def forward(
        self,
        normalized_log_likelihoods: list[torch.Tensor],
        boundary: Boundary,
        image_size: tuple[int, int] | torch.Size,
    ) -> torch.Tensor:
        """Compute the anomaly map.

        Args:
            normalized_log_likelihoods (list[torch.Tensor]): ``ln_k`` per level, each ``(B, H_k, W_k)``.
            boundary (Boundary): The learned boundary (``b_n`` per level).
            image_size (tuple[int, int] | torch.Size): Output size ``(H, W)``.

        Returns:
            torch.Tensor: Anomaly map of shape ``(B, 1, H, W)``.
        """
        levels = self.upsampled_levels(normalized_log_likelihoods, boundary, image_size)
        if self.level_aggregation == "max":
            anomaly_map = torch.stack(levels).amax(dim=0)
        else:
            anomaly_map = torch.stack(levels).mean(dim=0)
        return self.smooth(anomaly_map)

    def upsampled_levels(
        self,
        normalized_log_likelihoods: list[torch.Tensor],
        boundary: Boundary,
        image_size: tuple[int, int] | torch.Size,
    ) -> list[torch.Tensor]:
        """Each level's term of the map before aggregation and smoothing: ``d_k`` (or, for ``"probability"``,
        ``1 - exp(-alpha * max(d_k, 0))``) upsampled bilinearly to ``image_size``, ``(B, 1, H, W)`` per level."""
        levels = []
        for level, log_likelihood in enumerate(normalized_log_likelihoods):
            distance = boundary.distance(level, log_likelihood)
            if self.level_aggregation == "probability":
                distance = 1 - torch.exp(-boundary.normalizer * distance.clamp(min=0))
            levels.append(F.interpolate(distance.unsqueeze(1), size=tuple(image_size), mode="bilinear"))
        return levels

    def smooth(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Gaussian smoothing, the same as anomalib's ``GaussianBlur2d`` (reflect padding) but separable.

        The normalised 2D Gaussian kernel is the outer product of its row and column sums, so one vertical
        and one horizontal 1D convolution give the 2D convolution with ``2K`` instead of ``K^2`` products per
        pixel (25x fewer for ``K = 25``). The 2D kernel stays the module's buffer (checkpoint layout).

        Args:
            anomaly_map (torch.Tensor): ``(B, 1, H, W)``.

        Returns:
            torch.Tensor: Smoothed map, same shape; ``anomaly_map`` itself when smoothing is off (``sigma`` 0).
        """
        if self.blur is None:
            return anomaly_map
        kernel = self.blur.kernel[0, 0]
        padded = F.pad(anomaly_map, self.blur.padding_shape, mode=self.blur.border_type)
        vertical = F.conv2d(padded, kernel.sum(dim=1).view(1, 1, -1, 1))
        return F.conv2d(vertical, kernel.sum(dim=0).view(1, 1, 1, -1))
