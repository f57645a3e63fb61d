"""Tiny MVTec AD-, BTAD- and Folder-format datasets generated with numpy and PIL.

Object images are a bright disk on a dark background with some texture; an anomalous image has a
coloured defect inside the disk and a mask of exactly the defect. Every tree is written under
``tmp_path`` and is a few kilobytes.
"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

SIZE = 32


def object_image(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """RGB uint8 image: textured bright disk (the object) on a dark background."""
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (0.35 * size) ** 2
    image = rng.integers(0, 40, size=(size, size, 3))
    image[disk] = rng.integers(150, 230, size=(int(disk.sum()), 3))
    return image.astype(np.uint8)


def defect(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paint a rectangular defect inside the disk; return the image and its 0/255 mask."""
    size = image.shape[0]
    h, w = rng.integers(3, 7, size=2)
    y, x = rng.integers(size // 2 - 6, size // 2 + 2, size=2)
    mask = np.zeros((size, size), np.uint8)
    mask[y : y + h, x : x + w] = 255
    out = image.copy()
    out[mask > 0] = (255, 0, 0)
    return out, mask


def save(path: Path, array: np.ndarray) -> Path:
    """Write an image, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_mvtec(
    root: Path,
    category: str = "bottle",
    defects: dict[str, int] | None = None,
    n_train: int = 6,
    n_test_good: int = 3,
    seed: int = 0,
) -> Path:
    """MVTec AD layout: ``<root>/<category>/train/good``, ``test/<defect>``, ``ground_truth/<defect>/*_mask.png``."""
    defects = {"crack": 4, "hole": 3, "scratch": 3} if defects is None else defects
    rng = np.random.default_rng(seed)
    base = root / category
    for i in range(n_train):
        save(base / "train" / "good" / f"{i:03d}.png", object_image(rng))
    for i in range(n_test_good):
        save(base / "test" / "good" / f"{i:03d}.png", object_image(rng))
    for name, count in defects.items():
        for i in range(count):
            image, mask = defect(rng, object_image(rng))
            save(base / "test" / name / f"{i:03d}.png", image)
            save(base / "ground_truth" / name / f"{i:03d}_mask.png", mask)
    return root


def make_btad(
    root: Path, category: str = "01", n_train: int = 6, n_test_ok: int = 3, n_ko: int = 6, seed: int = 0
) -> Path:
    """BTAD layout: ``<root>/<category>/train/ok/*.bmp``, ``test/ok``, ``test/ko``, ``ground_truth/ko/*.png``."""
    rng = np.random.default_rng(seed)
    base = root / category
    for i in range(n_train):
        save(base / "train" / "ok" / f"{i:04d}.bmp", object_image(rng))
    for i in range(n_test_ok):
        save(base / "test" / "ok" / f"{i:04d}.bmp", object_image(rng))
    for i in range(n_ko):
        image, mask = defect(rng, object_image(rng))
        save(base / "test" / "ko" / f"{i:04d}.bmp", image)
        save(base / "ground_truth" / "ko" / f"{i:04d}.png", mask)
    return root


def make_folder(
    root: Path, defects: dict[str, int] | None = None, n_normal: int = 8, n_test_good: int = 3, seed: int = 0
) -> Path:
    """Folder layout: ``good/``, ``good_test/``, one dir per defect type, ``mask/<defect>/`` with same names."""
    defects = {"crack": 4, "hole": 3} if defects is None else defects
    rng = np.random.default_rng(seed)
    for i in range(n_normal):
        save(root / "good" / f"{i:03d}.png", object_image(rng))
    for i in range(n_test_good):
        save(root / "good_test" / f"{i:03d}.png", object_image(rng))
    for name, count in defects.items():
        for i in range(count):
            image, mask = defect(rng, object_image(rng))
            save(root / name / f"{i:03d}.png", image)
            save(root / "mask" / name / f"{i:03d}.png", mask)
    return root


def folder_args(root: Path, defects: tuple[str, ...] = ("crack", "hole")) -> dict:
    """Init args of FewAnomalyFolder for a :func:`make_folder` tree."""
    return {
        "name": "tiny",
        "root": root,
        "normal_dir": "good",
        "normal_test_dir": "good_test",
        "abnormal_dir": list(defects),
        "mask_dir": [f"mask/{name}" for name in defects],
    }


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under root with its size, mtime and content: to prove a tree is left untouched."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(root.rglob("*"))
        if path.is_file()
    } | {str(path.relative_to(root)) + "/": (0, 0, b"") for path in root.rglob("*") if path.is_dir()}


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    """MVTec AD-format tree with category ``bottle`` (3 defect types, 10 anomalies)."""
    return make_mvtec(tmp_path / "mvtec")


@pytest.fixture
def btad_root(tmp_path: Path) -> Path:
    """BTAD-format tree with category ``01`` (6 ``ko`` images)."""
    return make_btad(tmp_path / "btad")


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """Folder-format tree with defect dirs ``crack`` and ``hole``."""
    return make_folder(tmp_path / "folder")


@pytest.fixture
def trees() -> SimpleNamespace:
    """The tree writers and helpers of this module, for tests that need a variant."""
    return SimpleNamespace(
        make_mvtec=make_mvtec,
        make_btad=make_btad,
        make_folder=make_folder,
        folder_args=folder_args,
        snapshot=snapshot,
        save=save,
        object_image=object_image,
        defect=defect,
    )
