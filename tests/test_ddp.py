"""BGAD's boundary under DDP (issue #7, part 3): 2 CPU processes with the gloo backend.

Under Lightning DDP every rank sees a different shard of each batch. The boundary ``b_n`` of a fiber chunk
must be the beta-quantile of the normal log-likelihoods of *all* ranks (all-gathered), i.e. what one
process computes on the union of the ranks' fibers, and all ranks must step with it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from anomalib_bgad.models.bgad.boundary import Boundary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MODEL_DIR = Path(__file__).resolve().parents[1] / "anomalib_bgad" / "models" / "bgad"

# The workers load boundary.py and distributed.py by path as a bare package (they only need torch), so that each
# spawned process starts in seconds instead of importing anomalib.
BOUNDARY_SCRIPT = textwrap.dedent(
    """
    import importlib
    import os
    import sys
    import types
    from pathlib import Path

    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    package = types.ModuleType("bgad")
    package.__path__ = [sys.argv[1]]
    sys.modules["bgad"] = package
    boundary_module = importlib.import_module("bgad.boundary")
    distributed = importlib.import_module("bgad.distributed")


    def estimate(log_likelihood, anomalous, across_ranks=False):
        boundary = boundary_module.Boundary(1, beta=0.05)
        return boundary.estimate(log_likelihood / 10, ~anomalous, across_ranks=across_ranks)


    def cases():
        # Per case, per rank: log-likelihoods and anomaly flags; the ranks hold different numbers of fibers.
        generator = torch.Generator().manual_seed(0)
        uneven = (
            [torch.randn(700, generator=generator) * 3 - 2, torch.randn(300, generator=generator) * 2 - 4],
            [torch.rand(700, generator=generator) < 0.1, torch.rand(300, generator=generator) < 0.8],
        )
        one_rank_without_normals = (
            [torch.randn(50, generator=generator) - 1, torch.randn(20, generator=generator) - 3],
            [torch.zeros(50, dtype=torch.bool), torch.ones(20, dtype=torch.bool)],
        )
        one_rank_empty = (
            [torch.randn(64, generator=generator) - 2, torch.empty(0)],
            [torch.zeros(64, dtype=torch.bool), torch.zeros(0, dtype=torch.bool)],
        )
        no_normals = ([torch.randn(10, generator=generator)] * 2, [torch.ones(10, dtype=torch.bool)] * 2)
        return [uneven, one_rank_without_normals, one_rank_empty, no_normals]


    def worker(rank, world_size, port, out):
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        try:
            cpu = torch.device("cpu")
            results = {"distributed": [], "local": []}
            for log_likelihoods, anomalous in cases():
                results["distributed"].append(estimate(log_likelihoods[rank], anomalous[rank], across_ranks=True))
                results["local"].append(estimate(log_likelihoods[rank], anomalous[rank]))
            values = torch.arange(3 + rank, dtype=torch.float32) + 10 * rank
            results["gathered"] = distributed.gather_padded(values, -1.0)
            results["gathered_flags"] = distributed.gather_padded(torch.ones(3 + rank, dtype=torch.bool), False)
            results["all_true"] = [
                bool(distributed.all_ranks_true(torch.tensor(rank == 0))),
                bool(distributed.all_ranks_true(torch.tensor(True))),
            ]
            results["max"] = distributed.max_over_ranks(5 + 10 * rank, cpu)
            torch.save(results, Path(out) / f"rank{rank}.pt")
        finally:
            dist.destroy_process_group()


    if __name__ == "__main__":
        if sys.argv[2] == "cases":  # the single-process reference on the union of the shards
            single = [estimate(torch.cat(ll), torch.cat(anomalous)) for ll, anomalous in cases()]
            local = [estimate(cases()[0][0][rank], cases()[0][1][rank]) for rank in range(2)]
            torch.save({"single": single, "local": local}, Path(sys.argv[3]) / "single.pt")
        else:
            mp.spawn(worker, args=(2, int(sys.argv[2]), sys.argv[3]), nprocs=2, join=True)
    """
)


def test_boundary_is_all_gathered_and_equals_the_single_process_boundary(tmp_path: Path) -> None:
    """2 gloo processes, each with its shard: the boundary equals the single-process one on the union."""
    assert Boundary(1).beta == 0.01  # the paper's beta; the workers use 0.05 to reach past the first values
    script = tmp_path / "boundary_ranks.py"
    script.write_text(BOUNDARY_SCRIPT)
    for mode in (str(_free_port()), "cases"):
        completed = subprocess.run(
            [sys.executable, str(script), str(MODEL_DIR), mode, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    reference = torch.load(tmp_path / "single.pt", weights_only=True)
    for case, (single, single_valid) in enumerate(reference["single"]):
        for rank in range(2):
            distributed, valid = ranks[rank]["distributed"][case]
            assert bool(valid) == bool(single_valid)  # invalid only without a normal fiber on any rank
            torch.testing.assert_close(distributed, single, rtol=0, atol=0)  # the same order statistic
    assert not reference["single"][3][1]  # the case without normals really has none
    # The test can fail: a per-rank boundary (no all-gather) is not the union's.
    for rank in range(2):
        assert not torch.equal(reference["local"][rank][0], reference["single"][0][0])
        assert torch.equal(ranks[rank]["local"][0][0], reference["local"][rank][0])
    # The helpers: concatenation rank 0 first (each rank padded to the largest size), and agreement over ranks.
    for rank in range(2):
        assert ranks[rank]["gathered"].tolist() == [0.0, 1.0, 2.0, -1.0, 10.0, 11.0, 12.0, 13.0]
        assert ranks[rank]["gathered_flags"].tolist() == [True] * 3 + [False] + [True] * 4
        assert ranks[rank]["all_true"] == [False, True]
        assert ranks[rank]["max"] == 15


DDP_SCRIPT = textwrap.dedent(
    '''
    """Train a small BGAD with Lightning DDP on 2 CPU processes; record every chunk boundary per rank."""
    import os
    import sys
    from pathlib import Path

    import torch
    from anomalib.data import ImageBatch, ImageItem
    from lightning.pytorch import Trainer, seed_everything
    from torch.utils.data import DataLoader

    from anomalib_bgad import Bgad
    from anomalib_bgad.models.bgad.boundary import Boundary

    out = Path(sys.argv[1])
    records = []
    original = Boundary.estimate

    def recording_estimate(self, normalized, is_normal, across_ranks=False):
        value, valid = original(self, normalized, is_normal, across_ranks=across_ranks)
        if across_ranks:  # the training steps: keep this rank's own normal values and the boundary used
            records.append((normalized.detach()[is_normal].clone(), value.clone(), valid.clone()))
        return value, valid

    Boundary.estimate = recording_estimate

    def items():
        generator = torch.Generator().manual_seed(0)
        result = []
        for index in range(8):
            anomalous = index in (1, 3, 6)  # rank 1 gets items 1, 3, 5, 7: its first batch has no normal image
            mask = torch.zeros(64, 64, dtype=torch.bool)
            if anomalous:
                mask[16:40, 20:44] = True
            result.append(
                ImageItem(
                    image=torch.rand(3, 64, 64, generator=generator),
                    gt_label=torch.tensor(int(anomalous)),
                    gt_mask=mask,
                    image_path=f"item{index}.png",
                )
            )
        return result

    if __name__ == "__main__":
        seed_everything(0)
        model = Bgad(
            phase1_epochs=1,
            coupling_blocks=2,
            fiber_batch_size=256,
            pre_processor=Bgad.configure_pre_processor(image_size=(64, 64)),
            post_processor=False,
            evaluator=False,
            visualizer=False,
        )
        trainer = Trainer(
            max_epochs=2,
            accelerator="cpu",
            devices=2,
            strategy="ddp",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            default_root_dir=out,
            use_distributed_sampler=False,  # shard by hand, so that the uneven case is certain
        )
        rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by Lightning for the process it launches
        shard = items()[rank::2]  # rank 0: items 0, 2, 4, 6; rank 1: items 1, 3, 5, 7
        loader = DataLoader(shard, batch_size=2, shuffle=False, collate_fn=ImageBatch.collate)
        trainer.fit(model, train_dataloaders=loader)
        flows = {key: value.clone() for key, value in model.model.flows.state_dict().items()}
        torch.save(
            {
                "records": records,
                "boundary": model.model.boundary.b_n.clone(),
                "flows": flows,
                "global_step": trainer.global_step,
                "world_size": trainer.world_size,
            },
            out / f"rank{trainer.global_rank}.pt",
        )
    '''
)


@pytest.mark.slow
def test_ddp_training_on_two_cpu_processes_uses_the_union_boundary_on_every_rank(tmp_path: Path) -> None:
    """Lightning DDP (gloo, 2 processes): every step's boundary is the union's and the ranks stay in sync.

    Rank 1's first batch holds only anomalous images, so in phase 1 it has no fiber to train on: it must still
    take part in every collective (a zero-weighted dummy image), or DDP would hang.
    """
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    records = [r["records"] for r in ranks]
    assert len(records[0]) == len(records[1]) > 0  # the same number of steps on both ranks
    assert ranks[0]["global_step"] == ranks[1]["global_step"]

    def single_process(normal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return Boundary(1).estimate(normal, torch.ones_like(normal, dtype=torch.bool))

    empty_steps = 0
    for (normal0, boundary0, valid0), (normal1, boundary1, valid1) in zip(*records, strict=True):
        empty_steps += int(normal0.numel() == 0 or normal1.numel() == 0)
        single, valid = single_process(torch.cat([normal0, normal1]))
        assert bool(valid0) == bool(valid1) == bool(valid)
        torch.testing.assert_close(boundary0, single, rtol=0, atol=0)
        torch.testing.assert_close(boundary1, single, rtol=0, atol=0)
    assert empty_steps > 0  # the uneven case really happened
    # The test can fail: a per-rank boundary (no all-gather) differs from the union's in some step.
    per_rank = [single_process(normal0) for normal0, _, _ in records[0]]
    assert any(
        bool(valid) and not torch.equal(mine, used)
        for (mine, valid), (_, used, _) in zip(per_rank, records[0], strict=True)
    )
    torch.testing.assert_close(ranks[0]["boundary"], ranks[1]["boundary"], rtol=0, atol=0)
    assert torch.isfinite(ranks[0]["boundary"]).all()
    assert (ranks[0]["boundary"] != 0).all()
    for key, value in ranks[0]["flows"].items():
        torch.testing.assert_close(ranks[1]["flows"][key], value, rtol=0, atol=0, msg=key)
