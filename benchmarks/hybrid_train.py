"""Packed vs padded training of a small Qwen3.5-like hybrid (gated DeltaNet + attention) on the bundled corpus.

Both runs start from the same weights and train on the same documents in the same optimiser
steps: padded (each document its own row, micro-batches padded to their longest document, the
model as transformers gives it) and packed (the step's documents planned into rows, seqpack's
collator and `enable_packing`: the DeltaNet layers restart at every document). The losses per
step must agree (the same math on the same tokens), and packed should be faster in useful
tokens/s (document tokens only). One table, printed.

    python3 benchmarks/hybrid_train.py --control             # CPU: a few minutes on 2 cores
    python3 benchmarks/hybrid_train.py --device cuda --hidden 1024 --layers 8 --capacity 4096 \\
        --docs-per-step 64 --max-doc 4096 --steps 6        # a GPU (benchmarks/gpu_hybrid.py runs this)

Vocabulary: the corpus is GPT-2 BPE (50,257 ids); the model keeps the most frequent
``--vocab - 1`` ids of the documents used and maps the rest to one "other" id, so the output
layer does not dominate a small model's step.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def qwen35_like(vocab: int, hidden: int, layers: int, device, dtype):
    """A Qwen3.5 text model: three gated DeltaNet layers to one attention layer, random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM
    heads = max(2, hidden // 64)
    config = AutoConfig.for_model(
        "qwen3_5_text", vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
        head_dim=hidden // heads, linear_num_key_heads=heads, linear_num_value_heads=2 * heads,
        linear_key_head_dim=hidden // heads, linear_value_head_dim=hidden // heads,
        layer_types=[("full_attention" if (i + 1) % 4 == 0 else "linear_attention") for i in range(layers)],
        pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype).to(device)


def load_documents(n_docs: int, max_doc: int, vocab: int, seed: int = 0):
    """``n_docs`` conversations of the bundled corpus (shuffled, cut to ``max_doc`` tokens, at least 2),
    ids remapped to a ``vocab``-sized vocabulary (0 is padding, 1 "other")."""
    from seqpack.data.corpus import load_chitchat
    docs = load_chitchat()
    order = np.random.default_rng(seed).permutation(len(docs.lengths))
    out = []
    for i in order:
        d = np.asarray(docs[int(i)], dtype=np.int64)[:max_doc]
        if len(d) >= 2:
            out.append(d)
        if len(out) == n_docs:
            break
    ids, counts = np.unique(np.concatenate(out), return_counts=True)
    keep = ids[np.argsort(-counts)][: vocab - 2]
    table = np.ones(int(ids.max()) + 1, dtype=np.int64)  # 1 = other
    table[keep] = np.arange(2, 2 + len(keep))
    return [table[d] for d in out]


def padded_batches(docs, bsz: int):
    """Micro-batches of ``bsz`` documents, each padded to its longest: (input_ids, attention_mask, labels)."""
    for s in range(0, len(docs), bsz):
        group = docs[s:s + bsz]
        L = max(len(d) for d in group)
        ids = torch.zeros(len(group), L, dtype=torch.long)
        mask = torch.zeros(len(group), L, dtype=torch.long)
        for r, d in enumerate(group):
            ids[r, :len(d)] = torch.from_numpy(d)
            mask[r, :len(d)] = 1
        labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
        yield dict(input_ids=ids, attention_mask=mask, labels=labels)


def packed_batches(docs, capacity: int, rows: int):
    """The documents planned into rows of ``capacity`` (best fit), ``rows`` rows per micro-batch, as
    seqpack's collator hands them to a transformers model."""
    from seqpack.batch import Documents, collate_packed
    from seqpack.integrations.hf_collator import packed_model_inputs
    from seqpack.plan import plan_packing
    d = Documents.from_lists(docs)
    plan = plan_packing(d.lengths, capacity, strategy="bfd")
    for b in range(0, plan.num_bins, rows):
        batch = collate_packed(plan, d, np.arange(b, min(b + rows, plan.num_bins)), layout="rows",
                               label_shift="model")
        yield packed_model_inputs(batch, format="flash")


def predicted(labels: torch.Tensor) -> int:
    """Tokens a transformers causal-LM loss averages over (labels shift left by one)."""
    return int((labels[..., 1:] != -100).sum())


def step(model, opt, micro, device) -> tuple[float, float]:
    """One optimiser step over a list of micro-batches: (loss, seconds). The loss is the token mean
    over the whole step, whatever the micro-batches."""
    micro = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in m.items()} for m in micro]
    total = sum(predicted(m["labels"]) for m in micro)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step_loss = 0.0
    for m in micro:
        out = model(**m)
        loss = out.loss * (predicted(m["labels"]) / total)
        loss.backward()
        step_loss += float(loss.detach())
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return step_loss, time.perf_counter() - t0


def compare(args) -> dict:
    from seqpack.integrations import hf
    device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    docs = load_documents(args.docs_per_step * args.steps, args.max_doc, args.vocab)
    steps = [docs[s * args.docs_per_step:(s + 1) * args.docs_per_step] for s in range(args.steps)]
    useful = [sum(len(d) for d in st) for st in steps]
    padded_steps = [list(padded_batches(st, args.pad_bsz)) for st in steps]
    packed_steps = [list(packed_batches(st, args.capacity, args.rows)) for st in steps]
    slots = {"padded": [sum(m["input_ids"].numel() for m in st) for st in padded_steps],
             "packed": [sum(m["input_ids"].numel() for m in st) for st in packed_steps]}

    runs = [("padded", padded_steps), ("packed", packed_steps)]
    if args.control:  # naive packing: the same rows, no document boundaries, on the bare model (it leaks)
        runs.append(("bare", [[{"input_ids": m["input_ids"], "labels": m["labels"]} for m in st]
                              for st in packed_steps]))
        slots["bare"] = slots["packed"]
    models = {}
    for name, _ in runs:
        models[name] = qwen35_like(args.vocab, args.hidden, args.layers, device, dtype)
        if name == "packed":
            hf.enable_packing(models[name])
    opts = {name: torch.optim.AdamW(m.parameters(), lr=args.lr) for name, m in models.items()}
    results = {name: dict(losses=[], times=[]) for name, _ in runs}
    # Steps interleaved (padded, packed, ... for step 0, then step 1, ...): on a shared machine the
    # load drifts, and it then drifts for every layout alike.
    for i in range(args.steps):
        for name, batches in runs:
            loss, secs = step(models[name], opts[name], batches[i], device)
            results[name]["losses"].append(loss)
            results[name]["times"].append(secs)
    timed = slice(1, None) if args.steps > 1 else slice(None)  # the first step warms up
    for name, _ in runs:
        r = results[name]
        r["tok_s"] = sum(useful[timed]) / sum(r["times"][timed])
        r["fill"] = sum(useful) / sum(slots[name])
    results["max_loss_diff"] = max(abs(a - b) for a, b in zip(results["padded"]["losses"],
                                                               results["packed"]["losses"]))
    results["speedup"] = results["packed"]["tok_s"] / results["padded"]["tok_s"]
    results["useful_tokens"] = useful
    return results


def print_table(args, r: dict) -> None:
    import transformers
    try:
        commit = os.environ.get("SEQPACK_COMMIT") or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "?"
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} threads"
    print(f"device {dev}; torch {torch.__version__}; transformers {transformers.__version__}; commit {commit}; "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"model: Qwen3.5-like, hidden {args.hidden}, {args.layers} layers (3 gated DeltaNet : 1 attention), "
          f"vocab {args.vocab}, {args.dtype}; {args.steps} steps x {args.docs_per_step} documents "
          f"(<= {args.max_doc} tokens); packed rows of {args.capacity}, padded micro-batches of {args.pad_bsz}")
    print(f"{'step':>4} {'useful tok':>10} {'loss padded':>12} {'loss packed':>12} {'|diff|':>9} "
          f"{'s padded':>9} {'s packed':>9}")
    bare = r.get("bare", {}).get("losses")
    if bare:
        print(f"{'':>4} {'':>10} {'':>12} {'':>12} {'':>9} {'':>9} {'':>9} {'naive packing (leaks)':>22}")
    for i, (lp, lk, tp, tk) in enumerate(zip(r["padded"]["losses"], r["packed"]["losses"], r["padded"]["times"],
                                             r["packed"]["times"])):
        extra = f" {bare[i]:>12.6f} ({abs(bare[i] - lp):.1e})" if bare else ""
        print(f"{i:>4} {r['useful_tokens'][i]:>10} {lp:>12.6f} {lk:>12.6f} {abs(lp - lk):>9.2e} {tp:>9.3f} "
              f"{tk:>9.3f}{extra}")
    print(f"useful tokens/s (steps 1..): padded {r['padded']['tok_s']:.0f}, packed {r['packed']['tok_s']:.0f}, "
          f"ratio {r['speedup']:.2f}x; slots filled: padded {r['padded']['fill']:.1%}, "
          f"packed {r['packed']['fill']:.1%}; max |loss diff| {r['max_loss_diff']:.2e}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--docs-per-step", type=int, default=32)
    p.add_argument("--max-doc", type=int, default=512)
    p.add_argument("--capacity", type=int, default=1024)
    p.add_argument("--rows", type=int, default=4, help="packed rows per micro-batch")
    p.add_argument("--pad-bsz", type=int, default=8, help="documents per padded micro-batch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--control", action="store_true",
                   help="also train the bare model on the packed rows without boundaries (naive packing): the leak")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = compare(args)
    print_table(args, r)
    tol = 1e-4 if args.dtype == "fp32" else 5e-2
    if r["max_loss_diff"] > tol:
        print(f"FAIL: packed and padded losses differ by {r['max_loss_diff']:.2e} (> {tol})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
