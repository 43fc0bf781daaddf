"""Fill on the bundled corpus (chitchat, GPT-2 BPE): offline global packing and online packing.

    python benchmarks/bench_data_fill.py

Offline: ``plan_packing`` over all 7,168 conversations at capacity 2048 (bar: bfd >= 99%),
for each strategy, with overflow="split" (conversations up to 25,601 tokens). Online: the
`PackedIterableDataset` at the same capacity, 8 rows per batch, for a few buffer sizes.
"""

from __future__ import annotations

import sys

import numpy as np

from seqpack.data.corpus import load_chitchat
from seqpack.data.online import PackedIterableDataset
from seqpack.plan import plan_packing


def main() -> int:
    docs = load_chitchat()
    L = docs.lengths
    print(f"chitchat: {L.size:,} conversations, {int(L.sum()):,} tokens, median {int(np.median(L))}, "
          f"max {int(L.max()):,}")
    print("\noffline (global plan), capacity 2048, overflow=split:")
    for strategy in ("bfd", "ffd", "nextfit", "wrapped"):
        p = plan_packing(L, 2048, strategy=strategy, overflow="split")
        print(f"  {strategy:<8} fill {100 * p.efficiency:6.2f}%  rows {p.num_bins:,}")
    print("\nonline, capacity 2048, 8 rows per batch, overflow=split:")
    for buffer_size in (64, 256, 1024):
        ds = PackedIterableDataset(docs, capacity=2048, batch_size=8, buffer_size=buffer_size)
        real = [b.boundaries.num_tokens() for b in ds]
        print(f"  buffer {buffer_size:5d}: fill {100 * sum(real) / (len(real) * 8 * 2048):6.2f}% over "
              f"{len(real)} batches ({100 * sum(real[:-3]) / ((len(real) - 3) * 8 * 2048):.2f}% without the last 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
