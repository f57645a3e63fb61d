"""``predict`` writes a table of file, score, label and result image; a wrong ``--ckpt_path`` is explained."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from anomalib_bgad import Bgad
from anomalib_bgad.callbacks import CheckpointPathHint, PredictionTable
from anomalib_bgad.callbacks.prediction_table import COLUMNS, FILE_NAME


def tiny_bgad() -> Bgad:
    torch.manual_seed(0)
    return Bgad(
        coupling_blocks=2, fiber_batch_size=1024, pre_processor=Bgad.configure_pre_processor(image_size=(64, 64))
    )


def calibrate(model: Bgad, images: list[Path]) -> None:
    """Store what a validation pass would: min/max and a threshold between the images' raw scores."""
    from anomalib.data.utils import read_image

    model.eval()
    with torch.inference_mode():
        batch = torch.stack([read_image(path, as_tensor=True) for path in images])
        raw = model.model(model.pre_processor(batch)).pred_score.sort().values
    post = model.post_processor
    post.image_min.fill_(raw[0] - 0.05)
    post.image_max.fill_(raw[-1] + 0.05)
    post._image_threshold.fill_(raw[len(raw) // 2 - 1 : len(raw) // 2 + 1].mean())
    post.pixel_min.fill_(raw[0] - 1.0)
    post.pixel_max.fill_(raw[-1] + 0.05)
    post._pixel_threshold.fill_(post._image_threshold)


def engine_for(tmp_path: Path, callbacks: list[Callback] | None = None):
    from anomalib.engine import Engine

    return Engine(
        default_root_dir=tmp_path / "results",
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks or [],
    )


def read_table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


def test_predict_writes_the_table_next_to_the_images_and_prints_where(
    tiny_mvtec_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tiny_mvtec_root / "brick" / "test" / "crack"
    images = sorted(folder.glob("*.png"))
    model = tiny_bgad()
    calibrate(model, images)
    engine = engine_for(tmp_path)
    predictions = engine.predict(model, data_path=folder, return_predictions=True)

    run = Path(engine.trainer.default_root_dir)
    table = run / FILE_NAME
    rows = read_table(table)
    expected = {str(path): batch for batch in predictions for path in batch.image_path}
    assert sorted(row["image_path"] for row in rows) == sorted(str(path) for path in images)
    for row in rows:
        batch = expected[row["image_path"]]
        index = list(batch.image_path).index(row["image_path"])
        assert float(row["pred_score"]) == pytest.approx(float(batch.pred_score.reshape(-1)[index]), abs=1e-6)
        assert row["pred_label"] == ("anomalous" if bool(batch.pred_label.reshape(-1)[index]) else "normal")
        visualization = Path(row["visualization"])
        assert visualization.is_file() and visualization.is_relative_to(run / "images")
        assert visualization.name == Path(row["image_path"]).name
    assert {row["pred_label"] for row in rows} == {"anomalous", "normal"}  # the threshold splits the images

    printed = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(printed) if line.startswith(f"Predicted {len(images)} images"))
    for row in rows:  # one line per image with its score and label
        assert any(
            line.split() == [f"{float(row['pred_score']):.3f}", row["pred_label"], row["image_path"]]
            for line in printed[start + 1 :]
        )
    where = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in printed[start:] if ": " in line}
    assert Path(where[f"Table ({', '.join(COLUMNS)})"]).resolve() == table.resolve()
    assert Path(where["Result images"]).resolve() == (run / "images").resolve()


def test_a_prediction_that_fails_part_way_writes_no_table(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    class FailOnSecondBatch(Callback):
        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            if batch_idx == 1:
                raise RuntimeError("disk full")

    folder = tiny_mvtec_root / "brick" / "test" / "good"
    with pytest.raises(RuntimeError, match="disk full"):
        engine_for(tmp_path, [FailOnSecondBatch()]).predict(tiny_bgad(), data_path=folder)
    assert not list((tmp_path / "results").rglob(FILE_NAME))
    assert not list((tmp_path / "results").rglob(f".{FILE_NAME}*"))


def test_bgad_adds_the_table_and_the_checkpoint_hint() -> None:
    callbacks = tiny_bgad().configure_callbacks()
    assert any(isinstance(c, PredictionTable) for c in callbacks)
    assert any(isinstance(c, CheckpointPathHint) for c in callbacks)


def test_an_exported_model_as_ckpt_path_names_the_file_and_the_fix(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    exported = tmp_path / "weights" / "openvino" / "model.xml"
    exported.parent.mkdir(parents=True)
    exported.write_text('<?xml version="1.0"?>\n<net name="Model0" version="11"></net>\n')
    image = next((tiny_mvtec_root / "brick" / "test" / "good").glob("*.png"))
    with pytest.raises(pickle.UnpicklingError) as caught:
        engine_for(tmp_path).predict(tiny_bgad(), data_path=image, ckpt_path=exported)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert str(exported) in notes
    assert "exported model (OpenVINO IR)" in notes
    assert "weights/lightning/model.ckpt" in notes and "OpenVINOInferencer" in notes


@pytest.mark.slow
def test_anomalib_predict_cli_writes_and_prints_the_table(
    cli_trained_and_exported,
    tiny_mvtec_root: Path,
    tmp_path: Path,
    run_anomalib,
) -> None:
    folder = tiny_mvtec_root / "brick" / "test" / "hole"
    results = tmp_path / "predicted"
    result = run_anomalib(
        "predict", *cli_trained_and_exported.model_args, "--ckpt_path", str(cli_trained_and_exported.checkpoint),
        "--data", str(folder), "--default_root_dir", str(results), cwd=tmp_path,
    )  # fmt: skip
    (table,) = results.rglob(FILE_NAME)
    rows = read_table(table)
    assert sorted(Path(row["image_path"]).name for row in rows) == sorted(p.name for p in folder.glob("*.png"))
    assert all(0.0 <= float(row["pred_score"]) <= 1.0 for row in rows)
    assert all(Path(row["visualization"]).is_file() for row in rows)
    printed = result.stdout
    assert f"Predicted {len(rows)} images" in printed
    lines = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in printed.splitlines() if ": " in line}
    assert (tmp_path / lines[f"Table ({', '.join(COLUMNS)})"]).resolve() == table.resolve()
    assert (tmp_path / lines["Result images"]).resolve() == (table.parent / "images").resolve()


@pytest.mark.slow
def test_anomalib_predict_cli_given_the_exported_xml_says_what_to_do(
    cli_trained_and_exported,
    tiny_mvtec_root: Path,
    tmp_path: Path,
    run_anomalib,
) -> None:
    image = next((tiny_mvtec_root / "brick" / "test" / "good").glob("*.png"))
    result = run_anomalib(
        "predict", *cli_trained_and_exported.model_args, "--ckpt_path", str(cli_trained_and_exported.xml),
        "--data", str(image), "--default_root_dir", str(tmp_path / "predicted"), cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert "is an exported model (OpenVINO IR)" in output
    assert "weights/lightning/model.ckpt" in output and "OpenVINOInferencer" in output
