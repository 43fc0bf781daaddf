"""Benchmark online packing: CPU time per 32K-token batch, fill, and rank balance.

    python benchmarks/bench_data_online.py

SFT-like documents (log-normal lengths, median 400, sigma 0.86, clipped to [1, 8192], the
"SFT-like" distribution of docs/bench), pieces of at most 4096 tokens. For each layout, times
producing batches of 32,768 tokens (rows 8 x 4096, or one 1D buffer with a static
``max_num_docs``) with ``time.process_time`` (CPU time of the process, all threads), after
a warm-up that loads the numba kernels; mean, median and p90 over the batches. Then runs 2 and 8 simulated ranks over the same
stream and reports the per-step spread of tokens and of attention cost (sum of squared
document lengths) across ranks: (max - min) / mean, over every step but the last 3 (the
drain at the end of the stream) and over all steps.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from seqpack.batch import Documents
from seqpack.data.online import PackedIterableDataset


def sft_documents(n: int, seed: int = 0) -> Documents:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(400), 0.86, n), 1, 8192).astype(np.int64)
    tokens = (rng.random(int(lengths.sum()), dtype=np.float32) ** 3 * 50257).astype(np.int32)
    return Documents(tokens, np.concatenate([[0], np.cumsum(lengths)]))


LAYOUTS = {
    "rows 8x4096": dict(capacity=4096, batch_size=8, layout="rows"),
    "1d 32768, max_num_docs=256": dict(capacity=32768, batch_size=1, layout="1d", max_seqlen=4096, max_num_docs=256),
}


def time_batches(docs, batches: int, buffer_size: int, **kw):
    ds = PackedIterableDataset(docs, buffer_size=buffer_size, **kw)
    it = iter(ds)
    for _ in range(5):  # warm-up: numba kernels load from the cache
        next(it)
    real, times = 0, []
    for _ in range(batches):
        t = time.process_time()
        b = next(it)
        times.append(time.process_time() - t)
        real += int((b.doc_stop - b.doc_start).sum())
    return np.array(times), real / (batches * b.input_ids.numel())


def balance(docs, ranks: int, buffer_size: int, **kw):
    per = []
    for r in range(ranks):
        ds = PackedIterableDataset(docs, buffer_size=buffer_size, rank=r, world_size=ranks, **kw)
        per.append([(float((b.doc_stop - b.doc_start).sum()), float(((b.doc_stop - b.doc_start) ** 2).sum()))
                    for b in ds])
    assert len({len(p) for p in per}) == 1, "ranks disagree on the number of batches"
    a = np.array(per)
    spread = (a.max(0) - a.min(0)) / a.mean(0)
    return len(per[0]), spread[:-3].max(0), np.median(spread, 0), spread.max(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=40_000)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--buffer-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (DataLoader workers use 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    docs = sft_documents(args.docs)
    print(f"{args.docs:,} SFT-like documents, {int(docs.lengths.sum()):,} tokens, buffer {args.buffer_size}, "
          f"torch threads {args.threads}")
    print("\nCPU time per 32K-token batch (bar <= 2 ms):")
    for name, kw in LAYOUTS.items():
        t, fill = time_batches(docs, args.batches, args.buffer_size, **kw)
        print(f"  {name:<30} mean {t.mean() * 1e3:6.3f} ms, median {np.median(t) * 1e3:6.3f} ms, "
              f"p90 {np.quantile(t, 0.9) * 1e3:6.3f} ms   fill {100 * fill:.2f}%")
    print("\nrank balance per step, (max - min) / mean (bar <= 2%):")
    for ranks in (2, 8):
        for name, kw in LAYOUTS.items():
            n, body, med, worst = balance(docs, ranks, args.buffer_size, **kw)
            print(f"  {ranks} ranks, {name:<30} {n:4d} steps  tokens {100 * body[0]:.2f}% / attention "
                  f"{100 * body[1]:.2f}% (all but last 3 steps; median {100 * med[0]:.2f}% / "
                  f"{100 * med[1]:.2f}%; incl. drain {100 * worst[0]:.1f}% / {100 * worst[1]:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
