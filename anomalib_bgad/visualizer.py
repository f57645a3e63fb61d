"""anomalib's image visualiser with the score, a colour scale, and labels that leave the image uncovered.

anomalib's :class:`~anomalib.visualization.ImageVisualizer` writes the panels ("Image", "Image +
Anomaly Map", "Image + Pred Mask") with their labels drawn *over* the top of each panel, which hides
defects near the top edge, and it shows neither the image score nor what the heat-map colours mean.
:class:`ScoredImageVisualizer` renders every panel with anomalib's own functions, labels switched
off, and composes around them::

    +---------------------------------------------------------------+
    | 000.png   score 0.83 (threshold 0.50): anomalous              |  header
    | Image           | Image + anomaly map | Image + predicted mask |  panel titles
    | <panel>         | <panel>             | <panel>                |  untouched panels
    | [colour scale 0 ........ threshold ........ 1]  anomaly map    |  colour scale
    +---------------------------------------------------------------+

The colour scale is anomalib's anomaly-map colouring applied to a 0..1 ramp, so its colours are the
map's by construction. With anomalib's default post-processor, scores and maps are min-max normalised
around the thresholds learned on the validation data: the threshold is then ``0.5`` (``1 -
sensitivity``), read from the model's post-processor.

Example:
    >>> from anomalib_bgad.visualizer import ScoredImageVisualizer
    >>> from anomalib_bgad import Bgad
    >>> model = Bgad(visualizer=ScoredImageVisualizer())  # doctest: +SKIP

    BGAD uses it by default; any anomalib model takes it the same way (``visualizer=...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from anomalib.data import ImageBatch, ImageItem, NumpyImageBatch, NumpyImageItem
from anomalib.post_processing import PostProcessor
from anomalib.utils.path import convert_to_title_case, generate_output_filename
from anomalib.visualization import ImageVisualizer
from anomalib.visualization.image.functional import visualize_anomaly_map
from anomalib.visualization.image.item_visualizer import visualize_image_item
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule, Trainer

FIELD_TITLES = {
    "image": "Image",
    "gt_mask": "Ground truth",
    "pred_mask": "Predicted mask",
    "anomaly_map": "Anomaly map",
}
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
COLORBAR_HEIGHT = 12
MARGIN = 6


def field_title(field: str) -> str:
    """Readable name of a batch field: ``"gt_mask"`` -> ``"Ground truth"``."""
    return FIELD_TITLES.get(field, convert_to_title_case(field))


def _first(value: object) -> float:
    """The first element of a score or label given as a tensor (on any device), array or number."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    return float(np.asarray(value).reshape(-1)[0])


class ScoredImageVisualizer(ImageVisualizer):
    """Image visualiser that shows the score and a colour scale and keeps labels off the image.

    Takes :class:`~anomalib.visualization.ImageVisualizer`'s arguments with the same meaning, except
    ``text_config``: its ``font`` and ``size`` set the font of the header, titles and scale, which are
    drawn on white strips around the panels (``enable: False`` drops the titles and the header text);
    anomalib's labels over the panels are always off.

    Args:
        fields (list[str] | None): Fields shown as single panels. Defaults to ``["image", "gt_mask"]``.
        overlay_fields (list[tuple[str, list[str]]] | None): ``(base, overlays)`` panels. Defaults to
            ``[("image", ["anomaly_map"]), ("image", ["pred_mask"])]``. A panel whose overlays are all
            missing from an item (e.g. ``gt_mask`` in ``predict``) is left out rather than repeating the image.
        field_size (tuple[int, int]): Panel size ``(width, height)`` in pixels. Defaults to ``(256, 256)``.
        fields_config (dict[str, dict[str, Any]] | None): Per-field options of anomalib's renderers.
        overlay_fields_config (dict[str, dict[str, Any]] | None): Per-overlay options (alpha, colour, mode).
        text_config (dict[str, Any] | None): ``font`` (TrueType path), ``size`` (pixels) and ``enable``.
        output_dir (str | Path | None): Folder of the written images. Defaults to ``None``:
            ``<trainer.default_root_dir>/images``, as anomalib's.
    """

    def __init__(
        self,
        fields: list[str] | None = None,
        overlay_fields: list[tuple[str, list[str]]] | None = None,
        field_size: tuple[int, int] = (256, 256),
        fields_config: dict[str, dict[str, Any]] | None = None,
        overlay_fields_config: dict[str, dict[str, Any]] | None = None,
        text_config: dict[str, Any] | None = None,
        output_dir: str | Path | None = None,
    ) -> None:
        super().__init__(
            fields=fields,
            overlay_fields=overlay_fields,
            field_size=field_size,
            fields_config=fields_config,
            overlay_fields_config=overlay_fields_config,
            text_config=text_config,
            output_dir=output_dir,
        )
        size = self.text_config.get("size") or max(12, int(field_size[0]) // 18)
        font = self.text_config.get("font")
        self.font = ImageFont.truetype(font, size) if font else ImageFont.load_default(size=size)
        self.show_text = bool(self.text_config.get("enable", True))
        self.line_height = size + 2 * MARGIN
        # Normalised thresholds, read from the model's post-processor when a test or predict batch arrives.
        self.image_threshold: float | None = None
        self.pixel_threshold: float | None = None

    def visualize(
        self,
        predictions: ImageItem | NumpyImageItem | ImageBatch | NumpyImageBatch,
    ) -> Image.Image | list[Image.Image | None] | None:
        """Render one item (an image) or a batch (a list of images; a one-item batch gives an image).

        Raises:
            TypeError: If ``predictions`` is not an anomalib image item or batch.
        """
        if isinstance(predictions, ImageItem | NumpyImageItem):
            return self.render(predictions)
        if isinstance(predictions, ImageBatch | NumpyImageBatch):
            images = [self.render(item) for item in predictions]
            return images[0] if len(images) == 1 else images
        return super().visualize(predictions)  # raises anomalib's TypeError

    def render(self, item: ImageItem | NumpyImageItem) -> Image.Image | None:
        """Compose header, titles, panels and colour scale for one item; ``None`` if no panel can be drawn."""
        panels = self._panels(item)
        if not panels:
            return None
        width, height = (int(v) for v in self.field_size)
        has_map = any("anomaly_map" in fields for _, fields, _ in panels)
        header = self.line_height if self.show_text else 0
        titles = self.line_height if self.show_text else 0
        scale = COLORBAR_HEIGHT + self.line_height + MARGIN if has_map else 0
        canvas = Image.new("RGB", (width * len(panels), header + titles + height + scale), BACKGROUND)
        draw = ImageDraw.Draw(canvas)
        if self.show_text:
            draw.text((MARGIN, MARGIN), self._header_text(item), fill=TEXT_COLOR, font=self.font)
        for index, (title, _, panel) in enumerate(panels):
            if self.show_text:
                draw.text((index * width + MARGIN, header + MARGIN), title, fill=TEXT_COLOR, font=self.font)
            canvas.paste(panel, (index * width, header + titles))
        if has_map:
            self._draw_colour_scale(canvas, draw, top=header + titles + height + MARGIN)
        return canvas

    def _panels(self, item: ImageItem | NumpyImageItem) -> list[tuple[str, set[str], Image.Image]]:
        """``(title, fields shown, image)`` per panel, each rendered by anomalib without labels."""
        render = {
            "field_size": tuple(self.field_size),
            "fields_config": self.fields_config,
            "overlay_fields_config": self.overlay_fields_config,
            "text_config": {"enable": False},
        }
        panels = []
        for field in self.fields:
            image = visualize_image_item(item, fields=[field], overlay_fields=None, **render)
            if image is not None:
                panels.append((field_title(field), {field}, image))
        for base, overlays in self.overlay_fields:
            present = [overlay for overlay in overlays if getattr(item, overlay, None) is not None]
            if not present:
                continue
            image = visualize_image_item(item, fields=None, overlay_fields=[(base, present)], **render)
            if image is not None:
                title = " + ".join([field_title(base), *(field_title(o).lower() for o in present)])
                panels.append((title, {base, *present}, image))
        return panels

    def _header_text(self, item: ImageItem | NumpyImageItem) -> str:
        """File name, score, threshold and label of one item, as far as the item has them."""
        parts = []
        image_path = getattr(item, "image_path", None)
        if image_path:
            parts.append(Path(str(image_path)).name)
        verdict = ""
        score = getattr(item, "pred_score", None)
        if score is not None:
            threshold = f" (threshold {self.image_threshold:.2f})" if self.image_threshold is not None else ""
            verdict = f"score {_first(score):.3f}{threshold}"
        label = getattr(item, "pred_label", None)
        if label is not None:
            word = "anomalous" if bool(_first(label)) else "normal"
            verdict = f"{verdict}: {word}" if verdict else word
        if verdict:
            parts.append(verdict)
        return "   ".join(parts)

    def _draw_colour_scale(self, canvas: Image.Image, draw: ImageDraw.ImageDraw, top: int) -> None:
        """The anomaly-map colours for values 0..1 with the threshold marked (or min..max if maps are rescaled)."""
        left, right = MARGIN, canvas.width - MARGIN
        ramp = np.tile(np.linspace(0.0, 1.0, right - left, dtype=np.float32), (COLORBAR_HEIGHT, 1))
        config = self.fields_config.get("anomaly_map", {})
        canvas.paste(visualize_anomaly_map(ramp, **config), (left, top))
        draw.rectangle((left - 1, top - 1, right, top + COLORBAR_HEIGHT), outline=TEXT_COLOR)
        text_top = top + COLORBAR_HEIGHT + 2
        if config.get("normalize", False):
            low, high, caption = "min", "max", "anomaly map, rescaled per image"
        else:
            low, high, caption = "0", "1", "anomaly map (normalised score)"
        draw.text((left, text_top), low, fill=TEXT_COLOR, font=self.font)
        draw.text((right, text_top), high, fill=TEXT_COLOR, font=self.font, anchor="ra")
        if self.pixel_threshold is not None and not config.get("normalize", False):
            x = left + round(self.pixel_threshold * (right - left - 1))
            draw.line((x, top - 3, x, top + COLORBAR_HEIGHT + 2), fill=TEXT_COLOR, width=2)
            draw.text(
                (x, text_top), f"threshold {self.pixel_threshold:.2f}", fill=TEXT_COLOR, font=self.font, anchor="ma"
            )
            caption_x = left + (right - left) // 4
        else:
            caption_x = (left + right) // 2
        draw.text((caption_x, text_top), caption, fill=TEXT_COLOR, font=self.font, anchor="ma")

    def _read_thresholds(self, pl_module: LightningModule) -> None:
        """Normalised thresholds of anomalib's post-processor; ``None`` if it does not normalise."""
        post_processor = getattr(pl_module, "post_processor", None)
        if isinstance(post_processor, PostProcessor) and post_processor.enable_normalization:
            self.image_threshold = float(post_processor.normalized_image_threshold)
            self.pixel_threshold = float(post_processor.normalized_pixel_threshold)
        else:
            self.image_threshold = self.pixel_threshold = None

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: ImageBatch,
        batch: ImageBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Write one image per item where anomalib's visualiser would (also called for ``predict`` batches)."""
        del outputs, batch_idx, dataloader_idx
        self._read_thresholds(pl_module)
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "images"
        datamodule = getattr(trainer, "datamodule", None)
        for item in batch:
            image = self.render(item)
            if image is not None:
                image.save(
                    generate_output_filename(
                        input_path=item.image_path or "",
                        output_path=self.output_dir,
                        dataset_name=getattr(datamodule, "name", None),
                        category=getattr(datamodule, "category", None),
                    ),
                )
