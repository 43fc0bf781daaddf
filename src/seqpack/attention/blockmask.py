"""A flex-attention BlockMask built directly from ``cu_seqlens`` in O(number of blocks).

Notable:
- ``create_block_mask`` evaluates the mask on every (q, kv) block pair: O(L^2 / BS^2)
  mask calls, milliseconds per 32K-token batch even on an H100. Here the
  block structure is computed from the documents' offsets instead. Documents are
  contiguous, so the key blocks a query block needs form one contiguous range, and the
  blocks it may skip the mask on ("full" blocks) form a contiguous sub-range of it; the
  partial blocks are at most two runs on either side. Each is a handful of integer ops
  on ``[B, num_blocks]`` tensors, then one ``[B, num_blocks, width]`` index expansion.
- The tables' width (kv_indices' last dim) is the number of blocks by default; with
  ``narrow=True`` it is bounded by ``max_seqlen`` instead (a query block cannot reach
  further than its longest document). Either way it ignores the window and causality,
  and the mask_mod takes its reach as tensors, so every (causal, window) variant has the
  same shapes and shares one compiled flex kernel.
- The transposed tables (which query blocks read a key block: flex's backward) come from
  the same function with the offset range mirrored, so no ``_transpose_ordered`` sort.
- Everything is static-shaped tensor code with no host sync and no Python loop over
  blocks or documents, so it traces under ``torch.compile``. On CUDA, outside a compiled
  region, the same arithmetic runs as one Triton kernel (`_blockmask_triton`): the
  torch builder compiled on its own spends its time in launch and guard overhead.
- Full-block tests are sufficient conditions: a block they miss is marked partial and
  gets the exact document mask_mod, which costs time, never correctness.
"""

from __future__ import annotations

import importlib.util

import torch

from seqpack.attention.base import left_right_reach
from seqpack.boundaries import DocBoundaries

HAVE_TRITON = importlib.util.find_spec("triton") is not None  # cheap; the import is tried on use

__all__ = ["build_block_mask", "doc_mask_mod"]

# ----------------------------------------------------------------------------------------
# pure helpers on [B, nb] int64 tensors


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _floor_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return torch.div(a, b, rounding_mode="floor")


def _block_tables(f, l, seg_f, seg_l, dlo: torch.Tensor, dhi: torch.Tensor, nb: int, bs: int, width: int):
    """Partial and full column blocks of each row block.

    ``f``/``l``: first/last token of each row block, row-relative, ``[B, nb]``.
    ``seg_f``/``seg_l``: ``(start, end)`` of the segment holding f / l, row-relative.
    A row token r may see a column token c of its own segment when dlo <= c - r <= dhi.
    Returns int32 ``(num, idx, full_num, full_idx)`` shaped ``[B, 1, nb]`` / ``[B, 1, nb, width]``.
    """
    (sf, _), (sl, el) = seg_f, seg_l
    # Columns reachable by some row of the block: one contiguous run (every row sees itself).
    cmin = torch.maximum(sf, f + dlo)
    cmax = torch.minimum(el - 1, l + dhi)
    lo, hi = _floor_div(cmin, bs), _floor_div(cmax, bs)
    # Full blocks: all rows and all columns in one segment and every offset allowed.
    jmin = torch.maximum(_ceil_div(sl, bs), _ceil_div(l + dlo, bs)).clamp_min(lo)
    jmax = torch.minimum(_floor_div(el, bs) - 1, _floor_div(f + dhi - bs + 1, bs)).clamp_max(hi)
    has_full = (sl <= f) & (jmin <= jmax)
    jmin = torch.where(has_full, jmin, hi + 1)
    jmax = torch.where(has_full, jmax, hi)
    # Partial = [lo, jmin) and (jmax, hi].
    n_left = jmin - lo
    num = n_left + (hi - jmax)
    full_num = jmax - jmin + 1
    p = torch.arange(width, device=f.device, dtype=torch.int64)
    idx = torch.where(p < n_left[..., None], lo[..., None] + p, jmax[..., None] + 1 + p - n_left[..., None])
    full_idx = jmin[..., None] + p
    as_out = lambda t: t.clamp(0, nb - 1).to(torch.int32).unsqueeze(1).contiguous()  # noqa: E731
    count = lambda t: t.to(torch.int32).unsqueeze(1).contiguous()  # noqa: E731
    return count(num), as_out(idx), count(full_num), as_out(full_idx)


def _block_mask_tensors(cu_seqlens: torch.Tensor, reach: torch.Tensor, B: int, N: int, bs: int, width: int):
    """All tensors of the document BlockMask (see module docstring).

    ``reach``: int64 ``[2]`` on the device, how far a query sees left and right in its
    document (a tensor so that causal, bidirectional and every window share one compiled
    builder); ``B, N, bs, width``: the shapes, Python ints.
    """
    device = cu_seqlens.device
    cu = cu_seqlens.to(torch.int64)
    nb = -(-N // bs)
    left, right = reach[0], reach[1]
    row_off = (torch.arange(B, device=device, dtype=torch.int64) * N)[:, None]  # [B, 1]
    f = torch.arange(nb, device=device, dtype=torch.int64)[None, :] * bs       # [1, nb]
    l = torch.clamp(f + bs, max=N) - 1
    f, l = f.expand(B, nb), l.expand(B, nb)

    # searchsorted over the whole cu (minus one), never over a slice of it: inductor in
    # torch 2.11 fails to lower searchsorted on a sliced sequence (NotImplementedError: SliceView).
    def seg_of(t):  # (start, end) of the segment holding row-relative token t
        s = torch.searchsorted(cu, t + row_off, right=True) - 1
        return cu[s] - row_off, cu[s + 1] - row_off

    seg_f, seg_l = seg_of(f), seg_of(l)
    kv = _block_tables(f, l, seg_f, seg_l, -left, right, nb, bs, width)
    # Transposed: row axis = keys, columns = queries; q - k in [-right, left].
    q = _block_tables(f, l, seg_f, seg_l, -right, left, nb, bs, width)
    docs = torch.searchsorted(cu, torch.arange(B * N, device=device, dtype=torch.int64), right=True) - 1
    return kv, q, docs.to(torch.int32).view(B, N)


def doc_mask_mod(docs: torch.Tensor, left: torch.Tensor, right: torch.Tensor):
    """mask_mod for the partial blocks: same segment and ``-left <= kv - q <= right``.

    ``docs``: ``[B, N]`` segment ids; ``left``/``right``: 0-dim int tensors, not Python ints,
    so causal, bidirectional and every window share one compiled flex kernel.
    """
    def mask_mod(b, h, q_idx, kv_idx):
        d = kv_idx - q_idx
        return (docs[b, q_idx] == docs[b, kv_idx]) & (d <= right) & (d >= -left)
    return mask_mod


_compiled = None


def _compiled_builder():
    """The builder compiled once with dynamic shapes (outside torch.compile only).

    ``dynamic=True``: the segment count and the batch shape are symbolic, so a run
    compiles about twice (dynamo specialises a batch of 1) whatever the document layouts
    and shapes; a per-shape ``dynamic=False`` build would share one code object's
    recompile limit (8) across shapes and padded lengths.
    """
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_block_mask_tensors, dynamic=True)
    return _compiled


_TRITON_BUILDER = []


def _triton_builder():
    """The one-launch Triton builder, or None if Triton does not import."""
    if not _TRITON_BUILDER:
        fn = None
        if HAVE_TRITON:
            try:
                from seqpack.attention._blockmask_triton import block_mask_tensors as fn
            except Exception:
                fn = None
        _TRITON_BUILDER.append(fn)
    return _TRITON_BUILDER[0]


_REACH = {}


def _reach_tensor(left: int, right: int, device: torch.device) -> torch.Tensor:
    """``[left, right]`` on the device, cached (a host-to-device copy per batch is avoidable)."""
    if torch.compiler.is_compiling():
        return torch.tensor([left, right], dtype=torch.int64, device=device)
    key = (left, right, device)
    t = _REACH.get(key)
    if t is None:
        t = _REACH[key] = torch.tensor([left, right], dtype=torch.int64, device=device)
    return t


def build_block_mask(boundaries: DocBoundaries, *, causal: bool = True, window: int | None = None,
                     block_size: int = 128, impl: str = "auto", narrow: bool = False):
    """Flex ``BlockMask`` for block-diagonal attention over ``boundaries``.

    Rows ``(B, L)`` give a mask with batch dim B over sequences of L; a 1D buffer ``(T,)``
    gives batch dim 1 over T. ``window`` as in `varlen_attention`. No host sync.

    ``impl``: ``"triton"`` (one kernel launch; CUDA with Triton), ``"compiled"`` (the torch
    builder under torch.compile), ``"eager"`` (plain torch ops), or ``"auto"``: triton on
    CUDA when Triton imports, else compiled on CUDA, eager elsewhere. Inside a compiled
    region the torch builder is always used (traced into the caller's graph).

    ``narrow=True`` sizes the index tables by ``max_seqlen`` instead of the row length
    (``[B, 1, nb, 1 + 2 ceil((max_seqlen - 1) / block_size)]`` instead of ``[B, 1, nb, nb]``),
    for very long buffers of short documents. Off by default: flex's CPU lowering (torch
    2.13) asserts full-width tables, and ``BlockMask.to_dense`` assumes them.
    """
    from torch.nn.attention.flex_attention import BlockMask

    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 token; got {window}")
    B, N = (boundaries.shape if boundaries.layout == "rows" else (1, boundaries.shape[0]))
    M, bs = boundaries.max_seqlen, block_size
    nb = -(-N // bs)
    # A block-aligned run of bs rows reaches max_seqlen - 1 tokens each side: its own block
    # plus ceil((max_seqlen - 1) / bs) blocks on either side.
    width = min(nb, 1 + 2 * -(-max(M - 1, 0) // bs)) if narrow else nb
    left, right = left_right_reach(causal, window, M)
    reach = _reach_tensor(left, right, boundaries.device)
    cu = boundaries.cu_seqlens
    if impl not in ("auto", "triton", "compiled", "eager"):
        raise ValueError(f"impl must be 'auto', 'triton', 'compiled' or 'eager'; got {impl!r}")
    if torch.compiler.is_compiling():  # traced into the caller's graph
        tables = _block_mask_tensors(cu, reach, B, N, bs, width)
    else:
        if impl == "auto":
            impl = ("triton" if _triton_builder() else "compiled") if boundaries.device.type == "cuda" else "eager"
        if impl == "eager":
            tables = _block_mask_tensors(cu, reach, B, N, bs, width)
        elif impl == "compiled":
            tables = _compiled_builder()(cu, reach, B, N, bs, width)
        elif _triton_builder() is None:
            raise ValueError("impl='triton' needs Triton (it does not import here); use impl='compiled'")
        else:
            tables = _triton_builder()(cu, left, right, B, N, bs, width)
    (kv_num, kv_idx, fkv_num, fkv_idx), (q_num, q_idx, fq_num, fq_idx), docs = tables
    return BlockMask(
        seq_lengths=(N, N), kv_num_blocks=kv_num, kv_indices=kv_idx,
        full_kv_num_blocks=fkv_num, full_kv_indices=fkv_idx,
        q_num_blocks=q_num, q_indices=q_idx, full_q_num_blocks=fq_num, full_q_indices=fq_idx,
        BLOCK_SIZE=(block_size, block_size), mask_mod=doc_mask_mod(docs, reach[0], reach[1]))
