"""``seqpack demo``: the main job on a laptop: pack the bundled corpus, prove the packed
step is exact, then train a tiny GPT padded, naive and packed on the same documents.

1. Planning: the bundled conversations (GPT-2 tokens) planned at one capacity with each
   strategy, next to padding to the longest document in batches of 8 (rows, fill,
   split/dropped tokens, documents per row, planning time), and a picture of the rows.
2. Equivalence: one packed batch's loss and gradients against the same documents run
   one by one (fp32), and the naive-packing loss that shows the leak.
3. Training: a tiny GPT for a few hundred steps in each mode on identical documents and
   labels; a table of useful tokens/s, fill, docs per row, wall time and final loss, and
   plots of loss vs step and vs wall time, throughput bars, the packing picture.

Sized for 2 CPU cores and about 3 minutes: the tokens are renumbered to the 2,048 most
frequent GPT-2 ids of the corpus (+1 unknown id; ``--vocab 0`` keeps all 50,257), so the
head does not dwarf a 2-layer model.
"""

from __future__ import annotations

import json
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


MODES = ("padded", "naive", "packed")


def format_train_table(results: dict) -> str:
    """Useful tokens/s, fill, docs per row, wall time, final loss per mode; speed-up vs padded."""
    head = (f"{'mode':<8}{'useful tok/s':>14}{'vs padded':>11}{'fill %':>8}{'docs/row':>10}"
            f"{'wall s':>8}{'final loss':>12}")
    lines = [head, "-" * len(head)]
    base = results.get("padded", {}).get("tok_s")
    for mode, r in results.items():
        ratio = f"{r['tok_s'] / base:.2f}x" if base else "-"
        lines.append(f"{mode:<8}{r['tok_s']:>14,.0f}{ratio:>11}{100 * r['fill']:>8.1f}{r['docs_per_row']:>10.2f}"
                     f"{r['wall']:>8.1f}{r['loss']:>12.4f}")
    return "\n".join(lines)


def plot_training(results: dict, out: Path) -> list[Path]:
    """loss.png (vs step, vs wall time) and throughput.png (useful tokens/s per mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"padded": "tab:grey", "naive": "tab:orange", "packed": "tab:blue"}
    styles = {"padded": "-", "naive": "--", "packed": ":"}  # packed and padded overlap: they compute the same
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, r in results.items():
        h = np.asarray(r["history"])
        kw = dict(label=mode, color=colours.get(mode), ls=styles.get(mode, "-"), lw=1.4)
        a.plot(np.arange(1, h.size + 1), h, **kw)
        b.plot(r["wall_history"], h, **kw)
    a.set(xlabel="step", ylabel="training loss (mean per label token)", title="loss vs step (same documents)")
    b.set(xlabel="wall time (s)", ylabel="training loss", title="loss vs wall time")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    loss_png = out / "loss.png"
    fig.savefig(loss_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    modes = list(results)
    vals = [results[m]["tok_s"] for m in modes]
    bars = ax.bar(modes, vals, color=[colours.get(m) for m in modes])
    for bar, m in zip(bars, modes):
        ax.annotate(f"{results[m]['tok_s']:,.0f}\nfill {100 * results[m]['fill']:.0f}%",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="useful tokens / s", title="training throughput (real tokens only)")
    ax.set_ylim(0, max(vals) * 1.25)
    fig.tight_layout()
    tput_png = out / "throughput.png"
    fig.savefig(tput_png, dpi=110)
    plt.close(fig)
    return [loss_png, tput_png]


def add_arguments(parser) -> None:
    parser.add_argument("--capacity", type=int, default=2048, help="tokens per packed row (planning table)")
    parser.add_argument("--batch-size", type=int, default=8, help="documents per padded batch (baseline)")
    parser.add_argument("--out", type=Path, default=Path("seqpack-demo"), help="output folder")
    g = parser.add_argument_group("training")
    g.add_argument("--steps", type=int, default=200, help="optimiser steps per mode (0: planning only)")
    g.add_argument("--train-capacity", type=int, default=512, help="tokens per row when training")
    g.add_argument("--rows-per-step", type=int, default=2, help="rows per optimiser step")
    g.add_argument("--preset", default="tiny", help="model size (seqpack.model.PRESETS)")
    g.add_argument("--vocab", type=int, default=2048,
                   help="renumber tokens to the N most frequent ids (+1 unknown); 0 keeps GPT-2's 50,257")
    g.add_argument("--modes", default=",".join(MODES), help="comma-separated: padded, naive, packed")
    g.add_argument("--max-docs", type=int, default=None, help="use only the first documents (quick runs)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    g.add_argument("--device", default="cpu", help="cpu or cuda")
    g.add_argument("--progress", type=int, default=1, help="show progress bars (1) or not (0)")


def run(args) -> int:
    from seqpack.data.corpus import load_chitchat

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    docs = load_chitchat(args.max_docs)
    lengths = docs.lengths
    print(f"corpus: {len(docs):,} conversations, {int(lengths.sum()):,} GPT-2 tokens "
          f"(median {int(np.median(lengths))}, p90 {int(np.percentile(lengths, 90))}, max {int(lengths.max())}); "
          f"loaded in {time.perf_counter() - t0:.1f} s")
    rows, plans = plan_table(lengths, args.capacity, args.batch_size)
    print()
    print(format_table(rows))
    png = draw_rows(plans["bfd"], args.out / "packing.png")
    print(f"\npicture of the first rows: {png}")
    if args.steps <= 0:
        return 0
    results = train_modes(args, docs)
    pngs = plot_training(results, args.out)
    print("\nplots: " + ", ".join(str(p) for p in [*pngs, png]))
    with open(args.out / "results.json", "w") as f:
        json.dump({m: {k: v for k, v in r.items()} for m, r in results.items()}, f)
    print(f"demo done in {time.perf_counter() - t0:.0f} s; results in {args.out / 'results.json'}")
    return 0


def train_modes(args, docs) -> dict:
    """Equivalence check, then the same steps in every mode; returns each mode's summary."""
    import torch

    from seqpack.plan import plan_packing
    from seqpack.train.check import check_equivalence
    from seqpack.train.config import TrainConfig
    from seqpack.train.data import compact_vocab
    from seqpack.train.trainer import Trainer, pad_vocab

    if args.threads:
        torch.set_num_threads(args.threads)
    vocab = args.vocab or 50257
    if args.vocab:
        docs, _ = compact_vocab(docs, args.vocab)
    plan = plan_packing(docs.lengths, args.train_capacity, strategy="bfd", overflow="split", seed=0)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    base = TrainConfig(preset=args.preset, capacity=args.train_capacity, rows_per_step=args.rows_per_step,
                       steps=args.steps, warmup_steps=min(20, max(args.steps // 10, 1)), device=args.device,
                       compile="none", threads=args.threads, progress=bool(args.progress), save=False,
                       log_every=max(args.steps // 20, 1))
    print(f"\ntraining: {args.steps} steps of {args.rows_per_step} x {args.train_capacity} tokens per mode, "
          f"{len(docs):,} documents -> {plan.num_bins:,} packed rows (fill {100 * plan.efficiency:.2f}%), "
          f"vocabulary {vocab:,}{' (renumbered by frequency)' if args.vocab else ''}")

    trainers = {mode: Trainer(base.replace(mode=mode, progress=False, out=str(args.out / "train" / mode)),
                              docs=docs, vocab_size=vocab, plan=plan) for mode in modes}
    first = trainers[modes[0]]
    mc = first.model_config
    print(f"model: GPT {args.preset}, {first.num_params / 1e6:.2f}M parameters ({mc.n_layer} layers, "
          f"d={mc.n_embd}, {mc.n_head} heads, vocab {pad_vocab(vocab)}), {first.device}, "
          f"{torch.get_num_threads()} threads, eager")
    # Rows holding about a dozen documents each: a strict test of isolation on real
    # conversations (half the rows hold one piece of a long one; the most crowded hold a
    # pile of one-token documents).
    per_bin = plan.docs_per_bin()
    bins = np.argsort(np.abs(per_bin - 12), kind="stable")[:args.rows_per_step]
    print()
    print(check_equivalence(first.model, plan, docs, bins).report())
    print()

    # The modes take turns, 10 steps at a time: on a shared or throttling machine they all
    # see the same conditions, so their throughputs compare fairly within this run.
    results = {}
    bar = None
    if args.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.steps * len(modes), desc="training " + "/".join(modes), unit="step")
    for end in range(10, args.steps + 10, 10):
        end = min(end, args.steps)
        for mode, trainer in trainers.items():
            done = trainer.step
            results[mode] = trainer.run(steps=end)
            if bar is not None:
                bar.update(trainer.step - done)
                bar.set_postfix_str(" | ".join(f"{m} {r['tok_s'] or 0:,.0f} tok/s" for m, r in results.items()
                                               if r.get("tok_s")))
    if bar is not None:
        bar.close()
    print()
    print(format_train_table(results))
    if "packed" in results and "padded" in results:
        p, d = results["packed"], results["padded"]
        print(f"\npacked vs padded: {p['tok_s'] / d['tok_s']:.2f}x useful tokens/s, same documents and labels; "
              f"final loss {p['loss']:.4f} vs {d['loss']:.4f} (block-diagonal attention computes what padding does)")
    if "packed" in results and "naive" in results:
        p, n = results["packed"], results["naive"]
        print(f"packed vs naive: {p['tok_s'] / n['tok_s']:.2f}x useful tokens/s; naive lets documents attend "
              f"to each other (final loss {n['loss']:.4f})")
    return results
