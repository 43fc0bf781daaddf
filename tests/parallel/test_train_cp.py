"""`seqpack train --cp 2` on 2 gloo processes (one data-parallel group) logs the losses of
the single-process run with the same flags, with DDP, FSDP2 and compiled blocks; resumes
exactly; keeps log.jsonl's format; refuses what cannot work."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from seqpack.data.corpus import load_chitchat
from seqpack.errors import InputError
from seqpack.train.data import compact_vocab
from seqpack.train.trainer import Trainer

sys.path.insert(0, os.path.dirname(__file__))
import train_cp_worker  # noqa: E402


def test_cp_training_matches_one_process(tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "train_cp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker,
           str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((tmp_path / "cp_train.json").read_text())
    docs, _ = compact_vocab(load_chitchat(max_docs=200), 512)
    one = Trainer(train_cp_worker.config(tmp_path / "one", "none", 1), docs=docs, vocab_size=512)
    ref = one.run()["history"]
    weights = torch.load(tmp_path / "cp_weights.pt", weights_only=False)
    for kind in train_cp_worker.RUNS:
        assert np.allclose(got[kind], ref, rtol=1e-5), (kind, got[kind], ref)
        # the first step's attention output is the output projection's gradient: a wrong
        # attention shows in the weights even where the losses of a few steps hide it
        for k, v in one.model.state_dict().items():
            assert torch.allclose(v, weights[kind][k], rtol=1e-4, atol=1e-6), (kind, k)
    assert got["resumed"] == got["uninterrupted"]  # bit for bit
    one_log = json.loads((tmp_path / "one" / "log.jsonl").read_text().splitlines()[0])
    assert got["log_keys"] == sorted(one_log)


def test_cp_needs_processes(tmp_path):
    docs, _ = compact_vocab(load_chitchat(max_docs=20), 512)
    with pytest.raises(InputError, match="--cp 2 splits each micro-batch over 2 processes"):
        Trainer(train_cp_worker.config(tmp_path, "none", 2), docs=docs, vocab_size=512)


def test_resume_with_another_cp_is_refused(tmp_path):
    """cp decides which documents each rank reads (the data is split by dp = world / cp)."""
    docs, _ = compact_vocab(load_chitchat(max_docs=20), 512)
    cfg = train_cp_worker.config(tmp_path, "none", 1, steps=1, save=True)
    tr = Trainer(cfg, docs=docs, vocab_size=512)
    tr.run()
    ckpt = tmp_path / "ckpt" / "step_000001.pt"
    state = torch.load(ckpt, weights_only=False)
    state["data_options"]["cp"] = 2  # as a 2-rank --cp 2 run would have written it (world aside)
    torch.save(state, ckpt)
    with pytest.raises(InputError, match="--cp: saved 2, given 1"):
        Trainer(cfg.replace(resume=str(ckpt), steps=2), docs=docs, vocab_size=512)
    del state["data_options"]["cp"]  # a checkpoint from before --cp: cp 1
    torch.save(state, ckpt)
    Trainer(cfg.replace(resume=str(ckpt), steps=2), docs=docs, vocab_size=512)
