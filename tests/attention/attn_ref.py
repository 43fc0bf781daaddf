"""Shared by the attention tests: the per-document float64 reference and random batches."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from seqpack.boundaries import DocBoundaries


def reference(q, k, v, b: DocBoundaries, causal: bool, window, scale=None) -> torch.Tensor:
    """Each segment alone through plain float64 softmax attention; q's layout, float64."""
    qf, kf, vf = (x.reshape(-1, *x.shape[-2:]).double() for x in (q, k, v))
    H, Hkv, D = q.shape[-2], k.shape[-2], q.shape[-1]
    g = H // Hkv
    scale = 1 / math.sqrt(D) if scale is None else scale
    pieces = []
    cu = b.cu_seqlens.tolist()
    for s, e in zip(cu[:-1], cu[1:]):
        n = e - s
        if n == 0:
            continue
        qq = qf[s:e].transpose(0, 1)                              # (H, n, D)
        kk = kf[s:e].repeat_interleave(g, 1).transpose(0, 1)
        vv = vf[s:e].repeat_interleave(g, 1).transpose(0, 1)
        i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        allowed = torch.ones(n, n, dtype=torch.bool)
        if causal:
            allowed &= j <= i
        if window is not None:
            allowed &= (i - j < window) if causal else ((i - j).abs() < window)
        scores = (qq @ kk.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
        pieces.append((scores.softmax(-1) @ vv).transpose(0, 1))
    return torch.cat(pieces).reshape(q.shape)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||; a reference that is (almost) zero, e.g. dq of a length-1 document,
    is compared absolutely (denominator at least 1e-3)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-3))


def make_qkv(b: DocBoundaries, heads: int, kv_heads: int, dim: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = tuple(b.shape)
    return tuple(torch.randn(*shape, h, dim, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
                 for h in (heads, kv_heads, kv_heads))


def grads(fn, q, k, v, w):
    """Output and input gradients of ``(fn(q, k, v) * w).sum()``."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    (out.double() * w).sum().backward()
    return out, q.grad, k.grad, v.grad


@st.composite
def boundaries(draw, max_len: int = 40, max_rows: int = 3, layout: str | None = None):
    """Random valid boundaries: rows or 1D, padding segments, length-1 documents, a document
    filling its row, empty rows, a max_seqlen above the longest segment, and empty padded
    slots at the end of ``cu_seqlens`` (static shapes)."""
    layout = layout or draw(st.sampled_from(["rows", "1d"]))
    max_doc = draw(st.integers(1, max_len))
    doc = st.one_of(st.just(1), st.integers(1, max_doc))
    if layout == "rows":
        L = draw(st.integers(max(1, max_doc // 2), max_len))
        rows = []
        for _ in range(draw(st.integers(1, max_rows))):
            kind = draw(st.sampled_from(["docs", "full", "empty"]))
            if kind == "full":
                rows.append([L])
                continue
            row, room = [], L
            while kind == "docs" and room > 0 and draw(st.booleans()):
                n = min(draw(doc), room)
                row.append(n)
                room -= n
            rows.append(row)
        b = DocBoundaries.from_row_lengths(rows, L, max_seqlen=L + draw(st.integers(0, 3)))
    else:
        lens = draw(st.lists(doc, min_size=0, max_size=8))
        T = sum(lens) + draw(st.integers(0, max_len))
        if T == 0:
            lens, T = [1], 1
        b = DocBoundaries.from_lengths(lens, T, max_seqlen=max(lens + [1]) + draw(st.integers(0, 3)))
    extra = draw(st.integers(0, 3))
    return b.static(b.num_segments + extra) if extra else b
