"""`nas search` under torchrun: one process per GPU (NCCL) or per CPU worker (gloo).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the
search runs in one process. Under torchrun every rank walks the same shuffled order and takes
its share of each global batch, so --batch-size, the learning rates and the number of steps
mean the same at any world size. Weight gradients are averaged by DistributedDataParallel;
theta (22 x 9 numbers) is left out of DDP and its gradient averaged by one all-reduce, since
it is trained in its own phase on its own split. Rank 0 alone scores, exports, verifies and
writes the result, so the result files are those of a single process.

Two things do differ from one process: BatchNorm normalises over each rank's share of a batch
(--batch-size 64 on 8 GPUs: 8 images; there is no SyncBatchNorm, and the running statistics
are averaged over the ranks at the end), and when a split does not divide by the world size
the ranks' shares differ by one image while every rank's gradient weighs the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from latbench.errors import UsageError

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the search's processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's share of one global batch (every rank holds the same `index`)."""
        return index[self.rank::self.world_size] if self.distributed else index

    def noise_seed(self, seed: int) -> int:
        """Gumbel noise is drawn per sample, so each rank needs its own stream; rank 0 keeps
        the single-process one."""
        return seed + 1 + 7919 * self.rank

    def average_grad_(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average the gradients of `params` over the ranks, in place."""
        if not self.distributed:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(self.world_size)

    def average_buffers_(self, net: torch.nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the ranks: each
        rank updated its own with its share of the data, and the search should end with one
        supernet on every rank."""
        if not self.distributed:
            return
        on_gpu = False
        for buf in net.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(self.world_size)
                on_gpu |= buf.is_cuda
        if on_gpu:  # NCCL only queues the reduce: a worker rank goes on to destroy the group next
            torch.cuda.synchronize()

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Per-rank totals (loss sums, counts) added up over the ranks."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def wrap(self, net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`net` for the weight phase: DDP over every parameter but theta (which stays out of
        DDP's reducer because it is frozen while DDP is built)."""
        if not self.distributed:
            return net
        from torch.nn.parallel import DistributedDataParallel

        theta = getattr(net, "theta", None)
        if theta is not None:
            theta.requires_grad_(False)
        try:
            ids = [device.index] if device.type == "cuda" else None
            return DistributedDataParallel(net, device_ids=ids, output_device=ids[0] if ids else None)
        finally:
            if theta is not None:
                theta.requires_grad_(True)

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _ENV) and int(os.environ["WORLD_SIZE"]) > 1


def is_worker_rank() -> bool:
    """A torchrun rank other than 0: it trains its share; rank 0 shows and writes the result."""
    return launched_by_torchrun() and int(os.environ["RANK"]) != 0


def init_world(torch_device: str) -> tuple[World, str]:
    """Join the process group torchrun set up (if any); returns the world and the torch device
    this rank trains on (cuda:LOCAL_RANK for `--torch-device cuda`)."""
    if not launched_by_torchrun():
        return World(), torch_device
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device(torch_device)
    if device.type == "cuda":
        if device.index is not None:
            raise UsageError(f"--torch-device {torch_device} under torchrun: each rank takes its own GPU",
                             "use --torch-device cuda (rank r trains on cuda:LOCAL_RANK)")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"torchrun started {local_rank + 1}+ processes on a host with "
                             f"{torch.cuda.device_count()} CUDA device(s)",
                             "set --nproc-per-node to the number of GPUs")
        torch.cuda.set_device(local_rank)
        torch_device, backend = f"cuda:{local_rank}", "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UsageError(f"--torch-device {torch_device} is not supported under torchrun", "use cpu or cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return World(rank, world_size, local_rank, backend), torch_device
