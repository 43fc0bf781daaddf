"""The PNG report of a packing run: length histogram, documents per row, the first rows drawn.

Rendered with matplotlib's Agg backend and no timestamp in the PNG metadata, so the same
run gives the same bytes; the PNG's ``Software`` text is ``seqpack``, which is how a later
run knows the file is its own to replace.
"""

from __future__ import annotations

import numpy as np

__all__ = ["write_report", "draw_rows"]


def draw_rows(row_piece_lengths: list[np.ndarray], capacity: int) -> np.ndarray:
    """An RGB image (rows, capacity, 3) of packed rows: one colour per document, padding grey."""
    import matplotlib

    # tab20 without its two greys, which would read as padding
    palette = [c for i, c in enumerate(matplotlib.colormaps["tab20"].colors) if i not in (14, 15)]
    img = np.empty((len(row_piece_lengths), capacity, 3), np.float32)
    img[:] = 0.85  # padding
    k = 0
    for r, lens in enumerate(row_piece_lengths):
        pos = 0
        for L in np.asarray(lens).tolist():
            img[r, pos:pos + L] = palette[k % len(palette)]
            pos += L
            k += 1
    return img


def write_report(path, lengths: np.ndarray, docs_per_row: np.ndarray, piece_lengths: np.ndarray,
                 bin_offsets: np.ndarray, capacity: int, *, rows: int = 32, title: str = "") -> None:
    """Three panels: document lengths (log count), documents per row, the first ``rows`` rows."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(12, 8), dpi=100)
    gs = fig.add_gridspec(2, 2, height_ratios=[1, 1.3])
    ax = fig.add_subplot(gs[0, 0])
    nz = lengths[lengths > 0]
    if nz.size:
        ax.hist(np.minimum(nz, 4 * capacity), bins=80, color="#4477aa", log=True)
    ax.axvline(capacity, color="#cc3311", lw=1, ls="--", label=f"capacity {capacity:,}")
    ax.set_xlabel("document length (tokens; longer than 4x capacity shown at 4x)")
    ax.set_ylabel("documents")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{lengths.size:,} documents, {int((lengths == 0).sum()):,} empty")

    ax = fig.add_subplot(gs[0, 1])
    if docs_per_row.size:
        top = int(docs_per_row.max())
        ax.hist(docs_per_row, bins=np.arange(0.5, top + 1.5, max(1, top // 60)), color="#228833", log=True)
    ax.set_xlabel("documents (pieces) per row")
    ax.set_ylabel("rows")
    ax.set_title(f"{docs_per_row.size:,} rows, {docs_per_row.mean() if docs_per_row.size else 0:.2f} docs/row")

    ax = fig.add_subplot(gs[1, :])
    n = min(rows, docs_per_row.size)
    row_lens = [piece_lengths[bin_offsets[r]:bin_offsets[r + 1]] for r in range(n)]
    if n:
        ax.imshow(draw_rows(row_lens, capacity), aspect="auto", interpolation="nearest",
                  extent=(0, capacity, n - 0.5, -0.5))
    ax.set_xlabel("token position (grey = padding)")
    ax.set_ylabel("row")
    ax.set_title(f"first {n} rows, one colour per document")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    # "Software: seqpack" marks the file as ours (a later run may replace it); no version or
    # date, so the same run gives the same bytes
    fig.savefig(path, format="png", metadata={"Software": "seqpack"})
