"""`nas search` under torchrun (gloo on CPU): the same result files as one process, every rank
ends with the same supernet, each global batch is split between the ranks, and worker ranks
stay silent."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="nas needs torch (pip install -e .)")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this torch build has no gloo backend", allow_module_level=True)

from latbench.errors import UsageError  # noqa: E402
from nas.data import ImageSet, batches  # noqa: E402
from nas.distributed import World, init_world  # noqa: E402

SEARCH = ["search", "--cost", "flops", "--form", "hinge", "--target-flops", "40M", "--epochs", "2",
          "--warmup-epochs", "1", "--width-mult", "0.125", "--input-size", "8", "--limit-train", "200",
          "--batch-size", "32", "--samples", "2", "--retrain-epochs", "1", "--no-export", "--json"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], home: Path, nproc: int = 2, timeout_s: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, LATBENCH_HOME=str(home), COLUMNS="200", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)


def test_torchrun_search_writes_what_one_process_writes(latbench_home, tmp_path):
    single = subprocess.run([sys.executable, "-m", "nas", *SEARCH, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, LATBENCH_HOME=str(latbench_home), OMP_NUM_THREADS="1"))
    assert single.returncode == 0, single.stderr
    done = torchrun(["-m", "nas", *SEARCH, "--out", str(tmp_path / "two")], latbench_home)
    assert done.returncode == 0, done.stderr[-3000:]

    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == \
        sorted(p.name for p in (tmp_path / "two").iterdir())
    one = json.loads((tmp_path / "one" / "result.json").read_text())
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert set(one) == set(two)
    assert one["distributed"] == {"world_size": 1, "backend": None}
    assert two["distributed"] == {"world_size": 2, "backend": "gloo"}
    # Only rank 0 printed the result: one JSON document on stdout, not two.
    assert json.loads(done.stdout)["result_file"] == str(tmp_path / "two" / "result.json")
    # The two ranks together saw every training image once per epoch, as one process does
    # (200 images: 160 weight / 40 theta in batches of 32, so no tail batch is dropped).
    for r1, r2 in zip(one["curves"], two["curves"]):
        assert r1["weights_samples"] == r2["weights_samples"] == one["data"]["sizes"]["weights"]
    assert two["curves"][-1]["theta_samples"] == one["curves"][-1]["theta_samples"] == \
        one["data"]["sizes"]["theta"]
    assert len(two["final"]["arch"]) == 22 and "retrained" in two["final"]


RANK_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    import torch
    from latbench.spaces import get_space
    from nas.cost import CostForm, load_costs
    from nas.data import load_data
    from nas.distributed import init_world
    from nas.search import SearchConfig, run_search

    world, device = init_world("cpu")
    space = get_space("fbnet-cifar")
    costs = load_costs(["flops"], space)
    data = load_data("digits", 8, seed=0, limit=160)
    config = SearchConfig(epochs=2, warmup_epochs=1, batch_size=32, width_mult=0.125, torch_device=device)
    form = CostForm("hinge", targets=(40e6,))
    outcome = run_search(space, data, [c.term for c in costs], form, config, world=world)
    net = outcome.supernet
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode()); digest.update(tensor.detach().cpu().numpy().tobytes())
    out = {"rank": world.rank, "world_size": world.world_size, "theta": net.theta.detach().tolist(),
           "state_sha256": digest.hexdigest(), "curves": outcome.curves}
    with open(os.path.join(sys.argv[1], f"rank{world.rank}.json"), "w") as fh:
        json.dump(out, fh)
    world.close()
""")


def test_every_rank_ends_with_the_same_supernet(latbench_home, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    done = torchrun([str(script), str(tmp_path)], latbench_home)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Weights (DDP), BatchNorm buffers (broadcast from rank 0) and theta (all-reduced) agree...
    assert ranks[0]["state_sha256"] == ranks[1]["state_sha256"]
    assert ranks[0]["theta"] == ranks[1]["theta"]
    # ...and were trained: theta left zero in the unfrozen epoch, and the hinge pushed it.
    assert any(abs(v) > 1e-4 for row in ranks[0]["theta"] for v in row)
    assert ranks[0]["curves"][1]["theta_frozen"] is False
    def figures(rank: dict) -> list[dict]:  # the epoch records but their wall time, per rank
        return [{k: v for k, v in r.items() if k != "epoch_s"} for r in rank["curves"]]

    assert figures(ranks[0]) == figures(ranks[1])  # losses and counts are sums over the ranks


def test_batches_split_each_global_batch_between_ranks():
    data = ImageSet(torch.arange(11, dtype=torch.uint8).view(11, 1, 1, 1).expand(11, 1, 2, 2).contiguous(),
                    torch.arange(11))
    norm = {"mean": torch.zeros(1), "std": torch.full((1,), 1 / 255)}
    seen = {}
    for rank in (0, 1):
        world = World(rank=rank, world_size=2)
        seen[rank] = [y.tolist() for _, y in batches(data, 4, world=world, **norm)]
    assert seen[0] == [[0, 2], [4, 6], [8, 10]]
    assert seen[1] == [[1, 3], [5, 7], [9]]
    # A tail smaller than the world is dropped on every rank alike.
    world3 = [World(rank=r, world_size=3) for r in range(3)]
    lengths = [[len(y) for _, y in batches(data, 5, world=w, **norm)] for w in world3]
    assert lengths == [[2, 2], [2, 2], [1, 1]]  # batches 0-4, 5-9; the tail [10] is dropped
    single = [y.tolist() for _, y in batches(data, 4, **norm)]
    assert single == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    # Training asks for >= 2 samples per rank (BatchNorm): a tail of 3 over 2 ranks is dropped.
    assert [len(y) for _, y in batches(data, 4, world=World(0, 2), min_batch=2, **norm)] == [2, 2]
    assert [len(y) for _, y in batches(data, 5, min_batch=2, **norm)] == [5, 5]


def test_one_process_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world, device = init_world("cpu")
    assert (world.world_size, world.is_main, world.distributed, device) == (1, True, False, "cpu")
    assert world.sum([1.0, 2.0], torch.device("cpu")) == [1.0, 2.0]


def test_a_fixed_gpu_index_under_torchrun_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(UsageError, match="each rank takes its own GPU"):
        init_world("cuda:1")
