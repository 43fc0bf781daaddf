"""seqpack's Hugging Face path on one GPU: equivalence per attention implementation, then throughput.

Run from the repository root (transformers installed; no install of seqpack needed):

    PYTHONUNBUFFERED=1 OUT=/some/dir python3 benchmarks/gpu_hf.py           # one H100, ~2.5 minutes
    ... --whole-compile --budget 300                                       # + torch.compile(model), ~2 more
    python3 benchmarks/gpu_hf.py --tiny --device cpu                        # the same code, tiny, on a CPU

Parts, each in its own try/except so one failure never hides the others:
  1. env: versions, device, attention implementations here, FlashAttention packages found, and
     the matmul rate this GPU reaches (for the step's floor).
  2. equivalence, tiny llama (head dim 16: flex_attention on CUDA refuses less):
     `seqpack verify` per attention implementation and input form (eager, sdpa, seqpack with
     every form and the "without seqpack" control; flex_attention forward+backward on two forms),
     fp32, tol 1e-4.
  3. equivalence, the benchmark model (349M Llama) on six of the benchmark's document lengths:
     fp32 (tol 1e-3) on eager, sdpa and seqpack, and seqpack with the fused loss; bf16 on sdpa and
     seqpack (FlashAttention-4 where installed), tol 0.5 (bf16 noise over 24 layers is ~1e-2, a
     leak ~5); and transformers alone with DataCollatorWithFlattening's layout and the default
     use_cache (the control: it leaks).
  4. throughput, 349M Llama (hidden 1024, 24 layers, 16 heads, 8 KV heads, vocab 32000), random
     weights, bf16 parameters, fused AdamW, ~60 SFT-like documents (~32K tokens, log-normal median
     ~400, first-fit into 8 rows of 4096); one optimiser step = all documents. Every configuration
     starts from the same weights, so the first step's loss (token mean over the step) must agree
     wherever the documents are kept apart (a bf16 end-to-end check of the fast paths). Useful
     tokens/s (document tokens only). Required configurations first, then optional ones while the
     time budget lasts (--budget); the two main seqpack ones are also profiled (GPU time per kernel
     category: matmul, attention, elementwise, loss, optimiser; and whether the step is GPU-bound).
     torch.compile is regional (each decoder layer, dynamic=False, dynamo reset before each
     compiled configuration; its graph breaks and recompiles are recorded) and use_cache=False.
  5. check_cost: the runtime isolation check (`seqpack.hf.check_isolation`) on the 349M Llama, bf16,
     "seqpack" and sdpa: seconds for one training step (8 rows of 4096, AdamW) against the check as
     the packing hook runs it (one form) and explicitly (four forms); it must cost less than a step.
     The same measurement as benchmarks/bench_hf_check.py (its `measure`).
  6. bars (issue 4): seqpack >= 2.5x the padding-free path (DataCollatorWithFlattening, sdpa) and
     >= 0.95x naive packing (compiled compared with compiled).
Everything goes to $OUT/gpu_hf.json (when OUT is set), saved after every configuration.
"""

from __future__ import annotations

import argparse
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


def elapsed() -> float:
    return time.time() - T_START


def log(*a):
    print(f"[{elapsed():6.1f}s]", *a, flush=True)


def save():
    if OUT is not None:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "gpu_hf.json").write_text(json.dumps(RESULTS, indent=1, default=str) + "\n")


def short(e: BaseException, n: int = 400) -> str:
    """First line(s) of an error, without inductor's multi-kilobyte argument dumps."""
    text = f"{type(e).__name__}: {e}"
    return text.split("\n  target:")[0][:n]


def part(fn):
    def run(*a, **kw):
        log(f"== {fn.__name__}")
        try:
            return fn(*a, **kw)
        except Exception as e:  # report and go on with the next part
            traceback.print_exc()
            RESULTS["errors"].append(f"{fn.__name__}: {short(e, 2000)}")
        finally:
            save()
    return run


# ----------------------------------------------------------------------------------------
# sizes


def sizes(tiny: bool) -> dict:
    if tiny:
        return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256, row_len=128, rows=4, median=24, docs_per_pad=4,
                    steps=2)
    return dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                num_key_value_heads=8, vocab_size=32000, row_len=4096, rows=8, median=400, docs_per_pad=8,
                steps=3)


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


def is_gpu(args) -> bool:
    return args.device.startswith("cuda")


def sync(args):
    if is_gpu(args):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------
# parts


@part
def env(args):
    import transformers
    from seqpack.integrations import hf
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "device": args.device,
            "device_name": torch.cuda.get_device_name() if is_gpu(args) else "cpu",
            "implementations": implementations(args.device), "seqpack_attention": hf.register_seqpack_attention(),
            "tiny": args.tiny, "python": sys.version.split()[0]}
    try:
        from seqpack.attention.flash import probe_report
        info["flash_packages"] = probe_report()
    except Exception as e:  # noqa: BLE001
        info["flash_packages"] = short(e)
    if is_gpu(args):  # the bf16 matmul rate of this GPU at the model's shapes: the floor's unit
        a = torch.randn(32768, 1024, device=args.device, dtype=torch.bfloat16)
        b = torch.randn(1024, 2816, device=args.device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        sync(args)
        t = time.perf_counter()
        for _ in range(20):
            a @ b
        sync(args)
        info["matmul_tflops"] = 20 * 2 * 32768 * 1024 * 2816 / (time.perf_counter() - t) / 1e12
        del a, b
    RESULTS["env"] = info
    log(json.dumps(info))


@part
def equivalence_tiny(args):
    from seqpack.integrations.hf_verify import FORMS, verify
    impls = [i for i in implementations(args.device) if i != "flex_attention"]
    results = verify("llama", attn_implementations=impls, device=args.device, forms=FORMS, log=log)
    # flex_attention compiles a kernel per mask: two forms that give the same mask, seqpack only.
    results += verify("llama", attn_implementations=["flex_attention"], device=args.device,
                      forms=("collator", "int_mask"), baseline=False, log=log)
    RESULTS["equivalence_tiny"] = [r.__dict__ for r in results]
    RESULTS["equivalence_tiny_pass"] = not any(r.leak for r in results)


@part
def equivalence_model(args, s):
    """The benchmark model on six benchmark document lengths: seqpack per implementation (fp32 and
    bf16), the fused loss, and transformers alone with DataCollatorWithFlattening's layout."""
    from transformers import AutoModelForCausalLM
    from seqpack.integrations import hf
    from seqpack.integrations.hf_verify import compare_packed, make_rows
    _, docs = documents(s)
    lengths = [len(d) for d in docs[:6]]  # the benchmark's lengths; random tokens
    with torch.device(args.device):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(bench_config(s), dtype=torch.float32)
    label = f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M"
    impls = [i for i in implementations(args.device) if i in ("eager", "sdpa", "seqpack")]
    tdocs, batch = make_rows(lengths, [[0, 1, 2], [3, 4, 5]], s["vocab_size"], device=args.device)
    out = []

    def check(impl, dtype, tol, form="collator", fused=False, control=False):
        name = f"{impl}{' + fused loss' if fused else ''}"
        try:
            model.to(dtype)
            model.set_attn_implementation(impl)
            if fused:  # chunked, not compiled (the compiled form is checked at scale in throughput)
                hf.enable_fused_loss(model, compile=False)
            if control:  # transformers alone, DataCollatorWithFlattening's layout: one row, position_ids
                _, flat = make_rows(lengths, [list(range(6))], s["vocab_size"], device=args.device)
                r = compare_packed(model, tdocs, flat, form="position_ids", backward=False,
                                   reference_attn="eager" if dtype == torch.float32 else impl)
                r.update(form="flattening, use_cache default", seqpack=False)
            else:
                hf.enable_packing(model)
                ref = "eager" if dtype == torch.float32 else impl  # bf16: the same kernel one by one
                r = compare_packed(model, tdocs, batch, form=form, backward=True, reference_attn=ref)
                r.update(form=form, seqpack=True,
                         ok=r["logits"] <= tol and (math.isnan(r["grads"]) or r["grads"] <= tol))
                if fused:
                    from seqpack.integrations.hf_collator import packed_model_inputs
                    r.update(fused_vs_transformers(model, packed_model_inputs(batch), compile=False))
                    r["ok"] = r["ok"] and r["grads_vs_transformers"] <= 1e-4
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            r = dict(form=form, seqpack=not control, ok=False, error=short(e))
        finally:
            hf.disable_packing(model)
            hf.disable_fused_loss(model)
        r.update(attn_implementation=name, dtype=str(dtype).replace("torch.", ""), tol=tol)
        out.append(r)
        log(f"{label} {r['dtype']:>8} {name:>24} {r['form']:>13} {'seqpack' if r['seqpack'] else 'alone'}: "
            + (r.get("error") or f"logits {r['logits']:.2e} grads {r['grads']:.2e} loss {r['loss']:.1e}"
               + ("" if control else f" [tol {tol:g}] {'ok' if r['ok'] else 'FAIL'}")
               + (f"; vs transformers' loss: loss {r['loss_vs_transformers']:.1e} grads "
                  f"{r['grads_vs_transformers']:.1e}" if "loss_vs_transformers" in r else "")))

    model.requires_grad_(True)
    for impl in impls:
        check(impl, torch.float32, 1e-3)  # fp32, 24 layers: summation order differs packed vs alone
    check("sdpa", torch.float32, 1e-3, form="int_mask")
    if "seqpack" in impls:
        check("seqpack", torch.float32, 1e-3, fused=True)
    check("sdpa", torch.float32, 1e-3, control=True)
    if is_gpu(args):
        for impl in [i for i in impls if i in ("sdpa", "seqpack")]:
            check(impl, torch.bfloat16, 0.5)
    RESULTS["equivalence_model"] = out
    RESULTS["equivalence_model_pass"] = all(r.get("ok", True) for r in out if r.get("seqpack"))


def fused_vs_transformers(model, inputs, **fused) -> dict:
    """The same call with transformers' loss and with seqpack's fused one (left enabled): the
    difference of the losses and the largest relative difference of the parameter gradients."""
    from seqpack.integrations import hf
    res = []
    for on in (False, True):
        if on:
            hf.enable_fused_loss(model, **fused)
        else:
            hf.disable_fused_loss(model)
        model.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        res.append((float(loss.detach()), {n: p.grad.float() for n, p in model.named_parameters()}))
    model.zero_grad(set_to_none=True)
    (l0, g0), (l1, g1) = res
    return {"loss_vs_transformers": abs(l1 - l0),
            "grads_vs_transformers": max(float((g1[n] - g).norm() / g.norm().clamp_min(1e-12))
                                         for n, g in g0.items())}


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
            out.append(dev(dict(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)))
        return out
    if layout in ("flattening", "flattening_nocache"):
        from transformers import DataCollatorWithFlattening
        coll = DataCollatorWithFlattening()
        out, start = [], 0
        for r in rows:  # one ~row_len row per micro-batch, bsz 1, as HF's padding-free recipe
            b = coll([{"input_ids": d} for d in docs[start:start + len(r)]])
            if layout == "flattening_nocache":
                b["use_cache"] = False  # transformers then builds the document mask: correct
            out.append(dev(b))
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
        return [dev(dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, use_cache=False))]
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


def predicted(b) -> int:
    labels = b["labels"]
    return int((labels[..., 1:] != -100).sum())


def train_steps(model, batches, opt, n: int, args, first_loss: list | None = None) -> float:
    """Mean seconds per optimiser step (all micro-batches) over n steps; the first step's loss
    (token mean over all its micro-batches) is appended to ``first_loss`` when given."""
    sync(args)
    t = time.perf_counter()
    for i in range(n):
        total = count = 0.0
        for b in batches:
            loss = model(**b).loss
            loss.backward()
            if first_loss is not None and i == 0:
                k = predicted(b)
                total, count = total + float(loss.detach()) * k, count + k
        if first_loss is not None and i == 0:
            first_loss.append(total / max(count, 1))
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(args)
    return (time.perf_counter() - t) / n


def compile_layers(model, on: bool):
    """Regional compilation: each decoder layer (one compiled graph shared by all layers)."""
    for layer in model.model.layers:
        if on:
            layer.compile(dynamic=False)
        else:
            layer._compiled_call_impl = None


_CATEGORIES = (  # (category, substrings of the kernel name), first match wins
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("optimizer", ("adam", "multi_tensor")),
    ("matmul", ("gemm", "xmma", "nvjet", "cublas", "cutlass", "matmul", "splitk", "wgmma")),
    ("loss", ("softmax", "nll", "cross_entropy", "logsumexp")),
    ("compiled fusion (triton)", ("triton",)),
    ("copy/cat/index", ("copy", "cat", "index", "gather", "scatter", "embedding", "fill", "memset", "memcpy")),
    ("elementwise/reduce", ("elementwise", "vectorized", "reduce", "unrolled", "pow", "rsqrt", "mul", "add")),
)


def profile_step(model, batches, opt, args) -> dict:
    """One optimiser step under the profiler: GPU time per kernel category, and wall time."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CUDA] if is_gpu(args) else [ProfilerActivity.CPU]
    sync(args)
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        for b in batches:
            model(**b).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(args)
        wall = time.perf_counter() - t
    cats: dict[str, float] = {}
    kernels = []
    for e in prof.key_averages():
        if is_gpu(args):
            us = getattr(e, "self_device_time_total", None)
            if us is None:
                us = getattr(e, "self_cuda_time_total", 0.0)
        else:  # CPU check of the code: operator self time
            us = e.self_cpu_time_total
        if not us:
            continue
        name = e.key.lower()
        cat = next((c for c, keys in _CATEGORIES if any(k in name for k in keys)), "other")
        cats[cat] = cats.get(cat, 0.0) + us / 1e3
        kernels.append((us / 1e3, e.count, e.key[:120], cat))
    kernels.sort(reverse=True)
    busy = sum(cats.values())
    return dict(wall_ms=1e3 * wall, gpu_busy_ms=busy, categories_ms=dict(sorted(cats.items(), key=lambda x: -x[1])),
                top_kernels=[dict(ms=k[0], calls=k[1], name=k[2], category=k[3]) for k in kernels[:15]])


def dynamo_counters() -> dict:
    c = torch._dynamo.utils.counters
    return {"graph_breaks": sum(c["graph_break"].values()), "graph_break_reasons": list(c["graph_break"])[:5],
            "unique_graphs": c["stats"].get("unique_graphs", 0), "recompiles": sum(c["recompiles"].values())}


@part
def throughput(args, s):
    from transformers import AutoModelForCausalLM
    from seqpack.integrations import hf
    gpu = is_gpu(args)
    if not gpu:
        torch.set_num_threads(1)  # 2-core CPUs: OpenMP contention makes timings meaningless anyway
    rows, docs = documents(s)
    useful = sum(len(d) for d in docs)
    lens = np.array([len(d) for d in docs])
    RESULTS["data"] = {"docs": len(docs), "useful_tokens": useful, "rows": len(rows), "row_len": s["row_len"],
                       "median_len": float(np.median(lens)), "sum_len_sq": int((lens ** 2).sum())}
    log(f"data: {len(docs)} documents, {useful} tokens, rows {len(rows)} x {s['row_len']}")
    dtype = torch.bfloat16 if gpu else torch.float32
    with torch.device(args.device):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(bench_config(s), dtype=dtype, attn_implementation="sdpa")
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    emb = model.model.embed_tokens.weight.numel()
    RESULTS["model"] = {"params": n_params, "dtype": str(dtype)}
    log(f"model: {n_params / 1e6:.0f}M parameters, {dtype}")
    # The step's floor: 6 x (parameters but the input embedding) x tokens in the rows, and the
    # attention of the documents (causal: fwd 2 matmuls over L^2/2, bwd 2.5x fwd).
    T = s["rows"] * s["row_len"]
    H, D, layers = s["num_attention_heads"], s["hidden_size"] // s["num_attention_heads"], s["num_hidden_layers"]
    mm_flops = 6 * (n_params - emb) * T
    attn_flops = 3.5 * 2 * 2 * H * D * (lens ** 2).sum() / 2 * layers
    rate = RESULTS.get("env", {}).get("matmul_tflops")
    RESULTS["floor"] = {"matmul_tflop": mm_flops / 1e12, "attention_tflop": float(attn_flops / 1e12),
                        "matmul_ms_at_measured_rate": 1e3 * mm_flops / (rate * 1e12) if rate else None}
    log(f"floor: {json.dumps(RESULTS['floor'])}")
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    impls = implementations(args.device)
    seqpack_impl = "seqpack" if "seqpack" in impls else "sdpa"
    # (name, layout, attn implementation, seqpack hook, compiled, fused loss, required, est. seconds, profile)
    C = lambda *a: a  # noqa: E731
    configs = [  # required ones first (the bars), then the rest while the time budget lasts
        C("DataCollatorWithFlattening ~4K, sdpa", "flattening", "sdpa", False, False, False, True, 5, False),
        C("naive packing 8x4096 all-ones, sdpa (wrong)", "naive", "sdpa", False, False, False, True, 3, False),
        C(f"seqpack rows, {seqpack_impl}", "seqpack", seqpack_impl, True, False, False, True, 10, True),
        C(f"seqpack rows, {seqpack_impl}, fused loss", "seqpack", seqpack_impl, True, False, True, True, 6, False),
        C("naive packing, sdpa, compiled (wrong)", "naive", "sdpa", False, True, False, True, 20, False),
        C(f"seqpack rows, {seqpack_impl}, compiled", "seqpack", seqpack_impl, True, True, False, True, 20, False),
        C(f"seqpack rows, {seqpack_impl}, compiled, fused loss", "seqpack", seqpack_impl, True, True, True, True, 6,
          True),
        C("padding, 8 docs/micro-batch, sdpa", "padding", "sdpa", False, False, False, False, 6, False),
        C(f"seqpack bfd collator, {seqpack_impl}", "seqpack_bfd", seqpack_impl, True, False, False, False, 3, False),
        C("seqpack rows, sdpa", "seqpack", "sdpa", True, False, False, False, 4, False),
        C("DataCollatorWithFlattening ~4K, sdpa, use_cache=False", "flattening_nocache", "sdpa", False, False, False,
          False, 6, False),
        C("DataCollatorWithFlattening ~4K, flex", "flattening", "flex_attention", False, False, False, False, 14,
          False),
        C("seqpack rows, flex_attention", "seqpack", "flex_attention", True, False, False, False, 12, False),
    ]
    if args.whole_compile:  # torch.compile(model): 24 layers in one graph, a minute or more to compile
        configs.append(C(f"seqpack rows, {seqpack_impl}, whole model compiled, fused loss", "seqpack", seqpack_impl,
                         True, "whole", True, False, 90, False))
    if args.skip_compile:
        configs = [c for c in configs if not c[4]]
    # If the compiled "seqpack" attention fails, measure the PyTorch-only varlen path compiled instead.
    fallback = C("seqpack rows, flex_attention, compiled", "seqpack", "flex_attention", True, True, False, False, 25,
                 False)
    out = []
    RESULTS["throughput"] = out
    compiled, last = False, None
    while configs:
        name, layout, impl, use_hook, comp, fused, required, cost, prof = configs.pop(0)
        if not gpu and impl == "flex_attention":
            out.append(dict(name=name, skipped="flex_attention has no backward on CPU"))
            continue
        if not required and not args.tiny and elapsed() + cost > args.budget:
            out.append(dict(name=name, skipped=f"time budget ({elapsed():.0f}s + ~{cost}s > {args.budget:.0f}s)"))
            log(f"{name:>56}: skipped (time budget)")
            continue
        r = dict(name=name, layout=layout, attn_implementation=impl, compiled=comp, fused_loss=fused)
        try:
            model.load_state_dict(snapshot)
            if comp:
                if last != (impl, True):  # a fresh compile per attention implementation (no cache limits)
                    torch._dynamo.reset()
                torch._dynamo.utils.counters.clear()
            last = (impl, comp)
            regional = comp is True
            if regional != compiled:
                compile_layers(model, regional)
                compiled = regional
            model.set_attn_implementation(impl)
            (hf.enable_packing if use_hook else hf.disable_packing)(model)
            (hf.enable_fused_loss if fused else hf.disable_fused_loss)(model)
            batches = micro_batches(layout, rows, docs, s, args.device)
            if fused and not comp:  # the fused loss against transformers' on the real batch (bf16)
                r["fused_check"] = fused_vs_transformers(model, batches[0])
                log(f"{name:>56}: vs transformers' loss on this batch: {r['fused_check']}")
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=gpu)
            run = torch.compile(model, dynamic=False) if comp == "whole" else model
            losses: list = []
            t0 = time.perf_counter()
            warm = train_steps(run, batches, opt, 1, args, first_loss=losses)
            first = time.perf_counter() - t0
            step = train_steps(run, batches, opt, s["steps"], args)
            r.update(step_ms=1e3 * step, tokens_per_s=useful / step, warmup_s=first, warm_step_ms=1e3 * warm,
                     first_step_loss=losses[0], micro_batches=len(batches),
                     peak_gib=torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan"))
            if comp:
                r["dynamo"] = dynamo_counters()
            log(f"{name:>56}: {r['tokens_per_s'] / 1e3:8.1f}K useful tok/s  ({r['step_ms']:.0f} ms/step, warmup "
                f"{first:.1f}s, loss {losses[0]:.5f}, peak {r['peak_gib']:.1f} GiB)"
                + (f" dynamo {r['dynamo']}" if comp else ""))
            if prof and (args.tiny or elapsed() < args.budget):
                try:
                    r["profile"] = profile_step(run, batches, opt, args)
                    p = r["profile"]
                    log(f"{'profile':>56}: wall {p['wall_ms']:.0f} ms, GPU busy {p['gpu_busy_ms']:.0f} ms: "
                        + ", ".join(f"{k} {v:.0f}" for k, v in p["categories_ms"].items()))
                except Exception as e:  # noqa: BLE001
                    r["profile_error"] = short(e)
                    log(f"profile failed: {short(e)}")
            del opt, run
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            r["error"] = short(e, 800)
            if comp:
                r["dynamo"] = dynamo_counters()
            log(f"{name:>56}: ERROR {short(e, 300)}")
            if comp is True and impl == "seqpack" and gpu and fallback not in configs:
                configs.insert(0, fallback)
        finally:
            hf.disable_packing(model)
            hf.disable_fused_loss(model)
            if gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        out.append(r)
        save()
    compile_layers(model, False)
    # The first step's loss, from the same weights: equal wherever documents are kept apart and
    # every document's first token is left unpredicted (padding, flattening without cache, seqpack).
    ref = next((r for r in out if r.get("layout") == "padding" and "first_step_loss" in r), None)
    ref = ref or next((r for r in out if r.get("layout") == "seqpack" and "first_step_loss" in r), None)
    if ref:
        for r in out:
            if "first_step_loss" in r:
                r["loss_rel_diff_vs_" + ref["layout"]] = abs(r["first_step_loss"] / ref["first_step_loss"] - 1)
        apart = [r for r in out if r.get("layout") in ("padding", "flattening_nocache", "seqpack", "seqpack_bfd")
                 and "first_step_loss" in r]
        RESULTS["loss_agreement"] = {"reference": ref["name"], "max_rel_diff_documents_apart": max(
            abs(r["first_step_loss"] / ref["first_step_loss"] - 1) for r in apart)}
        log(f"first-step loss agreement: {RESULTS['loss_agreement']}")


@part
def check_cost(args, s):
    """The runtime isolation check against one training step of the benchmark model."""
    from transformers import AutoModelForCausalLM
    from bench_hf_check import measure
    from seqpack.integrations import hf
    rows, docs = documents(s)
    batch = micro_batches("seqpack", rows, docs, s, args.device)[0]
    out = {}
    for impl in [i for i in implementations(args.device) if i in ("seqpack", "sdpa")]:
        with torch.device(args.device):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(bench_config(s), dtype=torch.bfloat16 if is_gpu(args)
                                                     else torch.float32, attn_implementation=impl)
        hf.enable_packing(model, check=False)  # timed explicitly
        r = measure(model, batch, args.device, repeats=3 if args.tiny else 5)
        out[impl] = r
        log(f"check_cost {impl:>8}: step {r['step_s'] * 1e3:.1f} ms, check (hook, 1 form) "
            f"{r['check_hook_s'] * 1e3:.1f} ms = {r['hook_per_step']:.3f} step, check (4 forms) "
            f"{r['check_all_forms_s'] * 1e3:.1f} ms = {r['all_forms_per_step']:.3f} step")
        del model
    RESULTS["check_cost"] = out
    RESULTS["check_cost_pass"] = all(r["hook_per_step"] < 1 and r["all_forms_per_step"] < 1 for r in out.values())


def bars(args):
    rows = {r["name"]: r for r in RESULTS.get("throughput", []) if "tokens_per_s" in r}
    flat = rows.get("DataCollatorWithFlattening ~4K, sdpa")
    flat_ok = rows.get("DataCollatorWithFlattening ~4K, sdpa, use_cache=False")
    naive = rows.get("naive packing 8x4096 all-ones, sdpa (wrong)")
    naive_c = rows.get("naive packing, sdpa, compiled (wrong)")
    eq = RESULTS.get("equivalence_model_pass") and RESULTS.get("equivalence_tiny_pass")
    out = []
    for name, r in rows.items():
        if not name.startswith("seqpack"):
            continue
        ref_naive = naive_c if r["compiled"] else naive
        ratio = lambda ref: r["tokens_per_s"] / ref["tokens_per_s"] if ref else float("nan")  # noqa: E731
        b = dict(name=name, tokens_per_s=r["tokens_per_s"], vs_flattening=ratio(flat),
                 vs_flattening_correct=ratio(flat_ok), vs_naive=ratio(ref_naive), vs_naive_eager=ratio(naive))
        b.update(bar_flattening=b["vs_flattening"] >= 2.5, bar_naive=b["vs_naive"] >= 0.95)
        out.append(b)
        log(f"{name:>56}: {b['vs_flattening']:5.2f}x flattening (bar 2.5; {b['vs_flattening_correct']:.2f}x its "
            f"correct form), {b['vs_naive']:5.2f}x naive {'compiled ' if r['compiled'] else ''}(bar 0.95)")
    RESULTS["bars"] = out
    RESULTS["bars_met_by"] = [b["name"] for b in out if b["bar_flattening"] and b["bar_naive"] and eq]
    log(f"bars met by: {RESULTS['bars_met_by'] or 'none'}; equivalence tiny "
        f"{RESULTS.get('equivalence_tiny_pass')}, 349M {RESULTS.get('equivalence_model_pass')}; "
        f"errors: {len(RESULTS['errors'])}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny model and data (a CPU check of this script)")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--whole-compile", action="store_true",
                   help="also torch.compile(model) whole (seqpack, fused loss): slow to compile, optional")
    p.add_argument("--budget", type=float, default=150.0,
                   help="seconds: optional throughput configurations start only while the run is within this")
    p.add_argument("--only", default=None, help="comma-separated parts: env,equivalence_tiny,equivalence_model,"
                                                "throughput,check_cost,bars")
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
    if want("check_cost"):
        check_cost(args, s)
    if want("bars"):
        bars(args)
    RESULTS["wall_s"] = elapsed()
    save()
    log(f"done in {RESULTS['wall_s']:.0f}s; {len(RESULTS['errors'])} part error(s)")
    return 1 if RESULTS["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
