"""Backbone features of training images, computed once and reused across epochs.

The backbone is frozen, so an image's features never change during training: only the flows learn. Recomputing
them every epoch is wasted work (on 2 CPU cores, a quarter of a training epoch once the flows are fast).

The cache is keyed by the image's **content**, not its path: an exact integer fingerprint of the bits of the
pre-processed image tensor. An augmented or regenerated image (a pseudo anomaly carries the path of the normal
image it was pasted on) gets another key, misses, and has its features computed; nothing stale is ever served.
Entries not used during an epoch are dropped at its end, so regenerated pseudo anomalies do not pile up.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_SEED = 0x5EED_BDAD


class FeatureCache:
    """Features per image content; misses go through the backbone in one call.

    Args:
        max_images (int): Most images kept; beyond it, new images are computed but not stored. Defaults to
            ``100_000`` (with ``tf_efficientnet_lite0`` at 256 px, about 0.7 MB of features per image).
    """

    def __init__(self, max_images: int = 100_000) -> None:
        self.max_images = max_images
        self._store: dict[tuple[int, int], list[torch.Tensor]] = {}
        self._used: set[tuple[int, int]] = set()
        self._weights: dict[tuple[int, torch.device], torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        """Images stored."""
        return len(self._store)

    def fingerprints(self, images: torch.Tensor) -> list[tuple[int, int]]:
        """An exact, order-independent 2 x 64-bit fingerprint of every image's bits.

        Each float32 value is split into its two 16-bit halves and summed with two fixed pseudo-random weight
        vectors below ``2**24``: every product is below ``2**40`` and the sums stay below ``2**63`` for up to
        ``2**22`` values per image, so the integer arithmetic never overflows and does not depend on the
        reduction order (same result on any device and batch size). One host synchronisation per call.

        Args:
            images (torch.Tensor): ``(B, ...)`` float32 images.

        Returns:
            list[tuple[int, int]]: One key per image.
        """
        bits = images.detach().float().contiguous().view(torch.int32).flatten(1).to(torch.int64)
        halves = torch.cat([bits & 0xFFFF, (bits >> 16) & 0xFFFF], dim=1)
        weights = self._weight_table(halves.shape[1], halves.device)
        # Elementwise products and sums: CUDA has no int64 matrix product.
        sums = torch.stack([(halves * column).sum(dim=1) for column in weights], dim=1)  # (B, 2)
        return [tuple(row) for row in sums.tolist()]

    def _weight_table(self, size: int, device: torch.device) -> torch.Tensor:
        key = (size, device)
        if key not in self._weights:
            generator = torch.Generator().manual_seed(_SEED)
            self._weights[key] = torch.randint(1, 2**24, (2, size), generator=generator, dtype=torch.int64).to(device)
        return self._weights[key]

    def __call__(
        self,
        images: torch.Tensor,
        extract: Callable[[torch.Tensor], list[torch.Tensor]],
    ) -> list[torch.Tensor]:
        """Features of every level for a batch, from the cache where possible.

        Args:
            images (torch.Tensor): Pre-processed images ``(B, 3, H, W)``.
            extract (Callable[[torch.Tensor], list[torch.Tensor]]): The backbone: images to per-level feature
                maps ``(b, C_k, H_k, W_k)``.

        Returns:
            list[torch.Tensor]: Per level ``(B, C_k, H_k, W_k)``, in the order of ``images``.
        """
        keys = self.fingerprints(images)
        missing = [index for index, key in enumerate(keys) if key not in self._store]
        computed: dict[tuple[int, int], list[torch.Tensor]] = {}
        if missing:
            features = extract(images[missing] if len(missing) < len(keys) else images)
            for row, index in enumerate(missing):
                computed[keys[index]] = [level[row].clone() for level in features]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        for key, value in computed.items():
            if key not in self._store and len(self._store) < self.max_images:
                self._store[key] = value
        self._used.update(keys)
        per_image = [computed[key] if key in computed else self._store[key] for key in keys]
        return [torch.stack([image[level] for image in per_image]) for level in range(len(per_image[0]))]

    def end_epoch(self) -> None:
        """Drop the entries that were not used since the last call (e.g. last epoch's pseudo anomalies)."""
        self._store = {key: value for key, value in self._store.items() if key in self._used}
        self._used = set()

    def clear(self) -> None:
        """Drop everything (e.g. when the backbone or the device changes)."""
        self._store, self._used = {}, set()
