"""Image score of BGAD: the mean of the anomaly map's highest pixels, or its maximum.

``top_share = s`` gives the mean of the ``max(1, round(s * H * W))`` highest pixels of each image's map: a defect
that covers a region then outscores a single hot pixel of the same height, such as the border peaks of normal maps
that the border diagnostic (``benchmarks/border.py``) measured. The default share, 1 % (655 pixels of a 256 x 256
map), is about the extent of the smallest blob the map can hold (one stride-16 position, upsampled and smoothed),
so a small defect is averaged over little more than itself (model README, "Score"). ``top_share = 0`` gives
``pred_score = max(anomaly_map)``, as the authors and anomalib's flow models score (this package until 0.3.0).
Either way the score is computed from its image alone, and ``torch.topk`` exports to ONNX and OpenVINO (``TopK``).
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_TOP_SHARE = 0.01  # the default image score: the mean of the map's highest 1 % of pixels


def top_share_mean(anomaly_map: torch.Tensor, top_share: float) -> torch.Tensor:
    """Mean of the highest ``top_share`` of each map's pixels (at least one pixel: ``0`` gives the maximum).

    Args:
        anomaly_map (torch.Tensor): ``(B, ..., H, W)`` maps, one per image.
        top_share (float): Share of the pixels averaged, in ``[0, 1]``.

    Returns:
        torch.Tensor: ``(B,)``, in the map's units.
    """
    flat = anomaly_map.flatten(1)
    return flat.topk(max(1, round(top_share * flat.shape[1])), dim=1).values.mean(dim=1)


class ImageScore(nn.Module):
    """Per-image score from the anomaly map.

    Args:
        top_share (float): The share of the map's highest pixels whose mean is the score (``0.01``: the highest
            1 %), or ``0`` for the map's maximum. Scoring only: any value loads any checkpoint. Defaults to ``0.01``.

    Raises:
        ValueError: If ``top_share`` is not in ``[0, 1]``.
    """

    def __init__(self, top_share: float = DEFAULT_TOP_SHARE) -> None:
        super().__init__()
        if not 0.0 <= top_share <= 1.0:
            msg = (
                f"image_score_top_share must be in [0, 1] (0: the anomaly map's maximum; 0.02: the mean of its "
                f"highest 2 % of pixels); got {top_share}."
            )
            raise ValueError(msg)
        self.top_share = top_share

    def forward(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Score images.

        Args:
            anomaly_map (torch.Tensor): ``(B, 1, H, W)``.

        Returns:
            torch.Tensor: ``(B,)``.
        """
        if self.top_share == 0.0:
            return torch.amax(anomaly_map, dim=(-3, -2, -1))
        return top_share_mean(anomaly_map, self.top_share)
