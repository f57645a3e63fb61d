"""anomalib's own CLI with BGAD: train (plain MVTecAD and the demo config), test, predict; anomalib-bgad."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import get_args

import pytest

from anomalib_bgad.cli import main as bgad_main

REPO = Path(__file__).resolve().parents[1]
CLI_TIMEOUT = 900  # seconds per anomalib command
FAST_MODEL = ["--model.coupling_blocks", "2", "--model.fiber_batch_size", "2048"]


def metric(output: str, name: str) -> float:
    """Read a metric value from anomalib's rich test table."""
    for line in output.splitlines():
        if f" {name} " in line:
            return float(line.split("│")[2])
    raise AssertionError(f"{name} not in output:\n{output[-3000:]}")


@pytest.mark.slow
def test_train_plain_mvtec_then_test_and_predict(tiny_mvtec_root: Path, tmp_path: Path, run_anomalib) -> None:
    data = ["--data", "anomalib.data.MVTecAD", "--data.root", str(tiny_mvtec_root), "--data.category", "brick"]
    data += ["--data.train_batch_size", "4", "--data.eval_batch_size", "4", "--data.num_workers", "0"]
    results = tmp_path / "results"
    train = run_anomalib(
        "train",
        "--model",
        "anomalib_bgad.Bgad",
        *FAST_MODEL,
        *data,
        "--trainer.max_epochs",
        "2",
        "--seed_everything",
        "0",
        "--default_root_dir",
        str(results),
        cwd=tmp_path,
        timeout=CLI_TIMEOUT,
    )
    assert 0.0 <= metric(train.stdout, "image_AUROC") <= 1.0
    assert 0.0 <= metric(train.stdout, "pixel_AUPRO") <= 1.0
    checkpoint = next(results.rglob("*.ckpt"))

    tested = run_anomalib(
        "test", "--model", "anomalib_bgad.Bgad", *FAST_MODEL, *data, "--ckpt_path", str(checkpoint),
        cwd=tmp_path, timeout=CLI_TIMEOUT,
    )  # fmt: skip
    # The same checkpoint on the same test split gives the same metric.
    assert metric(tested.stdout, "image_AUROC") == pytest.approx(metric(train.stdout, "image_AUROC"), abs=1e-6)

    image = next((tiny_mvtec_root / "brick" / "test" / "hole").glob("*.png"))
    run_anomalib(
        "predict",
        "--model",
        "anomalib_bgad.Bgad",
        *FAST_MODEL,
        "--data",
        str(image),
        "--ckpt_path",
        str(checkpoint),
        "--default_root_dir",
        str(tmp_path / "predict"),
        cwd=tmp_path,
        timeout=CLI_TIMEOUT,
    )
    written = list((tmp_path / "predict").rglob("*.png"))
    assert any(path.name == image.name for path in written), written


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "source", "ratio"),
    [
        ("bgad_demo.yaml", "rpag", 1.0),
        ("bgad_demo_unseen_types.yaml", "rpag+perlin", {"rpag": 1.0, "perlin": 5.0}),
    ],
)
def test_demo_config_trains_with_anomalies(
    config: str, source: str, ratio: float | dict[str, float], tiny_mvtec_root: Path, tmp_path: Path, run_anomalib
) -> None:
    results = tmp_path / "results"
    train = run_anomalib(
        "train",
        "--config",
        str(REPO / "configs" / config),
        *FAST_MODEL,
        "--data.root",
        str(tiny_mvtec_root),
        "--data.n_anomalies",
        "2",
        "--data.train_batch_size",
        "4",
        "--data.num_workers",
        "0",
        "--trainer.max_epochs",
        "2",
        "--default_root_dir",
        str(results),
        cwd=tmp_path,
        timeout=CLI_TIMEOUT,
    )
    assert 0.0 <= metric(train.stdout, "pixel_AUROC") <= 1.0
    assert list(results.rglob("*.ckpt"))
    assert list(results.rglob("images/**/*.png")), "the visualizer wrote no anomaly-map images"
    # The config's pseudo anomalies reached the datamodule that trained (the mapping through anomalib's CLI too).
    (manifest,) = results.rglob("split_manifest.json")
    init_args = json.loads(manifest.read_text())["init_args"]
    assert (init_args["pseudo_anomaly_source"], init_args["pseudo_anomaly_ratio"]) == (source, ratio)
    assert init_args["perlin_texture"] == "noise"


def test_make_dataset_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = bgad_main(["make-dataset", "--root", str(tmp_path / "ds"), "--categories", "grass", "--image-size", "64"])
    assert code == 0
    assert (tmp_path / "ds" / "grass" / "train" / "good").is_dir()
    assert "ready" in capsys.readouterr().out
    # Bad input: a clear error and a non-zero exit, not a traceback.
    assert bgad_main(["make-dataset", "--root", str(tmp_path / "ds2"), "--categories", "carpet"]) == 2
    assert "carpet" in capsys.readouterr().err


def test_every_option_has_help() -> None:
    """``anomalib-bgad <command> --help`` describes every option it lists (a bare ``--root ROOT`` says nothing)."""
    import argparse

    from anomalib_bgad.cli import build_parser
    from anomalib_bgad.demo import DEMO_EPOCHS

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = {
        f"{name} {action.option_strings[0]}": action
        for name, sub in commands.choices.items()
        for action in sub._actions
        if action.option_strings
    }
    assert not [option for option, action in options.items() if not action.help], "options without help"
    takes_value = [option for option, action in options.items() if action.nargs != 0]
    assert "demo --epochs" in takes_value
    assert not [option for option in takes_value if "default" not in options[option].help], "no default stated"
    assert f"default: {DEMO_EPOCHS}," in options["demo --epochs"].help, "the help's default is not run_demo's"
    # --epochs 0 or below is a usage error (exit 2), not Lightning's "no limit" (-1) nor silently the default.
    with pytest.raises(SystemExit) as exit_info:
        bgad_main(["demo", "--epochs", "0"])
    assert exit_info.value.code == 2


def test_install_weights_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert bgad_main(["install-weights", "--cache-dir", str(tmp_path)]) == 0
    assert (tmp_path / "models--timm--tf_efficientnet_lite0.in1k" / "refs" / "main").is_file()
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().out


# Runs anomalib's own CLI class on each argument list (argv[1]: a JSON list of lists) in one process, one library
# import instead of one per run; prints one JSON line per run with its exit code and output. An exception that
# escapes the CLI (anomalib's own ``anomalib`` command prints it as a traceback) gives code 1.
_RUN_CLI = """
import contextlib, io, json, sys, traceback
from anomalib.cli import AnomalibCLI
for args in json.loads(sys.argv[1]):
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            AnomalibCLI(args=args)
        except SystemExit as exit_:
            code = exit_.code or 0
        except Exception:
            code = 1
            traceback.print_exc()
    print(json.dumps({"args": args, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}))
"""


def _run_cli(run_offline, arg_lists: list[list[str]]) -> list[dict]:
    """Run anomalib's CLI on each of ``arg_lists`` in one process; per run its ``code``, ``stdout`` and ``stderr``."""
    result = run_offline([sys.executable, "-c", _RUN_CLI, json.dumps(arg_lists)], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"args"')]
    assert [run["args"] for run in runs] == arg_lists
    return runs


@pytest.mark.slow
def test_configs_parse(run_offline) -> None:
    """Every shipped config parses with anomalib's CLI (each class_path a full dotted path, imported and resolved)."""
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert len(configs) >= 7
    for config in configs:
        class_paths = re.findall(r"class_path:\s*(\S+)", config.read_text())
        assert class_paths, config.name
        # A short name would resolve here from what an earlier config imported, and not in a user's fresh process.
        assert all("." in path for path in class_paths), f"{config.name}: {class_paths}"
    runs = _run_cli(run_offline, [["train", "--config", str(config), "--print_config"] for config in configs])
    for config, run in zip(configs, runs, strict=True):
        assert run["code"] == 0, f"{config.name}: {run['stderr'][-2000:]}"
        assert "seed_everything: 0" in run["stdout"], config.name


@pytest.mark.slow
def test_a_choice_outside_its_values_stops_the_cli_at_parsing(run_offline, tmp_path: Path) -> None:
    """A misspelt choice of a ``--model.*`` or few-anomaly ``--data.*`` option stops ``anomalib train`` at parsing:
    exit code 2 and a few lines naming the option and its values, not a traceback from building the classes."""
    from anomalib_bgad.data.pseudo_anomalies.perlin import PerlinTexture
    from anomalib_bgad.models.bgad.anomaly_map import LevelAggregation
    from anomalib_bgad.models.bgad.fibers import PartialFibers
    from anomalib_bgad.models.bgad.loss import LossMode, LossModeName
    from anomalib_bgad.models.bgad.schedule import LrSchedule

    assert get_args(LossModeName) == tuple(mode.value for mode in LossMode)
    data = ["--data", "anomalib_bgad.data.FewAnomalyMVTecAD", "--data.root", str(tmp_path)]
    wrong = {
        "model.loss_mode": ("focal", LossModeName),
        "model.lr_schedule": ("step", LrSchedule),
        "model.partial_fibers": ("majority", PartialFibers),
        "model.level_aggregation": ("sum", LevelAggregation),
        "data.perlin_texture": ("dtd", PerlinTexture),
    }
    arg_lists = [
        ["train", "--model", "anomalib_bgad.Bgad", *data, f"--{option}", value] for option, (value, _) in wrong.items()
    ]
    for (option, (value, choices)), run in zip(wrong.items(), _run_cli(run_offline, arg_lists), strict=True):
        assert run["code"] == 2, f"{option}: {run['stderr'][-2000:]}"
        assert "Traceback" not in run["stderr"], option
        message = " ".join(run["stderr"].split())
        assert f'Parser key "{option.split(".")[1]}"' in message, message
        assert f"Expected a {choices}. Got value: {value}" in message, message


def test_demo_table_format() -> None:
    from anomalib_bgad.demo import format_table

    rows = {"bgad": {"a": {"image_AUROC": 1.0, "pixel_AUROC": 0.5, "pixel_AUPRO": 0.25, "train_seconds": 3.0}}}
    table = format_table(rows)
    assert "| bgad | a | 1.000 | 0.500 | 0.250 | 3 |" in table
    assert "| bgad | **mean** | 1.000 | 0.500 | 0.250 | |" in table
    json.dumps(rows)


def test_preview_pseudo_command(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    from PIL import Image

    output = tmp_path / "preview.png"
    args = ["preview-pseudo", "--root", str(tiny_mvtec_root), "--category", "brick", "--n-anomalies", "2"]
    assert bgad_main([*args, "--n-samples", "4", "--output", str(output)]) == 0
    with Image.open(output) as image:
        assert image.width > 64
        assert image.height > 64
    assert bgad_main([*args[:-1], "99", "--output", str(tmp_path / "bad.png")]) == 2
    assert not (tmp_path / "bad.png").exists()
    # SmoothBlend needs no known anomaly; with the same seed the grid is the same file.
    blend_args = [*args[:-1], "0", "--source", "smoothblend", "--n-samples", "4"]
    assert bgad_main([*blend_args, "--output", str(tmp_path / "blend.png")]) == 0
    assert bgad_main([*blend_args, "--output", str(tmp_path / "blend_again.png")]) == 0
    assert (tmp_path / "blend.png").read_bytes() == (tmp_path / "blend_again.png").read_bytes()
    assert (tmp_path / "blend.png").read_bytes() != output.read_bytes()
    # Perlin joins RPAG with '+'; a source that names no generator is a usage error before any image is read.
    assert bgad_main([*args, "--source", "rpag+perlin", "--n-samples", "4", "--output", str(tmp_path / "rp.png")]) == 0
    assert (tmp_path / "rp.png").read_bytes() not in {output.read_bytes(), (tmp_path / "blend.png").read_bytes()}
    # The fill of the Perlin blobs: the noise by default; the normal-image fill draws another grid.
    normal_fill = [*args, "--source", "rpag+perlin", "--n-samples", "4", "--perlin-texture", "normal_image"]
    assert bgad_main([*normal_fill, "--output", str(tmp_path / "rp_normal.png")]) == 0
    assert (tmp_path / "rp_normal.png").read_bytes() != (tmp_path / "rp.png").read_bytes()
    from anomalib_bgad.cli import build_parser
    from anomalib_bgad.data.pseudo_anomalies.perlin import DEFAULT_PERLIN_TEXTURE, PERLIN_TEXTURES

    preview = build_parser()._subparsers._group_actions[0].choices["preview-pseudo"]
    (texture,) = [action for action in preview._actions if action.dest == "perlin_texture"]
    assert set(texture.choices) == set(PERLIN_TEXTURES) and texture.default == DEFAULT_PERLIN_TEXTURE
    with pytest.raises(SystemExit) as error:
        bgad_main([*args, "--source", "rpag+cutpaste", "--output", str(tmp_path / "typo.png")])
    assert error.value.code == 2 and not (tmp_path / "typo.png").exists()


@pytest.mark.slow
def test_demo_trains_and_tests_one_category_with_epoch_progress(
    tiny_mvtec_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's main job on a tiny tree: both phases run, progress is printed, metrics and images written."""
    from anomalib_bgad import demo

    monkeypatch.setattr(demo, "DEMO_N_ANOMALIES", 2)
    monkeypatch.setattr(demo, "DEMO_BATCH_SIZE", 4)
    metrics = demo.train_and_test(tiny_mvtec_root, "brick", tmp_path, "bgad", max_epochs=2, seed=0)
    out = capsys.readouterr().out
    assert "[demo] bgad on brick: epoch 1/2 (phase 1), loss" in out
    assert "[demo] bgad on brick: epoch 2/2 (phase 2), loss" in out
    for name in demo.METRICS:
        assert 0.0 <= metrics[name] <= 1.0, (name, metrics[name])
    assert metrics["train_seconds"] > 0
    assert (tmp_path / "bgad" / "brick" / "split_manifest.json").is_file()
    assert list((tmp_path / "bgad").rglob("images/**/*.png")), "no anomaly-map images written"
