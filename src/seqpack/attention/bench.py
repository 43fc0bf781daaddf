"""``seqpack bench attention``: time every available backend, write the calibration table.

Notable:
- Batches are drawn like real fine-tuning data (docs/bench/attention.md): document lengths
  log-normal around a median (sigma 0.8), clipped to the row length, placed first-fit
  into rows of ``row_len`` tokens; the 1D layout holds the same documents back to back
  with the padding at the end. The calibration grid is a list of medians.
- A backend's time is the median of many runs (``triton.testing.do_bench`` on CUDA when
  Triton is there, CUDA events otherwise, a wall clock on CPU) with the BlockMask
  prepared once per batch, as a model would (its build time is reported separately).
- "Useful" FLOPs count only within-document pairs (causal: n (n + 1) / 2 per document),
  4 * H * D per pair forward, 3.5x that forward + backward.
- Before timing, the CLI checks every backend against the eager reference on a small batch
  of the device (``check_backend``): one that computes a wrong answer there (a kernel
  miscompiled for this GPU, say) is left out of the table, so auto never picks it.
- The table lands in the user cache (see `seqpack.attention.select`) and is used by
  ``backend="auto"`` from then on, in this process too.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from datetime import date

import numpy as np
import torch

from seqpack.boundaries import DocBoundaries

__all__ = ["sample_rows", "make_boundaries", "useful_pairs", "time_ms", "time_backend", "check_backend", "calibrate",
           "add_arguments", "run"]

# document length medians: SFT-like ~400, short ~150, long ~1500 (log-normal)
DISTRIBUTIONS = {"short": 150, "sft": 400, "long": 1500}
SIGMA = 0.8


# ----------------------------------------------------------------------------------------
# batches


def sample_rows(rng: np.random.Generator, median: float, tokens: int, row_len: int,
                sigma: float = SIGMA) -> list[list[int]]:
    """Document lengths placed first-fit into ``tokens // row_len`` rows of ``row_len``."""
    n_rows = max(tokens // row_len, 1)
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    room = np.full(n_rows, row_len)
    misses = 0
    while misses < 20 and room.max() > 0:
        n = int(np.clip(round(math.exp(rng.normal(math.log(median), sigma))), 1, row_len))
        fits = np.flatnonzero(room >= n)
        if fits.size == 0:
            misses += 1
            continue
        r = int(fits[0])
        rows[r].append(n)
        room[r] -= n
    return rows


def make_boundaries(rows: list[list[int]], row_len: int, layout: str) -> DocBoundaries:
    """Rows ``(B, row_len)`` or the same documents back to back in one buffer ``(B * row_len,)``."""
    if layout == "rows":
        return DocBoundaries.from_row_lengths(rows, row_len, max_seqlen=row_len)
    lens = [n for r in rows for n in r]
    return DocBoundaries.from_lengths(lens, len(rows) * row_len, max_seqlen=row_len)


def useful_pairs(lengths, causal: bool = True, window: int | None = None) -> int:
    """Within-document (query, key) pairs a kernel must compute."""
    total = 0
    for n in lengths:
        w = n if window is None else min(window, n)
        if causal:  # query i sees min(i + 1, w) keys
            total += w * (w + 1) // 2 + (n - w) * w
        else:
            total += sum(min(n, i + w) - max(0, i - w + 1) for i in range(n)) if window else n * n
    return total


def feature_of(b: DocBoundaries) -> float:
    """The auto feature: tokens per non-empty segment (as `prepare` measures it)."""
    return b.numel / max(int((b.seqlens > 0).sum()), 1)


# ----------------------------------------------------------------------------------------
# timing


def time_ms(fn, device: torch.device, warmup_ms: float = 25, rep_ms: float = 100, grad_to_none=None) -> float:
    """Median milliseconds per call of ``fn``."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
            return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, return_mode="median"))
        except ImportError:
            pass
        fn()
        torch.cuda.synchronize(device)
        times = []
        deadline = time.perf_counter() + rep_ms / 1e3
        while len(times) < 5 or time.perf_counter() < deadline:
            if grad_to_none:
                for t in grad_to_none:
                    t.grad = None
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)
    fn()  # warm-up (and compile)
    times = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 50):
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _inputs(b: DocBoundaries, heads: int, kv_heads: int, head_dim: int, dtype, device, grad: bool, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = tuple(b.shape)
    mk = lambda h: torch.randn(*shape, h, head_dim, generator=g).to(device=device, dtype=dtype).requires_grad_(grad)  # noqa: E731
    return mk(heads), mk(kv_heads), mk(kv_heads)


def time_backend(name: str, ctx, heads: int, kv_heads: int, head_dim: int, dtype, mode: str,
                 warmup_ms: float = 25, rep_ms: float = 100, causal: bool = True):
    """``(ms, None)`` or ``(None, reason)`` for one backend on one prepared batch."""
    from seqpack.attention.api import backend_support, varlen_attention

    b = ctx.boundaries
    grad = mode == "fwd_bwd"
    q, k, v = _inputs(b, heads, kv_heads, head_dim, dtype, b.device, grad)
    why = backend_support(q, k, v, ctx, causal=causal).get(name, "unknown backend") if name != "auto" else None
    if why is not None:
        return None, why
    dout = torch.randn_like(q)

    if grad:
        def fn():
            varlen_attention(q, k, v, ctx, causal=causal, backend=name).backward(dout)
    else:
        def fn():
            with torch.no_grad():
                varlen_attention(q, k, v, ctx, causal=causal, backend=name)
    try:
        return time_ms(fn, b.device, warmup_ms, rep_ms, grad_to_none=[q, k, v] if grad else None), None
    except Exception as e:  # a backend that fails at run time is reported, not fatal
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


CHECK_TOL = {torch.float16: 5e-3, torch.bfloat16: 5e-3, torch.float32: 1e-4, torch.float64: 1e-9}


def check_backend(name: str, device, *, heads: int, kv_heads: int, head_dim: int, dtype, max_seqlen: int,
                  seed: int = 0) -> str | None:
    """None if ``name`` agrees with the eager reference (fp32 math on fp32 copies of the same
    inputs) on a small batch on ``device``, forward and, where it has one, backward; else why
    not. Relative error bound: `CHECK_TOL` (5e-3 for fp16/bf16, the issue's bar). A backend
    that cannot run the call is not judged here (None): timing reports its refusal."""
    from seqpack.attention.api import backend_support, varlen_attention

    device = torch.device(device)
    m = max(min(max_seqlen, 512), 2)
    lens = [1, m // 4 + 3, m, 7, m // 2 + 1, 1]        # length 1, a full max_seqlen, odd sizes
    b = DocBoundaries.from_lengths(lens, sum(lens) + 5, max_seqlen=m).to(device)  # + a padding run
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda h: torch.randn(b.numel, h, head_dim, generator=g).to(device)  # noqa: E731
    q32, k32, v32 = mk(heads), mk(kv_heads), mk(kv_heads)
    dout32 = torch.randn(b.numel, heads, head_dim, generator=g).to(device)
    q, k, v, dout = (x.to(dtype) for x in (q32, k32, v32, dout32))
    grad = backend_support(*(x.clone().requires_grad_() for x in (q, k, v)), b).get(name) is None
    if not grad and backend_support(q, k, v, b).get(name) is not None:
        return None

    def run(backend, xs, do):
        xs = [x.clone().requires_grad_(grad) for x in xs]
        with torch.set_grad_enabled(grad):
            out = varlen_attention(*xs, b, backend=backend)
            if not grad:
                return [out]
            out.backward(do)
        return [out] + [x.grad for x in xs]

    try:
        got = run(name, (q, k, v), dout)
    except Exception as e:  # a crash is a refusal to trust it, with the reason
        return f"failed on a small check batch: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    ref = torch.float64 if dtype == torch.float64 else torch.float32
    want = run("eager", tuple(x.to(ref) for x in (q32, k32, v32)), dout32.to(ref))
    tol = CHECK_TOL.get(dtype, 5e-3)
    for what, a, w in zip(("out", "dq", "dk", "dv"), got, want):
        a, w = a.detach().double(), w.detach().double()
        err = float((a - w).norm() / w.norm().clamp_min(1e-12))
        if not err <= tol:  # also NaN
            return f"wrong answer vs the eager reference: {what} relative error {err:.1e} > {tol:.0e}"
    return None


def calibrate(device, *, tokens: int, row_len: int, heads: int, kv_heads: int, head_dim: int, dtype,
              medians, layouts=("rows", "1d"), modes=("fwd", "fwd_bwd"), backends=None, warmup_ms=25.0,
              rep_ms=100.0, seed: int = 0, log=print, check: bool = False) -> dict:
    """Time ``backends`` (default: every registered one but eager) over the grid; return the table.

    ``check``: first compare each backend with the eager reference (`check_backend`); one
    that disagrees is left out of every entry (``skipped`` says why), so auto never picks it.
    """
    from seqpack.attention.api import BACKENDS, prepare
    from seqpack.attention.select import SCHEMA, device_name

    device = torch.device(device)
    names = list(backends) if backends else [n for n in BACKENDS if n != "eager"]
    wrong = {}
    if check:
        for n in names:
            if n != "eager":
                why = check_backend(n, device, heads=heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype,
                                    max_seqlen=row_len, seed=seed)
                if why is not None:
                    wrong[n] = why
                    log(f"{n}: {why}; not timed")
    name = device_name(device)
    table = {
        "schema": SCHEMA, "device": name,
        "device_match": "cpu" if device.type == "cpu" else _match_of(name),
        "torch": torch.__version__, "date": date.today().isoformat(),
        "config": {"tokens": tokens, "row_len": row_len, "heads": heads, "kv_heads": kv_heads,
                   "head_dim": head_dim, "dtype": str(dtype).replace("torch.", ""), "causal": True, "sigma": SIGMA},
        "entries": [],
    }
    for median in medians:
        rows = sample_rows(np.random.default_rng(seed + int(median)), median, tokens, row_len)
        lens = [n for r in rows for n in r]
        pairs = useful_pairs(lens)
        for layout in layouts:
            b = make_boundaries(rows, row_len, layout)
            ctx = prepare(b, device=device)
            for mode in modes:
                entry = {"median": median, "layout": layout, "mode": mode, "mean_seqlen": round(feature_of(b), 2),
                         "docs": len(lens), "useful_tokens": int(sum(lens)), "useful_pairs": pairs,
                         "ms": {}, "skipped": {}}
                for n in names:
                    if n in wrong:
                        entry["skipped"][n] = wrong[n]
                        continue
                    ms, why = time_backend(n, ctx, heads, kv_heads, head_dim, dtype, mode, warmup_ms, rep_ms)
                    if ms is None:
                        entry["skipped"][n] = why
                    else:
                        entry["ms"][n] = round(ms, 4)
                log(f"median {median:>5} {layout:>4} {mode:>7}: " +
                    ", ".join(f"{n} {ms:.3f} ms" for n, ms in sorted(entry["ms"].items(), key=lambda x: x[1])))
                table["entries"].append(entry)
    return table


def _match_of(name: str) -> str:
    """The part of a device name a shipped table matches on ("NVIDIA H100 80GB HBM3" -> "H100")."""
    for tok in name.replace("-", " ").split():
        if any(c.isdigit() for c in tok) and any(c.isalpha() for c in tok) and not tok.upper().endswith("GB"):
            return tok
    return name


# ----------------------------------------------------------------------------------------
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per batch (default 32768 cuda, 4096 cpu)")
    p.add_argument("--row-len", type=int, default=None, help="row length = max_seqlen (default 4096 cuda, 1024 cpu)")
    p.add_argument("--heads", type=int, default=None, help="query heads (default 16 cuda, 4 cpu)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default = heads)")
    p.add_argument("--head-dim", type=int, default=None, help="head dim (default 128 cuda, 64 cpu)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="default bf16 cuda, fp32 cpu")
    p.add_argument("--medians", default=None, help="comma-separated median document lengths of the grid")
    p.add_argument("--layouts", default="rows,1d")
    p.add_argument("--modes", default="fwd,fwd_bwd")
    p.add_argument("--backends", default=None, help="comma-separated (default: all but eager)")
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=None, help="timing budget per measurement (default 100 cuda, 300 cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="where to write the table (default: the user cache, used by auto)")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check of each backend against the eager reference before timing it")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def run(args) -> int:
    from seqpack.attention.select import register_table, table_path

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if args.quick:
        defaults = dict(tokens=512, row_len=128, heads=2, head_dim=16, medians="8,32", rep_ms=5.0)
    elif cuda:
        defaults = dict(tokens=32768, row_len=4096, heads=16, head_dim=128, medians="48,150,400,1500", rep_ms=100.0)
    else:
        defaults = dict(tokens=4096, row_len=1024, heads=4, head_dim=64, medians="16,48,150,400", rep_ms=300.0)
    pick = lambda v, k: defaults[k] if v is None else v  # noqa: E731
    heads = pick(args.heads, "heads")
    dtype = _DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    table = calibrate(
        device, tokens=pick(args.tokens, "tokens"), row_len=pick(args.row_len, "row_len"), heads=heads,
        kv_heads=args.kv_heads or heads, head_dim=pick(args.head_dim, "head_dim"), dtype=dtype,
        medians=[float(x) if "." in x else int(x) for x in pick(args.medians, "medians").split(",")],
        layouts=args.layouts.split(","), modes=args.modes.split(","),
        backends=args.backends.split(",") if args.backends else None,
        warmup_ms=args.warmup_ms, rep_ms=pick(args.rep_ms, "rep_ms"), seed=args.seed, check=not args.no_check)
    if not args.no_write:
        from pathlib import Path
        out = Path(args.out) if args.out else table_path(table["device"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(table, indent=1) + "\n")
        register_table(table)
        print(f"wrote {out}")
    return 0
