"""The few ``torch.distributed`` collectives BGAD's training needs under DDP.

Without ``torch.distributed`` (or with one process) every helper returns its input: single-process training pays
nothing. Each helper is a collective: under DDP all ranks must call it, in the same order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether ``torch.distributed`` runs with more than one process (e.g. Lightning DDP)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def max_over_ranks(count: int, device: torch.device) -> int:
    """Maximum of ``count`` over all ranks (a host synchronisation under DDP); ``count`` otherwise."""
    if not is_distributed():
        return count
    value = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def gather_padded(values: torch.Tensor, padding: float | bool) -> torch.Tensor:
    """Concatenate a 1-D tensor over all ranks, rank 0 first; sizes may differ between ranks.

    Each rank's tensor is padded to the largest size with ``padding`` before the all-gather; the padding stays in
    the result, so choose a value that the caller ignores (e.g. ``False`` in a selection mask). Every rank gets
    the same result.

    Args:
        values (torch.Tensor): 1-D tensor of this rank.
        padding (float | bool): Fill value of the padding.

    Returns:
        torch.Tensor: ``(world_size * max_size,)``.
    """
    if not is_distributed():
        return values
    if values.dtype == torch.bool:  # not every backend (gloo) gathers booleans
        return gather_padded(values.to(torch.uint8), int(padding)).bool()
    size = max_over_ranks(values.numel(), values.device)
    padded = values.new_full((size,), padding)
    padded[: values.numel()] = values
    gathered = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, padded)
    return torch.cat(gathered)


def all_ranks_true(flag: torch.Tensor) -> torch.Tensor:
    """A boolean scalar and-ed over all ranks (stays on the device); ``flag`` itself without DDP."""
    if not is_distributed():
        return flag
    value = flag.to(torch.int32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value[0].bool()
