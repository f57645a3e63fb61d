"""BGAD on CUDA: training, testing and the exported graph, when a GPU is present (skipped otherwise).

Run on a GPU machine with ``pytest -m cuda``. The training step keeps every decision on the device (no host
synchronisation per optimiser step, see ``anomalib_bgad.models.bgad.numerics``); these tests check that the GPU
path computes what the CPU path does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomalib_bgad import Bgad

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def small_model(**overrides: float) -> Bgad:
    return Bgad(
        coupling_blocks=2,
        fiber_batch_size=1024,
        pre_processor=Bgad.configure_pre_processor(image_size=(64, 64)),
        visualizer=False,
        **overrides,
    )


def test_training_testing_and_scores_on_cuda_match_the_cpu(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_bgad.data import FewAnomalyMVTecAD

    def datamodule() -> FewAnomalyMVTecAD:
        return FewAnomalyMVTecAD(
            root=tiny_mvtec_root,
            category="brick",
            n_anomalies=2,
            train_batch_size=4,
            eval_batch_size=4,
            num_workers=0,
            seed=3,
        )

    from lightning.pytorch import Callback

    devices: list[str] = []

    class TrainingDevice(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            devices.append(pl_module.device.type)

    seed_everything(3)
    model = small_model()
    engine = Engine(
        max_epochs=3,
        default_root_dir=tmp_path,
        accelerator="gpu",
        devices=1,
        logger=False,
        callbacks=[TrainingDevice()],
    )
    engine.fit(model, datamodule=datamodule())
    assert set(devices) == {"cuda"}  # Lightning moves the model back to the CPU after fit
    (metrics,) = engine.test(model, datamodule=datamodule(), verbose=False)
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values())
    assert model.feature_cache is not None and model.feature_cache.hits > 0  # cached features reused on the GPU
    assert torch.isfinite(model.model.boundary.b_n).all() and (model.model.boundary.b_n != 0).all()

    # The trained weights score the same images alike on the GPU and on the CPU (float rounding only).
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model.cuda().eval()
    with torch.no_grad():
        on_gpu = model.model(model.pre_processor(images.cuda()))
        cpu_model = model.cpu()
        on_cpu = cpu_model.model(cpu_model.pre_processor(images))
    torch.testing.assert_close(on_gpu.pred_score.cpu(), on_cpu.pred_score, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(on_gpu.anomaly_map.cpu(), on_cpu.anomaly_map, atol=1e-3, rtol=1e-3)


def test_a_nonfinite_step_is_skipped_on_the_device(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    """Learning rate 1e30 on CUDA: the fused optimiser's device-side skip keeps NaN out, and training stops."""
    from lightning.pytorch import Trainer

    from anomalib_bgad.data import FewAnomalyMVTecAD
    from anomalib_bgad.models.bgad.numerics import NonFiniteTrainingError

    model = small_model(learning_rate=1e30, nonfinite_patience=2)
    datamodule = FewAnomalyMVTecAD(
        root=tiny_mvtec_root, category="brick", n_anomalies=2, train_batch_size=2, num_workers=0, seed=0
    )
    trainer = Trainer(max_epochs=2, accelerator="gpu", devices=1, logger=False, default_root_dir=tmp_path)
    with pytest.raises(NonFiniteTrainingError, match="in a row had a non-finite"):
        trainer.fit(model, datamodule=datamodule)
    assert torch.isfinite(model.model.boundary.b_n).all()
    assert not list(tmp_path.rglob("*.ckpt"))


def test_cuda_graphs_train_the_same_flows_as_eager_kernels(tiny_mvtec_root: Path, tmp_path: Path) -> None:
    """The graphed training path computes what the eager one does (float rounding only), and is really used."""
    from lightning.pytorch import Callback, Trainer, seed_everything

    from anomalib_bgad.data import FewAnomalyMVTecAD

    captured: list[int] = []

    class GraphCount(Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            graphed = pl_module.model.graphed_flows
            captured.append(len(graphed._graphs) if graphed is not None else 0)

    states = {}
    for graphs in (True, False):
        seed_everything(3)
        model = small_model(cuda_graphs=graphs)
        datamodule = FewAnomalyMVTecAD(
            root=tiny_mvtec_root, category="brick", n_anomalies=2, train_batch_size=4, num_workers=0, seed=3
        )
        trainer = Trainer(
            max_epochs=2,
            accelerator="gpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            default_root_dir=tmp_path / str(graphs),
            callbacks=[GraphCount()],
        )
        trainer.fit(model, datamodule=datamodule)
        states[graphs] = {key: value.detach().cpu() for key, value in model.model.state_dict().items()}
    assert captured[0] > 0 and captured[1] == 0
    for key, value in states[False].items():
        torch.testing.assert_close(states[True][key], value, atol=1e-4, rtol=1e-4, msg=key)
