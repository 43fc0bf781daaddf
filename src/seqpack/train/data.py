"""Training batches: the same documents, three ways (packed, naive, padded).

Notable:
- Offline packing: `plan_packing` (best-fit decreasing, long documents split at capacity)
  over the whole corpus once; an optimiser step takes ``rows_per_step`` bins (rows of
  ``capacity`` tokens). Epoch e visits the bins in a permutation seeded by (seed, e), so
  the loader's whole state is ``(epoch, step)`` and resuming is exact.
- Data parallel: rank r of w takes the r-th contiguous slice of the step's bins. Bins
  are nearly full, so every rank gets the same number of rows and almost the same
  number of tokens (the balance a varlen step needs).
- One step's documents are collated once (rows layout, nanochat next-token labels) and
  then shown to the model in the requested mode, so all modes see identical tokens and
  labels and their losses are comparable step by step:
    packed  one 1D buffer (or rows) with block-diagonal attention and positions per
            document; ``cu_seqlens`` padded to a fixed ``max_num_docs`` so the compiled
            model sees one shape;
    naive   the same rows with plain causal attention over the row: documents see each
            other (the "wrong but fast" baseline);
    padded  one document piece per row, ``pad_batch`` rows per micro-batch, each padded
            to its longest piece rounded up to a power of two (a handful of static shapes
            for the compiled model) or, eager, to a multiple of ``pad_multiple``.
- `OnlineLoader` takes its steps from the data stage's online packer instead (packing
  while reading, attention work balanced across ranks, resumable state); same modes.
- Every step reports the counts the trainer logs: useful (real) tokens, label tokens,
  computed token slots (fill = useful / slots), documents and rows, and the piece lengths
  (for the attention FLOPs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from seqpack.batch import Documents, PackedBatch, collate_packed
from seqpack.boundaries import DocBoundaries
from seqpack.errors import InputError
from seqpack.labels import IGNORE_INDEX

__all__ = ["StepBatch", "PackedLoader", "OnlineLoader", "MODES", "bucket_length", "pad_pieces",
           "baseline_micro", "compact_vocab"]

MODES = ("packed", "naive", "padded")


def _rows_batch(input_ids: torch.Tensor, labels: torch.Tensor) -> PackedBatch:
    """Rows attended as plain causal rows (`DocBoundaries.causal_rows`): the naive and
    padded baselines. Labels are next-token targets."""
    b = DocBoundaries.causal_rows(tuple(input_ids.shape))
    return PackedBatch(input_ids, labels, b.position_ids(), b, label_shift="collator")


@dataclass
class StepBatch:
    """One optimiser step's data on this rank: its micro-batches (each what one
    forward/backward sees, next-token labels) and the counts the trainer logs."""

    micro: list[PackedBatch]
    useful_tokens: int          # real (non-padding) tokens
    label_tokens: int           # tokens that carry a loss
    slots: int                  # token positions computed, padding included
    docs: int                   # document pieces
    rows: int                   # bins of the packing plan in this step (this rank)
    piece_lengths: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))

    @property
    def fill(self) -> float:
        return self.useful_tokens / max(self.slots, 1)


# ----------------------------------------------------------------------------------------
# small pure helpers


def bucket_length(n: int, capacity: int, minimum: int = 16, multiple: int = 0) -> int:
    """Padded row length for a longest piece of ``n`` tokens, capped at ``capacity``:
    the smallest power of two >= n (at least ``minimum``; few shapes, for torch.compile),
    or with ``multiple > 0`` n rounded up to that multiple (pad to longest, eager)."""
    if multiple > 0:
        return min(capacity, _round_up(max(int(n), 1), multiple))
    return min(capacity, max(minimum, 1 << max(int(n) - 1, 0).bit_length()))


def pad_pieces(rows_ids: torch.Tensor, rows_labels: torch.Tensor, b: DocBoundaries, *,
               pad_batch: int, capacity: int, pad_multiple: int = 0, pad_token_id: int = 0):
    """Cut every document piece out of a rows batch into its own row, ``pad_batch`` rows
    per micro-batch, each padded (ids ``pad_token_id``, labels -100) to `bucket_length`.

    The last micro-batch is filled up with empty rows so that every micro-batch has
    ``pad_batch`` rows (static shapes). Returns ``(micro_batches, slots)``.
    """
    ids, labels = rows_ids.reshape(-1), rows_labels.reshape(-1)
    cu = b.cu_seqlens.tolist()
    pieces = [(cu[i], cu[i + 1]) for i in range(len(cu) - 1)
              if not bool(b.is_pad[i]) and cu[i + 1] > cu[i]]
    micro, slots = [], 0
    for lo in range(0, len(pieces), pad_batch):
        group = pieces[lo:lo + pad_batch]
        L = bucket_length(max(e - s for s, e in group), capacity, multiple=pad_multiple)
        x = torch.full((pad_batch, L), pad_token_id, dtype=ids.dtype)
        y = torch.full((pad_batch, L), IGNORE_INDEX, dtype=labels.dtype)
        for r, (s, e) in enumerate(group):
            x[r, :e - s], y[r, :e - s] = ids[s:e], labels[s:e]
        micro.append(_rows_batch(x, y))
        slots += pad_batch * L
    return micro, slots


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# ----------------------------------------------------------------------------------------


class PackedLoader:
    """Steps of packed bins from a `Documents` store, in one of the three modes.

    Args:
        docs: the token store (e.g. ``load_chitchat()``).
        capacity: tokens per row (bin).
        rows_per_step: rows per optimiser step over all ranks (a multiple of ``world``).
        mode: "packed", "naive" or "padded".
        layout: packed mode only: "1d" (one buffer) or "rows".
        rows_per_micro: rows per micro-batch on each rank (packed/naive); None = all.
        pad_batch: padded mode: document pieces per micro-batch.
        pad_multiple: padded mode: 0 pads rows to a power of two (few shapes: for
            torch.compile); n > 0 pads to the longest piece rounded up to n (eager).
        max_num_docs: packed mode: fixed ``cu_seqlens`` size (segments); None = the most
            any micro-batch of the first epoch needs, rounded up to a multiple of 16. A
            later batch that needs more grows it (one recompile, with a warning).
        seed, strategy: planner seed (bin order of epoch 0) and strategy.
        rank, world: data-parallel slice.
    """

    def __init__(self, docs: Documents, *, capacity: int, rows_per_step: int, mode: str = "packed",
                 layout: str = "1d", rows_per_micro: int | None = None, pad_batch: int = 8, pad_multiple: int = 0,
                 max_num_docs: int | None = None, seed: int = 0, strategy: str = "bfd",
                 rank: int = 0, world: int = 1, plan=None):
        from seqpack.plan import plan_packing

        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}; got {mode!r}")
        if layout not in ("1d", "rows"):
            raise InputError(f"layout must be '1d' or 'rows'; got {layout!r}")
        if rows_per_step % world:
            raise InputError(f"rows_per_step {rows_per_step} must be a multiple of the world size {world} "
                             f"(every rank gets the same number of rows)")
        self.docs, self.capacity, self.mode, self.layout = docs, int(capacity), mode, layout
        self.rows_per_step, self.rank, self.world = int(rows_per_step), int(rank), int(world)
        self.local_rows = self.rows_per_step // self.world
        self.rows_per_micro = self.local_rows if rows_per_micro is None else int(rows_per_micro)
        if self.local_rows % self.rows_per_micro:
            raise InputError(f"rows per rank ({self.local_rows}) must be a multiple of rows_per_micro "
                             f"({self.rows_per_micro})")
        self.pad_batch, self.pad_multiple, self.seed = int(pad_batch), int(pad_multiple), int(seed)
        self.plan = plan if plan is not None else plan_packing(
            docs.lengths, self.capacity, strategy=strategy, overflow="split", seed=seed)
        self.steps_per_epoch = self.plan.num_bins // self.rows_per_step
        if self.steps_per_epoch == 0:
            raise InputError(f"the corpus packs into {self.plan.num_bins} rows of {capacity} tokens, fewer than "
                             f"rows_per_step={rows_per_step}: lower rows_per_step or capacity")
        self.epoch, self.step = 0, 0
        self.max_num_docs = max_num_docs if max_num_docs is not None else self._default_max_num_docs()
        self.grown = 0

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "num_bins": self.plan.num_bins,
                "rows_per_step": self.rows_per_step, "max_num_docs": self.max_num_docs}

    def load_state_dict(self, state: dict) -> None:
        if state["num_bins"] != self.plan.num_bins or state["rows_per_step"] != self.rows_per_step:
            raise InputError(f"checkpoint was taken with {state['num_bins']} bins and rows_per_step "
                             f"{state['rows_per_step']}; this run has {self.plan.num_bins} and "
                             f"{self.rows_per_step}: resume with the same data, capacity and rows per step")
        self.epoch, self.step, self.seed = state["epoch"], state["step"], state["seed"]
        self.max_num_docs = state.get("max_num_docs", self.max_num_docs)

    # ------------------------------------------------------------------ steps

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Bin order of an epoch: the plan's (already shuffled) order first, then reshuffled."""
        if epoch == 0:
            return np.arange(self.plan.num_bins)
        return np.random.default_rng((self.seed, epoch)).permutation(self.plan.num_bins)

    def step_bins(self, epoch: int, step: int) -> np.ndarray:
        """This rank's bins for a step."""
        order = self.epoch_order(epoch)
        glob = order[step * self.rows_per_step:(step + 1) * self.rows_per_step]
        return glob[self.rank * self.local_rows:(self.rank + 1) * self.local_rows]

    def _default_max_num_docs(self) -> int:
        """Most segments (pieces + one padding run per row, generous) a packed micro-batch of
        epoch 0 needs, rounded up to a multiple of 16."""
        per_bin = self.plan.docs_per_bin() + 1
        order = self.epoch_order(0)[: self.steps_per_epoch * self.rows_per_step]
        groups = per_bin[order].reshape(-1, self.rows_per_micro).sum(axis=1)
        return _round_up(int(groups.max()), 16)

    def __iter__(self):
        return self

    def __next__(self) -> StepBatch:
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        batch = self.make_step(self.epoch, self.step)
        self.step += 1
        return batch

    def make_step(self, epoch: int, step: int) -> StepBatch:
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} is outside the epoch's {self.steps_per_epoch} steps")
        bins = self.step_bins(epoch, step)
        lens = self.plan.bin_lengths()[bins]
        counts = self.plan.docs_per_bin()[bins]
        piece_lengths = np.concatenate([
            self.plan.stop[self.plan.bin_offsets[b]:self.plan.bin_offsets[b + 1]]
            - self.plan.start[self.plan.bin_offsets[b]:self.plan.bin_offsets[b + 1]] for b in bins])
        micro, slots = [], 0
        for lo in range(0, bins.size, self.rows_per_micro):
            mb_bins = bins[lo:lo + self.rows_per_micro]
            if self.mode == "packed":
                mb = self._packed(mb_bins)
                micro.append(mb)
                slots += mb.input_ids.numel()
            else:
                rows = collate_packed(self.plan, self.docs, mb_bins, layout="rows", label_shift="collator")
                mbs, s = baseline_micro(rows, self.mode, pad_batch=self.pad_batch, capacity=self.capacity,
                                        pad_multiple=self.pad_multiple)
                micro.extend(mbs)
                slots += s
        label_tokens = sum(int((mb.labels != IGNORE_INDEX).sum()) for mb in micro)
        return StepBatch(micro=micro, useful_tokens=int(lens.sum()), label_tokens=label_tokens, slots=slots,
                         docs=int(counts.sum()), rows=int(bins.size), piece_lengths=piece_lengths)

    def _packed(self, bins: np.ndarray) -> PackedBatch:
        batch = collate_packed(self.plan, self.docs, bins, layout=self.layout, label_shift="collator")
        b = batch.boundaries
        if b.num_segments > self.max_num_docs:
            import warnings

            new = _round_up(int(b.num_segments * 1.25), 16)
            warnings.warn(f"a batch has {b.num_segments} segments but max_num_docs is {self.max_num_docs}: "
                          f"growing it to {new} (one recompile); pass a larger max_num_docs to avoid this",
                          stacklevel=3)
            self.max_num_docs, self.grown = new, self.grown + 1
        batch.boundaries = b.static(self.max_num_docs, self.capacity)
        return batch


def baseline_micro(rows, mode: str, *, pad_batch: int, capacity: int, pad_multiple: int = 0):
    """The naive or padded micro-batches of a rows `PackedBatch` (next-token labels):
    ``(micro_batches, slots)``."""
    if mode == "naive":
        return [_rows_batch(rows.input_ids, rows.labels)], rows.input_ids.numel()
    return pad_pieces(rows.input_ids, rows.labels, rows.boundaries, pad_batch=pad_batch, capacity=capacity,
                      pad_multiple=pad_multiple)


class OnlineLoader:
    """Steps from the data stage's online packer (`seqpack.data.online.PackedIterableDataset`):
    packs as it reads, balances attention work across ranks, resumes from its state.

    Each micro-batch is one batch of the packer (``rows_per_micro`` rows on this rank); a
    step is ``rows_per_step // (world x rows_per_micro)`` of them. Same modes and
    `StepBatch` as `PackedLoader`; the state is the packer's plus the epoch.
    """

    def __init__(self, docs, *, capacity: int, rows_per_step: int, mode: str = "packed", layout: str = "1d",
                 rows_per_micro: int | None = None, pad_batch: int = 8, pad_multiple: int = 0,
                 max_num_docs: int | None = None, seed: int = 0, rank: int = 0, world: int = 1,
                 buffer_size: int = 1024):
        from seqpack.data.online import PackedIterableDataset

        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}; got {mode!r}")
        if rows_per_step % world:
            raise InputError(f"rows_per_step {rows_per_step} must be a multiple of the world size {world}")
        local = rows_per_step // world
        self.rows_per_micro = local if rows_per_micro is None else int(rows_per_micro)
        if local % self.rows_per_micro:
            raise InputError(f"rows per rank ({local}) must be a multiple of rows_per_micro ({self.rows_per_micro})")
        self.micro_per_step = local // self.rows_per_micro
        self.mode, self.capacity, self.pad_batch, self.pad_multiple = mode, int(capacity), pad_batch, pad_multiple
        # the packer keeps each batch within max_num_docs segments: static cu_seqlens
        self.max_num_docs = max_num_docs if max_num_docs is not None else 32 * self.rows_per_micro
        self.ds = PackedIterableDataset(
            docs, capacity=capacity, batch_size=self.rows_per_micro, layout=layout if mode == "packed" else "rows",
            buffer_size=buffer_size, max_num_docs=self.max_num_docs if mode == "packed" else None, seed=seed,
            label_shift="collator", rank=rank, world_size=world)
        self.epoch, self.step, self._it = 0, 0, None
        self.steps_per_epoch = None  # unknown for a stream

    def state_dict(self) -> dict:
        return {"kind": "online", "epoch": self.epoch, "step": self.step, "packer": self.ds.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "online":
            raise InputError("this checkpoint was written with the offline loader: resume with --loader offline")
        self.epoch, self.step = state["epoch"], state["step"]
        self.ds.set_epoch(self.epoch)
        self.ds.load_state_dict(state["packer"])
        self._it = None

    def _next_batch(self):
        while True:
            if self._it is None:
                self.ds.set_epoch(self.epoch)
                self._it = iter(self.ds)
            try:
                return next(self._it)
            except StopIteration:
                self.epoch, self._it = self.epoch + 1, None

    def __iter__(self):
        return self

    def __next__(self) -> StepBatch:
        micro, slots, useful, docs, rows, lengths = [], 0, 0, 0, 0, []
        for _ in range(self.micro_per_step):
            batch = self._next_batch()
            b = batch.boundaries
            seg = b.seqlens.numpy().astype(np.int64)
            real = seg[~b.is_pad.numpy() & (seg > 0)]
            lengths.append(real)
            useful += int(real.sum())
            docs += real.size
            rows += self.rows_per_micro
            if self.mode == "packed":
                micro.append(batch)
                slots += batch.input_ids.numel()
            else:
                mbs, s = baseline_micro(batch, self.mode, pad_batch=self.pad_batch, capacity=self.capacity,
                                        pad_multiple=self.pad_multiple)
                micro.extend(mbs)
                slots += s
        self.step += 1
        label_tokens = sum(int((mb.labels != IGNORE_INDEX).sum()) for mb in micro)
        return StepBatch(micro=micro, useful_tokens=useful, label_tokens=label_tokens, slots=slots, docs=docs,
                         rows=rows, piece_lengths=np.concatenate(lengths))


def compact_vocab(docs: Documents, size: int) -> tuple[Documents, np.ndarray]:
    """Renumber tokens by frequency: the ``size - 1`` most frequent ids become 0..size-2,
    every other id becomes ``size - 1`` (unknown). For small CPU runs, where a 50K-row
    head would cost more than the whole transformer. Returns the new store and the
    old -> new id table. Labels (if any) keep -100."""
    counts = np.bincount(docs.tokens.astype(np.int64))
    order = np.argsort(-counts, kind="stable")
    table = np.full(counts.size, size - 1, dtype=np.int64)
    table[order[: size - 1]] = np.arange(min(size - 1, counts.size))
    tokens = table[docs.tokens.astype(np.int64)].astype(np.int32 if size > 32767 else np.int16)
    labels = None
    if docs.labels is not None:
        lab = docs.labels.astype(np.int64)
        labels = np.where(lab == IGNORE_INDEX, IGNORE_INDEX, table[np.clip(lab, 0, None)])
    return Documents(tokens, docs.offsets, labels), table
