"""Benchmark the packing planner, and compare it side by side with TRL's pack_dataset.

    seqpack bench plan                                   # 10M docs; TRL at 100k and 1M if installed
    seqpack bench plan --docs 1000000 --trl-docs 100000  # (= python benchmarks/bench_plan.py ...)

Lengths are log-normal like SFT data: median 400 tokens, sigma 1.03 so that p90 is ~1,500
(and ~1.2% of documents exceed 4,096). Times are wall clock on one core (numba kernels are
single-threaded): the median of --repeats runs after a warm-up call.

TRL's bfd packs *and* moves tokens (it returns packed input_ids), while plan_packing only
plans. So next to TRL we also time "plan + gather": plan_packing followed by a numba gather
of the token ids into packed rows (values + row offsets, the same layout as TRL's arrow
list column) in a reused buffer. That is the like-for-like figure; plan-only is shown too.

TRL runs inside `datasets.map` in batches of 1,000 rows (its default), so it never packs
across batches; seqpack packs globally. `seqpack window=1000` shows seqpack restricted the
same way. TRL "bfd" truncates documents longer than seq_length, so it is compared with
overflow="truncate"; TRL "bfd_split" with overflow="split".
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from seqpack.plan import plan_packing


def sft_lengths(n, seed=0, median=400, sigma=1.03):
    rng = np.random.default_rng(seed)
    return np.maximum(1, np.rint(rng.lognormal(np.log(median), sigma, n))).astype(np.int64)


def timed(fn, repeats, cpu=False):
    """(median wall seconds, last result) over `repeats` calls; with cpu=True also the
    median CPU seconds of this process, which other jobs on a shared machine disturb less."""
    wall, proc = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t0)
        proc.append(time.process_time() - c0)
    if cpu:
        return statistics.median(wall), statistics.median(proc), out
    return statistics.median(wall), out


def cold_compile_seconds(strategy, overflow):
    """First call in a fresh process with an empty numba cache: the full JIT cost."""
    code = ("import time; t = time.perf_counter(); from seqpack.plan import plan_packing; "
            f"plan_packing([5, 3, 9, 0, 2], 4, strategy={strategy!r}, overflow={overflow!r}); "
            "print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
    return float(out.stdout.strip())


def cached_first_call_seconds(strategy, overflow):
    """First call in a fresh process that finds the kernels in numba's on-disk cache."""
    code = ("import time; t = time.perf_counter(); from seqpack.plan import plan_packing; "
            f"plan_packing([5, 3, 9, 0, 2], 4, strategy={strategy!r}, overflow={overflow!r}); "
            "print(time.perf_counter() - t)")
    for _ in range(2):  # the first run may have to write the cache
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
    return float(out.stdout.strip())


def gather_kernel():
    import numba

    @numba.njit(cache=True)
    def gather(values, doc_offsets, doc, start, stop, out):
        k = 0
        for i in range(doc.shape[0]):
            s = doc_offsets[doc[i]]
            n = stop[i] - start[i]
            out[k:k + n] = values[s + start[i]:s + stop[i]]
            k += n

    return gather


def plan_and_gather(values, doc_offsets, lengths, capacity, gather, out, **kwargs):
    """Plan, then copy token ids into packed rows: (values out[:T], row offsets (rows+1,)).
    `out` is a buffer reused across calls, as a loader would: on this VM first-touching
    gigabytes of fresh memory costs seconds and varies from run to run."""
    plan = plan_packing(lengths, capacity, **kwargs)
    out = out[:plan.placed_tokens]
    gather(values, doc_offsets, plan.doc, plan.start, plan.stop, out)
    cum = np.zeros(plan.num_pieces + 1, np.int64)
    np.cumsum(plan.stop - plan.start, out=cum[1:])
    return plan, out, cum[plan.bin_offsets]


def fmt_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).rjust(w) for x, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def bench_strategies(lengths, capacity, repeats, compile_times=True):
    print(f"\n## seqpack plan_packing, {len(lengths):,} docs, capacity {capacity:,}, "
          f"overflow='split'\n")
    lower = -(-int(lengths.sum()) // capacity)
    rows = []
    for strategy in ("bfd", "ffd", "nextfit", "wrapped"):
        cold = f"{cold_compile_seconds(strategy, 'split'):.2f}" if compile_times else "-"
        cached = f"{cached_first_call_seconds(strategy, 'split'):.2f}" if compile_times else "-"
        plan_packing(lengths[:1000], capacity, strategy=strategy, overflow="split")  # warm-up
        seconds, cpu, plan = timed(lambda: plan_packing(lengths, capacity, strategy=strategy,
                                                        overflow="split"), repeats, cpu=True)
        rows.append([strategy, f"{len(lengths):,}", f"{plan.num_bins:,}",
                     f"{100 * plan.efficiency:.3f}", f"{lower:,}", f"{seconds:.3f}",
                     f"{cpu:.3f}", f"{len(lengths) / seconds / 1e6:.1f}", cold, cached])
        del plan
    print(fmt_table(["strategy", "docs", "bins", "fill %", "lower bound bins", "seconds",
                     "cpu s", "M docs/s", "compile s (cold)", "first call s (cached)"], rows))


def bench_trl(lengths_all, sizes, capacity, repeats):
    try:
        import datasets
        import pyarrow as pa
        import pyarrow.compute as pc
        import trl
        from trl.data_utils import pack_dataset
    except ImportError as e:
        print(f"\n## TRL comparison skipped: {e} (install trl and datasets to run it)")
        return
    datasets.disable_progress_bars()
    gather = gather_kernel()
    print(f"\n## side by side with TRL {trl.__version__} pack_dataset "
          f"(datasets {datasets.__version__}), capacity {capacity:,}\n")
    rows = []
    for n in sizes:
        lengths = lengths_all[:n]
        doc_offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=doc_offsets[1:])
        values = np.arange(doc_offsets[-1], dtype=np.int32)  # token ids: any int32 will do
        # list<int32> as tokenized datasets have it (large_list past 2**31 tokens)
        if doc_offsets[-1] < 2**31:
            column = pa.ListArray.from_arrays(doc_offsets.astype(np.int32), values)
        else:
            column = pa.LargeListArray.from_arrays(doc_offsets, values)
        dataset = datasets.Dataset(pa.table({"input_ids": column}))
        out = np.empty_like(values)
        out.fill(0)  # touch the pages once, outside the timings
        plan_and_gather(values[:doc_offsets[10]], doc_offsets[:11], lengths[:10], capacity,
                        gather, out)  # JIT warm-up
        trl_repeats = repeats if n <= 200_000 else 1  # TRL at 1M takes a while
        for trl_strategy, overflow in (("bfd", "truncate"), ("bfd_split", "split")):
            seconds, cpu, packed = timed(lambda: pack_dataset(dataset, seq_length=capacity,
                                                              strategy=trl_strategy),
                                         trl_repeats, cpu=True)
            table = packed.data.table
            tokens = pc.sum(pc.list_value_length(table["input_ids"])).as_py()
            trl_fill = tokens / (len(packed) * capacity)  # as TRL users measure it
            rows.append([f"TRL {trl_strategy}", f"{n:,}", f"{len(packed):,}",
                         f"{100 * trl_fill:.3f}", f"{seconds:.3f}", f"{cpu:.3f}",
                         f"{n / seconds:,.0f}", "1", "1"])
            del packed, table
            for label, kwargs in ((f"seqpack bfd {overflow}", {}),
                                  (f"seqpack bfd {overflow} window=1000", {"window": 1000})):
                kwargs = dict(kwargs, overflow=overflow)
                s_plan, c_plan, plan = timed(lambda: plan_packing(lengths, capacity, **kwargs),
                                             repeats, cpu=True)
                s_all, c_all, _ = timed(lambda: plan_and_gather(values, doc_offsets, lengths,
                                                                capacity, gather, out, **kwargs),
                                        repeats, cpu=True)
                for what, s, c in (("plan + gather", s_all, c_all), ("plan only", s_plan, c_plan)):
                    rows.append([f"{label}, {what}", f"{n:,}", f"{plan.num_bins:,}",
                                 f"{100 * plan.efficiency:.3f}", f"{s:.3f}", f"{c:.3f}",
                                 f"{n / s:,.0f}", f"{seconds / s:,.0f}", f"{cpu / c:,.0f}"])
        del dataset, column, values, out
    print(fmt_table(["packer", "docs", "rows", "fill %", "seconds", "cpu s", "docs/s",
                     "x TRL (wall)", "x TRL (cpu)"], rows))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", type=int, default=10_000_000)
    parser.add_argument("--trl-docs", type=str, default="100000,1000000",
                        help="comma-separated sizes for the TRL comparison; empty to skip")
    parser.add_argument("--capacity", type=int, default=4096)
    parser.add_argument("--sigma", type=float, default=1.03)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile-times", action="store_true",
                        help="skip the cold-compile and cached-first-call columns (fresh processes)")


def run(args: argparse.Namespace) -> int:
    import numba
    sizes = [int(x) for x in args.trl_docs.split(",") if x]
    lengths = sft_lengths(max([args.docs] + sizes), sigma=args.sigma)
    p50, p90, p99 = np.percentile(lengths[:args.docs], [50, 90, 99])
    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}")
    print(f"lengths: log-normal median 400, sigma {args.sigma}: p50 {p50:.0f}, p90 {p90:.0f}, "
          f"p99 {p99:.0f}, mean {lengths[:args.docs].mean():.0f}, "
          f"{100 * np.mean(lengths[:args.docs] > args.capacity):.2f}% over capacity")
    bench_strategies(lengths[:args.docs], args.capacity, args.repeats,
                     compile_times=not getattr(args, "no_compile_times", False))
    if sizes:
        bench_trl(lengths, sizes, args.capacity, args.repeats)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
