"""Document boundaries: one object that every consumer accepts.

`DocBoundaries` says where documents start and end in a packed batch, either rows
``(B, L)`` or one 1D buffer ``(T,)``. It is built from whatever format the caller has
(document lengths, LLaMA-Factory's integer-labelled mask, per-document
``position_ids``, ``cu_seqlens``) and converts to whatever format a consumer wants.

Notable:
- The canonical form is ``cu_seqlens`` (int32) over the *flattened* buffer plus one flag
  per segment saying whether it is padding. Padding is a segment of its own: real tokens
  never attend to it nor from it, and every padding query still has a key (itself), so
  no kernel sees an empty softmax row and produces NaN.
- Segments never cross a row of a ``(B, L)`` batch, so a rows batch flattened to
  ``(B*L,)`` is a valid varlen batch with the same ``cu_seqlens``.
- Zero-length segments are allowed at the end: that is how ``cu_seqlens`` is padded to a
  fixed ``max_num_docs + 1`` entries (repeating the total) so shapes stay static under
  ``torch.compile(fullgraph=True, dynamic=False)``.
- ``max_seqlen`` is a Python int and a bound on every segment, padding included: varlen
  kernels size their grid from it, and a segment longer than it would be silently
  skipped, so constructors split long padding runs and refuse long documents.
- Conversions are tensor ops on the boundaries' device (searchsorted, cumsum, gather):
  no Python loop over documents and no host sync, except where the output's size depends
  on the data (``unpad_data``, ``doc_seqlens``) or an error must be raised (validation).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from seqpack.errors import InputError

__all__ = ["DocBoundaries", "check_cu_seqlens", "get_seqlens_in_batch", "get_unpad_data"]


# ----------------------------------------------------------------------------------------
# small pure helpers


def _as_int_tensor(x, name: str) -> torch.Tensor:
    """Accept a tensor, numpy array or nested list of integers; refuse floats."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dtype == torch.bool:
        return t.to(torch.int64)
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integers; got dtype {t.dtype}. "
                         f"Convert it with .long() if the values are whole numbers.")
    return t


def _first_true(flags: torch.Tensor) -> int:
    """Flat index of the first True (caller knows there is one)."""
    return int(flags.flatten().nonzero()[0, 0])


def _split_long_runs(lengths: np.ndarray, is_pad: np.ndarray, limit: int | None):
    """Split padding runs longer than ``limit`` into pieces of at most ``limit``."""
    if limit is None or limit <= 0 or not (is_pad & (lengths > limit)).any():
        return lengths, is_pad
    pieces = np.where(is_pad, np.maximum(1, -(-lengths // limit)), 1)
    out_pad = np.repeat(is_pad, pieces)
    owner = np.repeat(np.arange(len(lengths)), pieces)
    first = np.cumsum(pieces) - pieces  # index of the first piece of each run
    k = np.arange(len(owner)) - first[owner]  # piece number inside its run
    out_len = np.where(out_pad, np.minimum(limit, lengths[owner] - k * limit), lengths[owner])
    return out_len, out_pad


def _check_max_seqlen(lens: np.ndarray, max_seqlen: int | None, which) -> None:
    """Refuse a document longer than ``max_seqlen``: varlen kernels size their grid from it
    and would silently skip the tokens beyond it. ``which(i, n)`` says "document i has n tokens"."""
    if max_seqlen is not None and lens.size and lens.max() > max_seqlen:
        i = int(lens.argmax())
        raise ValueError(f"{which(i, lens[i])} but max_seqlen is {max_seqlen}: "
                         f"split it (plan_packing overflow='split') or raise max_seqlen")


# ----------------------------------------------------------------------------------------


class DocBoundaries:
    """Where documents start and end in a packed batch of shape ``(B, L)`` or ``(T,)``.

    Attributes:
        cu_seqlens: int32 ``[S + 1]``, offsets of the S segments in the flattened buffer;
            starts at 0, never decreases, ends at the number of tokens.
        is_pad: bool ``[S]``, True for padding segments.
        shape: ``(B, L)`` for rows, ``(T,)`` for one 1D buffer.
        max_seqlen: Python int, an upper bound on every segment's length.

    Build one with ``from_lengths``, ``from_row_lengths``, ``from_attention_mask``,
    ``from_position_ids`` or ``from_cu_seqlens``. The constructor itself takes the
    canonical tensors and checks them unless ``validate=False``.
    """

    __slots__ = ("cu_seqlens", "is_pad", "shape", "max_seqlen")

    def __init__(self, cu_seqlens: torch.Tensor, shape, *, is_pad: torch.Tensor | None = None,
                 max_seqlen: int | None = None, validate: bool = True):
        cu_seqlens = _as_int_tensor(cu_seqlens, "cu_seqlens")
        shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list, torch.Size)) else (shape,)))
        if validate:
            check_cu_seqlens(cu_seqlens, shape)
        self.cu_seqlens = cu_seqlens.to(torch.int32)
        n_seg = self.cu_seqlens.numel() - 1
        if is_pad is None:
            is_pad = torch.zeros(n_seg, dtype=torch.bool, device=self.cu_seqlens.device)
        elif is_pad.shape != (n_seg,):
            raise ValueError(f"is_pad must have one flag per segment ({n_seg}); got shape {tuple(is_pad.shape)}")
        self.is_pad = is_pad.to(device=self.cu_seqlens.device, dtype=torch.bool)
        self.shape = shape
        longest = int(self.seqlens.max()) if (max_seqlen is None or validate) and n_seg > 0 else 0
        if max_seqlen is None:
            max_seqlen = longest
        elif validate and longest > max_seqlen:
            seg = int(self.seqlens.argmax())
            raise ValueError(f"segment {seg} has {longest} tokens but max_seqlen is {max_seqlen}: "
                             f"pass a larger max_seqlen or split the document (plan_packing overflow='split')")
        self.max_seqlen = int(max_seqlen)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_lengths(cls, lengths, total: int | None = None, *, max_seqlen: int | None = None):
        """One 1D buffer of ``total`` tokens holding documents of these lengths in order.

        Tokens after the last document are padding (split into runs of at most
        ``max_seqlen`` when it is given). Zero lengths are kept as empty documents.
        """
        lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if (lens < 0).any():
            i = int(np.flatnonzero(lens < 0)[0])
            raise ValueError(f"document {i} has negative length {lens[i]}")
        used = int(lens.sum())
        total = used if total is None else int(total)
        if used > total:
            raise ValueError(f"documents hold {used} tokens but the buffer has {total}: "
                             f"pass a larger total or fewer documents")
        _check_max_seqlen(lens, max_seqlen, lambda i, n: f"document {i} has {n} tokens")
        pad = np.zeros(lens.size, dtype=bool)
        if used < total:
            lens, pad = np.append(lens, total - used), np.append(pad, True)
        lens, pad = _split_long_runs(lens, pad, max_seqlen)
        return cls._from_numpy(lens, pad, (total,), max_seqlen)

    @classmethod
    def from_row_lengths(cls, row_lengths: Sequence[Sequence[int]], capacity: int | None = None, *,
                         max_seqlen: int | None = None, row_len: int | None = None):
        """Rows ``(B, capacity)``: row b holds documents of lengths ``row_lengths[b]``, then
        padding. ``row_len`` is the deprecated name of ``capacity``."""
        from seqpack.errors import renamed_keyword

        capacity = renamed_keyword(capacity, row_len, "row_len", "capacity", "DocBoundaries.from_row_lengths")
        if capacity is None:
            raise TypeError("DocBoundaries.from_row_lengths needs the row length: pass capacity=")
        counts = np.fromiter((len(r) for r in row_lengths), dtype=np.int64, count=len(row_lengths))
        lens = np.fromiter(itertools.chain.from_iterable(row_lengths), dtype=np.int64, count=int(counts.sum()))
        return cls.from_row_arrays(lens, counts, int(capacity), max_seqlen=max_seqlen)

    @classmethod
    def from_row_arrays(cls, lens: np.ndarray, counts: np.ndarray, capacity: int, *,
                        max_seqlen: int | None = None):
        """Rows from flat document lengths (numpy) and the number of documents in each row:
        ``from_row_lengths`` without building nested lists (the collators' fast path)."""
        B = counts.size
        row_of_doc = np.repeat(np.arange(B), counts)
        if (lens < 0).any():
            i = int(np.flatnonzero(lens < 0)[0])
            raise ValueError(f"row {row_of_doc[i]} has a document of negative length {lens[i]}")
        used = np.bincount(row_of_doc, weights=lens, minlength=B).astype(np.int64)
        if (used > capacity).any():
            r = int(np.flatnonzero(used > capacity)[0])
            raise ValueError(f"row {r} holds {used[r]} tokens but rows have {capacity}: "
                             f"re-plan with capacity {capacity} or use longer rows")
        _check_max_seqlen(lens, max_seqlen, lambda i, n: f"row {row_of_doc[i]} has a document of {n} tokens")
        # Each row: its documents, then one padding segment if the row is not full.
        pad_len = capacity - used
        seg_len = np.concatenate([lens, pad_len[pad_len > 0]])
        seg_pad = np.concatenate([np.zeros(lens.size, bool), np.ones(int((pad_len > 0).sum()), bool)])
        seg_row = np.concatenate([row_of_doc, np.flatnonzero(pad_len > 0)])
        order = np.argsort(seg_row * 2 + seg_pad, kind="stable")
        seg_len, seg_pad = _split_long_runs(seg_len[order], seg_pad[order], max_seqlen)
        return cls._from_numpy(seg_len, seg_pad, (B, capacity), max_seqlen)

    @classmethod
    def causal_rows(cls, shape, device=None) -> "DocBoundaries":
        """One segment per row: plain causal attention over whole rows of ``(B, L)`` (or of
        one ``(T,)`` buffer).

        A model given no boundaries attends this way; so do the padded baseline (one document
        per row; a real token never sees the padding after it) and the naive-packing baseline
        (documents see each other). Built with tensor ops only, so it traces under torch.compile.
        """
        B, L = (1, shape[0]) if len(shape) == 1 else shape
        cu = torch.arange(B + 1, device=device, dtype=torch.int32) * L
        return cls(cu, tuple(shape), is_pad=torch.zeros(B, dtype=torch.bool, device=device),
                   max_seqlen=L, validate=False)

    @classmethod
    def _from_numpy(cls, seg_len: np.ndarray, seg_pad: np.ndarray, shape, max_seqlen):
        cu = np.zeros(seg_len.size + 1, dtype=np.int32)
        np.cumsum(seg_len, out=cu[1:])
        longest = int(seg_len.max()) if seg_len.size else 0
        return cls(torch.from_numpy(cu), shape, is_pad=torch.from_numpy(np.ascontiguousarray(seg_pad)),
                   max_seqlen=longest if max_seqlen is None else max_seqlen, validate=False)

    @classmethod
    def from_attention_mask(cls, attention_mask, *, max_seqlen: int | None = None):
        """From LLaMA-Factory's integer-labelled mask ``[B, L]``: 1..n per document, 0 = padding.

        Each row's documents are numbered 1, 2, ..., n in order of appearance and each is
        contiguous; padding (0) may appear anywhere between documents. A 0/1 or bool mask
        is the special case of one document per row. Raises ``ValueError`` naming the row
        and position of the first violation.
        """
        m = _as_int_tensor(attention_mask, "attention_mask")
        if m.dim() != 2:
            raise ValueError(f"attention_mask must be 2D [batch, seq_len]; got shape {tuple(m.shape)}")
        B, L = m.shape
        if B == 0 or L == 0:
            raise InputError(f"attention_mask has shape {tuple(m.shape)}: no tokens to pack; pass at least one "
                             f"row with at least one position")
        m = m.to(torch.int64)
        if (m < 0).any():
            i = _first_true(m < 0)
            raise ValueError(f"attention_mask row {i // L} position {i % L} holds {int(m.flatten()[i])}: "
                             f"labels must be 0 (padding) or 1..n (documents)")
        change = torch.ones_like(m, dtype=torch.bool)
        change[:, 1:] = m[:, 1:] != m[:, :-1]
        starts = change.flatten().nonzero().squeeze(1)  # flat offset of each segment
        labels = m.flatten()[starts]
        row = starts // L
        doc = labels != 0
        # 1-based rank of each document segment within its row must equal its label.
        seen = torch.cumsum(doc.to(torch.int64), 0)
        row_first = torch.searchsorted(starts, torch.arange(B, device=m.device) * L)
        before = seen[row_first] - doc[row_first].to(torch.int64)
        rank = seen - before[row]
        bad = doc & (labels != rank)
        if bad.any():
            i = _first_true(bad)
            r, pos, lab, want = int(row[i]), int(starts[i] - row[i] * L), int(labels[i]), int(rank[i])
            if lab < want:
                raise ValueError(f"attention_mask row {r} position {pos}: document {lab} starts again after "
                                 f"other tokens; each document must be one contiguous run (not split by padding)")
            raise ValueError(f"attention_mask row {r} position {pos}: label {lab} where {want} was expected; "
                             f"documents must be numbered 1..n in order of appearance within each row")
        cu = torch.cat([starts, starts.new_tensor([B * L])]).to(torch.int32)
        return cls(cu, (B, L), is_pad=~doc, max_seqlen=max_seqlen, validate=max_seqlen is not None)

    @classmethod
    def from_position_ids(cls, position_ids, *, max_seqlen: int | None = None):
        """From per-document ``position_ids`` ``[B, L]`` or ``[T]``.

        A document starts at the beginning of each row and wherever the position does not
        continue the previous one by +1 (normally where it restarts at 0), as in
        transformers' packed-sequence detection. Position ids cannot express padding, so
        every segment is a document.
        """
        p = _as_int_tensor(position_ids, "position_ids")
        if p.dim() not in (1, 2):
            raise ValueError(f"position_ids must be [T] or [B, L]; got shape {tuple(p.shape)}")
        if (p < 0).any():
            i = _first_true(p < 0)
            raise ValueError(f"position_ids hold a negative value at flat position {i}: {int(p.flatten()[i])}")
        shape = tuple(p.shape)
        rows = p.reshape(-1, shape[-1]).to(torch.int64)
        change = torch.ones_like(rows, dtype=torch.bool)
        change[:, 1:] = rows[:, 1:] != rows[:, :-1] + 1
        starts = change.flatten().nonzero().squeeze(1)
        cu = torch.cat([starts, starts.new_tensor([rows.numel()])]).to(torch.int32)
        return cls(cu, shape, max_seqlen=max_seqlen, validate=max_seqlen is not None)

    @classmethod
    def from_cu_seqlens(cls, cu_seqlens, shape=None, *, max_seqlen: int | None = None,
                        is_pad=None, validate: bool = True):
        """From ``cu_seqlens`` (FlashAttention varlen convention) over the flattened buffer.

        ``shape`` defaults to ``(cu_seqlens[-1],)``. Trailing repeats of the total
        (a statically padded ``cu_seqlens``) become zero-length padding segments.
        Validation (on by default) syncs with the host once.
        """
        cu = _as_int_tensor(cu_seqlens, "cu_seqlens")
        if cu.dim() != 1 or cu.numel() == 0:
            raise ValueError(f"cu_seqlens must be 1D with at least one entry; got shape {tuple(cu.shape)}")
        if shape is None:
            shape = (int(cu[-1]),)
        if is_pad is None:
            # Zero-length segments at the end are static-shape filler, i.e. padding.
            seglen = cu[1:] - cu[:-1]
            is_pad = (seglen == 0) & (cu[1:] == cu[-1])
        return cls(cu, shape, is_pad=torch.as_tensor(is_pad), max_seqlen=max_seqlen, validate=validate)

    # ------------------------------------------------------------------ properties

    @property
    def layout(self) -> str:
        """``"rows"`` for ``(B, L)`` batches, ``"1d"`` for one buffer ``(T,)``."""
        return "rows" if len(self.shape) == 2 else "1d"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # not np.prod: torch.compile traces numpy and would break the graph

    @property
    def num_segments(self) -> int:
        """Segments including padding and zero-length filler (a shape, no host sync)."""
        return self.cu_seqlens.numel() - 1

    @property
    def device(self) -> torch.device:
        return self.cu_seqlens.device

    @property
    def seqlens(self) -> torch.Tensor:
        """int32 ``[S]``: length of every segment, padding included."""
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]

    @property
    def is_doc(self) -> torch.Tensor:
        """bool ``[S]``: True for non-empty document segments."""
        return ~self.is_pad & (self.seqlens > 0)

    def num_docs(self) -> int:
        """Number of non-empty documents (host sync)."""
        return int(self.is_doc.sum())

    def num_tokens(self) -> int:
        """Number of real (non-padding) tokens (host sync)."""
        return int(self.seqlens[~self.is_pad].sum())

    # ------------------------------------------------------------------ conversions

    def doc_ids(self) -> torch.Tensor:
        """int64, buffer-shaped: the segment index of every token (padding runs included).

        Segment indices are global over the flattened buffer, so ``doc_ids[q] == doc_ids[k]``
        is exactly the block-diagonal mask for rows and 1D layouts alike.
        """
        pos = torch.arange(self.numel, device=self.device, dtype=torch.int32)
        # Search the whole cu_seqlens (not cu_seqlens[1:]): inductor in torch 2.11 cannot
        # lower searchsorted over a sliced sequence. Segment s holds t when cu[s] <= t < cu[s+1].
        ids = torch.searchsorted(self.cu_seqlens, pos, right=True) - 1
        return ids.reshape(self.shape)

    def position_ids(self) -> torch.Tensor:
        """int64, buffer-shaped: position of every token inside its segment (restarts at 0)."""
        ids = self.doc_ids().flatten()
        pos = torch.arange(self.numel, device=self.device, dtype=torch.int64)
        return (pos - self.cu_seqlens[ids].to(torch.int64)).reshape(self.shape)

    def token_mask(self) -> torch.Tensor:
        """bool, buffer-shaped: True for real tokens, False for padding."""
        return ~self.is_pad[self.doc_ids()]

    def attention_mask(self) -> torch.Tensor:
        """LLaMA-Factory's integer-labelled mask, buffer-shaped: 1..n per row, 0 = padding."""
        ids = self.doc_ids().reshape(-1, self.shape[-1])  # (B, L); a 1D buffer is one row
        counted = torch.cumsum(self.is_doc.to(torch.int64), 0)  # documents up to each segment
        first = ids[:, 0]
        before_row = counted[first] - self.is_doc[first].to(torch.int64)
        labels = (counted[ids] - before_row[:, None]) * (~self.is_pad[ids])
        return labels.reshape(self.shape)

    def dense_mask(self, *, causal: bool = True, window: int | None = None) -> torch.Tensor:
        """bool block-diagonal mask for SDPA/eager: ``(B, 1, L, L)`` for rows, ``(1, 1, T, T)`` for 1D.

        True = may attend. ``window`` keeps only keys at most ``window - 1`` positions
        behind the query (the query itself included), as FlashAttention's
        ``window_size=(window - 1, 0)``. O(L^2) memory: for long rows prefer a varlen
        or flex backend.
        """
        ids = self.doc_ids().reshape(-1, self.shape[-1])
        L = ids.shape[-1]
        mask = ids[:, None, :, None] == ids[:, None, None, :]
        if causal or window is not None:
            q = torch.arange(L, device=self.device)[:, None]
            k = torch.arange(L, device=self.device)[None, :]
            keep = torch.ones(L, L, dtype=torch.bool, device=self.device)
            if causal:
                keep &= k <= q
            if window is not None:
                keep &= (q - k < window) if causal else ((q - k).abs() < window)
            mask = mask & keep
        return mask

    def doc_seqlens(self) -> torch.Tensor:
        """int32 lengths of the non-empty documents in order, padding excluded (host sync)."""
        return self.seqlens[self.is_doc]

    def unpad_data(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(indices, cu_seqlens, max_seqlen)`` over the real tokens only, as FlashAttention's
        ``unpad_input``/LLaMA-Factory's ``get_unpad_data``: gather ``x.flatten(0, -2)[indices]``
        then call a varlen kernel with documents-only ``cu_seqlens`` (int32)."""
        indices = self.token_mask().flatten().nonzero().flatten()
        lens = self.doc_seqlens()
        cu = torch.zeros(lens.numel() + 1, dtype=torch.int32, device=self.device)
        cu[1:] = torch.cumsum(lens, 0)
        return indices, cu, int(lens.max()) if lens.numel() else 0

    def static(self, max_num_docs: int, max_seqlen: int | None = None) -> "DocBoundaries":
        """Pad ``cu_seqlens`` to ``max_num_docs + 1`` entries by repeating the total.

        With ``max_num_docs`` and ``max_seqlen`` constants, every batch has the same shapes
        and a compiled model never recompiles. ``max_num_docs`` counts segments: documents
        plus padding runs (one per row that is not full).
        """
        S = self.num_segments
        if S > max_num_docs:
            raise ValueError(f"batch has {S} segments (documents plus padding runs) but max_num_docs is "
                             f"{max_num_docs}: raise max_num_docs or cap documents per row "
                             f"(plan_packing max_docs_per_bin)")
        if max_seqlen is None:
            max_seqlen = self.max_seqlen
        elif max_seqlen < self.max_seqlen and int(self.seqlens.max()) > max_seqlen:
            raise ValueError(f"a segment has {int(self.seqlens.max())} tokens but max_seqlen is {max_seqlen}")
        extra = max_num_docs - S
        cu = torch.cat([self.cu_seqlens, self.cu_seqlens[-1:].expand(extra)])
        pad = torch.cat([self.is_pad, self.is_pad.new_ones(extra)])
        return DocBoundaries(cu, self.shape, is_pad=pad, max_seqlen=max_seqlen, validate=False)

    def flatten(self) -> "DocBoundaries":
        """The same boundaries viewed as one 1D buffer of ``B * L`` tokens."""
        return DocBoundaries(self.cu_seqlens, (self.numel,), is_pad=self.is_pad,
                             max_seqlen=self.max_seqlen, validate=False)

    def to(self, device, non_blocking: bool = False) -> "DocBoundaries":
        return DocBoundaries(self.cu_seqlens.to(device, non_blocking=non_blocking), self.shape,
                             is_pad=self.is_pad.to(device, non_blocking=non_blocking),
                             max_seqlen=self.max_seqlen, validate=False)

    def pin_memory(self) -> "DocBoundaries":
        """Page-locked copies (a copy to the GPU from pageable memory waits for queued work)."""
        return DocBoundaries(self.cu_seqlens.pin_memory(), self.shape, is_pad=self.is_pad.pin_memory(),
                             max_seqlen=self.max_seqlen, validate=False)

    def equals(self, other: "DocBoundaries") -> bool:
        """Same shape, segments and padding flags (host sync)."""
        return (self.shape == other.shape and torch.equal(self.cu_seqlens.cpu(), other.cu_seqlens.cpu())
                and torch.equal(self.is_pad.cpu(), other.is_pad.cpu()))

    def __repr__(self) -> str:
        return (f"DocBoundaries(shape={self.shape}, segments={self.num_segments}, "
                f"max_seqlen={self.max_seqlen}, device={self.device})")


def check_cu_seqlens(cu: torch.Tensor, shape: tuple[int, ...]) -> None:
    """Raise ValueError unless ``cu`` is valid offsets for a buffer of this shape."""
    if len(shape) not in (1, 2):
        raise ValueError(f"shape must be (T,) or (B, L); got {shape}")
    if cu.dim() != 1 or cu.numel() == 0:
        raise ValueError(f"cu_seqlens must be 1D with at least one entry; got shape {tuple(cu.shape)}")
    total = int(np.prod(shape))
    c = cu.detach().cpu().to(torch.int64)
    if int(c[0]) != 0:
        raise ValueError(f"cu_seqlens must start at 0; got {int(c[0])}")
    if int(c[-1]) != total:
        raise ValueError(f"cu_seqlens ends at {int(c[-1])} but the buffer has {total} tokens: the last "
                         f"entry must equal the token count (make trailing padding a segment of its own)")
    dec = c[1:] < c[:-1]
    if dec.any():
        i = _first_true(dec)
        raise ValueError(f"cu_seqlens decreases at index {i + 1}: {int(c[i])} -> {int(c[i + 1])}")
    if len(shape) == 2:
        row_ends = torch.arange(1, shape[0]) * shape[1]
        missing = ~torch.isin(row_ends, c)
        if missing.any():
            raise ValueError(f"a segment crosses the end of row {_first_true(missing)} (offset "
                             f"{int(row_ends[missing][0])} is not in cu_seqlens); in a (B, L) batch "
                             f"documents must not span rows")


# ----------------------------------------------------------------------------------------
# LLaMA-Factory's API (llamafactory.model.model_utils.packing), same names and semantics.


def get_seqlens_in_batch(attention_mask: torch.Tensor) -> torch.Tensor:
    """Lengths of the documents of an integer-labelled mask, row by row, padding dropped.

    ``[[1, 1, 2, 2, 2, 0], [1, 2, 2, 3, 3, 3]] -> tensor([2, 3, 1, 2, 3])``
    """
    b = DocBoundaries.from_attention_mask(attention_mask)
    dtype = attention_mask.dtype if isinstance(attention_mask, torch.Tensor) and \
        not attention_mask.dtype.is_floating_point and attention_mask.dtype != torch.bool else torch.int64
    return b.doc_seqlens().to(dtype)


def get_unpad_data(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(indices, cu_seqlens, max_seqlen)`` for FlashAttention varlen from an integer-labelled mask.

    ``indices`` (int64) select the non-padding tokens of the flattened batch,
    ``cu_seqlens`` (int32) mark document starts over those tokens, ``max_seqlen`` is a
    Python int.
    """
    return DocBoundaries.from_attention_mask(attention_mask).unpad_data()
