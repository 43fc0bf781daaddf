"""seqpack.attention on one GPU: correctness, compile, timings, calibration. One script.

Run from the repository root (no install needed; flash-attn-4 is optional):

    PYTHONUNBUFFERED=1 OUT=/some/dir python benchmarks/gpu_attention.py

Parts, in this order, each in its own try/except so one failure never hides the others:
  1. correctness: every available GPU backend vs an fp32 per-document reference on random
     boundaries (bf16; relative error of out, dq, dk, dv <= 5e-3) plus a forward isolation
     check (another document's inputs change, this one's outputs must not);
  2. calibration: forward+backward of every backend on a grid of length distributions
     (16 heads x 128, bf16, 32K tokens in rows of 4096 and as one 1D buffer; REFERENCE.md
     section 3's short / SFT-like / long are grid points), written to $OUT/<gpu>.json, the
     table to ship as src/seqpack/calibration/h100.json;
  3. auto: backend="auto", and auto with the FlashAttention backends hidden, timed on the
     three distributions against the best single backend;
  4. BlockMask construction per batch (ours compiled, eager; then create_block_mask);
  5. compile: a small attention block per backend under torch.compile(fullgraph=True,
     dynamic=False): no graph break, no recompilation across 3 batches of different layouts;
  6. experiments, while time is left (--budget-s): the Triton kernel under compile, flex
     with plain boundaries under compile (BlockMask built inside the graph), narrow
     BlockMask tables, create_block_mask as a baseline;
  7. a short table, printed last. Everything also goes to $OUT/gpu_attention.json.
Timings: triton.testing.do_bench medians (25 ms warm-up, --rep-ms); "useful" TFLOP/s count
within-document causal pairs only (4 H D per pair forward, x3.5 forward+backward).
Shapes repeat on purpose (correctness uses the calibration's 32K-token shapes), so flex's
compiled kernels are reused instead of recompiled: about 5-6 minutes on an H100.
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
OUT = Path(os.environ.get("OUT") or "gpu-attention-out")
OUT.mkdir(parents=True, exist_ok=True)
RESULTS: dict = {"errors": [], "skipped_for_time": []}
DISTS = {"short": 150, "sft": 400, "long": 1500}
TOL = 5e-3
FA = ("flash_attn.cute", "flash_attn_interface", "flash_attn")
# Not registered by seqpack itself; registered here, checked, and timed (stretch attempts).
# The cases each one is checked on (compiles and autotuning cost time).
EXPERIMENTAL = {"triton_varlen": {0, 1, 2, 3, 4}}


class Cfg:
    """Sizes; ``--smoke`` shrinks everything to check this script's plumbing on a CPU."""
    device = "cuda"
    tokens, row_len, heads, head_dim = 32768, 4096, 16, 128   # REFERENCE.md section 3
    compile_backend = "inductor"
    budget_s = 330.0
    rep_ms = 100.0


def elapsed() -> float:
    return time.time() - T_START


def have(seconds: float, what: str) -> bool:
    """Whether ``seconds`` more fit in the budget; records what was skipped if not."""
    if elapsed() + seconds <= Cfg.budget_s:
        return True
    RESULTS["skipped_for_time"].append(what)
    log(f"skipping {what}: {elapsed():.0f} s used of a {Cfg.budget_s:.0f} s budget")
    return False


def log(*a):
    print(f"[{elapsed():6.1f}s]", *a, flush=True)


def save():
    (OUT / "gpu_attention.json").write_text(json.dumps(RESULTS, indent=1, default=str) + "\n")


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


def rel(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-6))


def bench_ms(fn) -> float:
    from seqpack.attention.bench import time_ms
    return time_ms(fn, torch.device(Cfg.device), 25, Cfg.rep_ms)


def registered(names):
    from seqpack.attention import BACKENDS
    return [n for n in names if n in BACKENDS]


# ----------------------------------------------------------------------------------------


@part
def env():
    import seqpack.attention.torch_varlen as tv
    from seqpack.attention import BACKENDS
    from seqpack.attention.flash import probe_report
    cuda = Cfg.device == "cuda"
    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "capability": torch.cuda.get_device_capability() if cuda else None, "backends": list(BACKENDS),
            "flash": probe_report(), "varlen_attn_params": tv.varlen_params()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        from importlib.metadata import version
        info["flash_attn_4"] = version("flash-attn-4")
    except Exception:
        info["flash_attn_4"] = None
    RESULTS["env"] = info
    log(json.dumps(info))


def reference_fp32(q, k, v, dout, cu: list[int], causal, window):
    """Each segment alone in fp32: ``(out, dq, dk, dv)``, flat layout [N, H, D].

    Forward and backward one segment at a time, so memory stays that of the longest one.
    """
    H, Hkv, D = q.shape[-2], k.shape[-2], q.shape[-1]
    g = H // Hkv
    out, dq = torch.zeros(q.shape, device=q.device), torch.zeros(q.shape, device=q.device)
    dk, dv = torch.zeros(k.shape, device=q.device), torch.zeros(v.shape, device=q.device)
    for s, e in zip(cu[:-1], cu[1:]):
        n = e - s
        if n == 0:
            continue
        qs, ks, vs = (x[s:e].float().requires_grad_() for x in (q, k, v))
        qq = qs.transpose(0, 1)
        kk = ks.repeat_interleave(g, 1).transpose(0, 1)
        vv = vs.repeat_interleave(g, 1).transpose(0, 1)
        i = torch.arange(n, device=q.device)[:, None]
        j = torch.arange(n, device=q.device)[None, :]
        ok = torch.ones(n, n, dtype=torch.bool, device=q.device)
        if causal:
            ok &= j <= i
        if window is not None:
            ok &= (i - j < window) if causal else ((i - j).abs() < window)
        sc = (qq @ kk.transpose(-1, -2)) / math.sqrt(D)
        o = (sc.masked_fill(~ok, float("-inf")).softmax(-1) @ vv).transpose(0, 1)
        o.backward(dout[s:e].float())
        out[s:e], dq[s:e], dk[s:e], dv[s:e] = o.detach(), qs.grad, ks.grad, vs.grad
    return out, dq, dk, dv


def batch_boundaries(rng, layout, tokens, row_len, median, special=None):
    from seqpack.attention.bench import make_boundaries, sample_rows
    from seqpack.boundaries import DocBoundaries
    if special is not None:
        b = DocBoundaries.from_row_lengths(special, row_len, max_seqlen=row_len)
    else:
        b = make_boundaries(sample_rows(rng, median, tokens, row_len), row_len, layout)
    return b.static(b.num_segments + 8)  # empty slots at the end of cu_seqlens, as static shapes have


def correctness_cases():
    T, L, H, D = Cfg.tokens, Cfg.row_len, Cfg.heads, Cfg.head_dim
    # The first four share the calibration's shapes, so flex compiles once for both parts.
    special = [[L], [], [1, 1, 3, 100, 1], [L // 2, L // 2], [1] * 50, [300] * 13, [L - 1, 1], [1000, 7]]
    return [
        dict(layout="1d", tokens=T, row_len=L, median=150, heads=H, kv=H, dim=D, causal=True, window=None),
        dict(layout="rows", tokens=T, row_len=L, median=400, heads=H, kv=H, dim=D, causal=True, window=256),
        dict(layout="1d", tokens=T, row_len=L, median=1500, heads=H, kv=H, dim=D, causal=False, window=100),
        dict(layout="rows", tokens=T, row_len=L, median=0, heads=H, kv=H, dim=D, causal=True, window=None,
             special=special[: T // L]),
        # GQA, a length that is no multiple of 128, bidirectional
        dict(layout="1d", tokens=3000 * T // 32768, row_len=1000 * T // 32768, median=120 * T // 32768 or 4,
             heads=H // 2, kv=H // 8 or 1, dim=D, causal=False, window=None),
        dict(layout="rows", tokens=T // 8, row_len=L // 4, median=200 * T // 32768 or 8, heads=H // 2, kv=H // 4,
             dim=D, causal=True, window=128 * T // 32768 or 4),
    ]


@part
def correctness():
    from seqpack.attention import BACKENDS, backend_support, prepare, varlen_attention
    rng = np.random.default_rng(0)
    flat = lambda t: t.reshape(-1, *t.shape[-2:])  # noqa: E731
    rows = []
    for ci, c in enumerate(correctness_cases()):
        if ci >= 4 and not have(40, f"correctness case {ci}"):
            continue
        b = batch_boundaries(rng, c["layout"], c["tokens"], c["row_len"], c["median"], c.get("special"))
        cu = b.cu_seqlens.tolist()
        ctx = prepare(b, device=Cfg.device, causal=c["causal"], window=c["window"])
        g = torch.Generator(device=Cfg.device).manual_seed(ci)
        shape = tuple(b.shape)
        mk = lambda h: torch.randn(*shape, h, c["dim"], device=Cfg.device, generator=g).bfloat16()  # noqa: E731
        q0, k0, v0 = mk(c["heads"]), mk(c["kv"]), mk(c["kv"])
        dout = torch.randn(q0.shape, device=Cfg.device, generator=g).bfloat16()
        with torch.enable_grad():
            want = reference_fp32(flat(q0), flat(k0), flat(v0), flat(dout), cu, c["causal"], c["window"])
        grad_inputs = lambda: tuple(x.clone().requires_grad_() for x in (q0, k0, v0))  # noqa: E731
        support = backend_support(*grad_inputs(), ctx, causal=c["causal"], window=c["window"])
        # the document whose inputs the isolation check replaces
        s, e = next((s, e) for s, e in zip(cu[1:-1], cu[2:]) if e - s > 1)
        for name in BACKENDS:
            if name == "eager" or (name in EXPERIMENTAL and ci not in EXPERIMENTAL[name]):
                continue
            row = {"case": ci, "backend": name, **{k: v for k, v in c.items() if k != "special"}}
            if support[name] is not None:
                row["skipped"] = support[name]
                rows.append(row)
                continue
            try:
                q, k, v = grad_inputs()
                out = varlen_attention(q, k, v, ctx, causal=c["causal"], window=c["window"], backend=name)
                out.backward(dout)
                got = (flat(out), flat(q.grad), flat(k.grad), flat(v.grad))
                errs = {n: rel(a, w) for n, a, w in zip(("out", "dq", "dk", "dv"), got, want)}
                row.update(errs)
                row["nan"] = any(bool(torch.isnan(a).any()) for a in got)
                # Isolation, forward only (inputs still require grad: the same compiled graph).
                q2, k2, v2 = (flat(x).clone() for x in (q0, k0, v0))
                for x in (q2, k2, v2):
                    x[s:e] = torch.randn(x[s:e].shape, device=Cfg.device, generator=g).bfloat16()
                q2, k2, v2 = (x.reshape(y.shape).requires_grad_() for x, y in zip((q2, k2, v2), (q0, k0, v0)))
                o2 = flat(varlen_attention(q2, k2, v2, ctx, causal=c["causal"], window=c["window"], backend=name))
                keep = torch.ones(o2.shape[0], dtype=torch.bool, device=Cfg.device)
                keep[s:e] = False
                row["isolation_max_diff"] = float((got[0][keep].float() - o2[keep].float()).abs().max())
                row["pass"] = max(errs.values()) <= TOL and not row["nan"] and row["isolation_max_diff"] <= 1e-6
            except Exception as ex:
                row.update(error=f"{type(ex).__name__}: {ex}"[:500], crashed=True, **{"pass": False})
            rows.append(row)
            log(f"case {ci} {name:>20}: " + (
                row["error"] if "error" in row else
                f"out {row['out']:.1e} dq {row['dq']:.1e} dk {row['dk']:.1e} dv {row['dv']:.1e} "
                f"isolation {row['isolation_max_diff']} pass={row['pass']}"))
        RESULTS["correctness"] = rows
        save()
        del want
        torch.cuda.empty_cache() if Cfg.device == "cuda" else None


def drop_wrong_backends():
    """A backend that computed a wrong answer must not be timed into the table auto reads.
    One that crashed on some case is kept (the crash is reported; calls fail loudly)."""
    from seqpack.attention import BACKENDS
    failed = sorted({r["backend"] for r in RESULTS.get("correctness", [])
                     if r.get("pass") is False and not r.get("crashed")})
    for name in failed:
        BACKENDS.pop(name, None)
    RESULTS["removed_after_correctness"] = failed
    if failed:
        log(f"removed after a wrong answer: {failed}")


@part
def calibration(medians):
    from seqpack.attention import BACKENDS
    from seqpack.attention.bench import _match_of, calibrate
    from seqpack.attention.select import register_table
    names = [n for n in BACKENDS if n != "eager"]
    table = calibrate(Cfg.device, tokens=Cfg.tokens, row_len=Cfg.row_len, heads=Cfg.heads, kv_heads=Cfg.heads,
                      head_dim=Cfg.head_dim, dtype=torch.bfloat16, medians=medians, layouts=("rows", "1d"),
                      modes=("fwd_bwd",), backends=names, warmup_ms=25, rep_ms=Cfg.rep_ms, log=log)
    path = OUT / f"{_match_of(table['device']).lower()}.json"
    path.write_text(json.dumps(table, indent=1) + "\n")
    register_table(table)
    RESULTS["calibration_file"] = str(path)
    RESULTS["calibration"] = table
    log(f"wrote {path}")


@part
def auto_timing():
    from seqpack.attention import BACKENDS, choose_backend, prepare
    from seqpack.attention.bench import _inputs, make_boundaries, sample_rows, time_backend
    rows = []
    H, D = Cfg.heads, Cfg.head_dim
    hide = registered(FA + tuple(EXPERIMENTAL))
    for dist, median in DISTS.items():
        # Fresh batches (the calibration drew seed = median): auto must generalise off the grid.
        rs = sample_rows(np.random.default_rng(1000 + int(median)), median, Cfg.tokens, Cfg.row_len)
        for layout in ("rows", "1d"):
            ctx = prepare(make_boundaries(rs, Cfg.row_len, layout), device=Cfg.device)
            q, k, v = _inputs(ctx.boundaries, H, H, D, torch.bfloat16, Cfg.device, True)
            # Every plausible winner on this very batch (the dense and nested paths never are).
            same = {}
            for name in registered(FA + ("torch_varlen", "flex", "triton_varlen")):
                ms, _ = time_backend(name, ctx, H, H, D, torch.bfloat16, "fwd_bwd", rep_ms=Cfg.rep_ms)
                if ms:
                    same[name] = ms
            exp = {n: BACKENDS.pop(n) for n in registered(tuple(EXPERIMENTAL))}
            try:
                row = {"dist": dist, "layout": layout, "same_batch_ms": same,
                       "auto_choice": choose_backend(q, k, v, ctx)}
                row["auto_ms"], row["auto_error"] = time_backend("auto", ctx, H, H, D, torch.bfloat16, "fwd_bwd",
                                                                 rep_ms=Cfg.rep_ms)
            finally:
                BACKENDS.update(exp)
            if registered(["triton_varlen"]):  # what auto would give with our kernel registered
                row["auto_with_triton_choice"] = choose_backend(q, k, v, ctx)
                row["auto_with_triton_ms"], _ = time_backend("auto", ctx, H, H, D, torch.bfloat16, "fwd_bwd",
                                                             rep_ms=Cfg.rep_ms)
                # Run 2 measured auto -> triton_varlen at 1.75 ms where the kernel alone took 1.36 ms
                # on the same batch: time it alone again (the spread), and the host time per call
                # of each (a call is host-bound when that reaches its GPU time).
                row["triton_again_ms"], _ = time_backend("triton_varlen", ctx, H, H, D, torch.bfloat16, "fwd_bwd",
                                                         rep_ms=Cfg.rep_ms)
            if Cfg.device == "cuda":
                row["host_ms"] = {n: host_ms(n, ctx) for n in list(same) + ["auto"]}
            hidden = {n: BACKENDS.pop(n) for n in hide}
            try:
                row["auto_torch_only_choice"] = choose_backend(q, k, v, ctx)
                row["auto_torch_only_ms"], _ = time_backend("auto", ctx, H, H, D, torch.bfloat16, "fwd_bwd",
                                                            rep_ms=Cfg.rep_ms)
            finally:
                BACKENDS.update(hidden)
            rows.append(row)
            log(f"auto {dist:>5} {layout:>4}: {row}")
    RESULTS["auto"] = rows


def host_ms(name: str, ctx, n: int = 20) -> float | None:
    """CPU milliseconds to enqueue one fwd+bwd call (no sync in the loop; 20 calls stay far
    below the launch queue's depth): a call is host-bound when this reaches its GPU time."""
    from seqpack.attention import varlen_attention
    from seqpack.attention.bench import _inputs
    b = ctx.boundaries
    q, k, v = _inputs(b, Cfg.heads, Cfg.heads, Cfg.head_dim, torch.bfloat16, b.device, True)
    dout = torch.randn_like(q)

    def fn():
        for x in (q, k, v):
            x.grad = None
        varlen_attention(q, k, v, ctx, backend=name).backward(dout)
    try:
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        ms = (time.perf_counter() - t0) * 1e3 / n
        torch.cuda.synchronize()
        return round(ms, 4)
    except Exception:
        return None


@part
def blockmask_timing():
    from seqpack.attention.bench import make_boundaries, sample_rows
    from seqpack.attention.blockmask import build_block_mask
    rows = []
    for dist, median in DISTS.items():
        rs = sample_rows(np.random.default_rng(int(median)), median, Cfg.tokens, Cfg.row_len)
        for layout in ("rows", "1d"):
            b = make_boundaries(rs, Cfg.row_len, layout).to(Cfg.device)
            row = {"dist": dist, "layout": layout, "docs": sum(map(len, rs))}
            row["ours_eager_ms"] = bench_ms(lambda: build_block_mask(b, impl="eager"))
            if Cfg.device != "cuda":  # the smoke run stops here: the rest compiles (minutes on a CPU)
                rows.append(row)
                continue
            row["ours_compiled_ms"] = bench_ms(lambda: build_block_mask(b, impl="compiled"))
            try:
                row["ours_triton_ms"] = bench_ms(lambda: build_block_mask(b, impl="triton"))
                ref, got = build_block_mask(b, impl="eager"), build_block_mask(b, impl="triton")
                row["triton_tables_equal"] = all(
                    torch.equal(getattr(ref, n).int(), getattr(got, n).int())
                    for n in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                              "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"))
            except Exception as e:
                row["triton_error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            log(f"blockmask {dist:>5} {layout:>4}: {row}")
    RESULTS["blockmask"] = rows


class Block(torch.nn.Module):
    """Projections around two varlen_attention calls: full causal, and a sliding window."""

    def __init__(self, backend, heads, kv_heads, dim, window=256):
        super().__init__()
        self.backend, self.h, self.hkv, self.d, self.window = backend, heads, kv_heads, dim, window
        self.qkv = torch.nn.Linear(heads * dim, (heads + 2 * kv_heads) * dim, bias=False)
        self.o = torch.nn.Linear(heads * dim, heads * dim, bias=False)

    def forward(self, x, boundaries):
        from seqpack.attention import varlen_attention
        T = x.shape[0]
        q, k, v = self.qkv(x).view(T, -1, self.d).split([self.h, self.hkv, self.hkv], dim=1)
        y = varlen_attention(q, k, v, boundaries, backend=self.backend)
        if self.window:
            y = y + varlen_attention(q, k, v, boundaries, window=self.window, backend=self.backend)
        return self.o(y.reshape(T, -1))


def compile_one(name: str) -> dict:
    """3 batches of different layouts through a compiled Block; graph breaks, graphs, error."""
    from torch._dynamo.utils import counters

    from seqpack.attention import backend_support, prepare
    from seqpack.attention.bench import make_boundaries, sample_rows
    T, M, H, D = Cfg.tokens, Cfg.row_len, Cfg.heads, Cfg.head_dim
    max_docs = 512
    dev = Cfg.device
    plain = name.endswith("/plain-boundaries")
    backend = name.split("/")[0]
    row = {"backend": name}
    probe = torch.randn(T, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
    b0 = make_boundaries(sample_rows(np.random.default_rng(0), 300, T, M), M, "1d").static(max_docs).to(dev)
    window = 256 if T >= 32768 else 16
    if backend != "auto":
        why = backend_support(probe, probe, probe, b0).get(backend, "not registered")
        if why is not None:
            row["skipped"] = why
            return row
        w_why = backend_support(probe, probe, probe, b0, window=window).get(backend)
        if w_why is not None:
            window, row["note"] = None, f"no window: {w_why}"
    try:
        # Batches first: prepare() runs the (separately compiled) BlockMask builder, whose
        # graphs must not count as the model's.
        args = []
        for i, median in enumerate([150, 400, 1500]):
            rs = sample_rows(np.random.default_rng(100 + i), median * T // 32768 or 8, T, M)
            b = make_boundaries(rs, M, "1d").static(max_docs)
            args.append(b.to(dev) if plain else prepare(b, device=dev, window=[None, window]))
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = Block(backend, H, H, D, window=window).to(dev).bfloat16()
        compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=Cfg.compile_backend)
        seen = []
        t0 = time.time()
        for i, arg in enumerate(args):
            x = torch.randn(T, H * D, device=dev, dtype=torch.bfloat16, requires_grad=True)
            with torch._dynamo.config.patch(error_on_recompile=i > 0):
                y = compiled(x, arg)
                y.float().pow(2).mean().backward()
            seen.append((x, arg, y.detach()))
            if i == 0:
                row["first_call_s"] = round(time.time() - t0, 1)
        row["graph_breaks"] = sum(counters["graph_break"].values())
        row["unique_graphs"] = counters["stats"]["unique_graphs"]
        with torch.no_grad():
            row["rel_err_vs_eager_model"] = max(rel(y, model(x, arg)) for x, arg, y in seen)
        row["pass"] = row["graph_breaks"] == 0 and row["unique_graphs"] == 1 and row["rel_err_vs_eager_model"] < 2e-2
    except Exception as ex:
        row.update(error=f"{type(ex).__name__}: {ex}"[:800], **{"pass": False})
    return row


@part
def compile_check():
    rows = RESULTS.setdefault("compile", [])
    for name in registered(("torch_varlen",) + FA + ("flex", "sdpa_dense")) + ["auto"]:
        if not have(30, f"compile {name}"):
            rows.append({"backend": name, "skipped": "time budget"})
            continue
        row = compile_one(name)
        rows.append(row)
        log(f"compile {name:>22}: {row}")
        save()


@part
def experiments():
    from seqpack.attention import varlen_attention
    from seqpack.attention.base import AttentionContext
    from seqpack.attention.bench import make_boundaries, sample_rows
    from seqpack.attention.blockmask import build_block_mask
    from torch.nn.attention.flex_attention import create_block_mask
    ex = RESULTS.setdefault("experiments", {})
    H, D = Cfg.heads, Cfg.head_dim
    # 1. The stretch attempt (triton_varlen) is timed in the calibration with the others;
    #    here it gets its compile check. (flex on 64-token blocks, the first attempt, cannot
    #    compile its backward: inductor filters its default configs by divisibility with the
    #    sparse block before applying kernel_options; NoValidChoicesError on the H100.)
    if "triton_varlen" in registered(["triton_varlen"]) and have(40, "compile triton_varlen"):
        row = compile_one("triton_varlen")
        RESULTS.setdefault("compile", []).append(row)
        log(f"compile triton_varlen: {row}")
        save()
    if Cfg.device == "cuda" and have(40, "triton_varlen tile sweep"):
        try:
            ex["triton_tile_sweep"] = triton_tile_sweep()
        except Exception as e:
            ex["triton_tile_sweep_error"] = f"{type(e).__name__}: {e}"[:500]
        log(f"triton tile sweep: {ex.get('triton_tile_sweep', ex.get('triton_tile_sweep_error'))}")
        save()
    # 2. flex with plain boundaries under compile: the BlockMask is built inside the graph.
    if "flex" in registered(["flex"]) and have(60, "compile flex/plain-boundaries"):
        row = compile_one("flex/plain-boundaries")
        RESULTS.setdefault("compile", []).append(row)
        log(f"compile flex/plain-boundaries: {row}")
        save()
    if Cfg.device != "cuda":
        return
    # 3. narrow tables (bounded by max_seqlen): same flex output, construction time.
    rs = sample_rows(np.random.default_rng(150), 150, Cfg.tokens, Cfg.row_len)
    b = make_boundaries(rs, Cfg.row_len, "1d").to("cuda")
    if have(40, "narrow BlockMask"):
        try:
            q = torch.randn(Cfg.tokens, H, D, device="cuda", dtype=torch.bfloat16)
            full = AttentionContext(b, {(True, None): build_block_mask(b)})
            narrow = AttentionContext(b, {(True, None): build_block_mask(b, narrow=True)})
            d = (varlen_attention(q, q, q, full, backend="flex").float()
                 - varlen_attention(q, q, q, narrow, backend="flex").float()).abs().max()
            ex["narrow_max_diff"] = float(d)
            ex["narrow_build_ms"] = bench_ms(lambda: build_block_mask(b, narrow=True))
            ex["narrow_compiled_build_ms"] = bench_ms(lambda: build_block_mask(b, narrow=True, impl="compiled"))
        except Exception as e:
            ex["narrow_error"] = f"{type(e).__name__}: {e}"[:500]
        log(f"narrow: {ex.get('narrow_max_diff')}, {ex.get('narrow_build_ms')} ms, {ex.get('narrow_error')}")
    # 4. create_block_mask on the document mask, the baseline REFERENCE.md measured.
    for layout in ("rows", "1d"):
        if not have(30, f"create_block_mask {layout}"):
            continue
        bl = make_boundaries(rs, Cfg.row_len, layout).to("cuda")
        docs = bl.doc_ids().reshape(-1, bl.shape[-1]).contiguous()

        def doc_mask(bb, h, qi, ki):
            return (docs[bb, qi] == docs[bb, ki]) & (qi >= ki)
        B, N = docs.shape
        try:
            ex[f"create_block_mask_{layout}_ms"] = bench_ms(
                lambda: create_block_mask(doc_mask, B, None, N, N, device="cuda", _compile=True))
        except Exception as e:
            ex[f"create_block_mask_{layout}_error"] = f"{type(e).__name__}: {e}"[:300]
        log(f"create_block_mask {layout}: {ex.get(f'create_block_mask_{layout}_ms')}")


def triton_tile_sweep() -> list[dict]:
    """Every tile configuration of each Triton kernel checked alone (the others at their first
    configuration) against the fp32 reference, on 4096 tokens of short documents: which
    configurations the autotuner may pick safely."""
    from seqpack.attention import triton_varlen as tv
    from seqpack.attention.base import left_right_reach
    rng = np.random.default_rng(7)
    b = batch_boundaries(rng, "1d", 4096, 1024, 150).to("cuda")
    cu = b.cu_seqlens.tolist()
    g = torch.Generator(device="cuda").manual_seed(7)
    q, k, v, do = (torch.randn(4096, 8, 128, device="cuda", generator=g).bfloat16() for _ in range(4))
    with torch.enable_grad():
        want = reference_fp32(q, k, v, do, cu, True, None)
    left, right = left_right_reach(True, None, b.max_seqlen)
    scale = 1 / math.sqrt(128)
    rows = []
    for kind, configs in (("fwd", tv.FWD_CONFIGS), ("dkdv", tv.DKDV_CONFIGS), ("dq", tv.DQ_CONFIGS)):
        for c in configs:
            fwd = c if kind == "fwd" else tv.FWD_CONFIGS[0]
            bwd = (c if kind == "dkdv" else tv.DKDV_CONFIGS[0], c if kind == "dq" else tv.DQ_CONFIGS[0])
            o, lse = tv.varlen_fwd(q, k, v, b.cu_seqlens, scale, left, right, blocks=fwd)
            dq, dk, dv = tv.varlen_bwd(do, q, k, v, o, lse, b.cu_seqlens, scale, left, right, blocks=bwd)
            errs = {n: rel(a, w) for n, a, w in zip(("out", "dq", "dk", "dv"), (o, dq, dk, dv), want)}
            rows.append({"kernel": kind, "config": c, **{n: round(e, 5) for n, e in errs.items()}})
    return rows


def summary():
    lines = []
    table = RESULTS.get("calibration") or {}
    by = {(e["median"], e["layout"]): e for e in table.get("entries", []) if e["mode"] == "fwd_bwd"}
    autos = {(r["dist"], r["layout"]): r for r in RESULTS.get("auto", [])}
    H, D = Cfg.heads, Cfg.head_dim
    lines.append(f"fwd+bwd ms (useful TFLOP/s), {H}x{D} bf16, {Cfg.tokens} tokens, rows of {Cfg.row_len} or 1D")
    for dist, median in DISTS.items():
        for layout in ("rows", "1d"):
            e = by.get((median, layout))
            if not e or not e["ms"]:
                continue
            flops = 4 * H * D * e["useful_pairs"] * 3.5
            cells = sorted(e["ms"].items(), key=lambda x: x[1])
            best_name, best = cells[0]
            lines.append(f"{dist:>5} {layout:>4} docs={e['docs']:>3}: " +
                         "  ".join(f"{n} {ms:.2f} ({flops / ms / 1e9:.0f})" for n, ms in cells))
            a = autos.get((dist, layout), {})
            if a.get("auto_with_triton_ms"):
                again = a.get("triton_again_ms")
                lines.append(f"      auto with triton_varlen registered -> {a['auto_with_triton_choice']} "
                             f"{a['auto_with_triton_ms']:.2f} ms (triton_varlen alone "
                             f"{a['same_batch_ms'].get('triton_varlen', float('nan')):.2f}, again "
                             f"{again or float('nan'):.2f})")
            if a.get("host_ms"):
                lines.append("      host ms per call: " + "  ".join(
                    f"{n} {ms:.2f}" for n, ms in a["host_ms"].items() if ms is not None))
            if a.get("auto_ms"):
                # against the backends timed on the same (fresh) batch as auto
                same = {n: ms for n, ms in a.get("same_batch_ms", {}).items() if n != "triton_varlen"} or e["ms"]
                best_name = min(same, key=same.get)
                pt = [same[n] for n in ("flex", "torch_varlen") if n in same]
                to = a.get("auto_torch_only_ms")
                lines.append(f"      fresh batch: auto -> {a['auto_choice']} {a['auto_ms']:.2f} ms = "
                             f"{same[best_name] / a['auto_ms']:.3f}x best ({best_name} {same[best_name]:.2f}); "
                             f"without FA: {a.get('auto_torch_only_choice')} {to or float('nan'):.2f} ms = "
                             f"{(min(pt) / to) if pt and to else float('nan'):.3f}x the better of flex/varlen")
    for r in RESULTS.get("blockmask", []):
        lines.append(f"blockmask {r['dist']:>5} {r['layout']:>4} ({r['docs']} docs): triton "
                     f"{r.get('ours_triton_ms', float('nan')):.3f} ms (tables equal: {r.get('triton_tables_equal')}), "
                     f"compiled {r.get('ours_compiled_ms', float('nan')):.3f} ms, eager {r['ours_eager_ms']:.3f} ms")
    ex = RESULTS.get("experiments", {})
    bad_tiles = [(r["kernel"], r["config"]) for r in ex.get("triton_tile_sweep", [])
                 if max(r[n] for n in ("out", "dq", "dk", "dv")) > TOL]
    if "triton_tile_sweep" in ex:
        lines.append(f"triton_varlen tile configs over {TOL}: {bad_tiles or 'none'}")
    for k in ("narrow_max_diff", "narrow_build_ms", "create_block_mask_rows_ms", "create_block_mask_1d_ms"):
        if k in ex:
            lines.append(f"{k}: {ex[k]:.4g}")
    corr = RESULTS.get("correctness", [])
    bad = sorted({f"{r['backend']}#{r['case']}" for r in corr if r.get("pass") is False})
    ok = sorted({r["backend"] for r in corr if r.get("pass")} - {r["backend"] for r in corr if r.get("pass") is False})
    worst = max((max(r[n] for n in ("out", "dq", "dk", "dv")) for r in corr if "out" in r), default=float("nan"))
    lines.append(f"correctness (<= {TOL} out+grads, isolation): all pass {ok}; FAIL {bad or 'none'}; worst {worst:.1e}")
    lines.append("compile fullgraph, dynamic=False, 3 layouts: " + ", ".join(
        f"{r['backend']}={'ok' if r.get('pass') else ('skip' if 'skipped' in r else 'FAIL')}"
        for r in RESULTS.get("compile", [])))
    if RESULTS.get("removed_after_correctness"):
        lines.append(f"removed (wrong answers): {RESULTS['removed_after_correctness']}")
    if RESULTS["skipped_for_time"]:
        lines.append(f"skipped for time: {RESULTS['skipped_for_time']}")
    if RESULTS["errors"]:
        lines.append(f"part errors: {RESULTS['errors']}")
    lines.append(f"total {elapsed():.0f} s; results in {OUT}")
    RESULTS["summary"] = lines
    save()
    print("\n".join(lines), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--medians", default="48,150,400,1500", help="calibration grid (median document lengths)")
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument("--budget-s", type=float, default=330.0, help="optional work stops being started after this")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: correctness,calibration,auto,"
                                                "blockmask,compile,experiments")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks this script, measures nothing")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    Cfg.budget_s, Cfg.rep_ms = args.budget_s, args.rep_ms
    if args.smoke:
        global DISTS
        Cfg.device, Cfg.tokens, Cfg.row_len, Cfg.heads, Cfg.head_dim = "cpu", 1024, 256, 8, 16
        Cfg.compile_backend, Cfg.rep_ms = "aot_eager", 5.0
        args.medians, DISTS = "16,48", {"short": 16, "sft": 48}
    elif not torch.cuda.is_available():
        print("no CUDA device (use --smoke to check the script on a CPU)", flush=True)
        return 1
    from seqpack.attention import register_backend
    from seqpack.bench.triton_varlen import TritonVarlen
    # The stretch attempt, not registered by seqpack itself: our Triton kernel tiling the
    # flat buffer (several short documents per tile).
    register_backend(TritonVarlen())
    env()
    if "correctness" not in skip:
        correctness()
        drop_wrong_backends()
    if "calibration" not in skip:
        calibration([int(x) for x in args.medians.split(",")])
    if "auto" not in skip:
        auto_timing()
    if "blockmask" not in skip:
        blockmask_timing()
    if "compile" not in skip:
        compile_check()
    if "experiments" not in skip:
        experiments()
    summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
