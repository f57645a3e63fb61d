"""RPAG pseudo anomalies: joint augmentation, cut-paste, foreground, per-epoch refresh, workers, preview."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image

from anomalib_bgad.data import (
    AUGMENTATIONS,
    FewAnomalyMVTecAD,
    compute_foreground,
    generate_pseudo_anomaly,
    preview_pseudo_anomalies,
)
from anomalib_bgad.data.pseudo_anomalies import EpochSampler, FewAnomalyTrainSet
from anomalib_bgad.data.pseudo_anomalies.rpag import augment_anomaly, paste_anomaly

RED = torch.tensor([1.0, 0.0, 0.0])


def red_defect(height: int = 40, width: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Gray noise image with a pure red, asymmetric (L-shaped) defect, and its mask."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, height, width, generator=generator).expand(3, -1, -1).clone() * 0.5
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[8:20, 10:14] = True
    mask[16:20, 10:26] = True
    image[:, mask] = RED[:, None]
    return image, mask


def is_red(image: torch.Tensor) -> torch.Tensor:
    return (image[0] > 0.6) & (image[1] < 0.3) & (image[2] < 0.3)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_each_augmentation_keeps_image_and_mask_aligned(name: str) -> None:
    image, mask = red_defect()
    for seed in range(3):
        out, out_mask = AUGMENTATIONS[name](image, mask.to(torch.uint8)[None], np.random.default_rng(seed))
        out_mask = out_mask[0] > 0
        assert out.shape[-2:] == out_mask.shape and out.dtype == torch.float32
        assert out_mask.any()
        if name in {"flip", "rotate90", "transpose", "noise", "blur", "sharpen_brightness_contrast", "hue_saturation"}:
            # Exact geometry: the mask moved with the image (or stayed if only colours changed).
            assert int(out_mask.sum()) == int(mask.sum())
        # The defect's pixels are where the mask says (interpolated edges aside).
        inside = is_red(out)[out_mask].float().mean()
        assert inside > (0.85 if name not in {"noise", "hue_saturation", "sharpen_brightness_contrast"} else 0.6)
        if name in {"flip", "rotate90", "transpose", "distortion", "shift_scale_rotate"}:
            assert not torch.equal(out_mask, mask) or out_mask.shape != mask.shape


def test_three_distinct_augmentations_per_sample_and_all_used() -> None:
    image, mask = red_defect()
    used = set()
    for seed in range(40):
        _, _, names = augment_anomaly(image, mask, np.random.default_rng(seed))
        assert len(names) == 3 == len(set(names))
        used |= set(names)
    assert used == set(AUGMENTATIONS)


def test_paste_changes_only_the_pasted_pixels() -> None:
    anomaly, mask = red_defect()
    normal = torch.full((3, 36, 44), 0.25)
    for seed in range(10):
        image, pasted = generate_pseudo_anomaly(anomaly, mask, normal, np.random.default_rng(seed))
        assert image.shape == normal.shape and pasted.shape == normal.shape[-2:]
        assert pasted.any()
        assert torch.equal(image[:, ~pasted], normal[:, ~pasted])
        assert not torch.equal(image[:, pasted], normal[:, pasted])
    # Without augmentation the defect is pasted as is, at a random place.
    image, pasted = paste_anomaly(anomaly, mask, normal, np.random.default_rng(0))
    assert int(pasted.sum()) == int(mask.sum()) and is_red(image)[pasted].all()


def disk_image(size: int = 64, inverted: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - 30) ** 2 + (xx - 36) ** 2 <= 18**2
    rng = np.random.default_rng(0)
    image = np.where(disk[..., None], rng.uniform(0.6, 0.9, (size, size, 3)), rng.uniform(0.0, 0.15, (size, size, 3)))
    return (1.0 - image if inverted else image).astype(np.float32), disk


@pytest.mark.parametrize("inverted", [False, True])
def test_foreground_of_an_object(inverted: bool) -> None:
    image, disk = disk_image(inverted=inverted)
    foreground = compute_foreground(image)
    iou = (foreground & disk).sum() / (foreground | disk).sum()
    assert iou > 0.9
    assert compute_foreground(np.full((32, 32, 3), 0.5, np.float32)).all()  # no object: everything


def test_pseudo_anomalies_land_on_the_foreground() -> None:
    image, disk = disk_image()
    normal = torch.from_numpy(image).permute(2, 0, 1)
    anomaly, mask = red_defect()
    foreground = compute_foreground(image)
    for seed in range(15):
        _, pasted = generate_pseudo_anomaly(anomaly, mask, normal, np.random.default_rng(seed), foreground)
        assert (pasted & torch.from_numpy(disk)).sum() >= 2 / 3 * pasted.sum() - 1


def train_set(mvtec_root: Path, num_pseudo: int = 6) -> FewAnomalyTrainSet:
    datamodule = FewAnomalyMVTecAD(root=mvtec_root, category="bottle", n_anomalies=3, num_workers=0)
    datamodule.setup()
    return FewAnomalyTrainSet(datamodule.train_data, num_rpag=num_pseudo, seed=0, paste_in_foreground=True)


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def test_pseudo_samples_are_deterministic_and_change_each_epoch(mvtec_root: Path) -> None:
    dataset = train_set(mvtec_root)
    base = len(dataset.base)
    first = dataset[(0, base)]
    again = train_set(mvtec_root)[(0, base)]
    assert torch.equal(first.image, again.image) and torch.equal(first.gt_mask, again.gt_mask)
    assert first.gt_label and first.gt_mask.any() and first.mask_path is None
    epoch0 = {digest(dataset[(0, base + j)].image) for j in range(dataset.num_pseudo)}
    epoch1 = {digest(dataset[(1, base + j)].image) for j in range(dataset.num_pseudo)}
    assert len(epoch0) == dataset.num_pseudo and not epoch0 & epoch1
    # Real samples do not depend on the epoch.
    assert torch.equal(dataset[(0, 0)].image, dataset[(5, 0)].image)


def test_sampler_epochs_and_keys() -> None:
    dataset = FewAnomalyTrainSet.__new__(FewAnomalyTrainSet)
    dataset.base, dataset.num_pseudo = list(range(10)), 3
    dataset.normal_rows, dataset.anomaly_rows = np.arange(7), np.arange(7, 10)
    sampler = EpochSampler(dataset, repeat_anomalies=2, seed=0)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler) == 7 + 2 * 3 + 3
    assert {epoch for epoch, _ in epoch0} == {0}
    assert sorted(index for _, index in epoch0) == [*range(7), 7, 7, 8, 8, 9, 9, 10, 11, 12]
    assert {epoch for epoch, _ in sampler} == {1}  # the next iteration is the next epoch
    sampler.set_epoch(0)
    assert list(sampler) == epoch0


def test_same_batches_with_and_without_workers(mvtec_root: Path) -> None:
    def epoch_digests(num_workers: int) -> list[str]:
        datamodule = FewAnomalyMVTecAD(
            root=mvtec_root, category="bottle", n_anomalies=3, pseudo_anomaly_count=4, train_batch_size=5,
            num_workers=num_workers, train_on_anomalies=True,
        )  # fmt: skip
        datamodule.setup()
        loader = datamodule.train_dataloader()
        loader.sampler.set_epoch(2)
        return [digest(batch.image) + digest(batch.gt_mask.to(torch.uint8)) for batch in loader]

    assert epoch_digests(0) == epoch_digests(2)


class PseudoRecorder(LightningModule):
    """Records the pseudo anomalies of each epoch (anomalous items whose image is a normal training image)."""

    trains_on_anomalies = True

    def __init__(self, normal_paths: set[str]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.normal_paths = normal_paths
        self.seen: dict[int, set[str]] = {}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        for item in batch:
            if item.gt_label and item.image_path in self.normal_paths:
                self.seen.setdefault(self.current_epoch, set()).add(digest(item.image))
        return (self.weight**2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_refreshes_pseudo_anomalies_every_epoch(mvtec_root: Path, tmp_path: Path) -> None:
    datamodule = FewAnomalyMVTecAD(
        root=mvtec_root, category="bottle", n_anomalies=3, pseudo_anomaly_count=4, train_batch_size=8, num_workers=2,
        val_split_mode="none",
    )  # fmt: skip
    datamodule.setup()
    normal_paths = {str(path) for path in datamodule.train_data.samples.query("label_index == 0").image_path}
    model = PseudoRecorder(normal_paths)
    trainer = Trainer(
        max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(model, datamodule=datamodule)
    reference = FewAnomalyTrainSet(datamodule.train_data, num_rpag=4, seed=0, paste_in_foreground=True)
    base = len(reference.base)
    for epoch in range(3):
        expected = {digest(reference[(epoch, base + j)].image) for j in range(4)}
        assert model.seen[epoch] == expected
    assert not model.seen[0] & model.seen[1]
    assert (tmp_path / "split_manifest.json").is_file()  # written into the trainer's default_root_dir


def test_preview_writes_a_grid(mvtec_root: Path, tmp_path: Path) -> None:
    datamodule = FewAnomalyMVTecAD(root=mvtec_root, category="bottle", n_anomalies=3, num_workers=0)
    out = preview_pseudo_anomalies(
        datamodule, tmp_path / "preview" / "grid.png", num_samples=6, columns=3, cell_size=40
    )
    grid = np.asarray(Image.open(out).convert("RGB"))
    # 2 rows of 3 samples, each sample shown twice (image, red mask overlay), 4 px padding.
    assert grid.shape == (4 + 2 * 44, 4 + 6 * 44, 3)
    red = (grid[..., 0] > 200) & (grid[..., 1] < 60) & (grid[..., 2] < 60)
    assert red.sum() > 0 and grid.std() > 10
    # The same grid from the run's manifest.
    manifest = datamodule.write_manifest(tmp_path / "m.json")
    again = preview_pseudo_anomalies(manifest, tmp_path / "again.png", num_samples=6, columns=3, cell_size=40)
    assert np.array_equal(np.asarray(Image.open(again).convert("RGB")), grid)
    with pytest.raises(ValueError, match=r"no known anomaly to paste \(n_anomalies=0\)"):
        preview_pseudo_anomalies(
            FewAnomalyMVTecAD(root=mvtec_root, category="bottle", n_anomalies=0, num_workers=0), tmp_path / "x.png"
        )
