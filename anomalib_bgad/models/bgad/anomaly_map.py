"""Anomaly map of BGAD: distance below the learned normal boundary.

For every feature level k the map is ``d_k = b_n,k - ln_k`` where ``ln_k = l_k / alpha`` is the
normalised log-likelihood of a feature position and ``b_n,k`` the normal boundary learned in
training. ``d_k > 0`` means "less likely than the boundary": positions outside the normal region.
The levels are upsampled (bilinear) to the input size and averaged, then smoothed with a
Gaussian (sigma 4, as anomalib's flow models do; 0 disables). The image score is the map's
maximum.

Every operation is per image, so a score does not depend on the other images in the batch or
on the test set (unlike the authors' code, which normalises by the test-set maximum, and
anomalib's CFLOW, which normalises by the batch maximum).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from torch import nn


class AnomalyMapGenerator(nn.Module):
    """Turn per-level normalised log-likelihood maps into an anomaly map.

    Args:
        sigma (float): Standard deviation of the Gaussian smoothing, in pixels of the input image.
            ``0`` disables smoothing. Defaults to ``4``.
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        self.blur: nn.Module | None = None
        if sigma > 0:
            self.blur = GaussianBlur2d(sigma=sigma, channels=1, kernel_size=2 * math.ceil(3 * sigma) + 1)

    def forward(
        self,
        normalized_log_likelihoods: list[torch.Tensor],
        normal_boundary: torch.Tensor,
        image_size: tuple[int, int] | torch.Size,
    ) -> torch.Tensor:
        """Compute the anomaly map.

        Args:
            normalized_log_likelihoods (list[torch.Tensor]): ``ln_k`` per level, each ``(B, H_k, W_k)``.
            normal_boundary (torch.Tensor): ``b_n`` per level, shape ``(K,)``.
            image_size (tuple[int, int] | torch.Size): Output size ``(H, W)``.

        Returns:
            torch.Tensor: Anomaly map of shape ``(B, 1, H, W)``.
        """
        distances = [
            F.interpolate(
                (normal_boundary[level] - log_likelihood).unsqueeze(1),
                size=tuple(image_size),
                mode="bilinear",
                align_corners=False,
            )
            for level, log_likelihood in enumerate(normalized_log_likelihoods)
        ]
        anomaly_map = torch.stack(distances, dim=0).mean(dim=0)
        return self.blur(anomaly_map) if self.blur is not None else anomaly_map
