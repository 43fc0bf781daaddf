"""The training loop: the three modes on the same data, exact resume, compiled without
recompiles, 2 gloo processes (DDP, FSDP2) equal to one process."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from seqpack.data.corpus import load_chitchat
from seqpack.errors import InputError
from seqpack.model import GPT, gpt_config
from seqpack.model.gpt import prepare_context
from seqpack.train.config import TrainConfig
from seqpack.train.data import PackedLoader, compact_vocab
from seqpack.train.trainer import Trainer, lr_at

VOCAB = 512


@pytest.fixture(scope="module")
def docs():
    d, _ = compact_vocab(load_chitchat(max_docs=300), VOCAB)
    return d


def cfg_for(tmp_path, **kw):
    base = dict(preset="tiny", capacity=256, rows_per_step=4, steps=4, log_every=1, progress=False,
                threads=1, out=str(tmp_path), warmup_steps=2, save=False)
    base.update(kw)
    return TrainConfig(**base)


def test_three_modes_train_on_the_same_documents(tmp_path, docs):
    out = {}
    for mode in ("packed", "naive", "padded"):
        out[mode] = Trainer(cfg_for(tmp_path / mode, mode=mode), docs=docs, vocab_size=VOCAB).run()
    p, n, d = out["packed"], out["naive"], out["padded"]
    assert all(np.isfinite(s["history"]).all() and len(s["history"]) == 4 for s in out.values())
    # Block-diagonal packing computes what one-document-per-row padding computes ...
    assert np.allclose(p["history"], d["history"], rtol=1e-5)
    # ... naive packing does not, once attention has weights (the init makes blocks identities)
    assert not np.allclose(p["history"][1:], n["history"][1:], rtol=1e-5)
    assert p["fill"] > 0.99 and d["fill"] < 0.9 and p["docs_per_row"] == d["docs_per_row"]
    assert p["history"][-1] < p["history"][0]


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    # 20 conversations pack into 39 rows of 128: 3 steps per epoch of 12 rows, so the
    # 7-step run crosses two epoch boundaries and resumes inside the second epoch.
    small, _ = compact_vocab(load_chitchat(max_docs=20), VOCAB)
    kw = dict(rows_per_step=12, rows_per_micro=6, steps=7, capacity=128)
    full = Trainer(cfg_for(tmp_path / "full", **kw), docs=small, vocab_size=VOCAB).run()
    first = Trainer(cfg_for(tmp_path / "part", save=True, **kw), docs=small, vocab_size=VOCAB)
    assert first.loader.steps_per_epoch == 3
    first.run(steps=4)
    resumed = Trainer(cfg_for(tmp_path / "part", resume="auto", **kw), docs=small, vocab_size=VOCAB)
    assert resumed.step == 4 and resumed.loader.state_dict()["epoch"] == 1
    rest = resumed.run()
    assert rest["history"] == full["history"]  # bit for bit
    assert len(set(rest["history"])) == 7


def test_online_loader_trains_resumes_and_keeps_static_shapes(tmp_path, docs):
    """The data stage's online packer as the loader: exact resume from its state."""
    kw = dict(loader="online", rows_per_step=4, rows_per_micro=2, steps=6, capacity=128, max_num_docs=24)
    full = Trainer(cfg_for(tmp_path / "full", **kw), docs=docs, vocab_size=VOCAB).run()
    Trainer(cfg_for(tmp_path / "part", save=True, **kw), docs=docs, vocab_size=VOCAB).run(steps=3)
    resumed = Trainer(cfg_for(tmp_path / "part", resume="auto", **kw), docs=docs, vocab_size=VOCAB)
    shapes = {tuple(mb.boundaries.cu_seqlens.shape) for _ in range(3) for mb in next(resumed.loader).micro}
    assert shapes == {(25,)}
    resumed = Trainer(cfg_for(tmp_path / "part", resume="auto", **kw), docs=docs, vocab_size=VOCAB)
    assert resumed.run()["history"] == full["history"]


def test_compiled_model_does_not_recompile_across_layouts(docs):
    """fullgraph=True, dynamic=False; static cu_seqlens -> one graph for every batch."""
    torch._dynamo.reset()
    cfg = gpt_config("tiny", vocab_size=VOCAB)
    model = GPT(cfg)
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")
    loader = PackedLoader(docs, capacity=128, rows_per_step=4, max_num_docs=32)
    layouts = set()
    try:
        for i in range(5):
            mb = next(loader).micro[0]
            layouts.add(tuple(mb.boundaries.cu_seqlens.tolist()))
            loss, _ = compiled(mb.input_ids, mb.labels, boundaries=prepare_context(mb.boundaries, cfg),
                               position_ids=mb.position_ids)
            loss.backward()
            if i == 0:
                torch.compiler.set_stance("fail_on_recompile")
    finally:
        torch.compiler.set_stance("default")
    assert len(layouts) >= 3  # batches with different document layouts, one graph


def test_trainer_compiles_each_block(tmp_path, docs):
    """The benchmark's compile path (each block and the head+loss, fullgraph, static shapes;
    aot_eager: dynamo and AOTAutograd as with inductor, without minutes of C++ codegen)
    trains like the eager model, packed and padded (two row lengths). The whole-model
    path is the one test_compiled_model_does_not_recompile_across_layouts traces."""
    torch._dynamo.reset()
    for mode in ("packed", "padded"):
        kw = dict(mode=mode, steps=2, capacity=32, rows_per_step=2, pad_batch=4)
        eager = Trainer(cfg_for(tmp_path / "e", **kw), docs=docs, vocab_size=VOCAB).run()
        comp = Trainer(cfg_for(tmp_path / "c", compile="blocks", compile_backend="aot_eager", **kw), docs=docs,
                       vocab_size=VOCAB).run()
        assert np.allclose(eager["history"], comp["history"], rtol=1e-5), mode


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_frac=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)


def test_two_gloo_processes_match_one_process(tmp_path, docs):
    """DDP and FSDP2 on 2 gloo processes (torchrun), packed and padded: same losses and
    weights as one process on the same global batch."""
    worker = os.path.join(os.path.dirname(__file__), "dist_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker,
           str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    import dist_worker

    refs = {}
    for kind, mode in dist_worker.RUNS:
        if mode not in refs:
            tr = Trainer(dist_worker.config(tmp_path / f"one-{mode}", "none", mode), docs=docs, vocab_size=VOCAB)
            refs[mode] = (tr.run()["history"], tr.model.state_dict())
        one_hist, one_model = refs[mode]
        two = torch.load(tmp_path / f"{kind}-{mode}-offline.pt", weights_only=False)
        assert np.allclose(one_hist, two["history"], rtol=1e-5), (kind, mode)
        for k, v in one_model.items():
            assert torch.allclose(v, two["model"][k], rtol=1e-4, atol=1e-5), (kind, mode, k)


def test_cli_trains_and_resumes(tmp_path):
    from seqpack import cli

    args = ["train", "--steps", "2", "--capacity", "128", "--rows-per-step", "2", "--vocab", "256",
            "--max-docs", "30", "--out", str(tmp_path), "--threads", "1", "--progress", "false"]
    assert cli.main(args) == 0
    assert (tmp_path / "ckpt" / "step_000002.pt").exists()
    assert cli.main(args[:2] + ["4"] + args[3:] + ["--resume", "auto"]) == 0
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log][-1] == 4 and all("tok_s" in e and "fill" in e for e in log)


# ---------------------------------------------------------------------------------------
# bad input: refused in one line naming the flag; resume never moves documents


CLI_BASE = ["train", "--steps", "2", "--capacity", "128", "--rows-per-step", "2", "--vocab", "256",
            "--max-docs", "30", "--threads", "1", "--progress", "false", "--log-every", "1"]


def run_cli(capsys, *args):
    from seqpack import cli

    try:
        rc = cli.main(list(args))
    except SystemExit as e:  # argparse refuses while parsing
        rc = e.code
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("flag,value,msg", [
    ("--rows-per-step", "0", "must be >= 1, got 0"), ("--steps", "0", "must be >= 1, got 0"),
    ("--steps", "-3", "must be >= 1, got -3"), ("--capacity", "0", "must be >= 1, got 0"),
    ("--lr", "0", "must be > 0, got 0.0"), ("--beta2", "1", r"must be in \[0, 1\), got 1.0"),
    ("--max-docs", "0", "must be >= 1"), ("--log-every", "0", "must be >= 1"), ("--seed", "-1", "must be >= 0"),
    ("--vocab", "1", "must be 0"), ("--lr", "nan", "must be a finite number"),
])
def test_cli_refuses_impossible_values_while_parsing(tmp_path, capsys, flag, value, msg):
    rc, err = run_cli(capsys, *CLI_BASE, "--out", str(tmp_path), flag, value)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(rf"seqpack train: error: argument {flag}: {msg}", err), err
    assert not (tmp_path / "log.jsonl").exists()


@pytest.mark.parametrize("field,value", [("rows_per_step", 0), ("steps", -3), ("capacity", 0), ("mode", "fast"),
                                         ("beta1", 1.0)])
def test_config_refuses_impossible_values_in_python(tmp_path, docs, field, value):
    with pytest.raises(InputError, match=rf"^{field} must be"):
        Trainer(cfg_for(tmp_path, **{field: value}), docs=docs, vocab_size=VOCAB)


@pytest.mark.parametrize("extra,msg", [
    (["--attn-backend", "bogus"], "--attn-backend 'bogus' is not a backend"),
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--n-embd", "100", "--n-head", "3"], "model options: n_embd 100 is not divisible by n_head 3"),
    (["--rows-per-step", "8", "--rows-per-micro", "3"], r"must be a multiple of rows_per_micro \(3\)"),
    (["--resume", "auto"], "--resume auto: no checkpoint in"),
    (["--inductor", "foo"], "--inductor options are key=value"),
])
def test_train_input_errors_are_one_line_without_traceback(tmp_path, capsys, extra, msg):
    rc, err = run_cli(capsys, *CLI_BASE, "--out", str(tmp_path), *extra)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(msg, err), err
    from seqpack import cli

    with pytest.raises(InputError):  # --debug shows the traceback
        cli.main(["--debug", *CLI_BASE, "--out", str(tmp_path), *extra])


def test_cli_data_errors_name_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input_ids": [1, 2]}\n{"input_ids": [1, 2.5]}\n')
    rc, err = run_cli(capsys, *CLI_BASE, "--out", str(tmp_path), "--data", str(bad))
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{bad} line 2" in err


@pytest.mark.parametrize("change,saved", [
    (["--seed", "1"], "--seed: saved 0, given 1"),
    (["--capacity", "96"], "--capacity: saved 128, given 96"),
    (["--rows-per-step", "4"], "--rows-per-step: saved 2, given 4"),
    (["--strategy", "ffd"], "--strategy: saved 'bfd', given 'ffd'"),
    (["--max-docs", "40"], "--max-docs: saved 30, given 40"),
    (["--vocab", "300"], "--vocab: saved 256, given 300"),
    (["--loader", "online"], "--loader: saved 'offline', given 'online'"),
])
def test_resume_refuses_options_that_change_which_documents_go_where(tmp_path, capsys, change, saved):
    rc, err = run_cli(capsys, *CLI_BASE, "--out", str(tmp_path))
    assert rc == 0, err
    args = [*CLI_BASE[:2], "3", *CLI_BASE[3:], *change]  # argparse: the last value of a flag wins
    rc, err = run_cli(capsys, *args, "--out", str(tmp_path), "--resume", "auto")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert saved in err, err
    # the same options resume, and more steps are fine
    rc, err = run_cli(capsys, *CLI_BASE[:2], "3", *CLI_BASE[3:], "--out", str(tmp_path), "--resume", "auto")
    assert rc == 0, err


def test_resume_from_an_earlier_checkpoint_logs_every_step_once(tmp_path, capsys):
    """Resuming from step 2 of a run that reached step 4: steps 3 and 4 are trained again
    and logged once, not twice."""
    args = [*CLI_BASE[:2], "4", *CLI_BASE[3:], "--out", str(tmp_path), "--ckpt-every", "2"]
    rc, err = run_cli(capsys, *args)
    assert rc == 0, err
    first = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    rc, err = run_cli(capsys, *args, "--resume", str(tmp_path / "ckpt" / "step_000002.pt"))
    assert rc == 0, err
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    assert [e["loss"] for e in log] == [e["loss"] for e in first]  # the resumed steps trained alike
