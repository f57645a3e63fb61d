"""A CSV of every predicted image (score, label, result image) written when ``predict`` ends.

``anomalib predict`` writes one result image per input into ``<default_root_dir>/images/...`` and
prints neither a score nor where the images went. :class:`PredictionTable` collects, per predicted
image, the normalised ``pred_score``, the ``pred_label`` and the path of the image the model's
visualiser wrote for it, writes them to ``<default_root_dir>/predictions.csv`` (next to ``images/``)
when the prediction has finished, and prints the first rows and both locations.

CSV columns: ``image_path`` (the input file), ``pred_score`` (anomalib's normalised score, 0..1, the
threshold learned on validation data maps to 0.5), ``pred_label`` (``anomalous`` or ``normal``) and
``visualization`` (the result image; empty if the model has no image visualiser).

The file is written once, after the last batch, through a temporary file that is renamed into place:
a prediction that fails part-way leaves no table (and an older table is not overwritten).

Example:
    $ anomalib predict --model anomalib_bgad.Bgad --ckpt_path model.ckpt --data images/
    Predicted 12 images, 3 anomalous:
      0.912  anomalous  images/003.png
      ...
    Table (image_path, pred_score, pred_label, visualization): results/Bgad/latest/predictions.csv
    Result images: results/Bgad/latest/images
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anomalib.data import Batch
from anomalib.utils.path import generate_output_filename
from anomalib.visualization import ImageVisualizer
from lightning.pytorch import Callback, LightningModule, Trainer

FILE_NAME = "predictions.csv"
COLUMNS = ("image_path", "pred_score", "pred_label", "visualization")


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class PredictionTable(Callback):
    """Write ``predictions.csv`` (image path, score, label, result image) after ``predict`` and print where.

    Args:
        file_name (str): CSV file name, in ``trainer.default_root_dir``. Defaults to ``"predictions.csv"``.
        max_printed (int): Rows printed to the console; the CSV has all of them. Defaults to ``20``.
    """

    def __init__(self, file_name: str = FILE_NAME, max_printed: int = 20) -> None:
        super().__init__()
        self.file_name = file_name
        self.max_printed = max_printed
        self.path: Path | None = None
        self.rows: list[dict[str, Any]] = []
        self._images_dir: Path | None = None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start an empty table."""
        del trainer, pl_module
        self.rows = []
        self._images_dir = None

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Add one row per item of the post-processed batch."""
        del batch_idx, dataloader_idx
        predictions = outputs if isinstance(outputs, Batch) else batch
        scores = getattr(predictions, "pred_score", None)
        if scores is None:
            return
        scores = torch.as_tensor(scores).detach().float().reshape(-1).cpu()
        labels = getattr(predictions, "pred_label", None)
        labels = torch.as_tensor(labels).reshape(-1).cpu().bool() if labels is not None else None
        paths = list(getattr(predictions, "image_path", None) or [])
        visualizer = getattr(pl_module, "visualizer", None)
        datamodule = getattr(trainer, "datamodule", None)
        for index, score in enumerate(scores.tolist()):
            image_path = str(paths[index]) if index < len(paths) else ""
            visualization = ""
            if isinstance(visualizer, ImageVisualizer) and visualizer.output_dir is not None and image_path:
                written = generate_output_filename(
                    input_path=image_path,
                    output_path=visualizer.output_dir,
                    dataset_name=getattr(datamodule, "name", None),
                    category=getattr(datamodule, "category", None),
                    mkdir=False,
                )
                if written.is_file():
                    visualization = str(written)
                    self._images_dir = Path(visualizer.output_dir)
            label = "" if labels is None else ("anomalous" if bool(labels[index]) else "normal")
            self.rows.append(
                {"image_path": image_path, "pred_score": score, "pred_label": label, "visualization": visualization}
            )

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Gather the rows of all ranks, write the CSV on rank 0 and print a summary."""
        del pl_module
        rows = self.rows
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            gathered: list[list[dict[str, Any]] | None] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in (part or [])]
        if not trainer.is_global_zero or not rows:
            return
        self.path = Path(trainer.default_root_dir) / self.file_name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.partial")
        with partial.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "pred_score": f"{row['pred_score']:.6f}"})
        os.replace(partial, self.path)
        self._print_summary(rows)

    def _print_summary(self, rows: list[dict[str, Any]]) -> None:
        anomalous = sum(row["pred_label"] == "anomalous" for row in rows)
        print(f"Predicted {len(rows)} image{'s' if len(rows) != 1 else ''}, {anomalous} anomalous:")
        order = np.argsort([-row["pred_score"] for row in rows], kind="stable")
        for index in order[: self.max_printed]:
            row = rows[index]
            print(f"  {row['pred_score']:.3f}  {row['pred_label'] or '-':9}  {row['image_path']}")
        if len(rows) > self.max_printed:
            print(f"  ... {len(rows) - self.max_printed} more in the table (highest scores first above)")
        print(f"Table ({', '.join(COLUMNS)}): {_display(self.path)}")
        if self._images_dir is not None:
            print(f"Result images: {_display(self._images_dir)}")
        else:
            print("Result images: none (the model has no image visualizer)")
