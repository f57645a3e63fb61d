"""The README's inference example, run as written against a model exported by ``anomalib export``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_inference_snippet() -> str:
    """The README's one Python block that uses ``OpenVINOInferencer``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (snippet,) = [block for block in blocks if "OpenVINOInferencer(" in block]
    return snippet


def test_the_snippet_is_found_and_asks_for_f32_and_a_cache_folder() -> None:
    snippet = readme_inference_snippet()
    assert '"INFERENCE_PRECISION_HINT": "f32"' in snippet
    assert '"CACHE_DIR"' in snippet


@pytest.mark.slow
def test_readme_inference_snippet_runs_on_an_exported_model(
    cli_trained_and_exported,
    tiny_mvtec_root: Path,
    tmp_path: Path,
    run_offline,
) -> None:
    from anomalib.data.utils import read_image

    from anomalib_bgad import Bgad

    snippet = readme_inference_snippet()
    # The README's paths: the export of its step 3 and an image of the embedded dataset.
    # Only the shared export's weights are linked: the snippet's CACHE_DIR then lands in this test's tmp_path.
    (tmp_path / "results" / "bgad_demo" / "export").mkdir(parents=True)
    (tmp_path / "results" / "bgad_demo" / "export" / "weights").symlink_to(
        cli_trained_and_exported.export_root / "weights"
    )
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "embedded").symlink_to(tiny_mvtec_root)
    result = run_offline([sys.executable, "-c", snippet], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"score (\d\.\d{3}) \((anomalous|normal)", result.stdout)
    assert match, result.stdout

    (image,) = re.findall(r'predict\("([^"]+)"\)', snippet)
    module = Bgad.load_from_checkpoint(cli_trained_and_exported.checkpoint, map_location="cpu").eval()
    with torch.inference_mode():
        eager = module(read_image(tmp_path / image, as_tensor=True)[None])
    assert float(match.group(1)) == pytest.approx(float(eager.pred_score), abs=2e-3)  # printed to 3 decimals
    assert (match.group(2) == "anomalous") == bool(eager.pred_label)

    # OpenVINO's compiled-model cache went to CACHE_DIR, not into the working directory.
    (cache_dir,) = re.findall(r'"CACHE_DIR": "([^"]+)"', snippet)
    assert any((tmp_path / cache_dir).iterdir())
    assert not any((tmp_path / "openvino_cache").glob("*"))  # anomalib still creates the folder, empty
