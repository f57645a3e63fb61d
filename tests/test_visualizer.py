"""Result images: anomalib's panels untouched by labels, plus the score and a colour scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch, ImageItem
from anomalib.visualization import ImageVisualizer
from anomalib.visualization.image.functional import apply_colormap
from PIL import Image

from anomalib_bgad.visualizer import ScoredImageVisualizer

SIZE = 128


@pytest.fixture
def item(tmp_path: Path) -> ImageItem:
    """A textured RGB image on disk with a map that is high in its top rows, where labels used to sit."""
    generator = np.random.default_rng(0)
    pixels = generator.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    path = tmp_path / "part" / "017.png"
    path.parent.mkdir()
    Image.fromarray(pixels).save(path)
    anomaly_map = torch.zeros(1, SIZE, SIZE)
    anomaly_map[:, :10, 20:60] = 0.9  # a defect at the top edge
    return ImageItem(
        image_path=str(path),
        image=torch.from_numpy(pixels).permute(2, 0, 1).float() / 255,
        anomaly_map=anomaly_map,
        pred_mask=anomaly_map > 0.5,
        pred_score=torch.tensor(0.83),
        pred_label=torch.tensor(True),
    )


def find_panel(canvas: np.ndarray, panel: np.ndarray) -> list[tuple[int, int]]:
    """Positions ``(top, left)`` where ``panel`` appears pixel for pixel in ``canvas``."""
    height, width = panel.shape[:2]
    return [
        (top, left)
        for top in range(canvas.shape[0] - height + 1)
        for left in range(0, canvas.shape[1] - width + 1, width)
        if np.array_equal(canvas[top : top + height, left : left + width], panel)
    ]


def test_the_image_panel_is_the_source_image_pixel_for_pixel(item: ImageItem) -> None:
    source = np.asarray(Image.open(item.image_path).convert("RGB").resize((SIZE, SIZE)))
    canvas = np.asarray(ScoredImageVisualizer(field_size=(SIZE, SIZE)).visualize(item))
    positions = find_panel(canvas, source)
    assert len(positions) == 1, "the unmodified image panel must appear exactly once"
    top, left = positions[0]
    assert left == 0 and top > 0  # first panel, below the header and its title
    # anomalib's own visualiser draws its label over the panel: the same search fails there.
    plain = np.asarray(ImageVisualizer(field_size=(SIZE, SIZE)).visualize(item))
    assert find_panel(plain, source) == []


def test_panels_titles_score_and_colour_scale_are_laid_out_around_the_image(item: ImageItem) -> None:
    visualizer = ScoredImageVisualizer(field_size=(SIZE, SIZE))
    visualizer.image_threshold = visualizer.pixel_threshold = 0.5
    canvas = np.asarray(visualizer.visualize(item))
    # Panels: image, image + anomaly map, image + predicted mask (no ground truth in this item).
    assert canvas.shape[1] == 3 * SIZE
    top = find_panel(canvas, np.asarray(Image.open(item.image_path).convert("RGB").resize((SIZE, SIZE))))[0][0]
    header = canvas[:top]
    assert (header < 128).any(), "header and titles are drawn above the panels"
    # The anomaly-map panel shows the defect at the top edge, under no label: red over it, blue beside it.
    top_rows = canvas[top : top + 10, SIZE:].astype(int)
    redness = top_rows[..., 0] - top_rows[..., 2]
    assert redness[:, 25:55].mean() > redness[:, 80:120].mean() + 100
    # The colour scale below the panels: anomalib's map colours for 0 (left) to 1 (right).
    palette = np.asarray(apply_colormap(Image.fromarray(np.array([[0, 255]], dtype=np.uint8))))[0]
    below = canvas[top + SIZE :]
    rows = [r for r in range(below.shape[0]) if (np.abs(below[r, 8].astype(int) - palette[0]) <= 2).all()]
    assert rows, "the colour scale starts with the colour of 0"
    row = below[rows[len(rows) // 2]]
    np.testing.assert_allclose(row[-9].astype(int), palette[1], atol=3)


def test_the_header_changes_with_the_score_and_the_panels_do_not(item: ImageItem) -> None:
    visualizer = ScoredImageVisualizer(field_size=(SIZE, SIZE))
    high = np.asarray(visualizer.visualize(item))
    low = np.asarray(visualizer.visualize(item.update(in_place=False, pred_score=torch.tensor(0.12))))
    assert high.shape == low.shape
    differs = np.nonzero((high != low).any(axis=(1, 2)))[0]
    assert differs.size and differs.max() < visualizer.line_height  # only the header line differs


def test_a_batch_gives_one_image_per_item_and_text_can_be_switched_off(item: ImageItem) -> None:
    batch = ImageBatch(
        image=torch.stack([item.image, item.image]),
        image_path=[item.image_path, item.image_path],
        anomaly_map=torch.stack([item.anomaly_map, item.anomaly_map]),
        pred_score=torch.tensor([0.8, 0.2]),
        pred_label=torch.tensor([True, False]),
    )
    images = ScoredImageVisualizer(field_size=(SIZE, SIZE)).visualize(batch)
    assert isinstance(images, list) and len(images) == 2
    quiet = ScoredImageVisualizer(field_size=(SIZE, SIZE), text_config={"enable": False}).visualize(item)
    source = np.asarray(Image.open(item.image_path).convert("RGB").resize((SIZE, SIZE)))
    assert find_panel(np.asarray(quiet), source) == [(0, 0)]  # no header, no titles
    with pytest.raises(TypeError):
        ScoredImageVisualizer().visualize("not a batch")
