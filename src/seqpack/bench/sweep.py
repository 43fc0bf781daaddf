"""Compile and model variants of one training configuration, timed side by side (the MFU sweep).

One model, one optimizer, one set of precollated steps (the 304M GPT of docs/bench/train.md,
32K tokens per step, the "sft" distribution, packed, flash_attn.cute or auto when FA4 is
missing). Each variant recompiles (``torch._dynamo.reset`` first, so inductor options take
effect) and is timed as `seqpack bench train` times a configuration: warm-up until steady,
weights reset, then each step synchronized; the median step is reported. Every variant
starts the timed steps from the same weights, so the last column (mean loss of the timed
steps) must agree between variants that keep the math (bf16res changes the numerics).

A variant's name is its recipe, ``+``-joined tokens:

    blocks / model   compile each block + the head/loss, or the whole model as one graph
    cd               inductor coordinate_descent_tuning=1 (tunes each Triton kernel's blocks)
    pw               inductor max_autotune_pointwise=1
    agg              inductor aggressive_fusion=1
    mat              compile mode max-autotune-no-cudagraphs (also autotunes the GEMMs: slow)
    cg               CUDA graphs (compile mode reduce-overhead; with mat: max-autotune)
    rope             model: RoPE + QK norm as one autograd function (fused_rope_norm)
    qkv              model: q, k, v from one matmul (fused_qkv)
    bf16res          model: residual stream in bf16 under autocast (numerics change)
    lcN              model: fused head + cross-entropy in chunks of N tokens

Results: a row per variant as soon as it is done (median step ms, min-max, useful tok/s,
MFU, warm-up s, speed-up over the first variant, mean loss, the GPU kernel time split of a
2-step profile); then the fastest variant that keeps the math timed again on the other
distributions (``--dists``, default sft,short) when time allows; the table sorted; the
command line for the full benchmark with the fastest per-block settings that keep the
math; JSON (``--json`` or ``$OUT/sweep_train.json``, rewritten after every variant so a
killed run keeps what it measured).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

import torch

from seqpack.bench import train as B

__all__ = ["DEFAULT_VARIANTS", "parse_variant", "add_arguments", "run"]

DEFAULT_VARIANTS = ("blocks,blocks+cd,blocks+rope,blocks+rope+cd,model,model+cd,blocks+rope+qkv+cd,"
                    "blocks+rope+cd+bf16res,model+rope+cd")

_INDUCTOR_TOKENS = {"cd": "coordinate_descent_tuning=1", "pw": "max_autotune_pointwise=1", "agg": "aggressive_fusion=1"}
_MODEL_TOKENS = {"rope": ("fused_rope_norm", True), "qkv": ("fused_qkv", True), "bf16res": ("residual", "autocast")}
MODEL_DEFAULTS = dict(fused_rope_norm=False, fused_qkv=False, residual="fp32", loss_chunk=0)


def parse_variant(name: str) -> dict:
    """``"blocks+rope+cd"`` -> compile kind, compile mode, inductor options, model options."""
    tokens = [t.strip() for t in name.split("+") if t.strip()]
    out = dict(name=name, compile="blocks", compile_mode=None, inductor=[], model=dict(MODEL_DEFAULTS))
    for t in tokens:
        if t in ("blocks", "model", "none"):
            out["compile"] = t
        elif t in _INDUCTOR_TOKENS:
            out["inductor"].append(_INDUCTOR_TOKENS[t])
        elif t in ("mat", "cg"):
            mat = t == "mat" or out["compile_mode"] in ("max-autotune-no-cudagraphs", "max-autotune")
            cg = t == "cg" or out["compile_mode"] in ("reduce-overhead", "max-autotune")
            out["compile_mode"] = ("max-autotune" if cg else "max-autotune-no-cudagraphs") if mat else "reduce-overhead"
        elif t in _MODEL_TOKENS:
            k, v = _MODEL_TOKENS[t]
            out["model"][k] = v
        elif t.startswith("lc") and t[2:].isdigit():
            out["model"]["loss_chunk"] = int(t[2:])
        else:
            raise ValueError(f"unknown variant token {t!r} in {name!r}; tokens: blocks, model, "
                             f"{', '.join(_INDUCTOR_TOKENS)}, mat, cg, {', '.join(_MODEL_TOKENS)}, lcN")
    out["inductor"] = ",".join(out["inductor"]) or None
    out["keeps_math"] = out["model"]["residual"] == "fp32"
    return out


def bench_flags(v: dict) -> str:
    """The `seqpack bench train` / benchmarks/gpu_train.py flags that reproduce a variant."""
    f = [f"--compile {v['compile']}"]
    if v["compile_mode"]:
        f.append(f"--compile-mode {v['compile_mode']}")
    if v["inductor"]:
        f.append(f"--inductor {v['inductor']}")
    m = v["model"]
    if m["fused_rope_norm"]:
        f.append("--fused-rope-norm 1")
    if m["fused_qkv"]:
        f.append("--fused-qkv 1")
    if m["residual"] != "fp32":
        f.append(f"--residual {m['residual']}")
    if m["loss_chunk"]:
        f.append(f"--loss-chunk {m['loss_chunk']}")
    return " ".join(f)


def add_arguments(p) -> None:
    B.add_arguments(p)
    p.set_defaults(steps=8, warmup=4, warmup_max=10, budget_s=400.0, dists="sft,short", calibrate="0", profile=1)
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="comma-separated variant recipes, run in this order (module docstring: the tokens)")
    p.add_argument("--backend", default="flash_attn.cute",
                   help="attention backend for every variant (auto when this one cannot run here)")
    p.add_argument("--model-start-s", type=float, default=300.0,
                   help="no whole-model ('model') variant starts after this many seconds (they compile longest)")
    p.add_argument("--hard-s", type=float, default=470.0,
                   help="skip a variant whose expected cost (the longest warm-up seen for its compile kind, x1.5 "
                        "when tuned, + 15 s) would end it past this many seconds")
    p.add_argument("--cd-compile-s", type=float, default=3.0,
                   help="recommend a tuned (cd/pw) variant for the full benchmark only if its warm-up took at most "
                        "this many seconds more than the same recipe untuned")


def _quiet(_msg: str = "") -> None:
    pass


def run(args) -> int:
    args = B._defaults(args)
    B.quiet_known_warnings()
    t_run = time.perf_counter()
    env = B._environment(args.device)
    print(f"seqpack train sweep: {env}", flush=True)
    variants = [parse_variant(v) for v in args.variants.split(",") if v.strip()]
    all_dists = [d.strip() for d in args.dists.split(",") if d.strip()]
    dist = all_dists[0]  # the variants run on the first; the fastest that keeps the math also on the others
    args.compile = variants[0]["compile"] if args.device.startswith("cuda") else "none"
    bench = B.Bench(args)
    tr = bench.trainer
    backend = args.backend
    fast, slow, skipped = B._candidate_backends(bench)
    if backend != "auto" and backend not in fast + slow:
        print(f"backend {backend} cannot run here ({skipped.get(backend, 'not available')}): using auto", flush=True)
        backend = "auto"
    print(f"model {args.preset}: {tr.num_params / 1e6:.1f}M parameters, {args.rows} x {args.capacity} tokens per "
          f"step, dist {dist}, packed, backend {backend}, max_num_docs {bench.max_num_docs[dist]}; "
          f"{'bf16 autocast' if tr.use_bf16 else 'fp32'}; peak {tr.peak / 1e12 if tr.peak else '-'} TFLOP/s; "
          f"set-up {bench.elapsed():.0f} s", flush=True)
    print(f"per variant: recompile, warm-up {args.warmup}-{args.warmup_max} steps (until two agree within "
          f"{100 * args.warmup_tol:.0f}%), weights reset, {args.steps} steps timed one by one; budget: no variant "
          f"starts after {args.budget_s:.0f} s, no 'model' variant after {args.model_start_s:.0f} s, none expected "
          f"to end past {args.hard_s:.0f} s", flush=True)
    header = (f"{'variant':<26} {'step ms':>8} {'min-max':>13} {'useful tok/s':>12} {'MFU':>6} {'sus.':>6} "
              f"{'warm s':>7} {'vs 1st':>6} {'mean loss':>11}  profile (GPU kernel ms/step)")
    path = args.json or (os.path.join(os.environ["OUT"], "sweep_train.json") if os.environ.get("OUT") else None)
    results: list[dict] = []
    base = None

    def save():
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(dict(env=env, args=vars(args), backend=backend, results=results),
                                             indent=1, default=str))

    # Global warm-up, so that each variant's warm-up is its own compile only.
    print(f"global warm-up (one eager step, a trivial compile) {B.global_warmup(bench, backend):.0f} s", flush=True)
    print(header, flush=True)
    seen_warm: dict[str, float] = {}  # longest warm-up (compile) seen per compile kind
    for v in variants:
        el = bench.elapsed()
        est = seen_warm.get(v["compile"], 0.0) * (1.5 if v["inductor"] or v["compile_mode"] else 1.0) + 15.0
        if el > args.budget_s or (v["compile"] == "model" and el > args.model_start_s) or el + est > args.hard_s:
            res = dict(variant=v, error=f"skipped: {el:.0f} s spent, this one would need ~{est:.0f} s (budget)")
            results.append(res)
            print(f"{v['name']:<26} {res['error']}", flush=True)
            save()
            continue
        try:
            _apply_variant(bench, v, backend)
            t0 = time.perf_counter()
            r = bench.time_config(dist, "packed")
            r["wall_s"] = time.perf_counter() - t0
            seen_warm[v["compile"]] = max(seen_warm.get(v["compile"], 0.0), r["warmup_s"])
            prof = None
            if args.profile:
                try:
                    prof = B.profile_config(bench, dist, v["name"], _quiet, steps=2, top=12)
                except Exception as e:  # the profiler must not cost the measurement
                    prof = {"error": f"{type(e).__name__}: {e}"}
            res = dict(variant=v, result=r, profile=prof)
        except Exception as e:
            res = dict(variant=v, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                       trace=traceback.format_exc()[-3000:])
            if tr.device.type == "cuda":
                torch.cuda.empty_cache()
        results.append(res)
        if "result" in res and base is None:
            base = res["result"]
        print(_line(res, base), flush=True)
        save()

    done = [x for x in results if "result" in x]
    if not done:
        print("no variant ran")
        return 1
    keep = [x for x in done if x["variant"]["keeps_math"]]
    best_keep = max(keep, key=lambda x: x["result"]["tok_s"]) if keep else None
    others = []
    for d in all_dists[1:] if best_keep is not None else []:
        v = best_keep["variant"]
        el, est = bench.elapsed(), seen_warm.get(v["compile"], 0.0) + 15.0
        if el + est > args.hard_s:
            print(f"{v['name'] + ' on ' + d:<26} skipped: {el:.0f} s spent, would need ~{est:.0f} s (budget)")
            continue
        try:
            _apply_variant(bench, v, backend)
            r = bench.time_config(d, "packed")
            res = dict(variant=dict(v, name=f"{v['name']} on {d}"), dist=d, result=r, profile=None)
        except Exception as e:
            res = dict(variant=dict(v, name=f"{v['name']} on {d}"), dist=d,
                       error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        others.append(res)
        print(_line(res, None), flush=True)
    if others:
        save_others = [dict(x) for x in others]
        results.extend(dict(x, other_dist=True) for x in save_others)
        save()
    print(f"\nsorted (fastest first), {time.perf_counter() - t_run:.0f} s in all:")
    print(header)
    for x in sorted(done, key=lambda x: -x["result"]["tok_s"]):
        print(_line(x, base))
    best = max(done, key=lambda x: x["result"]["tok_s"])
    best_blocks, why_not = recommend(done, args.cd_compile_s)
    print(f"\nbest: {best['variant']['name']}: {best['result']['step_ms']:.1f} ms, "
          f"{best['result']['tok_s']:,.0f} useful tok/s, MFU {_pct(best['result'].get('mfu'))} "
          f"(sustained {_pct(best['result'].get('mfu_sustained'))})")
    prof = best.get("profile")
    print(f"  profile split: {B.split_line(prof if isinstance(prof, dict) and 'categories_ms' in prof else None)}")
    if best_keep is not None and best_keep is not best:
        print(f"best that keeps the math: {best_keep['variant']['name']}: {best_keep['result']['tok_s']:,.0f} "
              f"useful tok/s, MFU {_pct(best_keep['result'].get('mfu'))} "
              f"(sustained {_pct(best_keep['result'].get('mfu_sustained'))})")
    for line in why_not:
        print(line)
    if best_blocks is not None:
        b = best_blocks["result"]
        print(f"full benchmark with the fastest per-block settings that keep the math and compile fast enough for "
              f"its ~16 configurations ({best_blocks['variant']['name']}, {b['tok_s']:,.0f} useful tok/s here):\n"
              f"  python benchmarks/gpu_train.py --budget-s 300 "
              f"{bench_flags(best_blocks['variant'])}")
    summary = dict(best=best["variant"]["name"], best_keeping_math=best_keep and best_keep["variant"]["name"],
                   left_out=why_not,
                   best_blocks=best_blocks and best_blocks["variant"]["name"],
                   best_blocks_flags=best_blocks and bench_flags(best_blocks["variant"]))
    if path:
        Path(path).write_text(json.dumps(dict(env=env, args=vars(args), backend=backend, results=results,
                                              summary=summary), indent=1, default=str))
        print(f"wrote {path}")
    return 0


def recommend(done: list[dict], cd_compile_s: float):
    """The fastest per-block variant that keeps the math and whose compile cost suits the
    full benchmark (about 16 configurations and padded shapes, each compiled anew): a
    variant tuned with cd (or mat) is left out when its warm-up took more than
    ``cd_compile_s`` longer than the same recipe without the tuning. Returns it and the
    reasons for what was left out."""
    by_name = {x["variant"]["name"]: x for x in done}

    def untuned(name):
        return "+".join(t for t in name.split("+") if t not in ("cd", "mat", "pw"))

    def extra_of(x):  # warm-up seconds over the same recipe untuned, if that one ran
        ref = by_name.get(untuned(x["variant"]["name"]))
        return None if ref is None or ref is x else x["result"]["warmup_s"] - ref["result"]["warmup_s"]

    measured = [e for e in (extra_of(x) for x in done if x["variant"]["compile"] == "blocks") if e is not None]
    ok, why = [], []
    for x in done:
        v = x["variant"]
        if not v["keeps_math"] or v["compile"] != "blocks":
            continue
        tokens = v["name"].split("+")
        tuned = [t for t in tokens if t in ("cd", "mat", "pw")]
        if "mat" in tuned:
            why.append(f"left out of the full run: {v['name']} (GEMM autotuning per configuration takes minutes)")
            continue
        if tuned:
            plain = untuned(v["name"])
            extra = extra_of(x)
            if extra is None and measured:  # no untuned twin: the tuning cost seen on other recipes
                extra = max(measured)
            if extra is None or extra > cd_compile_s:
                why.append(f"left out of the full run: {v['name']} (tuning cost "
                           f"{'unknown: ' + plain + ' not measured' if extra is None else f'+{extra:.0f} s of warm-up'}"
                           f" per compile, ~16 compiles there)")
                continue
        ok.append(x)
    return (max(ok, key=lambda x: x["result"]["tok_s"]) if ok else None), why


def _apply_variant(bench, v: dict, backend: str) -> None:
    """Configure the model and recompile for a variant. On a CPU (the smoke test) eager:
    inductor's C++ codegen would take minutes per variant."""
    tr = bench.trainer
    kind = v["compile"] if tr.device.type == "cuda" else "none"
    tr.model.configure(**v["model"])
    tr.recompile(compile=kind, compile_mode=v["compile_mode"], inductor=v["inductor"])
    bench.set_backend(backend)


def _pct(x) -> str:
    return f"{100 * x:.1f}%" if x is not None else "-"


def _line(res: dict, base: dict | None) -> str:
    name = res["variant"]["name"]
    if "error" in res:
        return f"{name:<26} {res['error'][:100]}"
    r = res["result"]
    vs = f"{r['tok_s'] / base['tok_s']:.3f}" if base else "-"
    prof = res.get("profile")
    split = B.split_line(prof) if isinstance(prof, dict) and "categories_ms" in prof else (
        prof.get("error", "-") if isinstance(prof, dict) else "-")
    flag = "  COMPILED WHILE TIMED" if r.get("compiled_in_timed_steps") else ""
    return (f"{name:<26} {r['step_ms']:>8.1f} {r['step_ms_min']:>6.1f}-{r['step_ms_max']:<6.1f} {r['tok_s']:>12,.0f} "
            f"{_pct(r.get('mfu')):>6} {_pct(r.get('mfu_sustained')):>6} {r['warmup_s']:>7.1f} {vs:>6} "
            f"{r['loss_mean']:>11.7f}  {split}{flag}")
