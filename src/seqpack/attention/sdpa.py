"""SDPA backends: a dense block-diagonal mask (runs anywhere) and nested jagged tensors.

Notable:
- ``sdpa_dense`` never builds a T x T mask for a long 1D buffer when a band suffices.
  Every document is at most ``max_seqlen`` tokens, so a query only ever needs keys
  within ``max_seqlen - 1`` (or ``window - 1``) of itself. The flattened buffer is cut
  into chunks of C queries, each paired with the C + reach keys around it (an
  ``unfold`` view), and the document-id mask is applied inside each chunk: O(N * (C +
  reach)) instead of O(N^2), with static shapes and no host sync (no need to find cut
  points in the data). Rows whose length is close to ``max_seqlen`` use one dense mask
  per row, which is then cheaper.
- Padding in the band (before the buffer, after it) gets document ids no real token has,
  and every padded query sees itself, so no softmax row is empty.
- ``sdpa_njt`` turns the buffer into a nested jagged tensor with one component per
  non-empty segment (zero-length filler segments are dropped first: one host sync, and
  the fused kernels refuse empty components). PyTorch refuses ``is_causal=True`` for
  nested tensors on CPU, and it has no window. Eager only: under torch.compile with
  static shapes the ragged dimension would force recompiles.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from seqpack.attention.base import AttentionContext, AttentionRequest, Backend, flat, left_right_reach, repeat_kv

__all__ = ["SdpaDense", "SdpaNJT", "ChunkPlan", "chunk_plan", "chunked"]


def _sdpa_has_gqa() -> bool:
    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # a builtin without a Python signature: read its docstring
        return "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


_SDPA_HAS_GQA = _sdpa_has_gqa()


# ----------------------------------------------------------------------------------------
# chunking: rows, or bands of the flattened buffer


@dataclass(frozen=True)
class ChunkPlan:
    """How a dense-mask backend cuts the buffer. ``kind`` is "rows" or "band"."""

    kind: str
    chunk: int = 0   # queries per band chunk
    left: int = 0    # keys before a chunk's first query
    right: int = 0   # keys after its last query


MIN_CHUNK = 128  # queries per band chunk at least: smaller chunks make too many tiny matmuls


def chunk_plan(req: AttentionRequest) -> ChunkPlan:
    """Rows when a row is about as long as the reach of a query, bands otherwise (static)."""
    left, right = left_right_reach(req.causal, req.window, req.max_seqlen)
    chunk = max(MIN_CHUNK, left + right)
    keys_per_query_band = chunk + left + right
    if keys_per_query_band * 4 >= req.seqlen * 3:  # a band would save less than a quarter
        return ChunkPlan("rows")
    return ChunkPlan("band", chunk, left, right)


def _band_windows(x: torch.Tensor, plan: ChunkPlan, n_chunks: int, fill=0) -> torch.Tensor:
    """``[N, ...] -> [n_chunks, chunk + left + right, ...]``: the keys around each chunk (a view of a padded copy)."""
    N = x.shape[0]
    back = n_chunks * plan.chunk - N + plan.right
    pad = [0, 0] * (x.dim() - 1) + [plan.left, back]
    xp = F.pad(x, pad, value=fill)
    w = xp.unfold(0, plan.chunk + plan.left + plan.right, plan.chunk)  # [n, ..., W]
    return w.movedim(-1, 1)


def chunked(q, k, v, ctx: AttentionContext, req: AttentionRequest):
    """Cut q/k/v into independent chunks with their boolean masks.

    Returns ``(qc, kc, vc, mask, unchunk)``: qc ``[n, H, Cq, D]``, kc/vc ``[n, Hkv, Ck, D]``,
    mask bool ``[n, 1, Cq, Ck]`` (True = attend), and ``unchunk(out)`` mapping
    ``[n, H, Cq, D]`` back to q's layout.
    """
    b = ctx.boundaries
    plan = chunk_plan(req)
    docs = b.doc_ids().reshape(-1)  # the segment of every token of the flattened buffer
    if plan.kind == "rows":
        rows = lambda x: x.reshape(req.batch, req.seqlen, *x.shape[-2:]).transpose(1, 2)  # noqa: E731
        ids = docs.view(req.batch, req.seqlen)
        pos = torch.arange(req.seqlen, device=q.device)
        offset = pos[None, :] - pos[:, None]  # key position - query position
        keep = (offset <= 0) if req.causal else torch.ones_like(offset, dtype=torch.bool)
        if req.window is not None:
            keep &= offset.abs() < req.window
        mask = (ids[:, None, :, None] == ids[:, None, None, :]) & keep  # as DocBoundaries.dense_mask
        shape = q.shape

        def unchunk(out):
            return out.transpose(1, 2).reshape(shape)

        return rows(q), rows(k), rows(v), mask, unchunk

    N = req.tokens
    n = -(-N // plan.chunk)
    C, W = plan.chunk, plan.chunk + plan.left + plan.right
    qdocs = F.pad(docs, (0, n * C - N), value=-2).view(n, C)
    kdocs = _band_windows(docs, plan, n, fill=-2)
    if plan.left:  # ids of the keys before the buffer: never a real segment, never a padded query
        kdocs = kdocs.clone()
        kdocs[0, :plan.left] = -1
    offset = (torch.arange(W, device=q.device)[None, :] - plan.left) - torch.arange(C, device=q.device)[:, None]
    keep = offset <= plan.right  # offset = key position - query position
    keep &= offset >= -plan.left
    if req.window is not None and not req.causal:
        keep &= offset.abs() < req.window
    mask = (qdocs[:, :, None] == kdocs[:, None, :]) & keep
    qc = F.pad(flat(q), (0, 0, 0, 0, 0, n * C - N)).view(n, C, *q.shape[-2:]).transpose(1, 2)
    kc = _band_windows(flat(k), plan, n).transpose(1, 2)
    vc = _band_windows(flat(v), plan, n).transpose(1, 2)
    shape = q.shape

    def unchunk(out):
        return out.transpose(1, 2).reshape(n * C, *shape[-2:])[:N].reshape(shape)

    return qc, kc, vc, mask[:, None], unchunk


# ----------------------------------------------------------------------------------------


class SdpaDense(Backend):
    """``F.scaled_dot_product_attention`` with a boolean block-diagonal mask per chunk."""

    name = "sdpa_dense"

    def supports(self, req: AttentionRequest) -> str | None:
        if req.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            return f"dtype {req.dtype} is not a floating type SDPA accepts"
        return None

    def __call__(self, q, k, v, ctx, req, scale):
        qc, kc, vc, mask, unchunk = chunked(q, k, v, ctx, req)
        groups = req.gqa_groups
        if groups > 1 and not _SDPA_HAS_GQA:
            kc, vc = kc.repeat_interleave(groups, dim=1), vc.repeat_interleave(groups, dim=1)
            groups = 1
        kwargs = {"enable_gqa": True} if groups > 1 else {}
        out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mask, scale=scale, **kwargs)
        return unchunk(out)


class SdpaNJT(Backend):
    """SDPA on nested jagged tensors: one component per segment (CUDA dispatches to flash varlen)."""

    name = "sdpa_njt"

    def supports(self, req: AttentionRequest) -> str | None:
        if req.window is not None:
            return "SDPA on nested tensors has no sliding window"
        if req.compiling:
            return "nested tensors have a data-dependent ragged dim: not usable under torch.compile(dynamic=False)"
        if req.causal and req.device_type != "cuda":
            return f"PyTorch refuses is_causal=True for nested tensors on {req.device_type} (CUDA only)"
        if req.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            return f"dtype {req.dtype} is not a floating type SDPA accepts"
        return None

    def __call__(self, q, k, v, ctx, req, scale):
        b = ctx.boundaries
        offsets = torch.unique_consecutive(b.cu_seqlens.to(torch.int64))  # drop empty segments (sync)
        groups = req.gqa_groups

        def nest(x):
            return torch.nested.nested_tensor_from_jagged(
                flat(x), offsets, max_seqlen=b.max_seqlen).transpose(1, 2)  # (S, H, j, D)

        qn, kn, vn = nest(q), nest(repeat_kv(k, groups)), nest(repeat_kv(v, groups))
        out = F.scaled_dot_product_attention(qn, kn, vn, is_causal=req.causal, scale=scale)
        return out.transpose(1, 2).values().reshape(q.shape)
