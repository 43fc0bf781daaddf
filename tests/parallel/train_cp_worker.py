"""Run by torchrun from test_train_cp.py on 2 gloo processes: `seqpack train --cp 2` runs
(dp = 1) with DDP, FSDP2 and compiled blocks, and a checkpointed run resumed; rank 0 saves
each run's loss history, final weights and log.jsonl keys."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from seqpack.data.corpus import load_chitchat
from seqpack.train.config import TrainConfig
from seqpack.train.data import compact_vocab
from seqpack.train.trainer import Trainer

RUNS = ["ddp", "fsdp", "ddp-compiled"]


def config(out, dist_kind, cp, steps=3, save=False, **kw):
    compiled = dict(compile="blocks", compile_backend="aot_eager") if dist_kind.endswith("-compiled") else {}
    # 4 rows of 250 tokens per step: 1,000 tokens, padded to a multiple of cp by the shard
    return TrainConfig(preset="tiny", capacity=250, rows_per_step=4, steps=steps, log_every=1, progress=False,
                       threads=1, warmup_steps=2, dist=dist_kind.split("-")[0], cp=cp, out=str(out), save=save,
                       **compiled, **kw)


def main(out: Path) -> None:
    docs, _ = compact_vocab(load_chitchat(max_docs=200), 512)
    dist.init_process_group("gloo")
    results, weights = {}, {}
    for kind in RUNS:
        tr = Trainer(config(out / kind, kind, 2), docs=docs, vocab_size=512)
        results[kind] = tr.run()["history"]
        weights[kind] = tr.state_dict()["model"]  # full state dict on every rank (a collective under FSDP)
    # exact resume: 2 steps and a checkpoint, then a new trainer resumes to 4
    tr = Trainer(config(out / "resume", "ddp", 2, steps=4), docs=docs, vocab_size=512)
    results["uninterrupted"] = tr.run()["history"]
    tr = Trainer(config(out / "resume2", "ddp", 2, steps=4, save=True), docs=docs, vocab_size=512)
    tr.run(2)  # the end of a run() call writes a checkpoint
    dist.barrier()
    tr = Trainer(config(out / "resume2", "ddp", 2, steps=4, resume="auto"), docs=docs, vocab_size=512)
    results["resumed"] = tr.run()["history"]
    if dist.get_rank() == 0:
        log = [json.loads(line) for line in (out / "ddp" / "log.jsonl").read_text().splitlines()]
        results["log_keys"] = sorted(log[0])
        (out / "cp_train.json").write_text(json.dumps(results))
        torch.save(weights, out / "cp_weights.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]))
