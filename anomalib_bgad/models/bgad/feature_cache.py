"""Backbone features of training images, computed once and reused across epochs.

The backbone is frozen, so an image's features never change during training: only the flows learn. Recomputing
them every epoch is wasted work (on 2 CPU cores, a quarter of a training epoch once the flows are fast).

The cache is keyed by the image's **content**, not its path: a BLAKE2b digest of the bytes of the pre-processed
image tensor. An augmented or regenerated image (a pseudo anomaly carries the path of the normal
image it was pasted on) gets another key, misses, and has its features computed; nothing stale is ever served.
Entries not used during an epoch are dropped at its end, so regenerated pseudo anomalies do not pile up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch


class FeatureCache:
    """Features per image content; misses go through the backbone in one call.

    Args:
        max_images (int): Most images kept; beyond it, new images are computed but not stored. Defaults to
            ``100_000`` (with ``tf_efficientnet_lite0`` at 256 px, about 0.7 MB of features per image).
    """

    def __init__(self, max_images: int = 100_000) -> None:
        self.max_images = max_images
        self._store: dict[bytes, list[torch.Tensor]] = {}
        self._used: set[bytes] = set()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        """Images stored."""
        return len(self._store)

    @staticmethod
    def fingerprints(images: torch.Tensor) -> list[bytes]:
        """A BLAKE2b digest of every image's bytes: an exact content key (one host copy per batch on a GPU).

        Args:
            images (torch.Tensor): ``(B, ...)`` images.

        Returns:
            list[bytes]: One 16-byte key per image.
        """
        pixels = images.detach().contiguous().cpu().numpy()
        return [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in pixels]

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
        computed: dict[bytes, list[torch.Tensor]] = {}
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
