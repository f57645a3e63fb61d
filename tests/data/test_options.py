"""The few-anomaly options: one declaration typed for anomalib's CLI, one place of checks, the 0.1.0 spellings."""

import inspect
import json
import warnings
from pathlib import Path

import pytest
from anomalib.data.datamodules.base.image import AnomalibDataModule
from jsonargparse import ArgumentParser

from anomalib_bgad.data import (
    FewAnomalyBTAD,
    FewAnomalyDataModule,
    FewAnomalyFolder,
    FewAnomalyMVTecAD,
    FewAnomalyVisa,
    SplitManifest,
)

CLASSES = [FewAnomalyMVTecAD, FewAnomalyBTAD, FewAnomalyFolder, FewAnomalyVisa]
OPTIONS = {
    name: param.default
    for name, param in inspect.signature(FewAnomalyDataModule.__init__).parameters.items()
    if param.kind is inspect.Parameter.KEYWORD_ONLY
}


def cli_parser() -> ArgumentParser:
    """The ``--data`` part of anomalib's CLI (``AnomalibCLI`` adds it exactly so)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(AnomalibDataModule, "data")
    return parser


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_datamodule_has_the_declared_options_and_anomalib_arguments_in_its_cli_signature(cls) -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")
    defaults = parser.get_defaults().data
    for name, default in OPTIONS.items():
        assert defaults[name] == default, name
    for anomalib_argument in ("train_batch_size", "eval_batch_size", "test_split_mode", "val_split_ratio"):
        assert anomalib_argument in defaults
    assert defaults["seed"] == 0 and defaults["num_workers"] is None
    # No datamodule declares a few-anomaly option a second time.
    own = set(inspect.signature(cls.__init__).parameters) if "__init__" in vars(cls) else set()
    assert not own & set(OPTIONS), own & set(OPTIONS)


def test_cli_spelling_and_types(folder_root: Path, trees) -> None:
    args = trees.folder_args(folder_root)
    argv = [
        "--data", "anomalib_bgad.data.FewAnomalyFolder", "--data.name", "tiny", "--data.root", str(folder_root),
        "--data.normal_dir", "good", "--data.normal_test_dir", "good_test",
        "--data.abnormal_dir", json.dumps(args["abnormal_dir"]), "--data.mask_dir", json.dumps(args["mask_dir"]),
        "--data.extensions", '[".png", ".PNG"]', "--data.n_anomalies", "3", "--data.pseudo_anomaly_count", "2",
        "--data.pseudo_anomaly_source", "both", "--data.train_on_anomalies", "true", "--data.num_workers", "0",
    ]  # fmt: skip
    parser = cli_parser()
    datamodule = parser.instantiate_classes(parser.parse_args(argv)).data
    assert type(datamodule) is FewAnomalyFolder
    assert (datamodule.n_anomalies, datamodule.pseudo_anomaly_count, datamodule.train_on_anomalies) == (3, 2, True)
    assert datamodule.extensions == (".png", ".PNG") and datamodule.num_workers == 0
    with pytest.raises(Exception, match="pseudo_anomaly_count"):
        parser.parse_args([*argv[:-2], "--data.pseudo_anomaly_count", "2.5"])  # a count is an int
    # A ratio per source, as a YAML mapping on the command line.
    per_source = [
        *argv,
        "--data.pseudo_anomaly_source",
        "rpag+perlin",
        "--data.pseudo_anomaly_ratio",
        "{rpag: 1, perlin: 5}",
    ]
    datamodule = parser.instantiate_classes(parser.parse_args(per_source)).data
    assert datamodule.pseudo_anomaly_ratio == {"rpag": 1.0, "perlin": 5.0}


def test_cli_help_documents_each_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli_parser().parse_args(["--data.help", "anomalib_bgad.data.FewAnomalyMVTecAD"])
    text = " ".join(capsys.readouterr().out.split())
    for name in OPTIONS:
        assert f"--data.{name}" in text
    assert "Pseudo anomalies per known anomaly" in text and "Deprecated 0.1.0 spelling" in text
    assert "--data.root" in text and "--data.category" in text  # anomalib's own arguments, with its docs


def test_ratio_and_count_are_one_type_each(mvtec_root: Path) -> None:
    ratio = FewAnomalyMVTecAD(root=mvtec_root, n_anomalies=3, pseudo_anomaly_ratio=1.5, num_workers=0)
    ratio.setup()
    assert ratio.pseudo_anomaly_counts == {"rpag": round(1.5 * 3), "smoothblend": 0, "perlin": 0}
    ratio.pseudo_anomaly_count = 7  # a count replaces the ratio
    assert ratio.pseudo_anomaly_counts == {"rpag": 7, "smoothblend": 0, "perlin": 0}
    with pytest.raises(ValueError, match=r"pseudo_anomaly_count must be an integer >= 0 .* got 2\.5"):
        FewAnomalyMVTecAD(root=mvtec_root, pseudo_anomaly_count=2.5, num_workers=0)
    with pytest.raises(ValueError, match=r"pseudo_anomaly_ratio must be a number >= 0 .* got '2'"):
        FewAnomalyMVTecAD(root=mvtec_root, pseudo_anomaly_ratio="2", num_workers=0)


def test_old_spellings_work_with_a_warning_that_names_the_new_one(mvtec_root: Path) -> None:
    with pytest.warns(
        FutureWarning, match=r"pseudo_anomalies=4 \(an int, a count\) is deprecated.*pseudo_anomaly_count"
    ):
        count = FewAnomalyMVTecAD(root=mvtec_root, pseudo_anomalies=4, num_workers=0)
    assert (count.pseudo_anomaly_count, count.pseudo_anomaly_ratio) == (4, 5.0)
    with pytest.warns(FutureWarning, match=r"pseudo_anomalies=0\.5 \(a float, a ratio\).*pseudo_anomaly_ratio"):
        ratio = FewAnomalyMVTecAD(root=mvtec_root, pseudo_anomalies=0.5, num_workers=0)
    assert (ratio.pseudo_anomaly_count, ratio.pseudo_anomaly_ratio) == (None, 0.5)
    with pytest.warns(FutureWarning, match=r"train_anomalies is deprecated.*use train_on_anomalies"):
        supervised = FewAnomalyMVTecAD(root=mvtec_root, train_anomalies=False, num_workers=0)
    assert supervised.train_on_anomalies is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FewAnomalyMVTecAD(root=mvtec_root, num_workers=0)  # the new spellings warn about nothing

    with pytest.raises(ValueError, match=r"pseudo_anomalies \(deprecated\) cannot be combined"):
        FewAnomalyMVTecAD(root=mvtec_root, pseudo_anomalies=4, pseudo_anomaly_count=2, num_workers=0)
    with pytest.raises(ValueError, match=r"train_anomalies=True \(deprecated\) contradicts train_on_anomalies=False"):
        FewAnomalyMVTecAD(root=mvtec_root, train_anomalies=True, train_on_anomalies=False, num_workers=0)

    parser = cli_parser()
    argv = ["--data", "anomalib_bgad.data.FewAnomalyMVTecAD", "--data.root", str(mvtec_root)]
    with pytest.warns(FutureWarning, match="pseudo_anomaly_count"):
        old = parser.instantiate_classes(parser.parse_args([*argv, "--data.pseudo_anomalies", "3"])).data
    assert old.pseudo_anomaly_count == 3


def test_manifest_of_0_1_0_replays_with_its_options(mvtec_root: Path, tmp_path: Path) -> None:
    original = FewAnomalyMVTecAD(root=mvtec_root, n_anomalies=3, pseudo_anomaly_count=4, num_workers=0)
    original.setup()
    data = json.loads(original.write_manifest(tmp_path / "new.json").read_text())
    init_args = data["init_args"]
    assert init_args["pseudo_anomaly_count"] == 4 and init_args["train_on_anomalies"] is None
    for new, old in (("pseudo_anomaly_count", "pseudo_anomalies"), ("train_on_anomalies", "train_anomalies")):
        init_args[old] = init_args.pop(new)
    init_args["train_anomalies"] = True
    del init_args["pseudo_anomaly_ratio"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the user wrote none of the old names: no warning
        replayed = FewAnomalyDataModule.from_manifest(tmp_path / "old.json", num_workers=0)
    assert (replayed.pseudo_anomaly_count, replayed.train_on_anomalies) == (4, True)
    replayed.setup()
    assert replayed.manifest.train_anomalies == original.manifest.train_anomalies
    assert SplitManifest.read(tmp_path / "old.json").train_anomalies == original.manifest.train_anomalies


def test_every_declared_option_is_set_and_recorded_in_the_manifest(mvtec_root: Path, tmp_path: Path) -> None:
    from anomalib_bgad.data.datamodules.base import FEW_ANOMALY_OPTIONS

    infrastructure = {"num_workers", "manifest_path", "replay_manifest", "verify_images"}
    deprecated = {"pseudo_anomalies", "train_anomalies"}
    assert set(FEW_ANOMALY_OPTIONS) == set(OPTIONS) - infrastructure - deprecated
    given = {
        "n_anomalies": 3,
        "setting": "multi_class",
        "seen_defect_type": None,
        "seed": 7,
        "pseudo_anomaly_source": "both",
        "pseudo_anomaly_ratio": 2.0,
        "pseudo_anomaly_count": 4,
        "repeat_anomalies": 2,
        "perlin_texture": "normal_image",
        "train_on_anomalies": True,
        "paste_in_foreground": False,
    }
    assert set(given) == set(FEW_ANOMALY_OPTIONS)  # a new option must be added here, with a non-default value
    datamodule = FewAnomalyMVTecAD(root=mvtec_root, num_workers=0, **given)
    assert {name: getattr(datamodule, name) for name in given} == given
    datamodule.setup()
    recorded = json.loads(datamodule.write_manifest(tmp_path / "manifest.json").read_text())["init_args"]
    assert {name: recorded[name] for name in given} == given
