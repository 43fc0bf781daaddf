"""Process-group set-up for torchrun (DDP, FSDP2) and the single-process default.

Notable:
- torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; we read them and pick
  NCCL on CUDA, gloo on CPU (the CI path: 2 gloo processes on one machine).
- ``dist="auto"`` is DDP when WORLD_SIZE > 1 and nothing otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "resolve_device", "all_reduce_sum"]


@dataclass
class DistInfo:
    kind: str          # "none", "ddp" or "fsdp"
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.kind != "none" and self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    from seqpack.errors import InputError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available here; use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(kind: str, device: str) -> tuple[DistInfo, torch.device]:
    """Join torchrun's process group if there is one; returns the info and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "auto":
        kind = "ddp" if world > 1 else "none"
    if kind != "none" and world == 1 and not dist.is_initialized():
        kind = "none"  # one process: nothing to distribute
    dev = resolve_device(device, local_rank)
    if kind != "none" and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if kind == "none":
        return DistInfo("none", 0, 1, local_rank), dev  # this process trains alone, whatever runs beside it
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(kind, rank, world, local_rank), dev


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
