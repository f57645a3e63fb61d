"""anomalib datasets whose items are read with :mod:`anomalib_bgad.data.image_io`.

The parsing (the ``samples`` DataFrame) is anomalib's own; only ``__getitem__`` changes, so that images and
masks are read by the project's one reader (16-bit files rescaled instead of clipped, masks by one rule; see
:mod:`anomalib_bgad.data.image_io`).
Items are anomalib ``ImageItem`` objects, batched by anomalib's default collate.
"""

import torch
from anomalib import TaskType
from anomalib.data.dataclasses import ImageItem
from anomalib.data.datasets.image.btech import BTechDataset
from anomalib.data.datasets.image.folder import FolderDataset
from anomalib.data.datasets.image.mvtecad import MVTecADDataset
from anomalib.data.datasets.image.visa import VisaDataset
from anomalib.data.utils import LabelName
from torchvision.tv_tensors import Mask

from anomalib_bgad.data.image_io import read_image, read_mask


class RobustImageReadMixin:
    """``__getitem__`` of ``AnomalibDataset`` with high-bit-depth aware image and mask reading.

    Mixed into anomalib dataset classes in front of them; everything else (parsing, ``subsample``,
    ``collate_fn``, augmentations) is inherited.
    """

    def __getitem__(self, index: int) -> ImageItem:
        """Read one sample exactly as ``AnomalibDataset.__getitem__`` does, with the robust readers.

        Args:
            index (int): Row of ``samples``.

        Returns:
            ImageItem: Image, mask (segmentation task), label and paths.
        """
        row = self.samples.iloc[index]
        image = read_image(row.image_path)
        label_index = row.label_index
        gt_mask = None
        if self.task == TaskType.SEGMENTATION:
            if label_index == LabelName.NORMAL:
                gt_mask = Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
            elif label_index == LabelName.ABNORMAL:
                gt_mask = read_mask(row.mask_path)
        if self.augmentations:
            if self.task == TaskType.CLASSIFICATION:
                image = self.augmentations(image)
            else:
                temp_mask = gt_mask if gt_mask is not None else Mask(torch.zeros(image.shape[-2:], dtype=torch.uint8))
                image, augmented_mask = self.augmentations(image, temp_mask)
                if gt_mask is not None:
                    gt_mask = augmented_mask
        gt_label = None if label_index == LabelName.UNKNOWN else torch.tensor(int(label_index))
        return ImageItem(
            image=image,
            gt_mask=gt_mask,
            gt_label=gt_label,
            image_path=row.image_path,
            mask_path=row.mask_path,
        )


class FewAnomalyMVTecADDataset(RobustImageReadMixin, MVTecADDataset):
    """anomalib's ``MVTecADDataset`` with robust image reading."""


class FewAnomalyBTADDataset(RobustImageReadMixin, BTechDataset):
    """anomalib's ``BTechDataset`` (BTAD layout) with robust image reading."""


class FewAnomalyFolderDataset(RobustImageReadMixin, FolderDataset):
    """anomalib's ``FolderDataset`` with robust image reading."""


class FewAnomalyVisaDataset(RobustImageReadMixin, VisaDataset):
    """anomalib's ``VisaDataset`` (processed VisA layout) with robust image reading."""
