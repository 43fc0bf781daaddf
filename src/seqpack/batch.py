"""Batching: a plan plus the token lists become a `PackedBatch`.

Notable:
- Two layouts. ``"rows"``: one row of ``capacity`` tokens per bin, padding at the end of
  each row, shape ``(B, capacity)``. ``"1d"``: the same bins' pieces back to back in one
  buffer of ``B * capacity`` tokens with all padding at the end (FlashAttention varlen /
  nanochat style), ``max_seqlen = capacity``.
- Labels never cross a document, in either convention (`seqpack.labels` holds the rule):
  ``label_shift="model"`` (Hugging Face) puts -100 on the first token of every piece;
  ``label_shift="collator"`` (nanochat) on the last token of every document, while the last
  token of a split piece keeps its real target. A -100 the caller set (prompt masking) is
  kept. Padding is -100.
- This is the one road from planned pieces to a batch: packed files
  (`seqpack.data.read_packed`), the online packer, the trainer and the Hugging Face
  collator all call `collate_packed`; rows packed elsewhere become a plan with
  `PackPlan.from_rows`.
- Gathering is vectorised when documents live in a flat `Documents` store; a plain list
  of token lists works too (one slice per piece).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from seqpack.boundaries import DocBoundaries
from seqpack.errors import InputError
from seqpack.labels import IGNORE_INDEX, check_label_shift, exclusive_cumsum, piece_labels, segment_of

__all__ = ["Documents", "PackedBatch", "collate_packed", "IGNORE_INDEX"]


def _int_ids(x, what: str, name: str = "input_ids") -> np.ndarray:
    """Token ids (or labels) as an int64 array, refusing what would change their values:
    floats (even whole ones), ids beyond int64, nested lists. ``what`` names the document."""
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype == object:  # e.g. a Python int beyond uint64 next to negative ones
        try:
            a = np.asarray(x, dtype=np.int64)
        except (OverflowError, ValueError, TypeError):
            raise InputError(f"{what}: {name} holds a value that is not an int64 token id; "
                             f"ids must be integers below 2**63") from None
    if a.size == 0:
        return np.zeros(0, np.int64)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        got = f"dtype {a.dtype}" if a.ndim == 1 else f"shape {a.shape}"
        raise InputError(f"{what}: {name} must be a flat list of integers, got {got}; convert it "
                         f"with np.asarray(..., dtype=np.int64) after checking the values are whole")
    if a.dtype == np.uint64 and a.max() > np.iinfo(np.int64).max:
        raise InputError(f"{what}: {name} holds {int(a.max()):,}, which does not fit int64; "
                         f"token ids must be below 2**63")
    return a.astype(np.int64, copy=False)


class Documents:
    """Token lists stored flat: document i is ``tokens[offsets[i]:offsets[i + 1]]``.

    ``labels`` (optional, same length as ``tokens``) holds per-token labels aligned with
    the tokens, -100 where no loss is wanted (e.g. prompts). Tokens and labels must be
    integers (floats are refused, not truncated) and token ids >= 0.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, labels: np.ndarray | None = None):
        self.tokens = np.asarray(tokens)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or self.offsets.size == 0 or self.offsets[0] != 0 \
                or self.offsets[-1] != self.tokens.size or (np.diff(self.offsets) < 0).any():
            raise InputError("offsets must start at 0, never decrease and end at len(tokens)")
        if self.tokens.size and (self.tokens.ndim != 1 or self.tokens.dtype.kind not in "iu"):
            raise InputError(f"Documents: tokens must be a flat integer array, got dtype {self.tokens.dtype} "
                             f"shape {self.tokens.shape}")
        _check_token_range(self.tokens, self.offsets)
        self.labels = None if labels is None else np.asarray(labels)
        if self.labels is not None and self.labels.shape != self.tokens.shape:
            raise InputError(f"labels have shape {self.labels.shape} but tokens {self.tokens.shape}")
        if self.labels is not None and self.labels.size and self.labels.dtype.kind not in "iu":
            raise InputError(f"Documents: labels must be integers, got dtype {self.labels.dtype}")

    @classmethod
    def from_lists(cls, docs: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None = None,
                   dtype=np.int64) -> "Documents":
        """A store of token lists. ``dtype`` (int64 by default) may be narrower to save
        memory; ids it cannot hold are refused, naming the document, never wrapped."""
        arrays = [_int_ids(d, f"document {i}") for i, d in enumerate(docs)]
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        offsets = exclusive_cumsum(lengths)
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        info = np.iinfo(dtype)
        if flat.size and (flat.max() > info.max or flat.min() < info.min):
            bad = np.flatnonzero((flat > info.max) | (flat < info.min))[0]
            i = int(segment_of(offsets, bad))
            raise InputError(f"document {i}: token id {int(flat[bad]):,} does not fit {np.dtype(dtype).name}; "
                             f"pass dtype=np.int64")
        lab = None
        if labels is not None:
            larr = [_int_ids(x, f"document {i}", "labels") for i, x in enumerate(labels)]
            for i, (a, b) in enumerate(zip(arrays, larr)):
                if a.size != b.size:
                    raise InputError(f"document {i}: labels has {b.size:,} entries but input_ids has {a.size:,}")
            lab = np.concatenate(larr) if larr else np.zeros(0, np.int64)
        return cls(flat.astype(dtype, copy=False), offsets, lab)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return self.offsets.size - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


def _check_token_range(tokens: np.ndarray, offsets: np.ndarray) -> None:
    """Refuse negative ids and uint64 ids beyond int64 (both would become wrong ids)."""
    if not tokens.size:
        return
    bad = None
    if tokens.dtype.kind == "i" and tokens.min() < 0:
        bad = np.flatnonzero(tokens < 0)[0]
    elif tokens.dtype == np.uint64 and tokens.max() > np.iinfo(np.int64).max:
        bad = np.flatnonzero(tokens > np.iinfo(np.int64).max)[0]
    if bad is not None:
        i = int(segment_of(offsets, bad))
        raise InputError(f"document {i}: token id {int(tokens[bad]):,} is not in [0, 2**63); token ids "
                         f"are indices into the vocabulary")


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
        return PackedBatch(self.input_ids.pin_memory(), self.labels.pin_memory(),
                           self.position_ids.pin_memory(), self.boundaries.pin_memory(), self.label_shift,
                           self.doc_index, self.doc_start, self.doc_stop)


def _gather_pieces(docs, doc: np.ndarray, start: np.ndarray, stop: np.ndarray, shift: int):
    """Tokens (and label sources) of pieces, concatenated; ``shift=1`` reads position p+1.

    ``docs`` is a `Documents` store or a dict ``{doc index: (ids, labels or None)}`` of
    checked int64 arrays (`_list_documents`). Returns ``(tokens, labels)``; where p + shift
    falls past the end of its document the label is -100 (so a document's last token gets
    no target under the collator shift).
    """
    lens = stop - start
    total = int(lens.sum())
    if isinstance(docs, Documents) and shift == 0 and total == docs.tokens.size and doc.size == len(docs) \
            and not start.any() and (doc == np.arange(doc.size)).all():
        # the pieces are the whole store in order (a packed file's rows, the online packer's
        # step): no gather needed
        return docs.tokens, docs.labels if docs.labels is not None else docs.tokens  # views of the store
    within = np.arange(total, dtype=np.int64) - np.repeat(exclusive_cumsum(lens)[:-1], lens)
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
    # checked arrays of a sequence of token lists / dicts: one slice per piece
    tok_parts, lab_parts = [], []
    for d, s, e in zip(doc.tolist(), start.tolist(), stop.tolist()):
        ids, src = docs[d]
        src = ids if src is None else src
        tok_parts.append(ids[s:e])
        lab = np.full(e - s, IGNORE_INDEX, dtype=np.int64)
        avail = src[s + shift:e + shift]
        lab[:avail.size] = avail
        lab_parts.append(lab)
    if not tok_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(tok_parts), np.concatenate(lab_parts)


def _list_documents(docs, doc: np.ndarray, bin_of: np.ndarray) -> dict:
    """The documents the pieces reference, each converted once and checked: integer ids
    (and labels of the same length) kept as int64. ``{doc index: (ids, labels or None)}``."""
    out = {}
    first = {}
    for k, d in enumerate(doc.tolist()):
        first.setdefault(d, k)
    for d, k in first.items():
        what = f"document {d} (bin {int(bin_of[k])})"
        item = docs[d]
        if isinstance(item, dict):
            if "input_ids" not in item:
                raise InputError(f"{what}: no 'input_ids' (has: {', '.join(map(str, item)) or 'nothing'})")
            ids = _int_ids(item["input_ids"], what)
            labels = item.get("labels")
            if labels is not None:
                labels = _int_ids(labels, what, "labels")
                if labels.size != ids.size:
                    raise InputError(f"{what}: labels has {labels.size:,} entries but input_ids has "
                                     f"{ids.size:,}; give one label per token (-100 = no loss)")
        else:
            ids, labels = _int_ids(item, what), None
        if ids.size and ids.min() < 0:
            raise InputError(f"{what}: input_ids holds a negative token id {int(ids.min())}; token ids "
                             f"are indices into the vocabulary")
        out[d] = (ids, labels)
    return out


def _check_against_plan(plan, n_docs: int, doc, start, stop, bin_of, actual_of) -> None:
    """Refuse documents that are not the ones the plan was made for: fewer documents than
    it references, or a referenced document of another length (vectorised)."""
    if not doc.size:
        return
    missing = doc >= n_docs
    if missing.any():
        k = int(np.flatnonzero(missing)[0])
        raise InputError(f"the plan places document {int(doc[k]):,} in bin {int(bin_of[k]):,} but only "
                         f"{n_docs:,} documents were given: collate with the documents the plan was made for")
    actual = actual_of(doc)
    planned = getattr(plan, "doc_lengths", None)
    if planned is not None:
        expected = np.asarray(planned)[doc]
        bad = actual != expected
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            longer = "longer" if actual[k] > expected[k] else "shorter"
            raise InputError(f"document {int(doc[k]):,} (bin {int(bin_of[k]):,}) has {int(actual[k]):,} tokens "
                             f"but the plan was made for {int(expected[k]):,} ({longer} than planned): plan "
                             f"the lengths of the documents you collate")
        return
    bad = stop > actual  # a hand-built plan: at least every piece must lie inside its document
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise InputError(f"document {int(doc[k]):,} (bin {int(bin_of[k]):,}) has {int(actual[k]):,} tokens but "
                         f"the plan takes tokens {int(start[k]):,}..{int(stop[k]):,} of it: plan the lengths of "
                         f"the documents you collate")


def collate_packed(plan, docs, bins=None, *, layout: str = "rows", label_shift: str = "model",
                   pad_token_id: int = 0, max_num_docs: int | None = None,
                   max_seqlen: int | None = None, shift_labels: bool = True) -> PackedBatch:
    """Materialise bins of a `PackPlan` into a `PackedBatch`.

    Args:
        plan: a `seqpack.PackPlan` (pieces ``doc/start/stop`` grouped by ``bin``).
        docs: `Documents`, or a sequence indexed by document id of token lists or of dicts
            with ``input_ids`` and optional ``labels`` (-100 = no loss, e.g. prompts).
            They must be the documents the plan was made for: a missing document, one of
            another length than planned (``plan.doc_lengths``; for a hand-built plan
            without them, one too short for its pieces), labels of another length than
            the ids, or non-integer ids are refused with `InputError` naming the document
            and its bin. Ids stay int64 (never narrowed).
        bins: which bins to put in this batch (default: all), in row order.
        layout: ``"rows"`` -> ``(len(bins), capacity)``; ``"1d"`` -> ``(len(bins) * capacity,)``.
        label_shift: ``"model"`` (HF: labels aligned with inputs, first token of each piece
            -100) or ``"collator"`` (labels are next-token targets, last token of each
            document -100).
        pad_token_id: input id written into padding (its label is always -100).
        max_num_docs: if given, pad ``cu_seqlens`` to this many segments (static shapes).
            It counts the segments of the whole batch, padding runs included (not the
            pieces of one bin: that is `plan_packing`'s ``max_docs_per_bin``).
        max_seqlen: bound recorded in the boundaries; default ``capacity`` (a constant, so
            compiled models see the same value every batch).
        shift_labels: False when the labels in ``docs`` already are in the ``label_shift``
            convention (a packed file, the online packer's pieces): they are copied as
            given, only padding gets -100.
    """
    if layout not in ("rows", "1d"):
        raise InputError(f"layout must be 'rows' or '1d'; got {layout!r}")
    check_label_shift(label_shift)
    cap = int(plan.capacity)
    if bins is None:
        bins = np.arange(plan.num_bins)
    else:
        bins = np.asarray(bins).reshape(-1)
        if bins.size and bins.dtype.kind not in "iu":
            raise InputError(f"bins must be integers, got dtype {bins.dtype}")
        bins = bins.astype(np.int64)
    if bins.size and (bins.min() < 0 or bins.max() >= plan.num_bins):
        raise InputError(f"bins must be in [0, {plan.num_bins}); got {bins.min()}..{bins.max()}")
    lo, hi = plan.bin_offsets[bins], plan.bin_offsets[bins + 1]
    counts = hi - lo
    idx = np.repeat(lo - exclusive_cumsum(counts)[:-1], counts) + np.arange(int(counts.sum()))
    doc, start, stop = plan.doc[idx], plan.start[idx], plan.stop[idx]
    lens = stop - start
    bin_of = np.repeat(bins, counts)  # plan bin of every piece, for error messages

    if isinstance(docs, Documents):
        _check_against_plan(plan, len(docs), doc, start, stop, bin_of,
                            lambda d: docs.offsets[d + 1] - docs.offsets[d])
        source = docs
    else:
        n_docs = len(docs)
        if doc.size and int(doc.max()) >= n_docs:
            _check_against_plan(plan, n_docs, doc, start, stop, bin_of, None)
        source = _list_documents(docs, doc, bin_of)
        _check_against_plan(plan, n_docs, doc, start, stop, bin_of,
                            lambda d: np.fromiter((source[i][0].size for i in d.tolist()), np.int64, d.size))
    shift = shift_labels and label_shift == "collator"
    tokens, labels = _gather_pieces(source, doc, start, stop, shift=1 if shift else 0)
    piece_off = exclusive_cumsum(lens)[:-1]  # offset of every piece in the compact stream
    if shift_labels and label_shift == "model":  # never write into the caller's store
        in_store = isinstance(source, Documents) and (labels is source.labels or labels is source.tokens)
        labels = piece_labels(labels, piece_off, lens, "model", copy=in_store)

    B = bins.size
    n = B * cap
    input_ids = np.full(n, pad_token_id, dtype=np.int64)
    out_labels = np.full(n, IGNORE_INDEX, dtype=np.int64)
    max_seqlen = cap if max_seqlen is None else int(max_seqlen)
    if layout == "rows":
        boundaries = DocBoundaries.from_row_arrays(lens, counts, cap, max_seqlen=max_seqlen)
        shape = (B, cap)
        # each row's tokens are consecutive in the compact stream and fill the row's start:
        # a boolean mask in row-major order places them (a copy, no index arithmetic)
        cum, first = exclusive_cumsum(lens), exclusive_cumsum(counts)
        row_used = cum[first[1:]] - cum[first[:-1]]
        dest = (np.arange(cap) < row_used[:, None]).reshape(-1)
    else:
        boundaries = DocBoundaries.from_lengths(lens, n, max_seqlen=max_seqlen)
        shape = (n,)
        dest = slice(0, tokens.size)
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
