"""A processed copy of raw VisA made by anomalib's own conversion, in a cache outside the dataset root.

VisA (Zou et al., ECCV 2022) ships in a *raw* layout — ``<root>/<category>/Data/Images/{Normal,Anomaly}``,
``Data/Masks/Anomaly`` and the split file ``<root>/split_csv/1cls.csv`` — that anomalib converts into an
MVTec-like *processed* copy (``visa_pytorch/<category>/{train/good, test/good, test/bad, ground_truth/bad}``)
with its own ``Visa.apply_cls1_split``. anomalib writes that copy into the dataset root; this project never
writes into the user's dataset folder, so:

* if ``<root>/visa_pytorch/<category>`` exists (anomalib made it before) it is used as is, read-only;
  ``root`` may also be a ``visa_pytorch`` folder itself;
* otherwise the category's raw files and its ``1cls.csv`` rows are copied to a staging folder under
  ``cache_dir``, anomalib's ``Visa.apply_cls1_split`` converts them there, and only the processed category is
  kept (``<cache_dir>/<root name>-<hash of root>/<category>/visa_pytorch/<category>``, with a ``stamp.json``).
  The cache is rebuilt when the category's ``1cls.csv`` rows, the size or modification time of one of its
  files, or the anomalib version change. Nothing under ``root`` is created, changed or linked.

Example:
    >>> cache = VisaCache(Path("./datasets/visa"), "capsules", cache_dir=None)  # doctest: +SKIP
    >>> cache.ensure()  # doctest: +SKIP
    PosixPath('/home/me/.cache/anomalib_bgad/visa/visa-0123456789abcdef/capsules/visa_pytorch')
"""

import csv
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import anomalib
from anomalib.data import Visa
from anomalib.data.utils.path import resolve_path_under_root

from anomalib_bgad.data.datamodules import validation
from anomalib_bgad.data.split.selection import stable_hash

SPLIT_CSV = Path("split_csv") / "1cls.csv"
CSV_HEADER = ["object", "split", "label", "image", "mask"]
PROCESSED_DIR = "visa_pytorch"
STAMP_FILE = "stamp.json"
_STAMP_FORMAT = "anomalib_bgad.visa_cache"
RAW_LAYOUT = (
    "<root>/split_csv/1cls.csv and <root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG, "
    "<root>/<category>/Data/Masks/Anomaly/*.png (VisA as downloaded), or anomalib's processed copy "
    "<root>/visa_pytorch/<category>/{train/good, test/good, test/bad, ground_truth/bad}"
)


def default_cache_dir() -> Path:
    """Where processed VisA copies go when ``cache_dir`` is not given.

    Returns:
        Path: ``$ANOMALIB_BGAD_CACHE/visa``, else ``$XDG_CACHE_HOME/anomalib_bgad/visa``, else
        ``~/.cache/anomalib_bgad/visa``.
    """
    if os.environ.get("ANOMALIB_BGAD_CACHE"):
        return Path(os.environ["ANOMALIB_BGAD_CACHE"]).expanduser() / "visa"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "anomalib_bgad" / "visa"


class VisaCache:
    """The processed (``visa_pytorch``) copy of one VisA category: found under ``root`` or made in the cache.

    Args:
        root (Path): VisA as downloaded, a folder holding anomalib's ``visa_pytorch``, or that folder itself.
        category (str): Category, e.g. ``"capsules"``.
        cache_dir (Path | None): Cache base folder (outside ``root``); ``None``: :func:`default_cache_dir`.
    """

    def __init__(self, root: Path, category: str, cache_dir: Path | None) -> None:
        self.root = Path(root)
        self.category = category
        self.cache_dir = cache_dir

    def processed_in_root(self) -> Path | None:
        """anomalib's processed folder if it already holds the category (read-only use), else ``None``."""
        for folder in (self.root / PROCESSED_DIR, self.root):
            if (folder / self.category / "train").is_dir() and (folder / self.category / "test").is_dir():
                return folder
        return None

    def is_raw(self) -> bool:
        """Whether ``root`` holds the category as downloaded (with ``split_csv/1cls.csv``)."""
        return (self.root / self.category).is_dir() and (self.root / SPLIT_CSV).is_file()

    @property
    def entry(self) -> Path:
        """Cache folder of this root and category (holds ``visa_pytorch/<category>`` and ``stamp.json``)."""
        resolved = Path(self.root).resolve()
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", resolved.name) or "root"
        base = self.cache_dir if self.cache_dir is not None else default_cache_dir()
        return base / f"{slug}-{stable_hash(str(resolved)):016x}" / self.category

    @property
    def processed_root(self) -> Path:
        """The ``visa_pytorch`` folder used: under ``root`` if anomalib made it there, else in the cache."""
        found = self.processed_in_root()
        return found if found is not None else self.entry / PROCESSED_DIR

    def check_location(self, dataset: str) -> None:
        """Check that ``root`` holds the category, raw or processed (nothing is created).

        Args:
            dataset (str): Datamodule name, for messages.

        Raises:
            FileNotFoundError: If the root, the category or the split file is missing.
        """
        validation.check_root(self.root, dataset, RAW_LAYOUT)
        if self.processed_in_root() is not None or self.is_raw():
            return
        if (self.root / self.category).is_dir():
            msg = (
                f"VisA category folder '{self.root / self.category}' exists but the split file "
                f"'{self.root / SPLIT_CSV}' does not. It comes with VisA (and with github.com/amazon-science/"
                "spot-diff); put it there so that anomalib's 1-class split can be made."
            )
            raise FileNotFoundError(msg)
        found = sorted(
            {path.name for path in self.root.iterdir() if (path / "Data" / "Images").is_dir()}
            | {path.parent.name for path in self.root.glob(f"{PROCESSED_DIR}/*/train")}
            | {path.parent.name for path in self.root.glob("*/train/good")}
        )
        listing = ", ".join(found) if found else "none"
        msg = (
            f"Unknown category '{self.category}' for {dataset}: neither '{self.root / self.category}' (raw VisA) "
            f"nor '{self.root / PROCESSED_DIR / self.category}' (anomalib's processed copy) exists. Categories "
            f"found under '{self.root}': {listing}. Set category (CLI: --data.category) to one of them; the layout "
            f"is {RAW_LAYOUT}."
        )
        raise FileNotFoundError(msg)

    def category_rows(self) -> list[list[str]]:
        """The category's ``1cls.csv`` rows, checked: known split/label, files present under ``root``."""
        split_file = self.root / SPLIT_CSV
        with split_file.open(encoding="utf-8", newline="") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            rows = [row for row in reader if row]
        if header is None or [field.strip() for field in header] != CSV_HEADER:
            msg = f"'{split_file}' does not start with VisA's header '{','.join(CSV_HEADER)}' (got {header!r})."
            raise ValueError(msg)
        mine = [row for row in rows if row[0] == self.category]
        if not mine:
            categories = ", ".join(sorted({row[0] for row in rows})) or "none"
            msg = f"'{split_file}' has no row for category '{self.category}'. Categories in it: {categories}."
            raise ValueError(msg)
        for number, row in enumerate(mine, start=1):
            if len(row) != len(CSV_HEADER):
                msg = f"Row {row!r} of '{split_file}' has {len(row)} fields; expected {len(CSV_HEADER)}."
                raise ValueError(msg)
            _, split, label, image, mask = row
            where = f"row {number} of category '{self.category}' in '{split_file}' ({','.join(row)})"
            if split not in {"train", "test"} or label not in {"normal", "anomaly"}:
                msg = f"Unexpected split '{split}' or label '{label}' in {where}: expected train/test, normal/anomaly."
                raise ValueError(msg)
            if label == "anomaly" and (split != "test" or not mask):
                msg = f"Every anomalous image must be a test image with a mask; {where} is not."
                raise ValueError(msg)
            for relative in (image, mask) if mask else (image,):
                try:
                    path = resolve_path_under_root(self.root, relative, should_exist=False)
                except ValueError as error:
                    msg = f"'{relative}' in {where} points outside the dataset root '{self.root}'."
                    raise ValueError(msg) from error
                if not path.is_file():
                    msg = (
                        f"'{path}' listed in {where} does not exist. The VisA copy under '{self.root}' is "
                        "incomplete: restore the file or the dataset."
                    )
                    raise FileNotFoundError(msg)
        return mine

    def _fingerprint(self, rows: list[list[str]]) -> str:
        digest = hashlib.sha256(f"anomalib {anomalib.__version__}\n".encode())
        for row in rows:
            digest.update((",".join(row) + "\n").encode("utf-8"))
            for relative in row[3:]:
                if relative:
                    stat = (self.root / relative).stat()
                    digest.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def is_current(self, entry: Path, fingerprint: str) -> bool:
        try:
            stamp = json.loads((entry / STAMP_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (
            stamp.get("format") == _STAMP_FORMAT
            and stamp.get("fingerprint") == fingerprint
            and (entry / PROCESSED_DIR / self.category / "train").is_dir()
        )

    def ensure(self) -> Path:
        """The processed ``visa_pytorch`` folder, made in the cache by anomalib's conversion if needed."""
        found = self.processed_in_root()
        if found is not None:
            return found
        rows = self.category_rows()
        fingerprint = self._fingerprint(rows)
        entry = self.entry
        if self.is_current(entry, fingerprint):
            return entry / PROCESSED_DIR
        if entry.resolve().is_relative_to(Path(self.root).resolve()):
            msg = (
                f"cache_dir '{entry.parents[1]}' is inside the dataset root '{self.root}', which is never written to. "
                "Set cache_dir (CLI: --data.cache_dir) to a folder outside it."
            )
            raise ValueError(msg)
        entry.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{self.category}-staging-", dir=entry.parent))
        try:
            self._convert(rows, stage)
            (stage / STAMP_FILE).write_text(
                json.dumps(
                    {
                        "format": _STAMP_FORMAT,
                        "root": str(Path(self.root).resolve()),
                        "category": self.category,
                        "fingerprint": fingerprint,
                        "anomalib_version": anomalib.__version__,
                        "images": len(rows),
                    },
                    indent=2,
                )
                + "\n",
                encoding="utf-8",
            )
            if entry.exists():  # stale: move it aside first (a rename is atomic, a removal is not)
                stale = Path(tempfile.mkdtemp(prefix=f".{self.category}-stale-", dir=entry.parent))
                entry.rename(stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            try:
                stage.rename(entry)
            except OSError:
                if not self.is_current(entry, fingerprint):  # not made by a concurrent run either
                    raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return entry / PROCESSED_DIR

    def _convert(self, rows: list[list[str]], stage: Path) -> None:
        """Run anomalib's ``Visa.apply_cls1_split`` on a staged copy of the category's raw files."""
        for row in rows:
            for relative in row[3:]:
                if relative:
                    target = stage / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(self.root / relative, target)
        (stage / SPLIT_CSV).parent.mkdir(parents=True)
        with (stage / SPLIT_CSV).open("w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(CSV_HEADER)
            writer.writerows(rows)
        converter = Visa.__new__(Visa)
        converter.root = stage
        converter.split_root = stage / PROCESSED_DIR
        Visa.apply_cls1_split(converter)
        # Keep only the processed category (apply_cls1_split makes empty folders for all twelve).
        for path in stage.iterdir():
            if path.name != PROCESSED_DIR:
                shutil.rmtree(path)
        for path in (stage / PROCESSED_DIR).iterdir():
            if path.name != self.category:
                shutil.rmtree(path)
