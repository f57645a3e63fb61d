"""The ``<category>/{train, test, ground_truth}`` layout shared by MVTec AD, BTAD and processed VisA.

``<category>/train/<normal>/*`` holds the normal training images, ``test/<normal>`` the normal test images,
``test/<defect type>/*`` the anomalous ones and ``ground_truth/<defect type>/`` their masks, named after the
image by the dataset's mask name patterns. anomalib parses these folders; :class:`GroundTruthLayout` checks
them beforehand and pairs every anomalous image with its mask by name (anomalib pairs by sorted position).

Example:
    >>> layout = GroundTruthLayout("good", (".png",), ("{stem}_mask.png",), "MVTec AD layout")
    >>> [path.name for path in layout.mask_candidates(Path("x/test/crack/001.png"), Path("x"), "crack")]
    ['001_mask.png']
"""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from anomalib_bgad.data.datamodules import validation


@dataclass(frozen=True)
class GroundTruthLayout:
    """One dataset's variant of the ground-truth folder layout.

    Attributes:
        normal (str): Name of the normal folders under ``train`` and ``test`` (``good``, ``ok``).
        extensions (tuple[str, ...]): Image suffixes anomalib lists (case-sensitive unless all lower-case).
        mask_names (tuple[str, ...]): Mask file names to look for, in order, as ``str.format`` patterns of the
            image's ``{stem}`` and ``{suffix}``.
        description (str): The layout in words, for error messages.
        pairs_by_order (bool): anomalib pairs the dataset's masks by sorted position, so a mask without its
            image would shift the pairs: such masks are refused. Defaults to ``True``.
    """

    normal: str
    extensions: tuple[str, ...]
    mask_names: tuple[str, ...]
    description: str
    pairs_by_order: bool = True

    def mask_candidates(self, image: Path, category_dir: Path, defect: str) -> list[Path]:
        """Mask paths of an anomalous image, in the order they are looked for.

        Args:
            image (Path): Anomalous image ``<category_dir>/test/<defect>/<name>``.
            category_dir (Path): Category folder.
            defect (str): Defect type (the image's folder).

        Returns:
            list[Path]: Candidate mask paths.
        """
        folder = category_dir / "ground_truth" / defect
        return [folder / name.format(stem=image.stem, suffix=image.suffix) for name in self.mask_names]

    def find_mask(self, image: Path, category_dir: Path, defect: str) -> Path:
        """The mask of an anomalous image.

        Args:
            image (Path): Anomalous image.
            category_dir (Path): Category folder.
            defect (str): Defect type.

        Returns:
            Path: The first candidate that exists.

        Raises:
            FileNotFoundError: If none exists; the message lists every path tried.
        """
        candidates = self.mask_candidates(image, category_dir, defect)
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise validation.missing_mask_error(image, candidates)
        return found

    def check(self, category_dir: Path, category: str) -> None:
        """Check the layout of one category before anomalib parses it.

        Args:
            category_dir (Path): ``<root>/<category>``.
            category (str): Category name, for messages.

        Raises:
            FileNotFoundError: If a folder or an anomalous image's mask is missing.
            ValueError: If the normal training folder is empty or (``pairs_by_order``) a mask has no image.
        """
        validation.check_normal_train_images(category_dir / "train" / self.normal, self.extensions)
        test_dir, gt_dir = category_dir / "test", category_dir / "ground_truth"
        if not test_dir.is_dir():
            msg = f"Category '{category}' has no test folder '{test_dir}'; expected {self.description}."
            raise FileNotFoundError(msg)
        validation.check_ground_truth_folder(gt_dir, category)
        defects = sorted(path.name for path in test_dir.iterdir() if path.is_dir() and path.name != self.normal)
        for defect in defects:
            matched = {
                self.find_mask(image, category_dir, defect)
                for image in validation.list_images(test_dir / defect, self.extensions)
            }
            if self.pairs_by_order:
                for mask in validation.list_images(gt_dir / defect, self.extensions):
                    if mask not in matched:
                        raise validation.orphan_mask_error(mask, test_dir / defect)
        if self.pairs_by_order:
            for folder in sorted(path for path in gt_dir.iterdir() if path.is_dir() and path.name not in defects):
                masks = validation.list_images(folder, self.extensions)
                if masks:
                    raise validation.orphan_mask_error(masks[0], test_dir / folder.name)

    def defect_types_and_masks(self, anomalous: pd.DataFrame) -> tuple[list[str], list[str]]:
        """Defect type and mask of every anomalous row of anomalib's ``samples`` (columns ``path``, ``label``).

        Args:
            anomalous (pd.DataFrame): Anomalous test rows; ``path`` is the category folder, ``label`` the type.

        Returns:
            tuple[list[str], list[str]]: Defect types and mask paths, row by row.
        """
        rows = zip(anomalous.path, anomalous.image_path, anomalous.label, strict=True)
        masks = [str(self.find_mask(Path(image), Path(category_dir), defect)) for category_dir, image, defect in rows]
        return [str(label) for label in anomalous.label], masks
