"""Prediction on image files read exactly as in training (:func:`anomalib_bgad.data.image_io.read_image`).

anomalib's ``anomalib predict --data <file or folder>`` and ``Engine.predict(data_path=...)`` read with anomalib's
own reader, which clips 16-bit images to white. Two ways read with the project's reader instead:

* :class:`PredictDataset`, the documented entry point: ``anomalib predict --data anomalib_bgad.data.PredictDataset
  --data.path <file or folder>``, or ``Engine.predict(dataset=PredictDataset(path))``;
* :func:`use_project_reader`, called at the start of a prediction (by BGAD's ``on_predict_start``, or by
  :class:`ProjectReaderCallback` for any model): it switches anomalib's ``PredictDataset`` of the run to
  :class:`PredictDataset`, so that ``--data <path>`` and ``data_path=`` read the same way too.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_bgad.data import PredictDataset
    >>> Engine().predict(model, dataset=PredictDataset("part_0001.tif"), ckpt_path=ckpt)  # doctest: +SKIP
"""

from anomalib.data import ImageItem
from anomalib.data import PredictDataset as AnomalibPredictDataset
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_bgad.data.image_io import read_image


class PredictDataset(AnomalibPredictDataset):
    """anomalib's ``PredictDataset`` (an image file or a folder of them), read with the project's reader.

    Args:
        path (str | Path): Image file, or folder of images (torchvision's image extensions).
        transform (Transform | None): Transform applied to each image. Defaults to ``None``.
        image_size (int | tuple[int, int]): Kept for anomalib's signature; resizing is the model's
            pre-processor's job. Defaults to ``(256, 256)``.

    Raises:
        ImageReadError: When an item is read, if its values have no defined reading (see
            :mod:`anomalib_bgad.data.image_io`).
    """

    def __getitem__(self, index: int) -> ImageItem:
        """Image item of the ``index``-th file.

        Args:
            index (int): File index.

        Returns:
            ImageItem: ``(3, H, W)`` float image in ``[0, 1]`` and its path.
        """
        filename = self.image_filenames[index]
        image = read_image(filename)
        if self.transform:
            image = self.transform(image)
        return ImageItem(image=image, image_path=str(filename))


def use_project_reader(trainer: Trainer) -> int:
    """Make the prediction dataloaders built on anomalib's ``PredictDataset`` read with the project's reader.

    Call it when a prediction starts (``on_predict_start``): the loaders exist, and no item has been read yet.
    The datasets keep their files, order and transform; only the reading changes (their class becomes
    :class:`PredictDataset`, which overrides ``__getitem__`` alone). Loaders with worker processes already
    hold copies of their dataset and are left alone (anomalib's own prediction loaders have none).

    Args:
        trainer (Trainer): The trainer running the prediction.

    Returns:
        int: Number of datasets switched.
    """
    loaders = trainer.predict_dataloaders
    if loaders is None:
        return 0
    switched = 0
    for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
        dataset = getattr(loader, "dataset", None)
        if type(dataset) is AnomalibPredictDataset and getattr(loader, "num_workers", 0) == 0:
            dataset.__class__ = PredictDataset
            switched += 1
    return switched


class ProjectReaderCallback(Callback):
    """Lightning callback that runs :func:`use_project_reader` when a prediction starts (for any model)."""

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Switch anomalib's prediction datasets to the project's reader.

        Args:
            trainer (Trainer): The trainer.
            pl_module (LightningModule): The model (unused).
        """
        del pl_module
        use_project_reader(trainer)
