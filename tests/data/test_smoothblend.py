"""SmoothBlend pseudo anomalies: definition, determinism, exact masks, datamodule wiring, BGAD with 0 real anomalies."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_bgad.data import (
    FewAnomalyMVTecAD,
    SplitManifest,
    compute_foreground,
    generate_smoothblend,
    preview_pseudo_anomalies,
    smoothblend_sample,
)
from anomalib_bgad.data.image_io import read_image
from anomalib_bgad.data.pseudo_anomalies.smoothblend import blend_weight, color_jitter, smooth_alpha

NO_JITTER = (0.0, 0.0, 0.0, 0.0)


def texture(size: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def position_coded(height: int = 80, width: int = 96) -> torch.Tensor:
    """Every pixel differs from every other one: red = row, green = column."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([yy / height, xx / width, torch.full((height, width), 0.5)]).float()


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def test_same_seed_same_sample_other_seed_other_sample() -> None:
    image = texture()
    first = smoothblend_sample(image, np.random.default_rng([7, 1]))
    again = smoothblend_sample(image, np.random.default_rng([7, 1]))
    assert torch.equal(first.image, again.image) and torch.equal(first.mask, again.mask)
    assert (first.source, first.target) == (again.source, again.target)
    others = {digest(generate_smoothblend(image, np.random.default_rng([7, seed]))[0]) for seed in range(2, 12)}
    assert len(others) == 10 and digest(first.image) not in others


@pytest.mark.parametrize("seed", range(12))
def test_mask_is_alpha_above_threshold_and_only_mask_pixels_change(seed: int) -> None:
    image = texture(seed=seed)
    sample = smoothblend_sample(image, np.random.default_rng(seed))
    ty, tx, h, w = sample.target
    expected = torch.zeros_like(sample.mask)
    expected[ty : ty + h, tx : tx + w] = sample.alpha > 0.5
    assert torch.equal(sample.mask, expected) and sample.mask.any()
    # Untouched outside the mask, bit for bit; inside, the pixels changed (jittered patch of other pixels).
    assert torch.equal(sample.image[:, ~sample.mask], image[:, ~sample.mask])
    changed = (sample.image != image).any(0)
    assert not (changed & ~sample.mask).any()
    assert changed[sample.mask].float().mean() > 0.97
    assert sample.image.min() >= 0 and sample.image.max() <= 1


@pytest.mark.parametrize("seed", range(6))
def test_patch_is_cut_from_the_same_image_and_pasted_elsewhere(seed: int) -> None:
    image = position_coded()
    sample = smoothblend_sample(image, np.random.default_rng(seed), jitter=NO_JITTER)
    # Every mask pixel changes: the patch comes from elsewhere, and a position-coded image differs everywhere.
    assert torch.equal((sample.image != image).any(0), sample.mask)
    (sy, sx, h, w), (ty, tx, _, _) = sample.source, sample.target
    assert 2 * abs(ty - sy) >= h or 2 * abs(tx - sx) >= w
    # Where the weight is 1 the pasted pixels are exactly the source patch's (no jitter here).
    full = sample.weight == 1
    assert full.any()
    pasted = sample.image[:, ty : ty + h, tx : tx + w]
    assert torch.equal(pasted[:, full], image[:, sy : sy + h, sx : sx + w][:, full])
    # Elsewhere the blend lies between the target and the patch.
    between = (pasted - image[:, ty : ty + h, tx : tx + w]) * (image[:, sy : sy + h, sx : sx + w] - pasted)
    assert (between >= -1e-6).all()


def test_alpha_is_a_smoothed_box_and_the_weight_starts_at_the_threshold() -> None:
    alpha = smooth_alpha(40, 30, sigma=5.0)
    assert alpha.shape == (40, 30)
    assert torch.allclose(alpha, alpha.flip(0)) and torch.allclose(alpha, alpha.flip(1))
    row = alpha[20]
    assert (row[1:15] >= row[:14]).all() and 0.4 < float(row[0]) < 0.6  # rises from ~0.5 at the border
    assert float(alpha[0, 0]) < 0.35 and float(alpha.max()) > 0.99  # rounded corners, opaque centre
    weight = blend_weight(alpha, threshold=0.5, min_weight=0.05)
    assert torch.equal(weight > 0, alpha > 0.5)
    assert float(weight[weight > 0].min()) >= 0.05 and float(weight.max()) == 1.0
    # Smooth: no step between neighbours larger than a small fraction of the full blend.
    assert float((weight[:, 1:] - weight[:, :-1]).abs().max()) < 0.2
    assert float((weight[1:] - weight[:-1]).abs().max()) < 0.2
    with pytest.raises(ValueError, match="never exceeds the threshold"):
        blend_weight(alpha, threshold=1.0)


def test_colour_jitter_ranges() -> None:
    patch = texture(16)
    assert torch.equal(color_jitter(patch.clone(), np.random.default_rng(0), NO_JITTER), patch)
    for seed in range(5):
        jittered = color_jitter(patch.clone(), np.random.default_rng(seed))
        assert not torch.equal(jittered, patch)
        assert float((jittered - patch).abs().mean()) < 0.15  # subtle: +-10 % factors, +-0.1 hue


def test_patch_area_and_foreground() -> None:
    areas = []
    for seed in range(30):
        sample = smoothblend_sample(texture(200, seed), np.random.default_rng(seed))
        areas.append(float(sample.mask.float().mean()))
    assert min(areas) > 0.003 and max(areas) < 0.02  # box area 0.5-2 % of the image, minus the rounded corners
    yy, xx = np.mgrid[:96, :96]
    disk = (yy - 48) ** 2 + (xx - 40) ** 2 <= 30**2
    image = torch.from_numpy(np.where(disk, 0.8, 0.1)).float().expand(3, -1, -1).clone()
    image += texture(96) * 0.1
    foreground = compute_foreground(image.permute(1, 2, 0).numpy())
    for seed in range(10):
        sample = smoothblend_sample(image, np.random.default_rng(seed), foreground)
        sy, sx, h, w = sample.source
        on_disk = torch.from_numpy(disk)
        assert (sample.mask & on_disk).sum() >= 2 / 3 * sample.mask.sum() - 1
        source_mask = torch.zeros_like(sample.mask)
        source_mask[sy : sy + h, sx : sx + w] = sample.weight > 0
        assert (source_mask & on_disk).sum() >= 2 / 3 * source_mask.sum() - 1


# ------------------------------------------------------------------------------------------------------------------
# Datamodule wiring
# ------------------------------------------------------------------------------------------------------------------
def test_zero_real_anomalies_with_smoothblend(mvtec_root: Path, tmp_path: Path) -> None:
    def build() -> FewAnomalyMVTecAD:
        datamodule = FewAnomalyMVTecAD(
            root=mvtec_root, category="bottle", n_anomalies=0, pseudo_anomaly_source="smoothblend",
            pseudo_anomaly_count=4, num_workers=0, train_batch_size=20, train_on_anomalies=True,
            manifest_path=tmp_path / "manifest.json",
        )  # fmt: skip
        datamodule.setup()
        return datamodule

    datamodule = build()
    assert datamodule.pseudo_anomaly_counts == {"rpag": 0, "smoothblend": 4, "perlin": 0}
    normal_paths = set(datamodule.train_data.samples.image_path)
    loader = datamodule.train_dataloader()
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        items = [item for batch in loader for item in batch]
        assert len(items) == 6 + 4
        pseudo = [item for item in items if item.gt_label]
        assert len(pseudo) == 4
        for item in pseudo:
            assert item.image_path in normal_paths and item.gt_mask.any()
            normal = read_image(item.image_path)
            changed = (item.image != normal).any(0)
            assert not (changed & ~item.gt_mask).any() and changed[item.gt_mask].float().mean() > 0.9
        epochs.append(sorted(digest(item.image) for item in pseudo))
    assert not set(epochs[0]) & set(epochs[1])  # new samples every epoch
    again = build().train_dataloader()
    again.sampler.set_epoch(1)
    assert sorted(digest(item.image) for batch in again for item in batch if item.gt_label) == epochs[1]

    data = json.loads((tmp_path / "manifest.json").read_text())
    assert (
        data["pseudo_anomaly_source"] == "smoothblend" and data["init_args"]["pseudo_anomaly_source"] == "smoothblend"
    )
    del data["pseudo_anomaly_source"]  # manifests written before the field existed read as RPAG
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert SplitManifest.read(tmp_path / "old.json").pseudo_anomaly_source == "rpag"


def test_both_sources_keep_the_rpag_samples(mvtec_root: Path) -> None:
    def train_set(source: str):
        datamodule = FewAnomalyMVTecAD(
            root=mvtec_root, category="bottle", n_anomalies=3, pseudo_anomaly_count=2, pseudo_anomaly_source=source,
            num_workers=0, train_on_anomalies=True,
        )  # fmt: skip
        datamodule.setup()
        return datamodule, datamodule.train_dataloader().dataset

    both_module, both = train_set("both")
    assert both_module.pseudo_anomaly_counts == {"rpag": 2, "smoothblend": 2, "perlin": 0} and both.num_pseudo == 4
    assert [both.source_of(i) for i in range(4)] == ["rpag", "rpag", "smoothblend", "smoothblend"]
    _, rpag = train_set("rpag")
    _, smooth = train_set("smoothblend")
    assert rpag.num_pseudo == smooth.num_pseudo == 2
    for index in range(2):
        assert torch.equal(both.generate(1, index)[0], rpag.generate(1, index)[0])
        assert torch.equal(both.generate(1, 2 + index)[0], smooth.generate(1, index)[0])
    # A SmoothBlend sample's source is its own normal image; an RPAG sample's a known anomaly.
    _, _, normal, source = both.generate(0, 3)
    assert normal == source
    _, _, normal, source = both.generate(0, 0)
    assert normal != source and "/test/" in source


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"n_anomalies": 0, "pseudo_anomaly_count": 5},
            r"asks for 5 RPAG pseudo anomalies .* n_anomalies=0.*'smoothblend'",
        ),
        (
            {"n_anomalies": 0, "pseudo_anomaly_count": 5, "pseudo_anomaly_source": "both"},
            r"RPAG pastes known anomalies",
        ),
        (
            {"n_anomalies": 0, "pseudo_anomaly_ratio": 5.0, "pseudo_anomaly_source": "smoothblend"},
            r"pseudo_anomaly_ratio=5.0 is a ratio of the known anomalies, and n_anomalies=0.*Set a count",
        ),
        (
            {"pseudo_anomaly_source": "cutpaste"},
            r"pseudo_anomaly_source must be one of \['rpag', 'smoothblend', 'perlin'\] or several joined by '\+'",
        ),
    ],
)
def test_nonsense_combinations_fail_clearly(mvtec_root: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FewAnomalyMVTecAD(root=mvtec_root, category="bottle", num_workers=0, **kwargs)


def test_zero_anomalies_with_a_ratio_stays_valid_for_rpag(mvtec_root: Path) -> None:
    # The benchmark's n=0 rows share pseudo_anomaly_ratio=5.0 with the others: a ratio of no anomaly is no anomaly.
    datamodule = FewAnomalyMVTecAD(root=mvtec_root, category="bottle", n_anomalies=0, num_workers=0)
    datamodule.setup()
    assert datamodule.pseudo_anomaly_counts == {"rpag": 0, "smoothblend": 0, "perlin": 0}


@pytest.mark.parametrize("source", ["smoothblend", "both"])
def test_preview_grid(mvtec_root: Path, tmp_path: Path, source: str) -> None:
    n_anomalies = 0 if source == "smoothblend" else 3
    datamodule = FewAnomalyMVTecAD(
        root=mvtec_root, category="bottle", n_anomalies=n_anomalies, pseudo_anomaly_count=4,
        pseudo_anomaly_source=source, num_workers=0,
    )  # fmt: skip
    out = preview_pseudo_anomalies(datamodule, tmp_path / "grid.png", num_samples=4, columns=2, cell_size=40)
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (4 + 2 * 44, 4 + 4 * 44, 3)
    red = (grid[..., 0] > 200) & (grid[..., 1] < 60) & (grid[..., 2] < 60)
    assert red.sum() > 0
    again = preview_pseudo_anomalies(datamodule, tmp_path / "again.png", num_samples=4, columns=2, cell_size=40)
    assert np.array_equal(np.asarray(Image.open(again).convert("RGB")), grid)
    if source == "smoothblend":
        with pytest.raises(ValueError, match=r"no known anomaly to paste \(n_anomalies=0\).*'smoothblend' or 'perlin'"):
            preview_pseudo_anomalies(datamodule, tmp_path / "x.png", source="rpag")


# ------------------------------------------------------------------------------------------------------------------
# BGAD phase 2 with zero real anomalies
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bgad_phase2_pushes_smoothblend_anomalies_with_zero_real_ones(
    tiny_mvtec_root: Path, small_bgad_kwargs: dict, tmp_path: Path
) -> None:
    from anomalib.engine import Engine
    from lightning.pytorch import Callback, seed_everything

    from anomalib_bgad import Bgad

    class Recorder(Callback):
        def __init__(self) -> None:
            self.epochs: list[dict[str, float]] = []
            self.anomalous_items = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.anomalous_items += int(batch.gt_label.sum())

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            metrics = trainer.callback_metrics
            self.epochs.append({k: float(v) for k, v in metrics.items() if k.startswith("train_")})

    def fit(source: str, pseudo_anomalies: int) -> Recorder:
        datamodule = FewAnomalyMVTecAD(
            root=tiny_mvtec_root, category="brick", n_anomalies=0, pseudo_anomaly_source=source,
            pseudo_anomaly_count=pseudo_anomalies, train_batch_size=5, eval_batch_size=5, num_workers=0, seed=3,
        )  # fmt: skip
        seed_everything(3)
        model = Bgad(phase1_epochs=1, **small_bgad_kwargs)
        assert model.trains_on_anomalies
        recorder = Recorder()
        engine = Engine(
            max_epochs=2, default_root_dir=tmp_path / source, accelerator="cpu", devices=1, callbacks=[recorder],
            logger=False, enable_progress_bar=False,
        )  # fmt: skip
        engine.fit(model, datamodule=datamodule)
        return recorder

    smooth = fit("smoothblend", 4)
    phase1, phase2 = smooth.epochs
    assert smooth.anomalous_items == 2 * 4  # 4 SmoothBlend samples per epoch, no real anomaly
    assert phase1["train_push_loss"] == 0.0
    assert phase2["train_push_loss"] > 0.0  # phase 2 pushes the SmoothBlend pixels below the boundary
    baseline = fit("rpag", 0)  # the same run without pseudo anomalies: nothing to push
    assert baseline.anomalous_items == 0 and baseline.epochs[1]["train_push_loss"] == 0.0
