"""Batching: a plan plus the token lists become a `PackedBatch`.

Notable:
- Two layouts. ``"rows"``: one row of ``capacity`` tokens per bin, padding at the end of
  each row, shape ``(B, capacity)``. ``"1d"``: the same bins' pieces back to back in one
  buffer of ``B * capacity`` tokens with all padding at the end (FlashAttention varlen /
  nanochat style), ``max_seqlen = capacity``.
- Labels never cross a document, in either convention. ``label_shift="model"`` (Hugging
  Face): labels align with inputs and the model shifts them, so the first token of every
  piece gets -100. ``label_shift="collator"`` (nanochat): labels are already the next
  token, so the last token of every document gets -100, while the last token of a split
  piece keeps its real target (the next token of the same document). A -100 the caller
  set (prompt masking) is kept. Padding is -100.
- Gathering is vectorised when documents live in a flat `Documents` store; a plain list
  of token lists works too (one slice per piece).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from seqpack.boundaries import DocBoundaries

__all__ = ["Documents", "PackedBatch", "collate_packed", "IGNORE_INDEX"]

IGNORE_INDEX = -100  # the label value PyTorch's and Hugging Face's losses skip


class Documents:
    """Token lists stored flat: document i is ``tokens[offsets[i]:offsets[i + 1]]``.

    ``labels`` (optional, same length as ``tokens``) holds per-token labels aligned with
    the tokens, -100 where no loss is wanted (e.g. prompts).
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, labels: np.ndarray | None = None):
        self.tokens = np.asarray(tokens)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or self.offsets.size == 0 or self.offsets[0] != 0 \
                or self.offsets[-1] != self.tokens.size or (np.diff(self.offsets) < 0).any():
            raise ValueError("offsets must start at 0, never decrease and end at len(tokens)")
        self.labels = None if labels is None else np.asarray(labels)
        if self.labels is not None and self.labels.shape != self.tokens.shape:
            raise ValueError(f"labels have shape {self.labels.shape} but tokens {self.tokens.shape}")

    @classmethod
    def from_lists(cls, docs: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None = None,
                   dtype=np.int32) -> "Documents":
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.concatenate([np.asarray(d, dtype=dtype) for d in docs]) if len(docs) else np.zeros(0, dtype)
        lab = None
        if labels is not None:
            lab = np.concatenate([np.asarray(x, dtype=np.int64) for x in labels]) if len(docs) else np.zeros(0)
        return cls(tokens, offsets, lab)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return self.offsets.size - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


@dataclass
class PackedBatch:
    """One packed batch: tensors shaped ``(B, L)`` (rows) or ``(T,)`` (1D buffer).

    ``doc_index``, ``doc_start``, ``doc_stop`` say which piece of which source document
    each segment holds (in segment order, padding excluded).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    boundaries: DocBoundaries
    label_shift: str = "model"
    doc_index: np.ndarray | None = field(default=None, repr=False)
    doc_start: np.ndarray | None = field(default=None, repr=False)
    doc_stop: np.ndarray | None = field(default=None, repr=False)

    @property
    def attention_mask(self) -> torch.Tensor:
        """LLaMA-Factory's integer-labelled mask (1..n per row, 0 = padding)."""
        return self.boundaries.attention_mask()

    def num_label_tokens(self) -> torch.Tensor:
        """Tokens that carry a loss, counted as the loss will count them (no host sync).

        With ``label_shift="model"`` the first label of each row is never predicted, so it is
        left out; use this for ``num_items_in_batch`` under gradient accumulation.
        """
        labels = self.labels
        if self.label_shift == "model":
            labels = labels[..., 1:]
        return (labels != IGNORE_INDEX).sum()

    def to(self, device, non_blocking: bool = False) -> "PackedBatch":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return PackedBatch(move(self.input_ids), move(self.labels), move(self.position_ids),
                           self.boundaries.to(device, non_blocking), self.label_shift,
                           self.doc_index, self.doc_start, self.doc_stop)

    def pin_memory(self) -> "PackedBatch":
        b = self.boundaries
        pinned = DocBoundaries(b.cu_seqlens.pin_memory(), b.shape, is_pad=b.is_pad.pin_memory(),
                               max_seqlen=b.max_seqlen, validate=False)
        return PackedBatch(self.input_ids.pin_memory(), self.labels.pin_memory(),
                           self.position_ids.pin_memory(), pinned, self.label_shift,
                           self.doc_index, self.doc_start, self.doc_stop)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """``input_ids``, ``labels``, ``position_ids`` as a dict (no attention mask: the
        boundaries, not a mask, carry the documents)."""
        return {"input_ids": self.input_ids, "labels": self.labels, "position_ids": self.position_ids}


def _gather_pieces(docs, doc: np.ndarray, start: np.ndarray, stop: np.ndarray, shift: int):
    """Tokens (and label sources) of pieces, concatenated; ``shift=1`` reads position p+1.

    Returns ``(tokens, labels)``; where p + shift falls past the end of its document the
    label is -100 (so a document's last token gets no target under the collator shift).
    """
    lens = stop - start
    total = int(lens.sum())
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    pos = np.repeat(start, lens) + within  # position of every output token inside its document
    if isinstance(docs, Documents):
        base = np.repeat(docs.offsets[doc], lens)
        doclen = np.repeat(docs.offsets[doc + 1] - docs.offsets[doc], lens)
        tokens = docs.tokens[base + pos].astype(np.int64)
        src = docs.labels if docs.labels is not None else docs.tokens
        nxt = pos + shift
        ok = nxt < doclen
        labels = np.full(total, IGNORE_INDEX, dtype=np.int64)
        labels[ok] = src[(base + nxt)[ok]]
        return tokens, labels
    # A sequence of token lists (optionally dicts with input_ids/labels): one slice per piece.
    tok_parts, lab_parts = [], []
    for d, s, e in zip(doc.tolist(), start.tolist(), stop.tolist()):
        item = docs[d]
        ids = np.asarray(item["input_ids"] if isinstance(item, dict) else item, dtype=np.int64)
        src = np.asarray(item["labels"], dtype=np.int64) if isinstance(item, dict) and "labels" in item else ids
        tok_parts.append(ids[s:e])
        lab = np.full(e - s, IGNORE_INDEX, dtype=np.int64)
        avail = src[s + shift:e + shift]
        lab[:avail.size] = avail
        lab_parts.append(lab)
    if not tok_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(tok_parts), np.concatenate(lab_parts)


def collate_packed(plan, docs, bins=None, *, layout: str = "rows", label_shift: str = "model",
                   pad_token_id: int = 0, max_num_docs: int | None = None,
                   max_seqlen: int | None = None) -> PackedBatch:
    """Materialise bins of a `PackPlan` into a `PackedBatch`.

    Args:
        plan: a `seqpack.PackPlan` (pieces ``doc/start/stop`` grouped by ``bin``).
        docs: `Documents`, or a sequence indexed by document id of token lists or of dicts
            with ``input_ids`` and optional ``labels`` (-100 = no loss, e.g. prompts).
        bins: which bins to put in this batch (default: all), in row order.
        layout: ``"rows"`` -> ``(len(bins), capacity)``; ``"1d"`` -> ``(len(bins) * capacity,)``.
        label_shift: ``"model"`` (HF: labels aligned with inputs, first token of each piece
            -100) or ``"collator"`` (labels are next-token targets, last token of each
            document -100).
        pad_token_id: input id written into padding (its label is always -100).
        max_num_docs: if given, pad ``cu_seqlens`` to this many segments (static shapes).
        max_seqlen: bound recorded in the boundaries; default ``capacity`` (a constant, so
            compiled models see the same value every batch).
    """
    if layout not in ("rows", "1d"):
        raise ValueError(f"layout must be 'rows' or '1d'; got {layout!r}")
    if label_shift not in ("model", "collator"):
        raise ValueError(f"label_shift must be 'model' (HF) or 'collator' (nanochat); got {label_shift!r}")
    cap = int(plan.capacity)
    bins = np.arange(plan.num_bins) if bins is None else np.asarray(bins, dtype=np.int64).reshape(-1)
    if bins.size and (bins.min() < 0 or bins.max() >= plan.num_bins):
        raise ValueError(f"bins must be in [0, {plan.num_bins}); got {bins.min()}..{bins.max()}")
    lo, hi = plan.bin_offsets[bins], plan.bin_offsets[bins + 1]
    counts = hi - lo
    idx = np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
    doc, start, stop = plan.doc[idx], plan.start[idx], plan.stop[idx]
    lens = stop - start

    tokens, labels = _gather_pieces(docs, doc, start, stop, shift=1 if label_shift == "collator" else 0)
    if label_shift == "model" and lens.size:
        # The first token of a piece would be predicted from the previous segment.
        labels[np.cumsum(lens) - lens] = IGNORE_INDEX

    B = bins.size
    n = B * cap
    input_ids = np.full(n, pad_token_id, dtype=np.int64)
    out_labels = np.full(n, IGNORE_INDEX, dtype=np.int64)
    max_seqlen = cap if max_seqlen is None else int(max_seqlen)
    if layout == "rows":
        row_of_piece = np.repeat(np.arange(B), counts)
        piece_off = np.cumsum(lens) - lens  # offset in the compact stream
        row_first = np.repeat(np.cumsum(counts) - counts, counts)  # first piece of this row
        in_row = piece_off - piece_off[row_first]
        dest = np.repeat(row_of_piece * cap + in_row, lens) + (
            np.arange(tokens.size) - np.repeat(piece_off, lens))
        boundaries = DocBoundaries.from_row_arrays(lens, counts, cap, max_seqlen=max_seqlen)
        shape = (B, cap)
    else:
        dest = np.arange(tokens.size)
        boundaries = DocBoundaries.from_lengths(lens, n, max_seqlen=max_seqlen)
        shape = (n,)
    input_ids[dest] = tokens
    out_labels[dest] = labels
    # Position ids in numpy (equal to boundaries.position_ids()): torch.searchsorted on a
    # busy CPU costs tens of milliseconds per batch, this costs tens of microseconds.
    cu = boundaries.cu_seqlens.numpy().astype(np.int64)
    position_ids = np.arange(n, dtype=np.int64) - np.repeat(cu[:-1], np.diff(cu))
    if max_num_docs is not None:
        boundaries = boundaries.static(max_num_docs, max_seqlen)
    return PackedBatch(
        input_ids=torch.from_numpy(input_ids.reshape(shape)),
        labels=torch.from_numpy(out_labels.reshape(shape)),
        position_ids=torch.from_numpy(position_ids.reshape(shape)),
        boundaries=boundaries,
        label_shift=label_shift,
        doc_index=doc, doc_start=start, doc_stop=stop,
    )
