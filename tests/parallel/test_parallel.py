"""Context parallelism: shards, refusals, and (on 2 and 4 gloo processes) outputs, losses and
gradients equal to one process for the GPT and tiny Hugging Face models."""

import json
import os
import subprocess
import sys

import pytest
import torch

from seqpack.batch import Documents, collate_packed
from seqpack.boundaries import DocBoundaries
from seqpack.errors import InputError
from seqpack.parallel import ContextParallel, check_heads, kv_repeats
from seqpack.plan import plan_packing


def fake_cp(size: int, rank: int) -> ContextParallel:
    """The shard arithmetic of rank ``rank`` of ``size`` without processes (no collective runs)."""
    cp = ContextParallel()
    cp.size, cp.rank = size, rank
    return cp


def test_shards_cover_the_buffer_and_pad_with_a_segment():
    b = DocBoundaries.from_lengths([17, 5, 23, 9], 61)
    ids = torch.arange(61)
    labels = torch.arange(61) + 1000
    shards = [fake_cp(4, r).shard(ids, labels, None, b) for r in range(4)]
    assert [s.input_ids.numel() for s in shards] == [16] * 4
    glued = torch.cat([s.input_ids for s in shards])
    assert torch.equal(glued[:61], ids) and torch.equal(glued[61:], torch.zeros(3, dtype=torch.long))
    assert torch.equal(torch.cat([s.labels for s in shards])[61:], torch.full((3,), -100))
    pb = shards[0].boundaries
    assert pb.shape == (64,) and pb.cu_seqlens.tolist() == [0, 17, 22, 45, 54, 61, 64]
    assert pb.is_pad.tolist() == [False, False, False, False, True, True]
    # positions restart per document across shards: the 23-token document spans shards 1 and 2
    assert torch.equal(torch.cat([s.position_ids for s in shards]), pb.position_ids())
    assert shards[2].position_ids[0] == 32 - 22


def test_static_cu_seqlens_keep_their_size():
    b = DocBoundaries.from_lengths([5, 6], 11).static(max_num_docs=6)
    shard = fake_cp(4, 0).shard(torch.zeros(11, dtype=torch.long), None, None, b)
    assert shard.boundaries.cu_seqlens.numel() == 7 and shard.boundaries.cu_seqlens.tolist()[-2:] == [11, 12]


def test_model_labels_are_shifted_over_the_whole_buffer():
    """Hugging Face labels (aligned with inputs) become the targets the one-process loss uses
    (shifted inside each row), even where a row ends inside a shard or a shard inside a row."""
    docs = Documents.from_lists([[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11]])
    plan = plan_packing([5, 3, 3], 3, overflow="split")
    batch = collate_packed(plan, docs, layout="rows", label_shift="model")  # rows of 3: the 5-token doc is split
    want = torch.full_like(batch.labels, -100)
    want[:, :-1] = batch.labels[:, 1:]  # packed_cross_entropy(label_shift="model") on the rows
    for cp in (2, 4):
        got = torch.cat([fake_cp(cp, r).shard_batch(batch).labels for r in range(cp)])
        assert torch.equal(got[:want.numel()], want.reshape(-1)) and (got[want.numel():] == -100).all()


def test_refusals_name_the_numbers():
    with pytest.raises(InputError, match="6 attention heads cannot be split evenly over context parallel size 4"):
        check_heads(6, 6, 4)
    with pytest.raises(InputError, match="context parallel size 8 is larger than the 4 attention heads"):
        check_heads(4, 2, 8)
    with pytest.raises(InputError, match="61 tokens, not a multiple of context parallel size 2"):
        fake_cp(2, 0).shard(torch.zeros(61, dtype=torch.long), None, None, DocBoundaries.from_lengths([61]),
                            pad=False)
    assert [kv_repeats(h, 4) for h in (1, 2, 3, 4, 8)] == [4, 2, 4, 1, 1]


@pytest.mark.parametrize("world", [2, 4])
def test_context_parallel_matches_one_process(tmp_path, world):
    """GPT (GQA with fewer kv heads than ranks, sliding-window layer, eager backend, buffer
    positions, compiled fullgraph on 2) and tiny HF Llama (GQA) / Qwen3 (sliding window) on the
    "seqpack" attention: logits, loss and gradients within 1e-5 of one process; padded
    buffer; documents spanning shards; impossible head layouts refused; the Hugging Face
    recipe of docs/train.md runs (world 4: dp 2 x cp 2)."""
    pytest.importorskip("transformers")
    worker = os.path.join(os.path.dirname(__file__), "cp_worker.py")
    out = tmp_path / "cp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world), worker,
           str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert not res["errors"], res["errors"]
    expected = {"gpt_gqa_window", "gpt_mha_eager", "gpt_buffer_positions", "hf_llama_gqa", "hf_qwen3_window",
                "hf_recipe"} | ({"gpt_compiled", "gpt_gqa_6_3"} if world == 2 else set())
    assert set(res["results"]) == expected
    for name, errs in res["results"].items():
        for what, e in errs.items():
            assert e <= 1e-5, (name, what, e)
    refused = res["refusals"]
    assert "cannot be split evenly over context parallel size" in refused["heads_not_divisible"]
    assert f"context parallel size {world} is larger than the" in refused["cp_above_heads"]


def test_gpu_cp_benchmark_runs_on_cpu():
    """benchmarks/gpu_cp.py --tiny --device cpu: the table the H100 run prints, every row there."""
    script = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "gpu_cp.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_PORT="29731")
    r = subprocess.run([sys.executable, script, "--tiny", "--device", "cpu"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for row in ("no CP layer", "cp=1 ", "cp=2 (one rank, simulated)", "cp=4 (one rank, simulated)",
                "cp=1 vs no CP layer"):
        assert row in r.stdout, r.stdout
