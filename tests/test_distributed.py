"""Several processes: the helpers alone, then two gloo processes on the CPU."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import dia
from dia import distributed
from dia.config import DetectorConfig, DiffusionConfig, replace_settings
from dia.losses import contrastive_loss

TINY = replace_settings(DetectorConfig(), dissolve="gaussian", width=4, batch_size=4, epochs=1000,
                        max_seconds=1.0, dissolve_cache_steps=2, schedule="cosine")  # fmt: skip
DIFFUSION = DiffusionConfig(
    resolution=16, block_out_channels=(8, 16), epochs=1000, batch_size=4, max_seconds=1.5
)


def test_one_process_needs_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.process_group("cpu"):
        assert not distributed.active()
        assert distributed.world_size() == 1 and distributed.rank() == 0
        assert distributed.is_main()
        assert distributed.agree(0.25, 1.0) == (0.25, 1.0)
        assert distributed.on_every_rank(True) and not distributed.on_every_rank(False)
        assert distributed.broadcast_object("runs/x") == "runs/x"
        z = torch.rand(6, 3)
        assert distributed.gather_views(z, 3, None)[0] is z
        distributed.barrier()


def test_an_explicit_gpu_index_is_refused_under_a_launcher():
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        distributed.uses_cuda("cuda:1")


def test_ranks_take_disjoint_shares_of_each_step():
    perm = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    batch, world, steps = 3, 2, 23 // (3 * 2)
    shares = [distributed.shard(perm, i, batch, r, world) for i in range(steps) for r in (0, 1)]
    seen = torch.cat(shares)
    assert all(len(s) == batch for s in shares)
    assert len(set(seen.tolist())) == steps * batch * world  # disjoint
    assert torch.equal(seen, perm[: steps * batch * world])
    # one process takes consecutive batches, as before
    assert torch.equal(distributed.shard(perm, 2, 5), perm[10:15])


def test_merged_views_give_the_loss_of_one_big_batch():
    # Items (view, shift k, image j) of 2 ranks with B images each; one process with 2B images
    # lays them out shift-major over all 2B: the loss must not depend on the layout.
    k, b, d = 4, 3, 8
    emb = torch.randn(3, k, 2, b, d)  # view, shift, rank, image
    own = torch.arange(k)[:, None] * b + torch.arange(b)
    parts = [torch.cat([emb[v, :, r].reshape(k * b, d) for v in range(3)]) for r in range(2)]
    z, m, dissolved_of = distributed.merge_views(parts, k * b, own.ravel())
    assert m == 2 * k * b and dissolved_of.shape == (2 * k * b,)
    single = emb.reshape(3 * k * 2 * b, d)  # shift-major over the 2B images
    for mask in ("shifted_removed", "none"):
        merged = contrastive_loss(z, m, 0.5, mask, dissolved_of)
        torch.testing.assert_close(merged, contrastive_loss(single, m, 0.5, mask))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_rank(rank: int, world: int, port: int) -> torch.Tensor:
    """Set up a spawned process as rank ``rank`` of ``world``; returns the training images."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
        RANK=str(rank), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    return torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def _on_two_ranks(fn, folder, failure: str) -> None:
    """Run ``fn(rank, 2, port, folder)`` in two spawned processes; fail after two minutes."""
    context = mp.start_processes(
        fn, args=(2, _free_port(), str(folder)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(failure)


def _train_on_rank(rank: int, world: int, port: int, folder: str) -> None:
    from dia.diffusion import DiffusionModel, train_diffusion
    from dia.dissolve import build_dissolver
    from dia.training import DetectorTrainer

    images = _as_rank(rank, world, port)
    calls, trained = [], {}
    # The weights as training left them, before rank 0's are copied to every process: equal
    # only if every step's gradients were averaged over the processes.
    broadcast = distributed.broadcast_module

    def keep_then_broadcast(module):
        trained.update({k: v.detach().clone() for k, v in module.named_parameters()})
        broadcast(module)

    distributed.broadcast_module = keep_then_broadcast

    def callback(net, seconds):
        calls.append(seconds)
        time.sleep(0.3)  # left out of rank 0's clock, not of rank 1's, which waits meanwhile

    with distributed.process_group("cpu"):
        # The gathered loss's gradient: each rank's own items get every rank's share of it.
        parts = torch.randn(world, 3 * 4 * 2, 8, generator=torch.Generator().manual_seed(2))
        dissolved_of = torch.arange(8)
        own = parts[rank].clone().requires_grad_()
        z, m, sources = distributed.gather_views(own, 8, dissolved_of)
        contrastive_loss(z, m, dissolved_of=sources).backward()
        whole = parts.clone().requires_grad_()
        z, m, sources = distributed.merge_views(list(whole), 8, dissolved_of)
        contrastive_loss(z, m, dissolved_of=sources).backward()
        gradient_ok = torch.allclose(own.grad, world * whole.grad[rank], atol=1e-6)
        # a check failing on one process alone fails on all of them
        checks = [distributed.on_every_rank(rank == 0), distributed.on_every_rank(True)]

        diffusion = DiffusionModel(DIFFUSION, 1)
        time.sleep(rank)  # rank 1's clock starts later: alone, it would train longer
        diffusion_history = train_diffusion(
            diffusion, images, DIFFUSION, device="cpu", seed=0, progress=False
        )
        trainer = DetectorTrainer(
            TINY, images, dissolver=build_dissolver("gaussian"), device=torch.device("cpu")
        )
        net, history = trainer.train(
            progress=False, callback=callback, callback_every_s=0.2,
            deadline=time.perf_counter() + 60,
        )  # fmt: skip
    torch.save(
        {"state": net.state_dict(), "trained": trained, "steps": history["steps"],
         "world": history["world_size"], "calls": len(calls), "checks": checks,
         "gradient_ok": gradient_ok, "diffusion": diffusion.state_dict(),
         "diffusion_history": diffusion_history},
        Path(folder) / f"rank{rank}.pt",
    )  # fmt: skip


def test_two_processes_end_with_the_same_weights(tmp_path):
    _on_two_ranks(
        _train_on_rank,
        tmp_path,
        "two-process training did not finish: the ranks disagree on the steps",
    )
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a["world"] == b["world"] == 2
    assert a["gradient_ok"] and b["gradient_ok"]
    assert a["checks"] == b["checks"] == [False, True]
    assert a["steps"] == b["steps"] > 0
    assert a["steps"] < 1000 * 24 // 8  # the clock ended training, not the epochs
    assert a["calls"] > 0 and b["calls"] == 0  # the callback runs on rank 0 alone
    for name, value in a["state"].items():
        assert torch.equal(value, b["state"][name]), name
    assert a["trained"].keys() == b["trained"].keys() and a["trained"]
    for name, value in a["trained"].items():  # equal before the final copy from rank 0 too
        assert torch.equal(value, b["trained"][name]), name
    for name, value in a["diffusion"].items():
        assert torch.equal(value, b["diffusion"][name]), name
    steps = a["diffusion_history"]["steps"]
    assert steps == b["diffusion_history"]["steps"] and 0 < steps < 1000 * 3
    assert a["diffusion_history"]["world_size"] == 2
    # and training changed them: the ranks did not merely keep the same initial weights
    from dia.training import build_network

    torch.manual_seed(0)
    initial = build_network(TINY, 1, 16).state_dict()
    weights = [k for k, v in a["state"].items() if v.is_floating_point()]
    assert any(not torch.equal(a["state"][k], initial[k]) for k in weights)


def _interrupt_and_resume_on_rank(rank: int, world: int, port: int, folder: str) -> None:
    from dia.dissolve import build_dissolver
    from dia.training import DetectorTrainer

    images = _as_rank(rank, world, port)
    config = replace_settings(
        DetectorConfig(), dissolve="gaussian", width=4, batch_size=4, epochs=2
    )
    blur = build_dissolver("gaussian")

    def trainer():
        return DetectorTrainer(config, images, dissolver=blur, device=torch.device("cpu"))

    # One process group for everything: a second one on the same port could meet rank 0's
    # first store still closing (a rare "failed to recv" on a busy machine).
    with distributed.process_group("cpu"):
        whole, _ = trainer().train(progress=False)  # never interrupted, for comparison
        result = _interrupted_then_resumed(trainer, rank, Path(folder) / "ckpt")
    result["whole"] = whole.state_dict()
    torch.save(result, Path(folder) / f"rank{rank}.pt")


def _interrupted_then_resumed(trainer, rank: int, folder: Path) -> dict:
    """Train with rank 0 interrupted at its fourth step, then resume from the checkpoint:
    where it stopped, and the resumed network, steps and step calls."""
    import signal

    from dia import training
    from dia.checkpoint import Checkpointing, TrainingInterrupted
    from dia.training import DetectorTrainer

    original, calls = DetectorTrainer._step, []

    def step(self, *args):
        calls.append(1)
        if rank == 0 and len(calls) == 4:
            signal.raise_signal(signal.SIGINT)  # rank 0 alone is interrupted
        return original(self, *args)

    DetectorTrainer._step = step
    augment = training.SimCLRAugment

    def late_on_rank_1(*args):
        time.sleep(rank)  # rank 1's training clock starts a second later than rank 0's
        return augment(*args)

    training.SimCLRAugment = late_on_rank_1
    # periodic checkpoints too, which the ranks' clocks would place at different steps: rank 0
    # decides when one is due for all
    saving = Checkpointing(folder, every_s=0.3)
    result = {}
    try:
        trainer().train(progress=False, checkpoint=saving)
    except TrainingInterrupted as stop:
        result["stopped_at"] = stop.step
    saving.resume = True
    net, history = trainer().train(progress=False, checkpoint=saving)
    return {**result, "state": net.state_dict(), "steps": history["steps"], "calls": len(calls)}


def test_an_interrupt_on_rank_0_stops_and_resumes_every_process(tmp_path):
    _on_two_ranks(
        _interrupt_and_resume_on_rank, tmp_path, "the ranks did not stop or resume together"
    )
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # both stopped before the same step (the one after rank 0's signal), then finished the
    # 2 epochs of 24 // (2 * 4) steps: 4 taken before the stop, 2 after resuming
    assert a["stopped_at"] == b["stopped_at"] == 4
    assert a["steps"] == b["steps"] == 6 and a["calls"] == b["calls"] == 6
    # the same weights in both processes, and the same as two processes never interrupted:
    # each process's random generators were saved and restored
    for name, value in a["state"].items():
        assert torch.equal(value, b["state"][name]), name
        assert torch.equal(value, a["whole"][name]) and torch.equal(value, b["whole"][name]), name
    # one process cannot continue what two began: its steps would differ
    from dia.checkpoint import Checkpointing
    from dia.dissolve import build_dissolver
    from dia.training import DetectorTrainer

    images = torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    config = replace_settings(
        DetectorConfig(), dissolve="gaussian", width=4, batch_size=4, epochs=2
    )
    trainer = DetectorTrainer(
        config, images, dissolver=build_dissolver("gaussian"), device=torch.device("cpu")
    )
    with pytest.raises(ValueError, match="world_size: saved 2, now 1"):
        trainer.train(progress=False, checkpoint=Checkpointing(tmp_path / "ckpt", resume=True))


CLI_TINY = [
    "--synthetic-train", "32", "--synthetic-val", "8", "--synthetic-test", "16",
    "--image-size", "16", "--diffusion-resolution", "16",
    "--diffusion-block-out-channels", "8,16", "--diffusion-epochs", "1",
    "--diffusion-batch-size", "16", "--epochs", "1", "--batch-size", "4", "--width", "4",
    "--dissolve-cache-steps", "2", "--score-samples", "1", "--no-progress", "--device", "cpu",
]  # fmt: skip


def test_torchrun_writes_one_run_folder(tmp_path):
    src = str(Path(dia.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "dia.cli", "run", *CLI_TINY]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["synthetic-diffusion-seed0"]
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    history = json.loads((runs[0] / "detector" / "history.json").read_text())
    assert history["world_size"] == 2 and history["steps"] == 32 // (2 * 4)
    assert done.stdout.count("AUPRC") == 1  # rank 0 alone reports
    assert (runs[0] / "diffusion" / "model.safetensors").is_file()
    diffusion = json.loads((runs[0] / "diffusion" / "history.json").read_text())
    assert diffusion["world_size"] == 2 and diffusion["steps"] == 32 // (2 * 16)
