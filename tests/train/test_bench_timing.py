"""What the GPU benchmark relies on, checked on the CPU: auto never recompiles across
batches, compile settings parse and apply, the warm-up stops when steps agree, the
timing records every step, the sweep and the DDP benchmark run end to end."""

import argparse
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from seqpack.data.corpus import load_chitchat
from seqpack.model import GPT, gpt_config
from seqpack.model.gpt import prepare_context
from seqpack.bench import train as B
from seqpack.train.config import TrainConfig, compile_kwargs, parse_inductor_options
from seqpack.train.data import PackedLoader, compact_vocab
from seqpack.train.trainer import Trainer

VOCAB = 512
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def docs():
    d, _ = compact_vocab(load_chitchat(max_docs=300), VOCAB)
    return d


@pytest.mark.parametrize("layout", ["1d", "rows"])
def test_auto_does_not_recompile_across_batches_with_compiled_blocks(docs, layout):
    """The benchmark's path: each block compiled (fullgraph, static shapes; aot_eager runs
    dynamo and AOTAutograd as inductor would), backend auto, a context per batch that
    carries what varies (the host-measured mean segment length, flex BlockMasks built
    for every batch as on a GPU): one graph for every document layout."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    cfg = gpt_config("tiny", vocab_size=VOCAB)  # attn_backend="auto"
    model = GPT(cfg)
    for block in model.blocks:
        block.compile(fullgraph=True, dynamic=False, backend="aot_eager")
    model.compile_loss(fullgraph=True, dynamic=False, backend="aot_eager")
    loader = PackedLoader(docs, capacity=128, rows_per_step=4, max_num_docs=32, layout=layout)
    layouts, means = set(), set()
    old = torch._dynamo.config.error_on_recompile
    try:
        for i in range(5):
            mb = next(loader).micro[0]
            ctx = prepare_context(mb.boundaries, cfg, block_mask=True)
            layouts.add(tuple(mb.boundaries.cu_seqlens.tolist()))
            means.add(ctx.mean_seqlen)
            loss, _ = model(mb.input_ids, mb.labels, boundaries=ctx, position_ids=mb.position_ids)
            loss.backward()
            if i == 0:
                graphs = counters["stats"]["unique_graphs"]
                torch._dynamo.config.error_on_recompile = True
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.config.error_on_recompile = old
        torch._dynamo.reset()
    assert len(layouts) >= 3 and len(means) >= 3  # what varied did not reach a guard


def test_inductor_options_parse_to_config_types():
    opts = parse_inductor_options("coordinate_descent_tuning=1, triton.cudagraphs=0,max_autotune_pointwise=true")
    assert opts == {"coordinate_descent_tuning": True, "triton.cudagraphs": False, "max_autotune_pointwise": True}
    with pytest.raises(ValueError, match="unknown inductor option"):
        parse_inductor_options("coordinate_descent_tunin=1")
    with pytest.raises(ValueError, match="key=value"):
        parse_inductor_options("coordinate_descent_tuning")
    kw = compile_kwargs(TrainConfig(compile_mode="max-autotune-no-cudagraphs", inductor="coordinate_descent_tuning=0"))
    assert kw["options"]["max_autotune"] is True and kw["options"]["coordinate_descent_tuning"] is False
    assert kw["fullgraph"] and kw["dynamic"] is False and "mode" not in kw  # torch.compile takes one of the two
    assert "options" not in compile_kwargs(TrainConfig())
    with pytest.raises(ValueError, match="inductor backend only"):
        compile_kwargs(TrainConfig(compile_backend="aot_eager", inductor="coordinate_descent_tuning=1"))


def test_trainer_recompiles_with_new_settings(tmp_path, docs):
    """The sweep's path: per-block compile, then the whole model, then eager, on one
    Trainer (same weights, same optimizer), each step equal to a fresh eager one."""
    torch._dynamo.reset()
    base = dict(preset="tiny", capacity=64, rows_per_step=2, steps=1, progress=False, threads=1, out=str(tmp_path),
                save=False, warmup_steps=1)
    tr = Trainer(TrainConfig(compile="blocks", compile_backend="aot_eager", **base), docs=docs, vocab_size=VOCAB)
    batch = next(tr.loader)
    init = {k: v.clone() for k, v in tr.model.state_dict().items()}
    losses = []
    for kind in ("blocks", "model", "none"):
        tr.recompile(compile=kind)
        tr.model.load_state_dict(init)
        tr.optimizer.state.clear()
        losses.append(float(tr.train_step(batch)))
        assert all(b._compiled_call_impl is not None for b in tr.model.blocks) == (kind == "blocks")
    torch._dynamo.reset()
    assert max(losses) - min(losses) <= 1e-5 * abs(losses[0])


def _bench_stub(tol=0.05):
    stub = B.Bench.__new__(B.Bench)
    stub.args = types.SimpleNamespace(warmup_tol=tol)
    stub.trainer = types.SimpleNamespace(dist=types.SimpleNamespace(enabled=False))
    return stub


def test_warmup_runs_until_two_steps_agree():
    b = _bench_stub()
    keep = lambda t, w=3, m=8: b._keep_warming(t, [100] * len(t), w, m)  # noqa: E731
    assert keep([])
    assert keep([30.0, 0.2])                 # fewer than the minimum
    assert keep([30.0, 0.2, 0.15])           # last two differ by 33%
    assert not keep([30.0, 0.2, 0.15, 0.152])  # within 5%
    assert not keep([30.0, 0.2, 0.15, 0.3, 0.15, 0.3, 0.15, 0.3])  # never steady: the cap
    # padded steps differ in size: compared per token slot
    assert not b._keep_warming([9.0, 0.2, 0.4], [100, 100, 200], 3, 8)


def test_time_config_times_every_step(docs):
    p = argparse.ArgumentParser()
    B.add_arguments(p)
    args = B._defaults(p.parse_args(["--tiny", "--device", "cpu", "--capacity", "128", "--rows", "2", "--steps", "3",
                                     "--warmup", "1", "--warmup-max", "4", "--dists", "short"]))
    bench = B.Bench(args)
    r = bench.time_config("short", "packed")
    assert len(r["step_times_ms"]) == r["steps"] == 3 and 1 <= r["warmup"] == len(r["warmup_times_ms"]) <= 4
    assert r["step_ms_min"] <= r["step_ms"] <= r["step_ms_max"]
    assert sorted(r["step_times_ms"])[1] == pytest.approx(r["step_ms"], abs=1e-2)
    assert "compiled_in_timed_steps" not in r and r["loss_mean"] > 0
    # the back-to-back pass times the same steps: its throughput follows from its step time
    useful = r["tok_s_sustained"] * r["step_ms_sustained"] * r["steps"] / 1000
    assert useful == pytest.approx(r["tok_s_mean"] * r["step_ms_mean"] * r["steps"] / 1000, rel=1e-6)
    assert r["mfu_sustained"] is None and r["step_ms_sustained"] > 0  # no peak on the CPU
    # same weights, same timed steps: a second measurement trains identically
    again = bench.time_config("short", "packed")
    assert again["loss_mean"] == pytest.approx(r["loss_mean"], rel=1e-6)


def test_sweep_variants_and_cpu_smoke(tmp_path):
    from seqpack.bench import sweep

    v = sweep.parse_variant("model+rope+cd+bf16res+lc4096")
    assert v["compile"] == "model" and v["inductor"] == "coordinate_descent_tuning=1" and not v["keeps_math"]
    assert v["model"] == dict(fused_rope_norm=True, fused_qkv=False, residual="autocast", loss_chunk=4096)
    assert sweep.bench_flags(sweep.parse_variant("blocks+rope+qkv+cd")) == (
        "--compile blocks --inductor coordinate_descent_tuning=1 --fused-rope-norm 1 --fused-qkv 1")
    with pytest.raises(ValueError, match="unknown variant token"):
        sweep.parse_variant("blocks+turbo")
    assert sweep.parse_variant("blocks+cg")["compile_mode"] == "reduce-overhead"
    assert sweep.parse_variant("blocks+cg+mat")["compile_mode"] == "max-autotune"
    assert sweep.parse_variant("mat+blocks")["compile_mode"] == "max-autotune-no-cudagraphs"
    from seqpack.train.config import TrainConfig, uses_cudagraphs

    assert uses_cudagraphs(TrainConfig(compile_mode="reduce-overhead"))
    assert uses_cudagraphs(TrainConfig(inductor="triton.cudagraphs=1"))
    assert not uses_cudagraphs(TrainConfig(compile_mode="max-autotune-no-cudagraphs"))
    assert not uses_cudagraphs(TrainConfig(compile_mode="reduce-overhead", inductor="triton.cudagraphs=0"))
    out = tmp_path / "sweep.json"
    p = argparse.ArgumentParser()
    sweep.add_arguments(p)
    args = p.parse_args(["--tiny", "--device", "cpu", "--capacity", "128", "--rows", "2", "--steps", "2",
                         "--warmup", "1", "--warmup-max", "2", "--variants", "blocks,blocks+rope+qkv",
                         "--json", str(out)])
    assert sweep.run(args) == 0
    res = json.loads(out.read_text())
    names = [x["variant"]["name"] for x in res["results"]]
    assert names[:2] == ["blocks", "blocks+rope+qkv"] and names[2].endswith(" on short")  # the fastest, again
    assert all(x["result"]["tok_s"] > 0 and x["profile"]["categories_ms"] for x in res["results"][:2])
    assert res["results"][2]["dist"] == "short" and res["results"][2]["result"]["steps"] == 2
    assert res["summary"]["best_blocks_flags"].startswith("--compile blocks")


def test_ddp_benchmark_on_two_gloo_processes(tmp_path):
    """`torchrun --nproc_per_node 2 benchmarks/gpu_train.py --ddp` end to end (gloo, CPU)."""
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "benchmarks", "gpu_train.py"), "--ddp", "--tiny", "--device", "cpu", "--capacity", "128",
           "--rows", "2", "--steps", "2", "--warmup", "1", "--warmup-max", "2", "--ddp-bucket-mb", "1", "--ddp-split-graphs", "1",
           "--json", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.join(ROOT, "src"))
    env.pop("NCCL_NVLS_ENABLE", None)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    if r.returncode != 0 and "terminate called without an active exception" in r.stderr:
        # Seen once in CI (a rank aborted by a C++ thread teardown while both cores were busy with
        # the other xdist worker's process groups); not reproduced in isolation. One more run, same checks.
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DDP scaling on 2 processes" in r.stdout and "NCCL_NVLS_ENABLE=0" in r.stdout
    assert "bucket 1 MiB, compiled graphs split at buckets: yes" in r.stdout
    res = json.loads(out.read_text())["ddp"]
    assert res["scaling"] > 0 and res["env"]["NCCL_NVLS_ENABLE"] == "0"
    assert res["phases"]["ddp"]["tok_s_all"] > 0 and res["phases"]["single"]["steps"] == 2
