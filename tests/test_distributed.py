"""Data-parallel compress and sharded evaluation: two gloo processes on the CPU must take the
same decisions and produce the same model as one process with the same seed."""

from __future__ import annotations

import datetime
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from entpruner_sdk.compress import compress
from entpruner_sdk.evaluation.batches import SampleBatches
from entpruner_sdk.evaluation.generation import generate
from entpruner_sdk.models import DiffusionTransformer
from entpruner_sdk.utils import distributed
from tests.conftest import free_port, randomized, tiny_config

# lr: Adam moves a weight whose gradient is nearly zero by up to the rate, whatever the
# gradient's size, so the rounding differences of a sharded reduction reach the weights scaled by
# the rate; DiT's 1e-4 keeps them within the tolerance below (the default for this tiny width is
# 2e-3)
FAST = dict(steps=24, batch_size=8, interval=6, calibration_per_class=2, calibration_times=2,
            proxy_samples=4, report_samples=0, progress=False, device="cpu", seed=3, lr=1e-4)


def teacher() -> DiffusionTransformer:
    return randomized(DiffusionTransformer(tiny_config("dit", depth=6)), seed=7)


def run_compress(out_dir=None, **memory):
    result = compress(teacher(), "digits", 3, out_dir=out_dir, **FAST, **memory)
    # each rank keeps the batches it made where an interrupted evaluation would find them
    finished = SampleBatches(os.path.join(out_dir, "batches")) if out_dir else None
    images = generate(result.model, torch.arange(10) % 10, seed=1, batch_size=3,
                      progress=False, steps=3, device="cpu", finished=finished)
    return result, images


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # each rank's 4 images in micro-batches of 2, which DistributedDataParallel must
        # not average until the last one, and recomputed activations: the same run
        result, images = run_compress(os.path.join(out, "run"), gradient_accumulation=2,
                                      gradient_checkpointing=True)
        torch.save({"state": result.model.state_dict(), "images": images,
                    "decisions": [(d["step"], d["chosen_k"], d["removed"])
                                  for d in result.report["decisions"]],
                    "losses": result.report["losses"],
                    "kept": result.model.kept_blocks,
                    "processes": result.report["summary"]["processes"]},
                   os.path.join(out, f"rank{rank}.pt"))
        # leave together: rank 0 hosts the rendezvous store, and a rank still tearing down
        # its gloo pair when the store goes away can abort ("terminate called ...")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    torch.set_num_threads(1)
    single, single_images = run_compress()
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    expected = [(d["step"], d["chosen_k"], d["removed"]) for d in single.report["decisions"]]
    for got in ranks:
        assert got["kept"] == single.model.kept_blocks  # same kept blocks
        assert got["decisions"] == expected  # same decisions, at the same steps
        assert got["processes"] == 2
        torch.testing.assert_close(torch.tensor(got["losses"]),
                                   torch.tensor(single.report["losses"]), rtol=1e-4, atol=1e-6)
        for name, value in single.model.state_dict().items():
            torch.testing.assert_close(got["state"][name], value, rtol=1e-3, atol=1e-4)
        # sharded evaluation sampling gathers the same images as one process
        torch.testing.assert_close(got["images"], single_images, rtol=1e-3, atol=1e-3)
    # the two ranks' batches (0 and 2 by rank 0, 1 and 3 by rank 1) together are the images
    finished = SampleBatches(tmp_path / "run" / "batches")
    assert len(list(finished.directory.iterdir())) == 4
    torch.testing.assert_close(torch.cat([finished.load(b) for b in range(4)]),
                               single_images, rtol=1e-3, atol=1e-3)
    # only rank 0 wrote, and what it wrote is a complete run
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["summary"]["kept_blocks"] == single.model.kept_blocks
    assert report["summary"]["processes"] == 2


def test_single_process_helpers_are_no_ops():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.mean_across(2.5) == 2.5 and distributed.broadcast({"a": 1}) == {"a": 1}
    tensors = [torch.ones(2)]
    distributed.all_reduce_sum_(tensors)
    assert tensors[0].tolist() == [1.0, 1.0]


def test_distributed_without_torchrun_fails_clearly(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="needs torchrun"):
        distributed.init_from_env()


@pytest.mark.slow
def test_entpruner_evaluate_under_torchrun_shards_and_writes_once(tmp_path, capsys):
    import subprocess
    import sys

    from entpruner_sdk.cli import main
    from entpruner_sdk.models.io import save

    save(teacher(), tmp_path / "model")
    command = ["evaluate", "--model", str(tmp_path / "model"), "--samples", "12", "--steps",
               "2", "--batch-size", "4", "--features", "domain", "--quiet", "--device", "cpu",
               "--likelihood", "5", "--likelihood-steps", "10",
               "--original", str(tmp_path / "model")]
    assert main([*command, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         "-m", "entpruner_sdk", *command, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| class_accuracy |") == 1  # one process printed the table
    one = json.loads((tmp_path / "one" / "evaluation.json").read_text())
    two = json.loads((tmp_path / "two" / "evaluation.json").read_text())
    assert two["settings"]["samples"] == 12 and two["settings"]["processes"] == 2
    assert one["settings"]["processes"] == 1
    # the two processes sampled the three batches between them (0 and 2, 1), and gathered
    # one process's images
    for name, value in one["metrics"].items():
        assert two["metrics"][name] == pytest.approx(value, rel=1e-2, abs=1e-4), name
    # the original sampled beside the model, each batch timed where it was made, and the
    # speedup taken over the batches of both processes
    assert two["original_metrics"] == pytest.approx(one["original_metrics"], rel=1e-2, abs=1e-4)
    assert two["settings"]["sampling_speedup_batches"] == 3
    assert two["settings"]["model_calls"] == two["settings"]["original_model_calls"] == 6
    # the likelihood's five images shared 2 + 3: each image's noise follows its index, so
    # the figures are one process's, up to the rounding of other batch shapes
    assert two["likelihood"]["images"] == 5
    for name in ("mean", "sem"):
        assert two["likelihood"]["bits_per_dim"][name] == pytest.approx(
            one["likelihood"]["bits_per_dim"][name], rel=1e-4), name
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "evaluation.json", "evaluation.md"]  # the batches removed once both had the samples


@pytest.mark.slow
def test_entpruner_sample_under_torchrun_shares_the_batches_and_writes_once(tmp_path, capsys):
    import subprocess
    import sys

    import numpy as np

    from entpruner_sdk.cli import main

    command = ["sample", "--model", "sit-digits", "--labels", "1,2,3,4,5", "--steps", "3",
               "--sampler", "euler-maruyama", "--batch-size", "2", "--quiet", "--device", "cpu"]
    assert main([*command, "--npz", str(tmp_path / "one.npz"),
                 "--out", str(tmp_path / "one.png")]) == 0
    capsys.readouterr()

    def torchrun(*flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
             "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
             "-m", "entpruner_sdk", *command, "--out", str(tmp_path / "two.png"), *flags],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"})

    done = torchrun("--npz", str(tmp_path / "two.npz"))
    assert done.returncode == 0, done.stderr[-3000:]
    # one process wrote the files
    assert done.stdout.count("5 samples (euler-maruyama x 3, cfg 2) ->") == 1
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        # batches 0 and 2 made by rank 0, batch 1 by rank 1, each seeded as in one process
        # (noisy steps: another seed would differ everywhere); up to a pixel level of float
        # rounding under another thread count
        difference = np.abs(one["arr_0"].astype(int) - two["arr_0"])
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01
        assert one["arr_1"].tolist() == two["arr_1"].tolist() == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "one.npz", "one.png", "two.npz", "two.png"]  # the kept batches removed
    refused = torchrun()  # a grid alone is one process's work
    assert refused.returncode != 0
    # each process says it is refused, and which process it is
    for rank in range(2):
        assert (f"entpruner sample [rank {rank} of 2]: error: under torchrun, sample writes "
                "its samples with --npz F") in refused.stderr


def _on_two_machines(tmp_path, *command: str) -> list[tuple[str, str]]:
    """``entpruner COMMAND`` as torchrun starts its two ranks on two machines that share no
    disk: each in a working folder of its own (``machine0``, ``machine1``), so the same
    relative paths are two folders; every rank must succeed. Each rank's stdout and stderr."""
    import subprocess
    import sys

    port, ranks, logs = free_port(), [], [tmp_path / f"rank{rank}.log" for rank in range(2)]
    try:
        for rank, log in enumerate(logs):
            machine = tmp_path / f"machine{rank}"
            machine.mkdir()
            with open(log.with_suffix(".out"), "w") as out, open(log, "w") as err:
                # files, not pipes: a rank blocked on a full pipe would hold the other one too
                ranks.append(subprocess.Popen(
                    [sys.executable, "-m", "entpruner_sdk", *command], cwd=machine,
                    stdout=out, stderr=err,
                    env={**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
                         "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2",
                         "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}))
        for process in ranks:
            process.wait(timeout=300)
    finally:
        for process in ranks:
            process.kill()  # none left running if a rank failed and the other waits for it
    outputs = [(log.with_suffix(".out").read_text(), log.read_text()) for log in logs]
    for process, (_, stderr) in zip(ranks, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    return outputs


@pytest.mark.slow
def test_entpruner_sample_on_machines_that_share_no_folder_sends_rank_0_the_batches(
        tmp_path, capsys):
    """Rank 1 keeps its batch where rank 0 cannot read it, so it must send it, and each
    machine's kept folder must go at the end."""
    import numpy as np

    from entpruner_sdk.cli import main

    command = ["sample", "--model", "sit-digits", "--labels", "1,2,3,4,5", "--steps", "3",
               "--sampler", "euler-maruyama", "--batch-size", "2", "--quiet", "--device", "cpu"]
    assert main([*command, "--npz", str(tmp_path / "one.npz"),
                 "--out", str(tmp_path / "one.png")]) == 0
    capsys.readouterr()
    outputs = _on_two_machines(tmp_path, *command, "--npz", "samples.npz", "--out", "grid.png")
    # batches 0 and 2 are rank 0's; batch 1, rank 1's, reached rank 0 over the process group
    assert "the other processes sent 1 of the 3 batches, which" in outputs[0][0]
    assert "5 samples (euler-maruyama x 3, cfg 2) ->" in outputs[0][0] and outputs[1][0] == ""
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    with np.load(tmp_path / "one.npz") as one, np.load(machines[0] / "samples.npz") as two:
        difference = np.abs(one["arr_0"].astype(int) - two["arr_0"])
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01
        assert two["arr_1"].tolist() == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in machines[0].iterdir()) == ["grid.png", "samples.npz"]
    assert list(machines[1].iterdir()) == []  # rank 1's kept batch removed on its machine


@pytest.mark.slow
def test_entpruner_evaluate_on_machines_that_share_no_folder_removes_each_ones_batches(
        tmp_path):
    """The samples travel in the process group; the batches each rank kept on its own disk
    must not stay behind on the machines other than rank 0's."""
    from entpruner_sdk.models.io import save

    save(teacher(), tmp_path / "model")
    outputs = _on_two_machines(
        tmp_path, "evaluate", "--model", str(tmp_path / "model"), "--samples", "12",
        "--steps", "2", "--batch-size", "4", "--features", "domain", "--quiet",
        "--device", "cpu", "--out", "evaluation")
    assert outputs[0][0].count("| class_accuracy |") == 1
    report = json.loads((tmp_path / "machine0" / "evaluation" / "evaluation.json").read_text())
    assert report["settings"]["processes"] == 2 and report["settings"]["samples"] == 12
    assert sorted(p.name for p in (tmp_path / "machine0" / "evaluation").iterdir()) == [
        "evaluation.json", "evaluation.md"]
    assert not any(p.is_file() for p in (tmp_path / "machine1").rglob("*"))


def _slow_rank0_worker(rank: int, world: int, port: int, out: str) -> None:
    import time

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a default group that gives up on a wait after 2 s, as NCCL's does after 10 minutes
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=2))
    try:
        def make():  # rank 0 makes the thing (4 s); the others find it made
            path = os.path.join(out, "made")
            if not os.path.exists(path):
                time.sleep(4)
                with open(path, "w") as file:
                    file.write(str(rank))
            return open(path).read()

        made_by = distributed.main_first(make)
        with open(os.path.join(out, f"rank{rank}"), "w") as file:
            file.write(made_by)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_the_others_wait_for_rank_0_past_the_default_timeout(tmp_path):
    mp.spawn(_slow_rank0_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["0", "0"]


def _failing_rank0_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    # were rank 1 left to wait for a rank 0 that will never come, fail in 20 s, not 2 days
    distributed.PATIENCE = datetime.timedelta(seconds=20)
    try:
        def make():
            if rank == 0:
                raise FileNotFoundError("no such folder: /data/mine")
            return "made without rank 0"

        try:
            distributed.main_first(make)
            outcome = "returned"
        except Exception as error:  # what each rank saw is the assertion
            outcome = f"{type(error).__name__}: {error}"
        with open(os.path.join(out, f"rank{rank}"), "w") as file:
            file.write(outcome)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_the_others_stop_with_rank_0s_reason_when_it_fails(tmp_path):
    mp.spawn(_failing_rank0_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = ((tmp_path / f"rank{r}").read_text() for r in range(2))
    assert rank0 == "FileNotFoundError: no such folder: /data/mine"
    # rank 1 neither waits nor makes the thing itself: it stops with rank 0's reason
    assert rank1.startswith("RuntimeError: rank 0 failed to make what the processes share")
    assert "FileNotFoundError: no such folder: /data/mine" in rank1


def _kept_batches(root: str):
    """The batch folders of one small evaluation's settings, under ``root``."""
    from entpruner_sdk.evaluation.batches import EvaluationBatches

    return EvaluationBatches(root, torch.arange(4), 0, 2, dict(sampler="ddim", steps=2,
                                                               device="cpu"), None)


def _claiming_worker(rank: int, world: int, port: int, out: str) -> None:
    from entpruner_sdk.evaluation.batches import BatchesInUse

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        try:
            _kept_batches(out).of(teacher(), "model")
            outcome = "claimed"
        except BatchesInUse as error:  # what each rank saw is the assertion
            outcome = str(error)
        with open(os.path.join(out, f"rank{rank}"), "w") as file:
            file.write(outcome)
    finally:
        dist.destroy_process_group()


def test_a_folder_another_run_holds_stops_every_rank(tmp_path):
    with _kept_batches(str(tmp_path)) as mine:  # this process runs the same evaluation
        held = mine.of(teacher(), "model")
        mp.spawn(_claiming_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    # rank 0 was refused the claim, and rank 1, which claims nothing, heard it: neither goes
    # on to sample into the folder, nor waits at the next collective for the other
    for rank in range(2):
        assert (tmp_path / f"rank{rank}").read_text().startswith(
            f"{held.directory} is in use: another process is making these same samples")


def _likelihood_images():
    from entpruner_sdk.data import load_data
    from entpruner_sdk.evaluation.likelihood import likelihood_images

    return likelihood_images(load_data("digits"), 5, seed=0)


def _likelihood_worker(rank: int, world: int, port: int, out: str) -> None:
    from entpruner_sdk.evaluation.likelihood import bits_per_dim

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = randomized(DiffusionTransformer(tiny_config("sit", depth=2)), seed=5)
        seen = []  # the images this rank's model took, over all its calls
        model.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
        bits = bits_per_dim(model, _likelihood_images(), steps=3, batch_size=2)
        torch.save({"bits": bits, "seen": sum(seen)}, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_likelihood_is_shared_between_processes_and_equals_one_process(tmp_path):
    from entpruner_sdk.evaluation.likelihood import bits_per_dim

    torch.set_num_threads(1)
    model = randomized(DiffusionTransformer(tiny_config("sit", depth=2)), seed=5)
    seen = []
    model.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    single = bits_per_dim(model, _likelihood_images(), steps=3, batch_size=2)
    mp.spawn(_likelihood_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for got in ranks:  # every process returns all five figures, one process's
        torch.testing.assert_close(got["bits"], single, rtol=1e-4, atol=1e-4)
    # the five images were shared 2 + 3, each measured once (Heun x 3: 6 calls an image)
    assert [got["seen"] for got in ranks] == [2 * sum(seen) // 5, 3 * sum(seen) // 5]
