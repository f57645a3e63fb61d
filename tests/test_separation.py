"""The separation diagnostic (benchmarks/separation.py): test fibers counted against the learned boundaries."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import seed_everything

from anomalib_bgad.models.bgad.boundary_plot import Separation
from anomalib_bgad.models.bgad.torch_model import BgadModel
from benchmarks.separation import count_test_set, main, render_table


def test_count_test_set_counts_every_fiber_by_its_mask_or_label() -> None:
    seed_everything(0, verbose=False)
    model = BgadModel(coupling_blocks=1).eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 64, 64, generator=generator)
    masks = torch.zeros(3, 64, 64)
    masks[1, :32] = 1.0  # the top half of image 1 is anomalous; image 2 has a label but no mask
    batches = [
        SimpleNamespace(image=images[:2], gt_mask=masks[:2], gt_label=torch.tensor([0, 1])),
        SimpleNamespace(image=images[2:], gt_mask=masks[2:], gt_label=torch.tensor([1])),
    ]
    with torch.no_grad():
        ln = model.normalized_maps(images)
    # Boundaries at each level's median: about half of the fibers of each class fall below b_n.
    model.boundary.b_n.copy_(torch.stack([level.median() for level in ln]))

    counts = count_test_set(model, lambda image: image, batches)

    for level, values in enumerate(ln):
        b_n, b_a = float(model.boundary.b_n[level]), float(model.boundary.b_a[level])
        height = values.shape[-2]
        anomalous = torch.zeros_like(values, dtype=torch.bool)
        anomalous[1, : height // 2] = anomalous[2] = True
        expected = Separation(
            int((~anomalous).sum()),
            int((values[~anomalous] < b_n).sum()),
            int(anomalous.sum()),
            int((values[anomalous] < b_n).sum()),
            int((values[anomalous] < b_a).sum()),
        )
        assert abs(counts[level].normal_below_b_n - expected.normal_below_b_n) <= 2  # ties at b_n between passes
        assert (counts[level].normal, counts[level].anomalous) == (expected.normal, expected.anomalous)
        assert counts[level].anomalous == values[0].numel() * 3 // 2
        assert 0 < counts[level].normal_below_b_n < counts[level].normal
        assert abs(counts[level].anomalous_below_b_a - expected.anomalous_below_b_a) <= 2


def test_render_table_gives_each_cell_and_the_mean_over_categories_in_percent() -> None:
    def cell(normal: float, below_b_n: float | None, below_b_a: float | None) -> dict:
        level = {"normal_below_b_n": normal, "anomalous_below_b_n": below_b_n, "anomalous_below_b_a": below_b_a}
        return {"b_n": [-0.3], "b_a": [-0.4], "levels": [level]}

    results = {
        "one_class/bgad/brick/seed0": cell(0.01, 0.5, 0.2),
        "one_class/bgad/grass/seed0": cell(0.03, 0.7, None),  # None (no fiber of its class): the mean skips it
    }

    table = render_table(results)

    assert "| one_class | bgad | brick | seed0 | 1.0/50.0/20.0 | -0.300 |" in table
    assert "| one_class | bgad | grass | seed0 | 3.0/70.0/- | -0.300 |" in table
    assert "| one_class | bgad | **mean of 2** | seed0 | 2.0/60.0/20.0 | |" in table
    with pytest.raises(ValueError, match="not setting/config/category/seedN"):
        render_table({"bgad/brick": cell(0.0, 0.0, 0.0)})


def test_report_names_the_file_and_writes_nothing_for_a_missing_or_malformed_json(tmp_path, capsys) -> None:
    outputs = [tmp_path / "missing.json"]
    for index, text in enumerate(
        ['{"bgad/brick": {"b_n": [0], "b_a": [0], "levels": []}}', "not json", '{"a/b/c/seed0": {"levels": []}}', "[1]"]
    ):
        outputs.append(tmp_path / f"malformed{index}.json")
        outputs[-1].write_text(text)
    for output in outputs:
        with pytest.raises(SystemExit):
            main(["--report", "--output", str(output)])
        assert str(output) in capsys.readouterr().err
    assert not list(tmp_path.glob("*.md"))
