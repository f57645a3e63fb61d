"""Training set with known anomalies and per-epoch pseudo anomalies (RPAG, SmoothBlend and/or Perlin).

:class:`FewAnomalyTrainSet` wraps the datamodule's training dataset (normal images and known
anomalies, read by anomalib's dataset) and appends pseudo-anomaly indices: first ``num_rpag`` RPAG
ones (a known anomaly pasted on a normal image, :mod:`.rpag`), then ``num_smoothblend`` SmoothBlend
ones (a patch of a normal image blended back elsewhere, :mod:`.smoothblend`), then ``num_perlin`` Perlin
ones (an augmented texture in Perlin-noise blobs, :mod:`.perlin`); the last two need
no known anomaly.
:class:`EpochSampler` yields ``(epoch, index)`` keys: normal images once, known anomalies
``repeat_anomalies`` times and every pseudo index once per epoch, shuffled by
``rng([seed, epoch])``. A pseudo item is generated from ``rng([seed, source, epoch, index])`` only, so it
is the same whatever the worker count, and different in every epoch; the sources use separate
random streams, so adding one leaves the others' samples unchanged.

Lightning calls ``sampler.set_epoch(epoch)`` on the training dataloader's sampler at the start of
every epoch (it does so for any sampler with that method), so the epochs are refreshed with no
callback and no ``reload_dataloaders_every_n_epochs``. Without Lightning, each new iteration of the
sampler moves to the next epoch unless ``set_epoch`` is called.

Example:
    >>> train_set = FewAnomalyTrainSet(datamodule.train_data, num_rpag=10, seed=0)  # doctest: +SKIP
    >>> sampler = EpochSampler(train_set, repeat_anomalies=1, seed=0)  # doctest: +SKIP
    >>> sampler.set_epoch(3); item = train_set[next(iter(sampler))]  # doctest: +SKIP
"""

from collections.abc import Callable, Iterator

import numpy as np
import torch
from anomalib.data.dataclasses import ImageItem
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.utils import LabelName
from torch.utils.data import Dataset, Sampler
from torchvision.tv_tensors import Image as TvImage
from torchvision.tv_tensors import Mask

from anomalib_bgad.data.image_io import MASK_RULE, read_image, read_mask
from anomalib_bgad.data.pseudo_anomalies.foreground import compute_foreground
from anomalib_bgad.data.pseudo_anomalies.perlin import DEFAULT_PERLIN_TEXTURE, check_perlin_texture, generate_perlin
from anomalib_bgad.data.pseudo_anomalies.rpag import generate_pseudo_anomaly
from anomalib_bgad.data.pseudo_anomalies.smoothblend import generate_smoothblend
from anomalib_bgad.data.pseudo_anomalies.sources import PERLIN, RPAG, SMOOTHBLEND

_PSEUDO_STREAM = 1  # separates the pseudo-anomaly random streams from the shuffling stream
_SHUFFLE_STREAM = 2
_SMOOTHBLEND_STREAM = 3
_PERLIN_STREAM = 4


class FewAnomalyTrainSet(Dataset):
    """Known anomalies and normal images of ``base``, plus RPAG, SmoothBlend and Perlin pseudo anomalies per epoch.

    Args:
        base (AnomalibDataset): Training dataset (``label_index`` 0 = normal, 1 = known anomaly with mask).
        seed (int): Seed of the pseudo anomalies.
        num_rpag (int): RPAG pseudo anomalies per epoch (indices ``len(base)`` .. ``len(base) + num_rpag - 1``).
            Defaults to ``0``.
        num_smoothblend (int): SmoothBlend pseudo anomalies per epoch, after the RPAG indices. Defaults to ``0``.
        num_perlin (int): Perlin pseudo anomalies per epoch, after the SmoothBlend indices. Defaults to ``0``.
        paste_in_foreground (bool): Paste inside the normal image's foreground (object categories).
            Defaults to ``False``.
        perlin_texture (str): What fills the Perlin blobs: ``"noise"`` or ``"normal_image"``
            (:mod:`.perlin`). Defaults to ``"noise"``.

    Attributes:
        num_rpag (int): RPAG pseudo anomalies per epoch (0 without known anomalies or normal images).
        num_smoothblend (int): SmoothBlend pseudo anomalies per epoch (0 without normal images).
        num_perlin (int): Perlin pseudo anomalies per epoch (0 without normal images).
        num_pseudo (int): All pseudo anomalies per epoch, ``num_rpag + num_smoothblend + num_perlin``.

    Raises:
        ValueError: If ``num_rpag > 0`` and a known anomaly's mask marks no defect pixel (names the file), or
            ``perlin_texture`` is not one of :data:`.perlin.PERLIN_TEXTURES`.
    """

    def __init__(
        self,
        base: AnomalibDataset,
        seed: int,
        num_rpag: int = 0,
        num_smoothblend: int = 0,
        num_perlin: int = 0,
        paste_in_foreground: bool = False,
        perlin_texture: str = DEFAULT_PERLIN_TEXTURE,
    ) -> None:
        super().__init__()
        check_perlin_texture(perlin_texture)
        labels = base.samples.label_index.to_numpy()
        self.base = base
        self.normal_rows = np.flatnonzero(labels == LabelName.NORMAL)
        self.anomaly_rows = np.flatnonzero(labels == LabelName.ABNORMAL)
        if num_rpag > 0 and (len(self.normal_rows) == 0 or len(self.anomaly_rows) == 0):
            num_rpag = 0  # nothing to paste, or nothing to paste on
        if len(self.normal_rows) == 0:
            num_smoothblend = num_perlin = 0  # nothing to blend
        if num_rpag > 0:
            self._check_rpag_sources()
        self.num_rpag = num_rpag
        self.num_smoothblend = num_smoothblend
        self.num_perlin = num_perlin
        self.num_pseudo = num_rpag + num_smoothblend + num_perlin
        self.seed = seed
        self.paste_in_foreground = paste_in_foreground
        self.perlin_texture = perlin_texture

    def _check_rpag_sources(self) -> None:
        """Every known anomaly RPAG may paste has a defect in its mask (the datamodule checks this at setup too)."""
        samples = self.base.samples
        for row in self.anomaly_rows:
            image, mask = samples.image_path.iloc[row], samples.mask_path.iloc[row]
            if not read_mask(mask).any():
                msg = (
                    f"The mask '{mask}' of known anomaly '{image}' marks no defect pixel: RPAG would have nothing to "
                    f"paste. Mask rule: {MASK_RULE}. Fix the mask or remove the image."
                )
                raise ValueError(msg)

    def __len__(self) -> int:
        """Number of distinct indices: base samples then pseudo anomalies."""
        return len(self.base) + self.num_pseudo

    @property
    def collate_fn(self) -> Callable:
        """anomalib's collate function of the base dataset."""
        return self.base.collate_fn

    def __getitem__(self, key: int | tuple[int, int]) -> ImageItem:
        """Return the base sample or the pseudo anomaly of ``key``.

        Args:
            key (int | tuple[int, int]): ``index`` (epoch 0) or ``(epoch, index)`` as yielded by :class:`EpochSampler`.

        Returns:
            ImageItem: anomalib image item.
        """
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if index < len(self.base):
            return self.base[index]
        return self.pseudo_item(epoch, index - len(self.base))

    def source_of(self, pseudo_index: int) -> str:
        """Generator of a pseudo index: ``"rpag"`` for the first ``num_rpag``, then ``"smoothblend"``, ``"perlin"``.

        Args:
            pseudo_index (int): Index among the epoch's pseudo anomalies.

        Returns:
            str: ``"rpag"``, ``"smoothblend"`` or ``"perlin"``.
        """
        if pseudo_index < self.num_rpag:
            return RPAG
        return SMOOTHBLEND if pseudo_index < self.num_rpag + self.num_smoothblend else PERLIN

    def _foreground(self, image: torch.Tensor) -> np.ndarray | None:
        return compute_foreground(image.permute(1, 2, 0).numpy()) if self.paste_in_foreground else None

    def generate(self, epoch: int, pseudo_index: int) -> tuple[torch.Tensor, torch.Tensor, str, str]:
        """Generate a pseudo anomaly at the native resolution of its normal image.

        Args:
            epoch (int): Epoch.
            pseudo_index (int): Index among the epoch's pseudo anomalies (RPAG first, then SmoothBlend, then
                Perlin).

        Returns:
            tuple[torch.Tensor, torch.Tensor, str, str]: Image ``(3, H, W)``, boolean mask ``(H, W)``,
            the normal image path and the source path (the known anomaly for RPAG, the normal image itself
            for SmoothBlend, the texture's normal image for Perlin, or the normal image itself with the noise fill).
        """
        source = self.source_of(pseudo_index)
        if source == SMOOTHBLEND:
            return self._generate_smoothblend(epoch, pseudo_index - self.num_rpag)
        if source == PERLIN:
            return self._generate_perlin(epoch, pseudo_index - self.num_rpag - self.num_smoothblend)
        rng = np.random.default_rng([self.seed, _PSEUDO_STREAM, epoch, pseudo_index])
        samples = self.base.samples
        anomaly = samples.iloc[int(self.anomaly_rows[rng.integers(len(self.anomaly_rows))])]
        normal = samples.iloc[int(self.normal_rows[rng.integers(len(self.normal_rows))])]
        normal_image = read_image(normal.image_path).as_subclass(torch.Tensor)
        image, mask = generate_pseudo_anomaly(
            read_image(anomaly.image_path).as_subclass(torch.Tensor),
            read_mask(anomaly.mask_path).as_subclass(torch.Tensor),
            normal_image,
            rng,
            self._foreground(normal_image),
        )
        return image, mask, str(normal.image_path), str(anomaly.image_path)

    def _generate_smoothblend(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor, str, str]:
        rng = np.random.default_rng([self.seed, _SMOOTHBLEND_STREAM, epoch, index])
        normal = self.base.samples.iloc[int(self.normal_rows[rng.integers(len(self.normal_rows))])]
        normal_image = read_image(normal.image_path).as_subclass(torch.Tensor)
        image, mask = generate_smoothblend(normal_image, rng, self._foreground(normal_image))
        return image, mask, str(normal.image_path), str(normal.image_path)

    def _generate_perlin(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor, str, str]:
        rng = np.random.default_rng([self.seed, _PERLIN_STREAM, epoch, index])
        samples = self.base.samples
        rows = rng.choice(self.normal_rows, size=min(2, len(self.normal_rows)), replace=False)
        normal, texture = samples.iloc[int(rows[0])], samples.iloc[int(rows[-1])]
        normal_image = read_image(normal.image_path).as_subclass(torch.Tensor)
        texture_image = None  # the noise fill; rows are drawn alike, so both fills share the blobs
        if self.perlin_texture == "noise":
            texture = normal
        else:
            texture_image = read_image(texture.image_path).as_subclass(torch.Tensor)
        image, mask = generate_perlin(normal_image, texture_image, rng, self._foreground(normal_image))
        return image, mask, str(normal.image_path), str(texture.image_path)

    def pseudo_item(self, epoch: int, pseudo_index: int) -> ImageItem:
        """Pseudo anomaly as an anomalib item, after the base dataset's augmentations (e.g. the model resize).

        Args:
            epoch (int): Epoch.
            pseudo_index (int): Index among the epoch's pseudo anomalies.

        Returns:
            ImageItem: Item with ``gt_label`` 1 and the pasted mask; ``image_path`` is the normal image.
        """
        image, mask, normal_path, _ = self.generate(epoch, pseudo_index)
        image, gt_mask = TvImage(image), Mask(mask.to(torch.uint8))
        if self.base.augmentations:
            image, gt_mask = self.base.augmentations(image, gt_mask)
        return ImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=torch.tensor(int(LabelName.ABNORMAL)),
            image_path=normal_path,
            mask_path=None,
        )


class EpochSampler(Sampler):
    """Shuffled epoch of a :class:`FewAnomalyTrainSet` that carries the epoch number in its keys.

    Args:
        dataset (FewAnomalyTrainSet): Training set.
        repeat_anomalies (int): Times each known anomaly appears per epoch.
        seed (int): Shuffling seed.
    """

    def __init__(self, dataset: FewAnomalyTrainSet, repeat_anomalies: int, seed: int) -> None:
        super().__init__()
        pseudo = np.arange(len(dataset.base), len(dataset))
        self.indices = np.concatenate(
            [
                dataset.normal_rows,
                np.tile(dataset.anomaly_rows, repeat_anomalies),
                pseudo,
            ]
        ).astype(np.int64)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next iteration (Lightning calls this at every epoch start).

        Args:
            epoch (int): Epoch number.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Samples per epoch."""
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Keys ``(epoch, index)`` of one epoch, shuffled; the next iteration defaults to the next epoch."""
        epoch = self.epoch
        order = np.random.default_rng([self.seed, _SHUFFLE_STREAM, epoch]).permutation(self.indices)
        self.epoch = epoch + 1
        return iter([(epoch, int(index)) for index in order])
