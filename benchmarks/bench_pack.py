"""Benchmark `seqpack pack` end to end on synthetic SFT-like documents, pre-tokenized in Parquet.

    python benchmarks/bench_pack.py --docs 10000000 --workdir /tmp/seqpack-bench

Generates (once, cached in --workdir) ``docs`` documents whose lengths are log-normal with
median 400 tokens and sigma 0.86 (mean ~580: REFERENCE.md's "SFT-like", 56 documents per
32K tokens), clipped to [1, 8192]; 0.1% are empty. Token ids are skewed toward small ids
as in real text, so compression behaves realistically. Then runs ``seqpack pack`` under
``/usr/bin/time -v`` (falls back to resource.getrusage) and prints tokens/s and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MEDIAN, SIGMA, MAX_LEN = 400, 0.86, 8192


def sft_lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(MEDIAN), SIGMA, n), 1, MAX_LEN).astype(np.int64)
    lengths[rng.random(n) < 0.001] = 0
    return lengths


def write_input(path: Path, docs: int, seed: int = 0, rows_per_group: int = 65536) -> int:
    """Write the synthetic Parquet input; returns its token count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lengths = sft_lengths(docs, seed)
    rng = np.random.default_rng(seed + 1)
    tmp = path.with_suffix(".tmp")
    schema = pa.schema([("input_ids", pa.list_(pa.int32()))])
    with pq.ParquetWriter(tmp, schema, compression="zstd") as w:
        for a in range(0, docs, rows_per_group):
            lens = lengths[a:a + rows_per_group]
            offsets = np.zeros(lens.size + 1, np.int32)
            np.cumsum(lens, out=offsets[1:])
            ids = (rng.random(int(offsets[-1]), dtype=np.float32) ** 3 * 50257).astype(np.int32)
            w.write_table(pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))}))
    os.replace(tmp, path)
    return int(lengths.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=10_000_000)
    ap.add_argument("--capacity", type=int, default=4096)
    ap.add_argument("--strategy", default="bfd")
    ap.add_argument("--workdir", default="/tmp/seqpack-bench")
    ap.add_argument("--keep-output", action="store_true")
    ap.add_argument("--directory", action="store_true", help="write a directory of shards, not one file")
    args = ap.parse_args(argv)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    inp = work / f"sft-{args.docs}.parquet"
    if not inp.exists():
        t = time.perf_counter()
        n = write_input(inp, args.docs)
        print(f"wrote {inp} ({n:,} tokens, {inp.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f}s")
    tokens = int(sft_lengths(args.docs).sum())
    out = work / (f"packed-{args.docs}" + ("" if args.directory else ".parquet"))
    cmd = [sys.executable, "-m", "seqpack.cli", "pack", str(inp), "-o", str(out), "--capacity",
           str(args.capacity), "--strategy", args.strategy, "--overflow", "split", "--no-progress"]
    timer = ["/usr/bin/time", "-v"] if os.path.exists("/usr/bin/time") else []
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    proc = subprocess.run(timer + cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    sys.stderr.write(proc.stderr)
    if proc.returncode:
        return proc.returncode
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    peak_kb = int(m.group(1)) if m else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"\ndocuments:       {args.docs:,}")
    print(f"tokens:          {tokens:,}")
    print(f"wall time:       {wall:.1f} s (process start, imports and numba cache load included)")
    print(f"throughput:      {tokens / wall / 1e6:.2f}M tokens/s end to end (bar >= 5M)")
    print(f"peak RSS:        {peak_kb / 1024**2:.2f} GiB (bar <= 2 GB)")
    size = sum(f.stat().st_size for f in out.glob("*.parquet")) if out.is_dir() else out.stat().st_size
    m = re.search(r"User time \(seconds\): ([\d.]+)\s+System time \(seconds\): ([\d.]+)", proc.stderr)
    if m:
        cpu = float(m.group(1)) + float(m.group(2))
        print(f"CPU time:        {cpu:.0f} s user+sys ({cpu / wall:.2f} cores busy on average)")
    print(f"input size:      {inp.stat().st_size / 1e9:.2f} GB; output {size / 1e9:.2f} GB")
    if not args.keep_output:
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
