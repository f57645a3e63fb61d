"""The boundary histogram (paper Fig. 6) written at the end of ``test``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from anomalib_bgad import Bgad
from anomalib_bgad.models.bgad.boundary import Boundary
from anomalib_bgad.models.bgad.boundary_plot import (
    FILE_NAME,
    BoundaryHistogram,
    Separation,
    separation_label,
    write_boundary_histogram,
)
from anomalib_bgad.models.bgad.fibers import downsample_mask


def test_write_boundary_histogram_draws_one_panel_per_level(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    normal = [torch.randn(5000, generator=generator) * 0.1 - 0.3 for _ in range(3)]
    anomalous = [torch.randn(300, generator=generator) * 0.5 - 1.5, torch.empty(0), -50 + torch.zeros(10)]
    path = write_boundary_histogram(
        tmp_path / "sub" / FILE_NAME,
        normal,
        anomalous,
        torch.tensor([-0.4, -0.5, -0.6]),
        torch.tensor([-0.5, -0.6, -0.7]),
        separation=[Separation(5000, 60, 300, 290, 280), Separation(5000, 40), Separation(5000, 0, 10, 10, 10)],
    )
    assert path == tmp_path / "sub" / FILE_NAME
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 3 * 400 and image.height >= 300  # three panels side by side
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # not blank


def test_histogram_written_at_test_end_with_the_test_set_likelihoods(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    torch.manual_seed(0)
    model = Bgad(coupling_blocks=2, pre_processor=Bgad.configure_pre_processor(image_size=(64, 64)))
    datamodule = MVTecAD(root=tiny_mvtec_root, category="brick", eval_batch_size=4, num_workers=0)
    datamodule.setup()
    with torch.no_grad():  # b_n at each level's median ln of the first test batch: fibers fall on both sides
        first = model.pre_processor(next(iter(datamodule.test_dataloader())).image)
        medians = torch.stack([level.median() for level in model.eval().model.normalized_maps(first)])
    model.model.boundary.b_n.copy_(medians)
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    engine.test(model, datamodule=datamodule)

    results = Path(engine.trainer.default_root_dir)
    assert (results / FILE_NAME).is_file()
    assert (results / "images").is_dir()  # next to anomalib's visualisations
    (callback,) = [c for c in engine.trainer.callbacks if isinstance(c, BoundaryHistogram)]
    assert callback.path == results / FILE_NAME
    assert callback._handle is None  # the hook is removed after the test

    # The collected values are exactly the test set's ln = l / alpha, split by the mask as in training.
    expected_normal: list[list[torch.Tensor]] = [[] for _ in range(3)]
    expected_anomalous: list[list[torch.Tensor]] = [[] for _ in range(3)]
    model.eval()
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            features = model.model.feature_extractor(model.pre_processor(batch.image))
            for level, log_likelihood in enumerate(model.model.log_likelihood_maps(features)):
                values = log_likelihood.reshape(-1) / model.model.boundary.normalizer
                anomalous = downsample_mask(batch.gt_mask, log_likelihood.shape[-2:], log_likelihood.shape[0]).reshape(
                    -1
                )
                expected_normal[level].append(values[~anomalous])
                expected_anomalous[level].append(values[anomalous])
    for level in range(3):
        for collected, expected in (
            (callback._normal[level], expected_normal[level]),
            (callback._anomalous[level], expected_anomalous[level]),
        ):
            expected_values = torch.cat(expected).sort().values
            assert collected.seen == expected_values.numel() > 0
            torch.testing.assert_close(collected.values.sort().values, expected_values, atol=1e-5, rtol=0)

    # The counts against the boundaries cover every value, not the subsample.
    for level, (b_n, b_a) in enumerate(zip(medians.tolist(), model.model.boundary.b_a.tolist(), strict=True)):
        normal, anomalous = torch.cat(expected_normal[level]), torch.cat(expected_anomalous[level])
        counts = callback.separation[level]
        assert (counts.normal, counts.anomalous) == (normal.numel(), anomalous.numel())
        # ln within 1e-4 of a boundary may fall on either side between two forward passes
        for counted, values, boundary in (
            (counts.normal_below_b_n, normal, b_n),
            (counts.anomalous_below_b_n, anomalous, b_n),
            (counts.anomalous_below_b_a, anomalous, b_a),
        ):
            assert int((values < boundary - 1e-4).sum()) <= counted <= int((values < boundary + 1e-4).sum())
    assert all(0 < level.normal_below_b_n < level.normal for level in callback.separation)  # fibers on both sides


def test_subsampling_bounds_memory_and_is_uniform() -> None:
    from anomalib_bgad.models.bgad.boundary_plot import _BottomKSample

    sample = _BottomKSample(1000, torch.Generator().manual_seed(0))
    for start in range(0, 100_000, 7_000):
        sample.add(torch.arange(start, min(start + 7_000, 100_000), dtype=torch.float32))
    assert sample.seen == 100_000
    assert sample.values.numel() == 1000
    assert sample.values.unique().numel() == 1000  # without replacement
    assert 40_000 < sample.values.mean() < 60_000  # uniform over the stream, not the first or last batches
    assert (sample.values < 50_000).sum() > 400 and (sample.values >= 50_000).sum() > 400


def test_panel_titles_say_when_the_values_are_a_subsample() -> None:
    from anomalib_bgad.models.bgad.boundary_plot import count_label

    assert count_label(200_000, 1_234_567, "normal") == "200,000 of 1.2M normal (random subsample)"
    assert count_label(1_000, 31_000, "anomalous") == "1,000 of 31,000 anomalous (random subsample)"
    assert count_label(5_000, 5_000, "anomalous") == "5,000 anomalous"
    assert count_label(5_000, None, "normal") == "5,000 normal"


def test_separation_counts_add_up_and_give_shares_of_each_class() -> None:
    values = torch.tensor([[-0.05, -0.15, -0.25], [-0.35, 0.10, -0.45]])
    anomalous = torch.tensor([[False, False, True], [True, False, True]])
    counts = Separation.count(values, anomalous, b_n=-0.1, b_a=-0.3)
    assert counts == Separation(normal=3, normal_below_b_n=1, anomalous=3, anomalous_below_b_n=3, anomalous_below_b_a=2)
    total = counts + Separation.count(values, torch.zeros_like(anomalous), b_n=-0.1, b_a=-0.3)
    assert total == Separation(9, 5, 3, 3, 2)
    assert total.shares() == pytest.approx(
        {"normal_below_b_n": 5 / 9, "anomalous_below_b_n": 1.0, "anomalous_below_b_a": 2 / 3}
    )
    only_normal = {"normal_below_b_n": 0.1, "anomalous_below_b_n": None, "anomalous_below_b_a": None}
    assert Separation(10, 1).shares() == only_normal
    assert separation_label(Separation(10, 1)) == (
        "below b_n: 10.0 % of normal, n/a of anomalous fibers; below b_a: n/a of anomalous"
    )


def test_the_callback_passes_how_many_values_it_saw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from anomalib_bgad.models.bgad import boundary_plot
    from anomalib_bgad.models.bgad.boundary_plot import _BottomKSample

    captured = {}
    monkeypatch.setattr(boundary_plot, "write_boundary_histogram", lambda *args, **kwargs: captured.update(kwargs))
    callback = BoundaryHistogram(output_dir=tmp_path, max_samples=100)
    generator = torch.Generator().manual_seed(0)
    callback._normal = [_BottomKSample(100, generator) for _ in range(2)]
    callback._anomalous = [_BottomKSample(100, generator) for _ in range(2)]
    callback._normal[0].add(torch.randn(1000))
    callback._normal[1].add(torch.randn(50))
    callback._anomalous[0].add(torch.randn(7))
    module = SimpleNamespace(model=SimpleNamespace(boundary=Boundary(num_levels=2)))
    callback.on_test_end(SimpleNamespace(is_global_zero=True, default_root_dir=tmp_path), module)
    assert captured["normal_seen"] == [1000, 50]
    assert captured["anomalous_seen"] == [7, 0]


@pytest.mark.slow
def test_anomalib_train_cli_writes_the_histogram(tiny_mvtec_root: Path, tmp_path: Path, run_anomalib) -> None:
    results = tmp_path / "results"
    run_anomalib(
        "train", "--model", "anomalib_bgad.Bgad",
        "--model.coupling_blocks", "2", "--data", "anomalib.data.MVTecAD", "--data.root", str(tiny_mvtec_root),
        "--data.category", "brick", "--data.num_workers", "0", "--trainer.max_epochs", "1",
        "--seed_everything", "0", "--default_root_dir", str(results), cwd=tmp_path,
    )  # fmt: skip
    (histogram,) = results.rglob(FILE_NAME)
    assert (histogram.parent / "images").is_dir()
    assert histogram.stat().st_size > 10_000
