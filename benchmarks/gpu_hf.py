"""seqpack's Hugging Face path on one GPU: equivalence per attention implementation, then throughput.

Run from the repository root (transformers installed; no install of seqpack needed):

    PYTHONUNBUFFERED=1 OUT=/some/dir python benchmarks/gpu_hf.py            # H100, ~5 minutes
    python benchmarks/gpu_hf.py --tiny --device cpu                          # the same code, tiny, on a CPU

Parts, each in its own try/except so one failure never hides the others:
  1. env: versions, device, which attention implementations exist here.
  2. equivalence, tiny llama: `seqpack.hf.verify` per attention implementation (eager, sdpa,
     flex_attention, seqpack, flash_attention_2/3 when installed) and per input form (LLaMA-Factory
     integer mask, position_ids, PackedBatch, collator dict): max |logit diff| and relative gradient
     difference packed vs one by one (fp32 tol 1e-4; FlashAttention in bf16, tol 5e-2), and the same
     packed call on the bare model (what transformers does alone).
  3. equivalence, the benchmark model (349M Llama, fp32) on a few of the benchmark's documents:
     seqpack per implementation, and transformers alone with DataCollatorWithFlattening's layout and
     the default use_cache=True (REFERENCE.md section 4: it leaks).
  4. throughput, 349M Llama (hidden 1024, 24 layers, 16 heads, 8 KV heads, vocab 32000), random
     weights, bf16 parameters, fused AdamW, 56 SFT-like documents (~32K tokens, log-normal median
     ~400, drawn as REFERENCE.md section 3 drew them: first-fit into 8 rows of 4096); one optimiser
     step = all documents. Useful tokens/s (document tokens only) for: padding, 8 documents per
     micro-batch; DataCollatorWithFlattening rows of ~4K (bsz 1) on sdpa and flex_attention;
     naive packing 8 x 4096 with an all-ones mask (cross-document: wrong); seqpack's HF path per
     implementation on the same 8 rows; and torch.compile (regional: each decoder layer) of naive
     packing and seqpack.
  5. bars: seqpack >= 2.5x the padding-free path and >= 0.95x naive packing.
Everything goes to $OUT/gpu_hf.json (when OUT is set) and a table is printed last.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

T_START = time.time()
RESULTS: dict = {"errors": []}
OUT = Path(os.environ["OUT"]) if os.environ.get("OUT") else None


def log(*a):
    print(f"[{time.time() - T_START:6.1f}s]", *a, flush=True)


def save():
    if OUT is not None:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "gpu_hf.json").write_text(json.dumps(RESULTS, indent=1, default=str) + "\n")


def part(fn):
    def run(*a, **kw):
        log(f"== {fn.__name__}")
        try:
            return fn(*a, **kw)
        except Exception as e:  # report and go on with the next part
            traceback.print_exc()
            RESULTS["errors"].append(f"{fn.__name__}: {type(e).__name__}: {e}"[:2000])
        finally:
            save()
    return run


# ----------------------------------------------------------------------------------------
# sizes


def sizes(tiny: bool) -> dict:
    if tiny:
        return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256, row_len=128, rows=4, median=24, docs_per_pad=4,
                    warmup=1, steps=2)
    return dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                num_key_value_heads=8, vocab_size=32000, row_len=4096, rows=8, median=400, docs_per_pad=8,
                warmup=2, steps=5)


def bench_config(s: dict):
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
                       num_hidden_layers=s["num_hidden_layers"], num_attention_heads=s["num_attention_heads"],
                       num_key_value_heads=s["num_key_value_heads"], vocab_size=s["vocab_size"],
                       max_position_embeddings=s["row_len"], pad_token_id=0, bos_token_id=1, eos_token_id=2,
                       tie_word_embeddings=False)


def documents(s: dict, seed: int = 0):
    """The step's documents, as REFERENCE.md section 3 drew them: log-normal lengths (sigma 0.8)
    placed first-fit into ``rows`` rows of ``row_len``. Returns (rows of lengths, token lists)."""
    from seqpack.attention.bench import sample_rows
    rows = sample_rows(np.random.default_rng(seed), s["median"], s["rows"] * s["row_len"], s["row_len"])
    rng = np.random.default_rng(seed + 1)
    docs = [rng.integers(3, s["vocab_size"], n).tolist() for r in rows for n in r]
    return rows, docs


def implementations(device: str) -> list[str]:
    from seqpack.integrations.hf_verify import default_implementations
    return default_implementations(device)


# ----------------------------------------------------------------------------------------
# parts


@part
def env(args):
    import transformers
    from seqpack.integrations import hf
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "implementations": implementations(args.device), "seqpack_attention": hf.register_seqpack_attention(),
            "tiny": args.tiny}
    RESULTS["env"] = info
    log(json.dumps(info))


@part
def equivalence_tiny(args):
    from seqpack.integrations.hf_verify import FORMS, verify
    results = verify("llama", device=args.device, forms=FORMS, log=log)
    RESULTS["equivalence_tiny"] = [r.__dict__ for r in results]
    RESULTS["equivalence_tiny_pass"] = not any(r.leak for r in results)


@part
def equivalence_model(args, s):
    """The benchmark model (fp32) on a few benchmark documents: seqpack per implementation, and
    transformers alone with DataCollatorWithFlattening's layout (default use_cache)."""
    from transformers import AutoModelForCausalLM
    from seqpack.integrations import hf
    from seqpack.integrations.hf_verify import compare_packed, make_rows
    _, docs = documents(s)
    lengths = [len(d) for d in docs[:6]]  # the benchmark's lengths; random tokens
    with torch.device(args.device):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(bench_config(s), dtype=torch.float32)
    tol = 1e-3  # fp32, 24 layers: summation order differs between a packed row and a lone document
    label = f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M fp32"
    out = []
    tdocs, batch = make_rows(lengths, [[0, 1, 2], [3, 4, 5]], s["vocab_size"], device=args.device)
    for impl in implementations(args.device):
        if any(k in impl for k in ("flash_attention", "flash-attn")):
            continue  # fp16/bf16 only: covered in the tiny check
        backward = not (impl == "flex_attention" and not args.device.startswith("cuda"))
        try:
            model.set_attn_implementation(impl)
            hf.enable_packing(model)
            model.requires_grad_(backward)
            for form in ("collator", "int_mask"):
                r = compare_packed(model, tdocs, batch, form=form, backward=backward, reference_attn="eager")
                r.update(attn_implementation=impl, form=form, seqpack=True,
                         ok=r["logits"] <= tol and (math.isnan(r["grads"]) or r["grads"] <= tol))
                out.append(r)
                log(f"{label} {impl:>15} {form:>13} seqpack: {r}")
            hf.disable_packing(model)
            # transformers alone, DataCollatorWithFlattening's layout: one row, position_ids, no mask.
            _, flat = make_rows(lengths, [[0, 1, 2, 3, 4, 5]], s["vocab_size"], device=args.device)
            r = compare_packed(model, tdocs, flat, form="position_ids", backward=False, reference_attn="eager")
            r.update(attn_implementation=impl, form="flattening, use_cache default", seqpack=False)
            out.append(r)
            log(f"{label} {impl:>15} flattening without seqpack: {r}")
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            out.append(dict(attn_implementation=impl, error=f"{type(e).__name__}: {e}"[:500], ok=False,
                            seqpack=True))
        finally:
            hf.disable_packing(model)
    RESULTS["equivalence_model"] = out
    RESULTS["equivalence_model_pass"] = all(r.get("ok", True) for r in out if r.get("seqpack"))
    del model


def micro_batches(layout: str, rows, docs, s, device):
    """The step's micro-batches (dicts of model kwargs) for a layout."""
    from seqpack.integrations.hf_collator import DataCollatorForPacking
    L = s["row_len"]
    dev = lambda d: {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in d.items()}  # noqa: E731
    if layout == "padding":
        out, k = [], s["docs_per_pad"]
        for i in range(0, len(docs), k):
            group = docs[i:i + k]
            n = max(len(d) for d in group)
            ids = torch.zeros(len(group), n, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, d in enumerate(group):
                ids[j, :len(d)] = torch.tensor(d)
                mask[j, :len(d)] = 1
            labels = ids.masked_fill(mask == 0, -100)
            out.append(dev(dict(input_ids=ids, attention_mask=mask, labels=labels)))
        return out
    if layout == "flattening":
        from transformers import DataCollatorWithFlattening
        coll = DataCollatorWithFlattening()
        out, start = [], 0
        for r in rows:  # one ~row_len row per micro-batch, bsz 1, as HF's padding-free recipe
            out.append(dev(coll([{"input_ids": d} for d in docs[start:start + len(r)]])))
            start += len(r)
        return out
    if layout == "naive":
        flat = [t for d in docs for t in d]
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        start = 0
        for j, r in enumerate(rows):  # the same rows, documents back to back, all-ones mask
            n = sum(r)
            ids[j, :n] = torch.tensor(flat[start:start + n])
            start += n
        labels = ids.masked_fill(ids == 0, -100)
        return [dev(dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels))]
    if layout == "seqpack":  # the same rows, handed to the collator as pre-packed rows
        coll = DataCollatorForPacking(max_length=L, pack=False, fixed_length=True)
        feats, start = [], 0
        for r in rows:
            feats.append({"input_ids": [t for d in docs[start:start + len(r)] for t in d], "seq_lengths": r})
            start += len(r)
        return [dev(coll(feats))]
    if layout == "seqpack_bfd":  # the collator packs the documents itself (best-fit decreasing)
        coll = DataCollatorForPacking(max_length=L, fixed_length=True)
        return [dev(coll([{"input_ids": d} for d in docs]))]
    raise ValueError(layout)


def train_steps(model, batches, opt, n: int, device: str) -> float:
    """Mean seconds per optimiser step (all micro-batches) over n steps."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(n):
        for b in batches:
            model(**b).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return (time.perf_counter() - t) / n


def compile_layers(model, on: bool):
    """Regional compilation: each decoder layer (one compiled graph shared by all layers)."""
    for layer in model.model.layers:
        if on:
            layer.compile(dynamic=False)
        else:
            layer._compiled_call_impl = None


@part
def throughput(args, s):
    from transformers import AutoModelForCausalLM
    from seqpack.integrations import hf
    rows, docs = documents(s)
    useful = sum(len(d) for d in docs)
    RESULTS["data"] = {"docs": len(docs), "useful_tokens": useful, "rows": len(rows), "row_len": s["row_len"],
                       "median_len": float(np.median([len(d) for d in docs]))}
    log(f"data: {len(docs)} documents, {useful} tokens, rows {len(rows)} x {s['row_len']}")
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    with torch.device(args.device):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(bench_config(s), dtype=dtype, attn_implementation="sdpa")
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    RESULTS["model"] = {"params": n_params, "dtype": str(dtype)}
    log(f"model: {n_params / 1e6:.0f}M parameters, {dtype}")
    fused = args.device.startswith("cuda")
    impls = implementations(args.device)
    gpu = args.device.startswith("cuda")
    configs = [  # (name, layout, attn implementation, seqpack hook, compiled)
        ("padding, 8 docs/micro-batch, sdpa", "padding", "sdpa", False, False),
        ("DataCollatorWithFlattening ~4K, sdpa", "flattening", "sdpa", False, False),
        ("DataCollatorWithFlattening ~4K, flex", "flattening", "flex_attention", False, False),
        ("naive packing 8x4096 all-ones, sdpa (wrong)", "naive", "sdpa", False, False),
    ]
    for impl in impls:
        if impl == "eager" and gpu:
            continue  # O(L^2) float masks: not a training path at 32K tokens
        configs.append((f"seqpack rows, {impl}", "seqpack", impl, True, False))
    if "seqpack" in impls:
        configs.append(("seqpack bfd collator, seqpack", "seqpack_bfd", "seqpack", True, False))
    if not args.skip_compile:
        configs.append(("naive packing, sdpa, compiled (wrong)", "naive", "sdpa", False, True))
        for impl in [i for i in impls if i in ("seqpack", "flash_attention_2", "flash_attention_3")]:
            configs.append((f"seqpack rows, {impl}, compiled", "seqpack", impl, True, True))
    out = []
    compiled = False
    for name, layout, impl, use_hook, comp in configs:
        if not gpu and impl == "flex_attention":
            out.append(dict(name=name, skipped="flex_attention has no backward on CPU"))
            continue
        try:
            if comp != compiled:
                compile_layers(model, comp)
                compiled = comp
            model.set_attn_implementation(impl)
            (hf.enable_packing if use_hook else hf.disable_packing)(model)
            batches = micro_batches(layout, rows, docs, s, args.device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
            t0 = time.perf_counter()
            warm = train_steps(model, batches, opt, s["warmup"], args.device)
            first = time.perf_counter() - t0
            step = train_steps(model, batches, opt, s["steps"], args.device)
            peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan")
            r = dict(name=name, layout=layout, attn_implementation=impl, compiled=comp, step_ms=1e3 * step,
                     tokens_per_s=useful / step, warmup_s=first, warm_step_ms=1e3 * warm, peak_gib=peak,
                     micro_batches=len(batches))
            log(f"{name:>48}: {r['tokens_per_s'] / 1e3:8.1f}K useful tok/s  ({r['step_ms']:.0f} ms/step, "
                f"warmup {first:.1f}s)")
            out.append(r)
            del opt
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            out.append(dict(name=name, error=f"{type(e).__name__}: {e}"[:500]))
            log(f"{name:>48}: ERROR {type(e).__name__}: {e}"[:300])
        finally:
            hf.disable_packing(model)
            if gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        RESULTS["throughput"] = out
        save()
    compile_layers(model, False)
    if hasattr(torch, "_dynamo"):
        RESULTS["dynamo_counters"] = {k: dict(v) for k, v in torch._dynamo.utils.counters.items()
                                      if k in ("stats", "recompiles", "graph_break")}


@part
def bars(args):
    rows = {r["name"]: r for r in RESULTS.get("throughput", []) if "tokens_per_s" in r}
    flat = rows.get("DataCollatorWithFlattening ~4K, sdpa")
    naive = rows.get("naive packing 8x4096 all-ones, sdpa (wrong)")
    naive_c = rows.get("naive packing, sdpa, compiled (wrong)")
    out = []
    for name, r in rows.items():
        if not name.startswith("seqpack"):
            continue
        ref_naive = naive_c if r["compiled"] else naive
        vs_flat = r["tokens_per_s"] / flat["tokens_per_s"] if flat else float("nan")
        vs_naive = r["tokens_per_s"] / ref_naive["tokens_per_s"] if ref_naive else float("nan")
        out.append(dict(name=name, vs_flattening=vs_flat, vs_naive=vs_naive,
                        bar_flattening=vs_flat >= 2.5, bar_naive=vs_naive >= 0.95))
        log(f"{name:>48}: {vs_flat:5.2f}x flattening (bar 2.5), {vs_naive:5.2f}x naive "
            f"{'compiled ' if r['compiled'] else ''}(bar 0.95)")
    RESULTS["bars"] = out
    best = [b for b in out if b["bar_flattening"] and b["bar_naive"]]
    RESULTS["bars_met_by"] = [b["name"] for b in best]
    log(f"bars met by: {RESULTS['bars_met_by'] or 'none'}; equivalence tiny "
        f"{RESULTS.get('equivalence_tiny_pass')}, 349M {RESULTS.get('equivalence_model_pass')}; "
        f"errors: {len(RESULTS['errors'])}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny model and data (a CPU check of this script)")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--only", default=None, help="comma-separated parts: env,equivalence_tiny,equivalence_model,"
                                                "throughput,bars")
    args = p.parse_args(argv)
    s = sizes(args.tiny)
    RESULTS["args"] = vars(args)
    only = set(args.only.split(",")) if args.only else None
    want = lambda n: only is None or n in only  # noqa: E731
    if want("env"):
        env(args)
    if want("equivalence_tiny"):
        equivalence_tiny(args)
    if want("equivalence_model"):
        equivalence_model(args, s)
    if want("throughput"):
        throughput(args, s)
    if want("bars"):
        bars(args)
    RESULTS["wall_s"] = time.time() - T_START
    save()
    log(f"done in {RESULTS['wall_s']:.0f}s; {len(RESULTS['errors'])} part error(s)")
    return 1 if RESULTS["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
