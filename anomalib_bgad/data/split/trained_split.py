"""Is this the split the model was trained on? A check for ``anomalib test`` and ``predict``.

A model is trained on one few-anomaly split; testing it on another moves its known anomalies back into the test set
(or tests it on another category altogether). The training split is known twice: from the run folder's
``split_manifest.json`` and from the checkpoint, which holds the datamodule's ``state_dict`` (Lightning saves it in
every checkpoint and hands it back when ``test`` or ``predict`` restore one). Both are compared here.
"""

from pathlib import Path

from anomalib_bgad.data.split.manifest import MANIFEST_FILENAME, SplitManifest


def split_difference(trained: SplitManifest, current: SplitManifest) -> str | None:
    """How ``current`` differs from the split ``trained`` records, or ``None`` when it is the same split.

    Args:
        trained (SplitManifest): The split the model was trained on.
        current (SplitManifest): This run's split.

    Returns:
        str | None: A phrase naming the difference (the category first, as the likeliest mistake), else ``None``.
    """
    if (trained.datamodule, trained.category) != (current.datamodule, current.category):
        return (
            f"the model was trained on {trained.datamodule} category {trained.category!r}, this run uses "
            f"{current.datamodule} category {current.category!r} (CLI: --data.category {trained.category})"
        )
    if (trained.train_anomalies, trained.test_images) != (current.train_anomalies, current.test_images):
        return (
            f"{len(current.test_images)} vs {len(trained.test_images)} test images, other known anomalies or test "
            "files, so known anomalies may be scored as test images"
        )
    return None


def manifest_near(checkpoint: str | Path | None) -> Path | None:
    """The ``split_manifest.json`` of the run that wrote ``checkpoint``, when it is still next to it.

    anomalib writes ``<run>/weights/lightning/model.ckpt`` and this package ``<run>/split_manifest.json``.

    Args:
        checkpoint (str | Path | None): A checkpoint file.

    Returns:
        Path | None: The manifest in the checkpoint's folder or one of its three parents, else ``None``.
    """
    if checkpoint is None:
        return None
    folder = Path(checkpoint).parent
    for candidate in [folder, *list(folder.parents)[:3]]:
        if (candidate / MANIFEST_FILENAME).is_file():
            return candidate / MANIFEST_FILENAME
    return None
