"""Run by torchrun from test_parallel.py on 2 or 4 gloo processes: every scenario computed
with context parallelism and in one process on the same batch; rank 0 writes the largest
relative differences (and the refusals seen) to a JSON file."""

import json
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist

from seqpack.boundaries import DocBoundaries
from seqpack.errors import InputError
from seqpack.loss import packed_cross_entropy
from seqpack.model import GPT, gpt_config
from seqpack.parallel import ContextParallel, all_reduce_grads, init_mesh, token_mean_loss

VOCAB = 96
# 54 tokens of documents + 7 of padding = 61 tokens: not a multiple of 2 or 4 (the shard pads),
# and the 17- and 23-token documents span shards for cp = 2 and 4.
LENGTHS = [17, 5, 23, 9]
TOTAL = 61


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def gather(x: torch.Tensor, group) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts)


def randomize(model, seed=0):
    """Non-zero weights everywhere (the init zeroes output projections, which would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def gpt_batch():
    g = torch.Generator().manual_seed(1)
    b = DocBoundaries.from_lengths(LENGTHS, TOTAL)
    ids = torch.randint(0, VOCAB, (TOTAL,), generator=g)
    labels = torch.full((TOTAL,), -100)
    start = 0
    for n in LENGTHS:  # next-token targets inside each document
        labels[start:start + n - 1] = ids[start + 1:start + n]
        start += n
    return ids, labels, b


def gpt_case(cp: ContextParallel, compiled: bool = False, **overrides) -> dict:
    cfg = gpt_config("tiny", vocab_size=VOCAB, **{"n_embd": 32, **overrides})
    model = randomize(GPT(cfg))
    ids, labels, b = gpt_batch()
    # one process, the whole batch
    ref_logits = model(ids, None, boundaries=b, position_ids=b.position_ids()).detach()
    model.zero_grad()
    loss, count = model(ids, labels, boundaries=b, position_ids=b.position_ids())
    (loss / count).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    ref_loss = float(loss.detach() / count)
    # context parallel
    fwd = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager") if compiled else model
    shard = cp.shard(ids, labels, None, b)
    ctx = shard.context()
    logits = gather(fwd(shard.input_ids, None, boundaries=ctx, position_ids=shard.position_ids).detach(), cp.group)
    model.zero_grad()
    loss_sum, n = fwd(shard.input_ids, shard.labels, boundaries=ctx, position_ids=shard.position_ids)
    part = token_mean_loss(loss_sum, n)
    part.backward()
    all_reduce_grads(model)
    total = part.detach().clone()
    dist.all_reduce(total)
    return {"logits": rel(logits[:TOTAL], ref_logits), "loss": abs(float(total) - ref_loss) / abs(ref_loss),
            "grads": max(rel(p.grad, ref_grads[k]) for k, p in model.named_parameters())}


def hf_case(cp: ContextParallel, family: str, **overrides) -> dict:
    from seqpack.integrations import hf  # noqa: F401 - registers attn_implementation="seqpack"
    from seqpack.integrations.hf_collator import packed_model_inputs
    from seqpack.integrations.hf_parallel import shard_inputs
    from seqpack.integrations.hf_verify import make_rows, tiny_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), attn_implementation="seqpack",
                                             dtype=torch.float32)
    randomize(model)
    # 3 rows of 18 (54 tokens, padded to 56 for cp = 4); documents span the pieces
    _, batch = make_rows((5, 11, 3, 8, 6, 9, 4), ((0, 1), (2, 3, 4), (5, 6)), 128, capacity=18)
    inputs = packed_model_inputs(batch)  # what DataCollatorForPacking returns
    labels = inputs.pop("labels")
    ref_logits = model(**inputs).logits.detach()
    model.zero_grad()
    loss, count = packed_cross_entropy(model(**inputs).logits, labels, reduction="sum")
    (loss / count).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    ref_loss = float(loss.detach() / count)

    kwargs, shard_labels = shard_inputs(model, {**inputs, "labels": labels}, cp)
    T = labels.numel()
    logits = gather(model(**kwargs).logits[0].detach(), cp.group)[:T]
    model.zero_grad()
    loss_sum, n = packed_cross_entropy(model(**kwargs).logits, shard_labels, reduction="sum", label_shift="collator")
    part = token_mean_loss(loss_sum, n)
    part.backward()
    all_reduce_grads(model)
    total = part.detach().clone()
    dist.all_reduce(total)
    return {"logits": rel(logits, ref_logits.reshape(T, -1)), "loss": abs(float(total) - ref_loss) / abs(ref_loss),
            "grads": max(rel(p.grad, ref_grads[k]) for k, p in model.named_parameters())}


def run_recipe() -> dict:
    """The Hugging Face recipe of docs/train.md, with cp = 2 (world 4: dp = 2 x cp = 2)."""
    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "train.md")).read()
    start = doc.index("```python", doc.index("### Hugging Face models")) + len("```python\n")
    code = doc[start:doc.index("```", start)]
    os.environ["CP"] = "2"
    scope = {"__name__": "recipe"}
    exec(compile(code, "docs/train.md (Hugging Face recipe)", "exec"), scope)
    return {"loss_is_finite": 0.0 if bool(torch.isfinite(scope["loss"])) else 1.0}


def refusal(cp: ContextParallel, **overrides) -> str:
    model = GPT(gpt_config("tiny", vocab_size=VOCAB, **overrides))
    ids, labels, b = gpt_batch()
    shard = cp.shard(ids, labels, None, b)
    try:
        model(shard.input_ids, shard.labels, boundaries=shard.context(), position_ids=shard.position_ids)
    except InputError as exc:
        return str(exc)
    return "no error"


def main(out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    cp = ContextParallel(init_mesh(world, device_type="cpu"))
    results, errors = {}, {}
    cases = {
        # GQA with one kv head (< cp: replicated), a sliding-window layer then a global one
        "gpt_gqa_window": lambda: gpt_case(cp, n_head=4, n_kv_head=1, window=5, window_pattern="SG"),
        "gpt_mha_eager": lambda: gpt_case(cp, n_head=4, attn_backend="eager"),
        "gpt_buffer_positions": lambda: gpt_case(cp, n_head=4, n_kv_head=2, positions="buffer"),
        "hf_llama_gqa": lambda: hf_case(cp, "llama", num_key_value_heads=1),
        "hf_qwen3_window": lambda: hf_case(cp, "qwen3"),
        "hf_recipe": run_recipe,
    }
    if world == 2:
        # torch.compile(fullgraph=True) through the functional all-to-alls (aot_eager: dynamo and
        # AOT autograd graphs without codegen; the most expensive case, so once)
        cases["gpt_compiled"] = lambda: gpt_case(cp, compiled=True, n_head=4, n_kv_head=2, window=5,
                                                 window_pattern="SG")
        # 3 kv heads over 2 ranks: neither divides the other
        cases["gpt_gqa_6_3"] = lambda: gpt_case(cp, n_head=6, n_kv_head=3, n_embd=48)
    seconds = {}
    for name, fn in cases.items():
        t0 = time.perf_counter()
        try:
            results[name] = fn()
            seconds[name] = round(time.perf_counter() - t0, 2)
        except Exception:  # noqa: BLE001 - reported to the test
            errors[name] = traceback.format_exc()
    refusals = {"heads_not_divisible": refusal(cp, n_head=3 if world == 2 else 6, n_embd=48),
                "cp_above_heads": refusal(cp, n_head=1 if world == 2 else 2, n_embd=32)}
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"world": world, "seconds": seconds, "results": results, "errors": errors, "refusals": refusals}, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
