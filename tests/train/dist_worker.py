"""Run by torchrun from test_trainer.py: a few training runs on 2 gloo processes, each
saving its loss history and final weights (rank 0) for comparison with one process."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from seqpack.data.corpus import load_chitchat
from seqpack.train.config import TrainConfig
from seqpack.train.data import compact_vocab
from seqpack.train.trainer import Trainer

RUNS = [("ddp", "packed"), ("fsdp", "packed"), ("ddp", "padded"), ("ddp-compiled", "packed")]
ONLINE = ("ddp", "packed")  # also run with the online (rank-balanced) packer


def config(out, dist_kind, mode, loader="offline"):
    # ddp-compiled: each block compiled under DDP (aot_eager: dynamo + autograd graphs, no
    # codegen), with seqpack's default of unsplit graphs (dynamo's optimize_ddp off)
    compiled = dict(compile="blocks", compile_backend="aot_eager") if dist_kind.endswith("-compiled") else {}
    return TrainConfig(preset="tiny", capacity=256, rows_per_step=4, steps=3, log_every=1, progress=False,
                       threads=1, warmup_steps=2, mode=mode, dist=dist_kind.split("-")[0], out=str(out), save=False,
                       loader=loader, **compiled)


def main(out: Path) -> None:
    docs, _ = compact_vocab(load_chitchat(max_docs=300), 512)
    dist.init_process_group("gloo")
    for kind, mode, loader in [(k, m, "offline") for k, m in RUNS] + [(*ONLINE, "online")]:
        tr = Trainer(config(out / f"{kind}-{mode}", kind, mode, loader), docs=docs, vocab_size=512)
        summary = tr.run()
        state = tr.state_dict()  # full state dict on every rank (a collective under FSDP)
        if dist.get_rank() == 0:
            torch.save({"history": summary["history"], "model": state["model"]},
                       out / f"{kind}-{mode}-{loader}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
