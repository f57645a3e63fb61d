"""The conditional normalising flow of one feature level, conditioned on the fiber's position.

Each level has a FrEIA ``SequenceINN`` of ``AllInOneBlock`` s (affine clamping 1.9, softplus global affine,
soft permutations) whose coupling subnets see the fiber's features and a 2D sin/cos positional encoding of its
location (CFLOW's scheme, identical for every image). The flow gives the fiber's log-likelihood per dimension::

    l = (C * log(1 / sqrt(2 pi)) - |z|^2 / 2 + log|det J|) / C

The condition reaches the subnets through :class:`ConditionGrid` instead of FrEIA's ``c`` argument, so that
its part of every subnet's first layer is computed once per grid position, not once per fiber (the same
function; see :class:`PositionalSubnet`). Whole-map inference uses the folded blocks of :mod:`.folded_flow`.
"""

from __future__ import annotations

import torch
from anomalib.models.components.flow import AllInOneBlock
from anomalib.models.image.cflow.utils import get_logp, positional_encoding_2d
from FrEIA.framework import SequenceINN
from torch import nn

from .folded_flow import FoldedInference


def is_tracing() -> bool:
    """Whether ``torch.export`` (ONNX/OpenVINO export) or ``torch.compile`` is tracing the model.

    While tracing, tensors created in Python are fake: nothing computed then may be cached, and the eager
    chunk loops (whose trip count depends on the batch size) are replaced by one batched graph.
    """
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


class PositionalCondition(nn.Module):
    """The flows' condition: a 2D sin/cos positional encoding, identical for every image (CFLOW scheme).

    Args:
        dim (int): Condition size, a multiple of 4 (half encodes x, half y). Defaults to 128.

    Raises:
        ValueError: If ``dim`` is not a multiple of 4.
    """

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        if dim % 4:
            msg = f"condition_vector must be a multiple of 4, got {dim}."
            raise ValueError(msg)
        self.dim = dim
        self._cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def forward(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Return the encoding of every grid position ``y * W + x``, shape ``(H * W, dim)``."""
        key = (height, width, torch.device(device))
        encoding = self._cache.get(key)
        if encoding is None:
            if is_tracing():  # a tensor made while tracing is fake: never keep it
                return self._encode(height, width).to(device)
            # A normal tensor even under ``torch.inference_mode`` (an inference tensor could not be used by
            # autograd later, e.g. in training after a validation pass or in an export).
            with torch.inference_mode(False):
                encoding = self._cache[key] = self._encode(height, width).to(device)
        return encoding

    def _encode(self, height: int, width: int) -> torch.Tensor:
        return positional_encoding_2d(self.dim, height, width).permute(1, 2, 0).reshape(height * width, self.dim)


class ConditionGrid:
    """Where the fibers of a flow call sit on the positional grid, shared by the subnets of one flow.

    Attributes:
        conditions (torch.Tensor | None): Condition of every position of the call, ``(P, dim)``.
        positions (torch.Tensor | None): Index into ``conditions`` per fiber ``(N,)``; ``None`` means the fibers
            are ``N = B * P`` rows, batch-major: every image at every position of ``conditions``.
    """

    def __init__(self) -> None:
        self.conditions: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None


class PositionalSubnet(nn.Module):
    """Coupling subnet ``Linear(in, 2 in) -> ReLU -> Linear(2 in, out)`` over ``[features, condition]``.

    The first layer is stored as a feature part and a condition part (the same function as one ``Linear`` over
    the concatenation, and initialised like it). The condition part is computed once per position of the call
    (from :class:`ConditionGrid`) and broadcast over the images, never concatenated to the fibers: with 128
    condition channels and 12-56 feature channels per half, that is most of the subnet's arithmetic.

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
        """Map feature rows ``(N, feature_dims)`` to ``(N, dims_out)``, conditioned on their grid positions.

        Raises:
            RuntimeError: If called outside :class:`ConditionalFlow` (no grid conditions set).
        """
        if self.grid.conditions is None:
            msg = "PositionalSubnet needs the grid conditions; call it through ConditionalFlow."
            raise RuntimeError(msg)
        hidden = self.feature_layer(features)
        per_position = self.condition_layer(self.grid.conditions)  # (P, hidden)
        if self.grid.positions is None:  # every image at every position: broadcast over the batch
            hidden = (hidden.view(-1, *per_position.shape) + per_position).view(hidden.shape)
        else:
            hidden = hidden + per_position[self.grid.positions]
        return self.output_layer(torch.relu(hidden))


class ConditionalFlow(nn.Module):
    """One conditional normalising flow: FrEIA ``SequenceINN`` of ``AllInOneBlock`` s.

    The function is the one of a FrEIA conditional flow with ``cond_shape=(condition_dim,)`` (see
    :class:`PositionalSubnet` for how the condition gets in).

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
        self.folded = FoldedInference(self.inn)

    def forward(
        self,
        fibers: torch.Tensor,
        conditions: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-dimension log-likelihood ``l = log p / C`` of fibers (FrEIA blocks; the training path).

        Args:
            fibers (torch.Tensor): ``(N, C)``.
            conditions (torch.Tensor): Condition of every position of the call, ``(P, dim)``.
            positions (torch.Tensor | None): Index into ``conditions`` per fiber ``(N,)``, or ``None`` when the
                fibers are ``B * P`` rows, batch-major (every image at every position). Defaults to ``None``.

        Returns:
            torch.Tensor: ``(N,)``.
        """
        self.grid.conditions, self.grid.positions = conditions, positions
        try:
            z, log_jac_det = self.inn(fibers)
        finally:
            self.grid.conditions = self.grid.positions = None
        channels = fibers.shape[1]
        return get_logp(channels, z, log_jac_det) / channels

    def map_log_likelihood(
        self,
        fibers: torch.Tensor,
        conditions: torch.Tensor,
        grid_size: tuple[int, int],
    ) -> torch.Tensor:
        """Per-dimension log-likelihood of whole feature maps, with the folded blocks (the inference path).

        The same function as :meth:`forward` up to float rounding (see :mod:`.folded_flow`).

        Args:
            fibers (torch.Tensor): Whole maps as fibers ``(B * H * W, C)``, batch-major then row-major.
            conditions (torch.Tensor): Condition of every grid position, ``(H * W, dim)``.
            grid_size (tuple[int, int]): ``(H, W)``.

        Returns:
            torch.Tensor: ``(B * H * W,)``.
        """
        return self.folded(fibers, conditions, grid_size, tracing=is_tracing())
