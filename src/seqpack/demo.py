"""``seqpack demo``: the bundled corpus packed every way, against padding.

Plans the bundled conversations (GPT-2 tokens) at one capacity with each strategy, prints
rows, fill, split/dropped tokens, documents per row and planning time next to padding to
the longest document in batches of 8, and draws the first packed rows.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

STRATEGIES = ("bfd", "ffd", "nextfit", "wrapped")


def padded_fill(lengths: np.ndarray, batch_size: int) -> tuple[int, float]:
    """Rows and fill when each batch (data order) is padded to its longest document."""
    n = lengths.size
    pad_to = -(-n // batch_size) * batch_size
    padded = np.zeros(pad_to, dtype=np.int64)
    padded[:n] = lengths
    longest = padded.reshape(-1, batch_size).max(axis=1)
    slots = longest * np.minimum(batch_size, n - np.arange(0, n, batch_size))
    return n, float(lengths.sum() / slots.sum())


def plan_table(lengths: np.ndarray, capacity: int, batch_size: int = 8):
    """One row per strategy (and padding): the figures the demo prints."""
    from seqpack.plan import plan_packing

    rows, plans = [], {}
    for strategy in STRATEGIES:
        plan_packing(lengths[:100], capacity, strategy=strategy, overflow="split")  # compile once
        t0 = time.perf_counter()
        plan = plan_packing(lengths, capacity, strategy=strategy, overflow="split")
        dt = time.perf_counter() - t0
        plans[strategy] = plan
        rows.append(dict(layout=f"packed {strategy}", rows=plan.num_bins, fill=plan.efficiency,
                         split=plan.split_docs, dropped=plan.dropped_tokens,
                         docs_per_row=plan.doc.size / max(plan.num_bins, 1), seconds=dt))
    # Padding baseline on the same pieces (long documents split at capacity, like the plans).
    pieces = plans["bfd"]
    order = np.argsort(pieces.doc, kind="stable")  # back to data order
    piece_lens = (pieces.stop - pieces.start)[order]
    t0 = time.perf_counter()
    n_rows, fill = padded_fill(piece_lens, batch_size)
    rows.append(dict(layout=f"padded (longest of {batch_size})", rows=n_rows, fill=fill,
                     split=pieces.split_docs, dropped=0,
                     docs_per_row=1.0, seconds=time.perf_counter() - t0))
    return rows, plans


def format_table(rows) -> str:
    head = f"{'layout':<26}{'rows':>8}{'fill %':>9}{'docs split':>12}{'dropped':>9}{'docs/row':>10}{'plan ms':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['layout']:<26}{r['rows']:>8,}{100 * r['fill']:>9.2f}{r['split']:>12,}"
                     f"{r['dropped']:>9,}{r['docs_per_row']:>10.2f}{1000 * r['seconds']:>9.1f}")
    return "\n".join(lines)


def draw_rows(plan, path: Path, num_rows: int = 24, title: str = "") -> Path:
    """PNG of the first rows: one colour per document piece, padding grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    num_rows = min(num_rows, plan.num_bins)
    cap = plan.capacity
    img = np.full((num_rows, cap), -1.0)
    for r in range(num_rows):
        lo, hi = plan.bin_offsets[r], plan.bin_offsets[r + 1]
        lens = plan.stop[lo:hi] - plan.start[lo:hi]
        ends = np.cumsum(lens)
        piece = np.repeat(np.arange(lens.size), lens)
        img[r, : ends[-1] if lens.size else 0] = piece % 20
    colours = plt.get_cmap("tab20").colors
    cmap = ListedColormap([(0.82, 0.82, 0.82)] + list(colours))
    fig, ax = plt.subplots(figsize=(10, 0.25 * num_rows + 1.2))
    ax.imshow(img + 1, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=20)
    ax.set_xlabel(f"token position (capacity {cap})")
    ax.set_ylabel("row")
    ax.set_title(title or f"first {num_rows} rows ({plan.strategy}): one colour per document, padding grey")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_arguments(parser) -> None:
    parser.add_argument("--capacity", type=int, default=2048, help="tokens per packed row")
    parser.add_argument("--batch-size", type=int, default=8, help="documents per padded batch (baseline)")
    parser.add_argument("--out", type=Path, default=Path("seqpack-demo"), help="output folder")


def run(args) -> int:
    from seqpack.data.corpus import load_chitchat

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    docs = load_chitchat()
    lengths = docs.lengths
    print(f"corpus: {len(docs):,} conversations, {int(lengths.sum()):,} GPT-2 tokens "
          f"(median {int(np.median(lengths))}, p90 {int(np.percentile(lengths, 90))}, max {int(lengths.max())}); "
          f"loaded in {time.perf_counter() - t0:.1f} s")
    rows, plans = plan_table(lengths, args.capacity, args.batch_size)
    print()
    print(format_table(rows))
    png = draw_rows(plans["bfd"], args.out / "packing.png")
    print(f"\npicture of the first rows: {png}")
    return 0
