"""Tests for the embedded offline dataset generator (``anomalib_bgad.embedded``)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from anomalib_bgad.embedded import (
    EMBEDDED_CATEGORIES,
    EMBEDDED_DEFECT_TYPES,
    VISIBILITY_CLASSES,
    generate_embedded_dataset,
    measure_visibility,
    render_sample,
    source_region,
    visibility,
    writer,
)
from anomalib_bgad.embedded.defects import composite
from anomalib_bgad.embedded.samples import apply_defect
from anomalib_bgad.embedded.sources import load_source

TINY = {"image_size": 64, "n_train": 6, "n_test_good": 3, "n_test_per_defect": 2}


def _read(path: Path) -> np.ndarray:
    """Read a PNG as stored (no colour conversion)."""
    return np.asarray(Image.open(path))


def _files(folder: Path) -> dict[str, bytes]:
    """Map every file below ``folder`` (relative path) to its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny tree with all categories, shared by the read-only tests."""
    return generate_embedded_dataset(tmp_path_factory.mktemp("embedded"), seed=0, **TINY)


def test_public_constants() -> None:
    """At least three categories and four defect types are offered."""
    assert {"brick", "grass", "gravel"} <= set(EMBEDDED_CATEGORIES)
    assert len(EMBEDDED_DEFECT_TYPES) >= 4
    assert "good" not in EMBEDDED_DEFECT_TYPES


def test_layout(tiny_root: Path) -> None:
    """Folders, file names and image/mask formats follow the MVTec AD convention."""
    for category in EMBEDDED_CATEGORIES:
        folder = tiny_root / category
        assert sorted(p.name for p in (folder / "train").iterdir()) == ["good"]
        assert sorted(p.name for p in (folder / "test").iterdir()) == sorted(["good", *EMBEDDED_DEFECT_TYPES])
        assert sorted(p.name for p in (folder / "ground_truth").iterdir()) == sorted(EMBEDDED_DEFECT_TYPES)
        assert sorted(p.name for p in (folder / "train" / "good").iterdir()) == [f"{i:03d}.png" for i in range(6)]
        assert len(list((folder / "test" / "good").iterdir())) == 3
        for defect in EMBEDDED_DEFECT_TYPES:
            images = sorted(p.stem for p in (folder / "test" / defect).iterdir())
            masks = sorted(p.name for p in (folder / "ground_truth" / defect).iterdir())
            assert images == ["000", "001"]
            assert masks == ["000_mask.png", "001_mask.png"]
        for png in folder.rglob("*.png"):
            array = _read(png)
            assert array.shape == (64, 64)
            assert array.dtype == np.uint8
            if png.parts[-3] == "ground_truth":
                assert set(np.unique(array)) <= {0, 255}
                assert array.max() == 255, f"empty mask {png}"
        metadata = json.loads((folder / writer.METADATA_FILENAME).read_text())
        assert metadata["category"] == category
        assert metadata["seed"] == 0


def test_readable_by_anomalib_mvtecad(tiny_root: Path) -> None:
    """``anomalib.data.MVTecAD`` parses the tree unchanged, with masks for every anomalous image."""
    from anomalib.data import MVTecAD

    datamodule = MVTecAD(root=tiny_root, category="brick", train_batch_size=2, eval_batch_size=2, num_workers=0)
    datamodule.setup()
    assert len(datamodule.train_data) == TINY["n_train"]
    test_samples = datamodule.test_data.samples
    n_defects = len(EMBEDDED_DEFECT_TYPES) * TINY["n_test_per_defect"]
    assert len(test_samples) == TINY["n_test_good"] + n_defects
    anomalous = test_samples[test_samples.label_index == 1]
    assert len(anomalous) == n_defects
    for image_path, mask_path in zip(anomalous.image_path, anomalous.mask_path, strict=True):
        assert Path(mask_path).is_file()
        assert Path(mask_path).parent.name == Path(image_path).parent.name
        assert Path(mask_path).stem == Path(image_path).stem + "_mask"
    normal = test_samples[test_samples.label_index == 0]
    assert normal.mask_path.isna().all() or (normal.mask_path == "").all()

    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape[1:] == (3, 64, 64)
    sample = datamodule.test_data[int(anomalous.index[0])]
    assert sample.gt_label == 1
    assert sample.gt_mask.sum() > 0


@pytest.mark.parametrize("category", EMBEDDED_CATEGORIES)
def test_written_files_match_render_sample_and_masks_are_exact(tiny_root: Path, category: str) -> None:
    """Each defect image differs from its clean crop exactly inside its (non-empty) mask."""
    for defect in EMBEDDED_DEFECT_TYPES:
        for index in range(TINY["n_test_per_defect"]):
            sample = render_sample(category, "test", defect, index, seed=0, image_size=64)
            written = _read(tiny_root / category / "test" / defect / f"{index:03d}.png")
            mask = _read(tiny_root / category / "ground_truth" / defect / f"{index:03d}_mask.png") > 0
            np.testing.assert_array_equal(written, sample.image)
            np.testing.assert_array_equal(mask, sample.mask)
            assert mask.any()
            np.testing.assert_array_equal(written != sample.clean, mask)
    for index in range(TINY["n_train"]):
        sample = render_sample(category, "train", "good", index, seed=0, image_size=64)
        assert sample.mask is None
        np.testing.assert_array_equal(_read(tiny_root / category / "train" / "good" / f"{index:03d}.png"), sample.image)


@pytest.mark.parametrize("defect", EMBEDDED_DEFECT_TYPES)
def test_masks_exact_at_full_size(defect: str) -> None:
    """Masks equal the changed pixels at the default size too, and defects vary in size."""
    areas = []
    for index in range(6):
        sample = render_sample("gravel", "test", defect, index, seed=3, image_size=256)
        np.testing.assert_array_equal(sample.image != sample.clean, sample.mask)
        areas.append(int(sample.mask.sum()))
    assert min(areas) > 0
    assert max(areas) < 0.25 * 256 * 256
    assert len(set(areas)) > 1


def test_composite_changes_exactly_the_masked_pixels() -> None:
    """Saturated pixels that rounding would leave unchanged are still changed (and masked)."""
    clean = np.full((32, 32), 255, np.uint8)
    clean[:, :16] = 0
    opacity = np.zeros((32, 32), np.float32)
    opacity[8:24, 8:24] = 1.0
    opacity[8:24, 4:8] = 0.1  # below MASK_THRESHOLD: must stay untouched
    target = np.where(clean == 255, 300.0, -50.0).astype(np.float32)  # pushes beyond the uint8 range
    defective, mask = composite(clean, opacity, target)
    expected = np.zeros((32, 32), bool)
    expected[8:24, 8:24] = True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(defective != clean, mask)
    assert defective[10, 20] == 254
    assert defective[10, 10] == 1


def test_train_and_test_crops_come_from_disjoint_regions() -> None:
    """Train crops lie in the train columns, all test crops in the test columns, and these are disjoint."""
    shape = load_source("brick").shape
    train_first, train_end = source_region("train", shape)
    test_first, test_end = source_region("test", shape)
    assert (train_first, test_end) == (0, shape[1])
    assert train_end <= test_first
    for category in EMBEDDED_CATEGORIES:
        for index in range(40):
            box = render_sample(category, "train", "good", index, image_size=32).box
            assert train_first <= box.left and box.right <= train_end
            assert box.top >= 0 and box.bottom <= shape[0]
            for label in ("good", *EMBEDDED_DEFECT_TYPES[:2]):
                box = render_sample(category, "test", label, index, image_size=32).box
                assert test_first <= box.left and box.right <= test_end
                assert box.top >= 0 and box.bottom <= shape[0]


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    """Two generations with one seed give identical bytes; another seed gives other defects."""
    first = _files(generate_embedded_dataset(tmp_path / "a", seed=7, categories=["grass"], **TINY))
    second = _files(generate_embedded_dataset(tmp_path / "b", seed=7, categories=["grass"], **TINY))
    other = _files(generate_embedded_dataset(tmp_path / "c", seed=8, categories=["grass"], **TINY))
    assert first == second
    assert first.keys() == other.keys()
    masks = [key for key in first if key.startswith("grass/ground_truth/")]
    assert masks
    assert sum(first[key] != other[key] for key in masks) >= len(masks) - 1
    assert sum(first[key] != other[key] for key in first) >= len(first) - 2


def test_categories_are_independent_of_order_and_selection(tmp_path: Path, tiny_root: Path) -> None:
    """A category's files do not depend on which other categories are generated or in which order."""
    reordered = generate_embedded_dataset(tmp_path / "reordered", categories=["gravel", "brick"], **TINY)
    alone = generate_embedded_dataset(tmp_path / "alone", categories="brick", **TINY)
    assert sorted(p.name for p in reordered.iterdir()) == ["README.md", "brick", "gravel"]
    assert _files(alone / "brick") == _files(tiny_root / "brick") == _files(reordered / "brick")
    assert _files(reordered / "gravel") == _files(tiny_root / "gravel")


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"categories": ["brick", "wood"]}, "categories"),
        ({"categories": []}, "categories"),
        ({"image_size": 31}, "image_size"),
        ({"image_size": 64.0}, "image_size"),
        ({"n_train": 0}, "n_train"),
        ({"n_test_good": 0}, "n_test_good"),
        ({"n_test_per_defect": 0}, "n_test_per_defect"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path: Path, kwargs: dict, argument: str) -> None:
    """Invalid arguments raise a ``ValueError`` that names the argument, before anything is written."""
    params = {**TINY, **kwargs}
    with pytest.raises(ValueError, match=argument):
        generate_embedded_dataset(tmp_path / "root", **params)
    assert not (tmp_path / "root").exists()


def test_unknown_category_lists_valid_ones(tmp_path: Path) -> None:
    """The error for an unknown category lists the valid names."""
    with pytest.raises(ValueError, match="wood") as error:
        generate_embedded_dataset(tmp_path, categories=["wood"], **TINY)
    assert all(name in str(error.value) for name in EMBEDDED_CATEGORIES)


def test_root_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    """A file passed as root is reported as a bad ``root``."""
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="root"):
        generate_embedded_dataset(path, **TINY)


def test_render_sample_rejects_defects_in_train() -> None:
    """Training images are always normal."""
    with pytest.raises(ValueError, match="label"):
        render_sample("brick", "train", "scratch", 0)
    with pytest.raises(ValueError, match="split"):
        render_sample("brick", "val", "good", 0)


def test_existing_tree_with_same_parameters_is_left_untouched(tmp_path: Path) -> None:
    """A second call with the same parameters does not rewrite anything."""
    root = generate_embedded_dataset(tmp_path, categories=["brick"], **TINY)
    marker = root / "brick" / "train" / "good" / "marker.txt"
    marker.write_text("kept")
    before = {p: p.stat().st_mtime_ns for p in (root / "brick").rglob("*.png")}
    generate_embedded_dataset(tmp_path, categories=["brick"], **TINY)
    assert marker.read_text() == "kept"
    assert {p: p.stat().st_mtime_ns for p in (root / "brick").rglob("*.png")} == before


def test_existing_tree_with_other_parameters_needs_overwrite(tmp_path: Path) -> None:
    """Other parameters raise ``FileExistsError`` naming the folder and the fix; overwrite replaces."""
    generate_embedded_dataset(tmp_path, categories=["brick"], **TINY)
    marker = tmp_path / "brick" / "marker.txt"
    marker.write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True") as error:
        generate_embedded_dataset(tmp_path, categories=["brick"], **{**TINY, "n_train": 7})
    assert str(tmp_path / "brick") in str(error.value)
    assert marker.exists()
    assert len(list((tmp_path / "brick" / "train" / "good").iterdir())) == TINY["n_train"]

    generate_embedded_dataset(tmp_path, categories=["brick"], overwrite=True, **{**TINY, "n_train": 7})
    assert not marker.exists()
    assert len(list((tmp_path / "brick" / "train" / "good").iterdir())) == 7
    assert json.loads((tmp_path / "brick" / writer.METADATA_FILENAME).read_text())["n_train"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "brick"]


def test_foreign_folder_is_not_replaced_but_empty_folder_is_used(tmp_path: Path) -> None:
    """A non-empty folder we did not write is protected; an empty one is filled."""
    (tmp_path / "brick").mkdir()
    (tmp_path / "brick" / "notes.txt").write_text("mine")
    (tmp_path / "grass").mkdir()
    with pytest.raises(FileExistsError, match="brick"):
        generate_embedded_dataset(tmp_path, categories=["brick"], **TINY)
    assert (tmp_path / "brick" / "notes.txt").read_text() == "mine"
    generate_embedded_dataset(tmp_path, categories=["grass"], **TINY)
    assert (tmp_path / "grass" / writer.METADATA_FILENAME).is_file()


def _fail_after(monkeypatch: pytest.MonkeyPatch, n_calls: int) -> None:
    """Make ``write_png`` raise after ``n_calls`` successful writes."""
    real_write = writer.write_png
    calls = {"n": 0}

    def flaky_write(path: Path, image: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] > n_calls:
            msg = "disk full"
            raise OSError(msg)
        real_write(path, image)

    monkeypatch.setattr(writer, "write_png", flaky_write)


def test_interrupted_generation_leaves_no_partial_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure mid-way leaves neither the category folder nor temporary folders behind."""
    _fail_after(monkeypatch, 10)
    with pytest.raises(OSError, match="disk full"):
        generate_embedded_dataset(tmp_path, categories=["brick"], **TINY)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    generate_embedded_dataset(tmp_path, categories=["brick"], **TINY)
    assert len(list((tmp_path / "brick" / "test" / "good").iterdir())) == TINY["n_test_good"]


def test_interrupted_overwrite_keeps_the_old_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while overwriting keeps the previous complete tree in place."""
    generate_embedded_dataset(tmp_path, categories=["brick"], **TINY)
    before = _files(tmp_path / "brick")
    _fail_after(monkeypatch, 10)
    with pytest.raises(OSError, match="disk full"):
        generate_embedded_dataset(tmp_path, categories=["brick"], seed=1, overwrite=True, **TINY)
    assert _files(tmp_path / "brick") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "brick"]


def test_failed_rename_while_overwriting_restores_the_old_tree(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the finished tree cannot be moved into place, the old tree is moved back."""
    generate_embedded_dataset(tmp_path, categories=["brick"], **TINY)
    before = _files(tmp_path / "brick")
    real_rename = Path.rename

    def failing_rename(self: Path, target: Path) -> Path:
        if self.name.startswith(".brick.tmp-"):
            msg = "rename failed"
            raise OSError(msg)
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        generate_embedded_dataset(tmp_path, categories=["brick"], seed=1, overwrite=True, **TINY)
    monkeypatch.undo()
    assert _files(tmp_path / "brick") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "brick"]


def _independent_visibility(image: np.ndarray, clean: np.ndarray, mask: np.ndarray, width: int) -> float:
    """The README's visibility ``V``, computed with scipy's exact distance transform (not the generator's cv2 one)."""
    ring = (ndimage.distance_transform_edt(~mask) <= width) & ~mask
    surrounding = image[ring].astype(np.float64)
    inside = image[mask].astype(np.float64).mean()
    step = min(abs(inside - surrounding.mean()), abs(inside - clean[mask].astype(np.float64).mean()))
    return step / max(surrounding.std(), visibility.TEXTURE_STD_FLOOR)


@pytest.mark.parametrize("category", EMBEDDED_CATEGORIES)
def test_visibility_rule_holds_at_256px(category: str) -> None:
    """At the benchmark resolution every defect meets its class's visibility range and its type's area range.

    Indices 0-2 are ``clear`` and 3 is ``subtle``; ``V`` is recomputed independently of the generator.
    """
    for defect in EMBEDDED_DEFECT_TYPES:
        for index in range(4):
            sample = render_sample(category, "test", defect, index, seed=0, image_size=256)
            expected_class = "subtle" if index == 3 else "clear"
            assert sample.visibility_class == expected_class
            low, high = VISIBILITY_CLASSES[expected_class]
            value = _independent_visibility(sample.image, sample.clean, sample.mask, width=8)
            assert low <= value <= high, (category, defect, index, value)
            assert value == pytest.approx(sample.visibility.value, abs=1e-6)
            min_area, max_area = visibility.DEFECT_AREA_RANGE[defect]
            assert min_area <= sample.mask.sum() <= max_area
            np.testing.assert_array_equal(sample.image != sample.clean, sample.mask)


def test_measure_visibility_is_the_smaller_step() -> None:
    """``V`` is the smaller of the step against the ring and the step against the clean surface, per floored std."""
    clean = np.full((64, 64), 100, np.uint8)
    clean[20:30, 20:30] = 60  # a shadow under the defect
    mask = np.zeros((64, 64), bool)
    mask[20:30, 20:30] = True
    image = clean.copy()
    image[mask] = 50  # darkens the shadow a little: far from the ring, close to what was there
    seen = measure_visibility(image, clean, mask)
    assert seen.contrast == pytest.approx(50 / visibility.TEXTURE_STD_FLOOR)  # flat ring: std floored
    assert seen.change == pytest.approx(10 / visibility.TEXTURE_STD_FLOOR)
    assert seen.value == pytest.approx(seen.change)
    image[mask] = 140
    assert measure_visibility(image, clean, mask).value == pytest.approx(40 / visibility.TEXTURE_STD_FLOOR)
    with pytest.raises(ValueError, match="non-empty mask"):
        measure_visibility(image, clean, np.zeros((64, 64), bool))


def test_unreachable_visibility_raises_naming_the_defect() -> None:
    """A dark hole cannot become visible on a black crop: the generator gives up with a clear error."""
    black = np.zeros((64, 64), np.uint8)
    with pytest.raises(RuntimeError, match="clear 'hole'"):
        apply_defect(np.random.default_rng(0), black, "hole", load_source("grass"), "clear")


def test_defects_csv_lists_every_defect_with_its_measured_visibility(tiny_root: Path) -> None:
    """``defects.csv`` has one row per defective image, with the class, ``V`` and area of the written files."""
    for category in EMBEDDED_CATEGORIES:
        with (tiny_root / category / writer.DEFECTS_FILENAME).open() as file:
            rows = list(csv.DictReader(file))
        assert len(rows) == len(EMBEDDED_DEFECT_TYPES) * TINY["n_test_per_defect"]
        assert sorted(rows[0]) == sorted(writer.DEFECTS_COLUMNS)
        for row in rows:
            image = _read(tiny_root / category / row["image"])
            mask = _read(tiny_root / category / row["mask"]) > 0
            index = int(Path(row["image"]).stem)
            clean = render_sample(category, "test", row["defect_type"], index, seed=0, image_size=64).clean
            value = _independent_visibility(image, clean, mask, width=visibility.ring_width(64))
            assert float(row["visibility"]) == pytest.approx(value, abs=1e-4)
            low, high = VISIBILITY_CLASSES[row["visibility_class"]]
            assert low <= value <= high
            assert int(row["area_px"]) == mask.sum()


def test_dataset_readme_states_the_rule(tiny_root: Path) -> None:
    """The root README names the sources, the licence, every defect type and the rule's numbers."""
    text = (tiny_root / "README.md").read_text()
    assert text.startswith("<!-- Written by anomalib_bgad.embedded")
    assert "CC0" in text
    for name in (*EMBEDDED_CATEGORIES, *EMBEDDED_DEFECT_TYPES):
        assert f"`{name}`" in text
    for low, high in VISIBILITY_CLASSES.values():
        assert f"{low:.2f} to {high:.2f}" in text
    for low, high in visibility.DEFECT_AREA_RANGE.values():
        assert f"{low}-{high}" in text


def test_foreign_readme_is_not_replaced(tmp_path: Path) -> None:
    """A README.md the generator did not write is kept, and nothing is generated next to it."""
    (tmp_path / "README.md").write_text("my notes")
    with pytest.raises(FileExistsError, match=r"README\.md"):
        generate_embedded_dataset(tmp_path, categories=["brick"], **TINY)
    assert (tmp_path / "README.md").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_generated_files_are_readable_like_files_the_user_writes(tmp_path: Path) -> None:
    """The README and the category folder get the umask's permissions, not tempfile's private 0600 / 0700."""
    import os

    umask = os.umask(0o022)
    try:
        root = generate_embedded_dataset(tmp_path / "data", categories=["brick"], **TINY)
    finally:
        os.umask(umask)
    assert (root / "README.md").stat().st_mode & 0o777 == 0o644
    assert (root / "brick").stat().st_mode & 0o777 == 0o755
    assert (root / "brick" / "train" / "good").stat().st_mode & 0o777 == 0o755
