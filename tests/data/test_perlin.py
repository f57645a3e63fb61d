"""Perlin pseudo anomalies: determinism, exact masks, the caller's random state, sources and datamodule wiring."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalib_bgad.data import FewAnomalyMVTecAD, generate_perlin
from anomalib_bgad.data.image_io import read_image
from anomalib_bgad.data.pseudo_anomalies import source_parts
from anomalib_bgad.data.pseudo_anomalies.perlin import MIN_SHARE


def pair(size: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    image, texture = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return image, texture


@pytest.mark.parametrize("seed", range(8))
def test_only_mask_pixels_change_and_the_mask_is_never_tiny(seed: int) -> None:
    image, texture = pair(seed=seed)
    out, mask = generate_perlin(image, texture, np.random.default_rng(seed))
    assert out.shape == image.shape and mask.shape == image.shape[1:] and mask.dtype == torch.bool
    assert mask.sum() >= MIN_SHARE * mask.numel()
    assert torch.equal(out[:, ~mask], image[:, ~mask])
    assert (out != image).any(0)[mask].float().mean() > 0.5  # the blend changes the blobs
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_same_seed_same_sample_and_the_callers_torch_state_is_untouched() -> None:
    image, texture = pair()
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = generate_perlin(image, texture, np.random.default_rng([5, 1]))
    again = generate_perlin(image, texture, np.random.default_rng([5, 1]))
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    others = [generate_perlin(image, texture, np.random.default_rng([5, seed]))[1] for seed in range(2, 6)]
    assert all(not torch.equal(first[1], other) for other in others)


def test_the_texture_is_resized_and_the_foreground_bounds_the_mask() -> None:
    image, _ = pair(size=80)
    texture = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(1))
    foreground = np.zeros((80, 80), dtype=bool)
    foreground[30:46, 20:60] = True  # a small object: blobs often miss it, then the noise's top share is taken
    for seed in range(6):
        out, mask = generate_perlin(image, texture, np.random.default_rng(seed), foreground)
        assert mask.any() and not mask[~torch.from_numpy(foreground)].any()
        assert torch.equal(out[:, ~mask], image[:, ~mask])


def test_bad_shapes_fail_clearly() -> None:
    image, texture = pair()
    with pytest.raises(ValueError, match=r"must be \(3, H, W\), got \(96, 96\)"):
        generate_perlin(image[0], texture, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"foreground must be \(96, 96\)"):
        generate_perlin(image, texture, np.random.default_rng(0), np.ones((10, 10), dtype=bool))


@pytest.mark.parametrize(
    ("source", "parts"),
    [
        ("perlin", ("perlin",)),
        ("rpag+perlin", ("rpag", "perlin")),
        ("perlin+rpag", ("rpag", "perlin")),
        ("both", ("rpag", "smoothblend")),
        ("smoothblend+perlin+rpag", ("rpag", "smoothblend", "perlin")),
    ],
)
def test_source_parts(source: str, parts: tuple[str, ...]) -> None:
    assert source_parts(source) == parts


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("", r"unknown \[''\]"),
        ("rpag+cutpaste", r"unknown \['cutpaste'\]"),
        ("rpag+perlin+rpag", r"named twice \['rpag'\]"),
        ("rpag+", r"unknown \[''\]"),
        ("both+perlin", r"unknown \['both'\]"),
        ("RPAG", r"unknown \['RPAG'\]; names are lower case"),
    ],
)
def test_unknown_sources_fail_clearly(source: str, problem: str) -> None:
    expected = r"one of \['rpag', 'smoothblend', 'perlin'\] or several joined by '\+'"
    with pytest.raises(ValueError, match=expected) as error:
        source_parts(source)
    assert re.search(problem, str(error.value)), str(error.value)


def test_rpag_plus_perlin_in_training_keeps_the_rpag_samples(mvtec_root: Path) -> None:
    def build(source: str) -> FewAnomalyMVTecAD:
        datamodule = FewAnomalyMVTecAD(
            root=mvtec_root, category="bottle", n_anomalies=3, pseudo_anomaly_count=2, pseudo_anomaly_source=source,
            num_workers=0, train_on_anomalies=True, paste_in_foreground=False, perlin_texture="normal_image",
        )  # fmt: skip
        datamodule.setup()
        return datamodule

    datamodule = build("rpag+perlin")
    assert datamodule.pseudo_anomaly_counts == {"rpag": 2, "smoothblend": 0, "perlin": 2}
    train_set = datamodule.train_dataloader().dataset
    assert [train_set.source_of(i) for i in range(4)] == ["rpag", "rpag", "perlin", "perlin"]
    rpag = build("rpag").train_dataloader().dataset
    for index in range(2):
        assert torch.equal(train_set.generate(1, index)[0], rpag.generate(1, index)[0])
    # A Perlin sample blends another normal image's texture into a normal image; only its mask changes.
    image, mask, normal, texture = train_set.generate(0, 2)
    samples = datamodule.train_data.samples
    normals = set(samples.image_path[samples.label_index == 0])
    assert normal in normals and texture in normals and normal != texture
    assert torch.equal(image[:, ~mask], read_image(normal)[:, ~mask])
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(0)
    pseudo = [item for batch in loader for item in batch if item.gt_label and item.image_path in normals]
    assert len(pseudo) == 4 and all(item.gt_mask.any() for item in pseudo)


def test_perlin_without_known_anomalies_needs_a_count(mvtec_root: Path) -> None:
    with pytest.raises(ValueError, match=r"would make no perlin pseudo anomaly.*pseudo_anomaly_source='perlin'"):
        FewAnomalyMVTecAD(
            root=mvtec_root, category="bottle", n_anomalies=0, pseudo_anomaly_source="rpag+perlin", num_workers=0
        )
    datamodule = FewAnomalyMVTecAD(
        root=mvtec_root, category="bottle", n_anomalies=0, pseudo_anomaly_source="perlin", pseudo_anomaly_count=3,
        num_workers=0,
    )  # fmt: skip
    datamodule.setup()
    assert datamodule.pseudo_anomaly_counts == {"rpag": 0, "smoothblend": 0, "perlin": 3}


def test_a_ratio_per_source_sets_each_generators_count(mvtec_root: Path, tmp_path: Path) -> None:
    ratio = {"rpag": 1.0, "perlin": 2.0}
    datamodule = FewAnomalyMVTecAD(
        root=mvtec_root, category="bottle", n_anomalies=3, pseudo_anomaly_source="rpag+perlin",
        pseudo_anomaly_ratio=ratio, num_workers=0, train_on_anomalies=True, paste_in_foreground=False,
    )  # fmt: skip
    datamodule.setup()
    assert datamodule.pseudo_anomaly_counts == {"rpag": 3, "smoothblend": 0, "perlin": 6}
    train_set = datamodule.train_dataloader().dataset
    assert [train_set.source_of(i) for i in range(9)] == ["rpag"] * 3 + ["perlin"] * 6
    # The RPAG samples are those of RPAG alone at the same ratio: the sources draw from separate streams.
    rpag = FewAnomalyMVTecAD(
        root=mvtec_root, category="bottle", n_anomalies=3, pseudo_anomaly_ratio=1.0, num_workers=0,
        train_on_anomalies=True, paste_in_foreground=False,
    )  # fmt: skip
    rpag.setup()
    for index in range(3):
        assert torch.equal(train_set.generate(2, index)[0], rpag.train_dataloader().dataset.generate(2, index)[0])
    # Replaying another run's split with a per-source override (as the benchmarks do) keeps the override.
    manifest = rpag.write_manifest(tmp_path)
    replayed = FewAnomalyMVTecAD.from_manifest(
        manifest, num_workers=0, pseudo_anomaly_source="rpag+perlin", pseudo_anomaly_ratio={"rpag": 1, "perlin": 5}
    )
    replayed.setup()
    assert replayed.pseudo_anomaly_counts == {"rpag": 3, "smoothblend": 0, "perlin": 15}


@pytest.mark.parametrize(
    ("ratio", "match"),
    [
        ({"perlin": 2.0}, r"must name exactly \['rpag', 'perlin'\] \(it names \['perlin'\]\)"),
        ({"rpag": 1.0, "perlin": 2.0, "smoothblend": 1.0}, r"it names \['perlin', 'rpag', 'smoothblend'\]"),
        ({"rpag": 1.0, "perlin": -2.0}, r"^pseudo_anomaly_ratio values must be numbers >= 0 .*got \{'perlin': -2\.0\}"),
        ({"rpag": "1", "perlin": 2.0}, r"^pseudo_anomaly_ratio values must be numbers >= 0 .*got \{'rpag': '1'\}"),
    ],
)
def test_a_ratio_per_source_must_name_each_source(mvtec_root: Path, ratio: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FewAnomalyMVTecAD(
            root=mvtec_root, category="bottle", n_anomalies=3, pseudo_anomaly_source="rpag+perlin",
            pseudo_anomaly_ratio=ratio, num_workers=0,
        )  # fmt: skip


def test_the_noise_fill_uses_no_texture_and_shares_the_blobs_of_the_normal_image_fill() -> None:
    image, texture = pair()
    for seed in range(4):
        out, mask = generate_perlin(image, None, np.random.default_rng(seed))
        _, texture_mask = generate_perlin(image, texture, np.random.default_rng(seed))
        assert torch.equal(mask, texture_mask)  # the fill changes what is inside the blobs, not where they are
        assert torch.equal(out[:, ~mask], image[:, ~mask])
        assert (out != image).any(0)[mask].float().mean() > 0.5
        again, _ = generate_perlin(image, None, np.random.default_rng(seed))
        assert torch.equal(out, again)


def test_perlin_texture_reaches_the_training_samples_and_the_manifest(mvtec_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"perlin_texture must be one of \['normal_image', 'noise'\], got 'dtd'"):
        FewAnomalyMVTecAD(root=mvtec_root, category="bottle", n_anomalies=3, perlin_texture="dtd", num_workers=0)

    def build(perlin_texture: str) -> FewAnomalyMVTecAD:
        datamodule = FewAnomalyMVTecAD(
            root=mvtec_root, category="bottle", n_anomalies=3, pseudo_anomaly_count=2, pseudo_anomaly_source="perlin",
            perlin_texture=perlin_texture, num_workers=0, train_on_anomalies=True, paste_in_foreground=False,
        )  # fmt: skip
        datamodule.setup()
        return datamodule

    noise, normal_image = build("noise"), build("normal_image")
    for index in range(2):
        image, mask, normal, source = noise.train_dataloader().dataset.generate(1, index)
        other, other_mask, other_normal, other_source = normal_image.train_dataloader().dataset.generate(1, index)
        assert source == normal == other_normal != other_source  # nothing but the normal image is read
        assert torch.equal(mask, other_mask) and not torch.equal(image[:, mask], other[:, mask])
        assert torch.equal(image[:, ~mask], read_image(normal)[:, ~mask])
    assert FewAnomalyMVTecAD(root=mvtec_root, category="bottle", num_workers=0).perlin_texture == "noise"
    manifest = normal_image.write_manifest(tmp_path)
    replayed = FewAnomalyMVTecAD.from_manifest(manifest, num_workers=0)
    assert replayed.perlin_texture == "normal_image"
    # A manifest of 0.4.3 or older records no perlin_texture: its run filled the blobs with normal images.
    recorded = json.loads(manifest.read_text())
    del recorded["init_args"]["perlin_texture"]
    manifest.write_text(json.dumps(recorded))
    assert FewAnomalyMVTecAD.from_manifest(manifest, num_workers=0).perlin_texture == "normal_image"
