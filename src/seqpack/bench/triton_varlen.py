"""An experimental Triton varlen kernel that tiles the flat buffer, not the documents.

Notable:
- FlashAttention's varlen kernels tile each document separately: a 150-token document
  costs two 128-row tiles, the second one 83% empty. Here query tiles are fixed windows of
  the flattened buffer (BLOCK_M tokens, possibly several short documents), and each tile
  visits the one contiguous run of key tiles its documents need (from the start of the
  document holding its first query to the end of the one holding its last, clipped by
  causality and the window). The per-element mask is the same document id, the same
  rule as everywhere: ``-left <= k - q <= right``.
- Forward: online softmax in fp32, log2 domain, LSE saved. Backward: FA2's split: one
  program per key tile accumulates dK/dV over the query tiles (and over the query heads of
  a GQA group, so no atomics), one per query tile accumulates dQ; ``delta = rowsum(dO * O)``
  comes from a small kernel.
- Per-token ``doc``, ``doc_start``, ``doc_end`` (int32) are computed from ``cu_seqlens`` with
  ``searchsorted``: no host sync. Padding segments are documents like any other.
- Registered as custom ops (``seqpack::triton_varlen_fwd``/``_bwd``, fake impls, autograd), so
  compiled models keep one graph.
- Experimental: not in the default backends (``benchmarks/gpu_attention.py`` registers it,
  checks it against the reference and times it). CPU tests run the kernels under
  ``TRITON_INTERPRET=1`` when Triton is installed.
"""

from __future__ import annotations

import torch

from seqpack.attention.base import Backend, flat, left_right_reach

__all__ = ["TritonVarlen", "varlen_fwd", "varlen_bwd", "HAVE_TRITON"]

LOG2E = 1.4426950408889634

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except Exception:  # not installed, or installed but broken: the backend says so
    HAVE_TRITON = False

if HAVE_TRITON:

    @triton.jit
    def _fwd_kernel(Q, K, V, O, LSE, DOC, DSTART, DEND,
                    sqt, sqh, skt, skh, svt, svh, sot, soh,
                    N, GROUPS, scale_log2, LEFT, RIGHT,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        h = tl.program_id(1)
        hk = h // GROUPS
        m0 = pid_m * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        in_m = offs_m < N
        doc_q = tl.load(DOC + offs_m, mask=in_m, other=-1)
        last = tl.minimum(m0 + BLOCK_M, N) - 1
        lo = tl.maximum(tl.load(DSTART + m0), m0 - LEFT)
        hi = tl.minimum(tl.load(DEND + last) - 1, last + RIGHT) + 1
        q = tl.load(Q + offs_m[:, None] * sqt + h * sqh + offs_d[None, :], mask=in_m[:, None], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for n0 in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            in_n = offs_n < N
            k = tl.load(K + offs_n[:, None] * skt + hk * skh + offs_d[None, :], mask=in_n[:, None], other=0.0)
            v = tl.load(V + offs_n[:, None] * svt + hk * svh + offs_d[None, :], mask=in_n[:, None], other=0.0)
            doc_k = tl.load(DOC + offs_n, mask=in_n, other=-2)
            d = offs_n[None, :] - offs_m[:, None]
            ok = (doc_q[:, None] == doc_k[None, :]) & (d <= RIGHT) & (d >= -LEFT)
            s = tl.where(ok, tl.dot(q, tl.trans(k)) * scale_log2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        tl.store(O + offs_m[:, None] * sot + h * soh + offs_d[None, :], out.to(O.dtype.element_ty), mask=in_m[:, None])
        tl.store(LSE + h * N + offs_m, m_i + tl.log2(l_safe), mask=in_m)

    @triton.jit
    def _delta_kernel(O, DO, DELTA, sot, soh, sdt, sdh, N, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
        pid_m = tl.program_id(0)
        h = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        in_m = offs_m < N
        o = tl.load(O + offs_m[:, None] * sot + h * soh + offs_d[None, :], mask=in_m[:, None], other=0.0)
        do = tl.load(DO + offs_m[:, None] * sdt + h * sdh + offs_d[None, :], mask=in_m[:, None], other=0.0)
        tl.store(DELTA + h * N + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=in_m)

    @triton.jit
    def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DOC, DSTART, DEND,
                     sqt, sqh, skt, skh, svt, svh, sdt, sdh, sdkt, sdkh, sdvt, sdvh,
                     N, GROUPS, scale_log2, scale, LEFT, RIGHT,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_n = tl.program_id(0)
        hk = tl.program_id(1)
        n0 = pid_n * BLOCK_N
        offs_n = n0 + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        in_n = offs_n < N
        doc_k = tl.load(DOC + offs_n, mask=in_n, other=-2)
        last = tl.minimum(n0 + BLOCK_N, N) - 1
        # queries that see these keys: -left <= k - q <= right, same document
        lo = tl.maximum(tl.load(DSTART + n0), n0 - RIGHT)
        hi = tl.minimum(tl.load(DEND + last) - 1, last + LEFT) + 1
        k = tl.load(K + offs_n[:, None] * skt + hk * skh + offs_d[None, :], mask=in_n[:, None], other=0.0)
        v = tl.load(V + offs_n[:, None] * svt + hk * svh + offs_d[None, :], mask=in_n[:, None], other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        # Transposed throughout (S^T = K Q^T, as Triton's fused-attention tutorial does): the
        # version with S = Q K^T and tl.trans(dS) gave dK 1-2% off on the H100 (Triton 3.6)
        # while dQ and dV were right, and right in the interpreter.
        for g in range(0, GROUPS):
            h = hk * GROUPS + g
            for m0 in range((lo // BLOCK_M) * BLOCK_M, hi, BLOCK_M):
                offs_m = m0 + tl.arange(0, BLOCK_M)
                in_m = offs_m < N
                qT = tl.load(Q + offs_m[None, :] * sqt + h * sqh + offs_d[:, None], mask=in_m[None, :], other=0.0)
                do = tl.load(DO + offs_m[:, None] * sdt + h * sdh + offs_d[None, :], mask=in_m[:, None], other=0.0)
                lse = tl.load(LSE + h * N + offs_m, mask=in_m, other=0.0)
                delta = tl.load(DELTA + h * N + offs_m, mask=in_m, other=0.0)
                doc_q = tl.load(DOC + offs_m, mask=in_m, other=-1)
                d = offs_n[:, None] - offs_m[None, :]                          # k - q, [BN, BM]
                ok = (doc_k[:, None] == doc_q[None, :]) & (d <= RIGHT) & (d >= -LEFT)
                sT = tl.dot(k, qT) * scale_log2
                pT = tl.where(ok, tl.exp2(sT - lse[None, :]), 0.0)
                dv += tl.dot(pT.to(do.dtype), do)
                dpT = tl.dot(v, tl.trans(do))
                dsT = pT * (dpT - delta[None, :])
                dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT))
        tl.store(DK + offs_n[:, None] * sdkt + hk * sdkh + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
                 mask=in_n[:, None])
        tl.store(DV + offs_n[:, None] * sdvt + hk * sdvh + offs_d[None, :], dv.to(DV.dtype.element_ty),
                 mask=in_n[:, None])

    @triton.jit
    def _dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, DOC, DSTART, DEND,
                   sqt, sqh, skt, skh, svt, svh, sdt, sdh, sdqt, sdqh,
                   N, GROUPS, scale_log2, scale, LEFT, RIGHT,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        h = tl.program_id(1)
        hk = h // GROUPS
        m0 = pid_m * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        in_m = offs_m < N
        doc_q = tl.load(DOC + offs_m, mask=in_m, other=-1)
        last = tl.minimum(m0 + BLOCK_M, N) - 1
        lo = tl.maximum(tl.load(DSTART + m0), m0 - LEFT)
        hi = tl.minimum(tl.load(DEND + last) - 1, last + RIGHT) + 1
        q = tl.load(Q + offs_m[:, None] * sqt + h * sqh + offs_d[None, :], mask=in_m[:, None], other=0.0)
        do = tl.load(DO + offs_m[:, None] * sdt + h * sdh + offs_d[None, :], mask=in_m[:, None], other=0.0)
        lse = tl.load(LSE + h * N + offs_m, mask=in_m, other=0.0)
        delta = tl.load(DELTA + h * N + offs_m, mask=in_m, other=0.0)
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for n0 in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            in_n = offs_n < N
            k = tl.load(K + offs_n[:, None] * skt + hk * skh + offs_d[None, :], mask=in_n[:, None], other=0.0)
            v = tl.load(V + offs_n[:, None] * svt + hk * svh + offs_d[None, :], mask=in_n[:, None], other=0.0)
            doc_k = tl.load(DOC + offs_n, mask=in_n, other=-2)
            d = offs_n[None, :] - offs_m[:, None]
            ok = (doc_q[:, None] == doc_k[None, :]) & (d <= RIGHT) & (d >= -LEFT)
            s = tl.dot(q, tl.trans(k)) * scale_log2
            p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v))
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k)
        tl.store(DQ + offs_m[:, None] * sdqt + h * sdqh + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
                 mask=in_m[:, None])


# ----------------------------------------------------------------------------------------
# launchers (q, k, v: [N, H, D] / [N, Hkv, D], last dim contiguous)

# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried by the autotuner on the first call per
# head dim; dK/dV programs hold a key tile and its fp32 gradients, so they take fewer query
# rows per step, dQ programs the reverse (as in Triton's fused-attention tutorial).
FWD_CONFIGS = [(64, 64, 4, 3), (64, 32, 4, 3), (128, 64, 8, 3), (32, 64, 4, 3)]
DKDV_CONFIGS = [(32, 64, 4, 3), (32, 128, 8, 2), (64, 64, 8, 2), (16, 64, 4, 3)]
DQ_CONFIGS = [(64, 32, 4, 3), (128, 32, 8, 2), (64, 64, 8, 2), (32, 32, 4, 3)]


def doc_tables(cu_seqlens: torch.Tensor, n: int):
    """Per-token segment id, start and end (int32), from ``cu_seqlens``; no host sync."""
    cu = cu_seqlens.to(torch.int64)
    doc = torch.searchsorted(cu, torch.arange(n, device=cu.device), right=True) - 1  # as DocBoundaries.doc_ids
    return doc.to(torch.int32), cu[doc].to(torch.int32), cu[doc + 1].to(torch.int32)


def _config(c):
    return triton.Config({"BLOCK_M": c[0], "BLOCK_N": c[1]}, num_warps=c[2], num_stages=c[3])


_TUNED = {}


def _kernel(name: str, blocks):
    """The jit kernel with fixed blocks, or (``blocks=None``) its autotuned version."""
    base = {"fwd": _fwd_kernel, "dkdv": _dkdv_kernel, "dq": _dq_kernel}[name]
    if blocks is not None:
        bm, bn, warps, stages = blocks
        return base, dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
    if name not in _TUNED:
        configs = {"fwd": FWD_CONFIGS, "dkdv": DKDV_CONFIGS, "dq": DQ_CONFIGS}[name]
        _TUNED[name] = triton.autotune([_config(c) for c in configs], key=["HEAD_DIM", "GROUPS"])(base)
    return _TUNED[name], {}


def _grid(n_tokens: int, heads: int, axis: str, kw: dict):
    if kw:
        return (triton.cdiv(n_tokens, kw[axis]), heads)
    return lambda meta: (triton.cdiv(n_tokens, meta[axis]), heads)


def varlen_fwd(q, k, v, cu_seqlens, scale: float, left: int, right: int, blocks=None):
    """``(out [N, H, D], lse [H, N] fp32, log2 units)``; ``blocks`` fixes the tiles (else autotuned)."""
    N, H, D = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((H, N), device=q.device, dtype=torch.float32)
    doc, dstart, dend = doc_tables(cu_seqlens, N)
    kernel, kw = _kernel("fwd", blocks)
    kernel[_grid(N, H, "BLOCK_M", kw)](
        q, k, v, o, lse, doc, dstart, dend, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), o.stride(0), o.stride(1), N, H // k.shape[1], scale * LOG2E, left, right,
        HEAD_DIM=D, **kw)
    return o, lse


def varlen_bwd(do, q, k, v, o, lse, cu_seqlens, scale: float, left: int, right: int, blocks=None):
    """``(dq, dk, dv)`` for `varlen_fwd`; ``blocks`` = (dK/dV tiles, dQ tiles) or None (autotuned)."""
    N, H, D = q.shape
    Hkv = k.shape[1]
    do = do if do.stride(-1) == 1 else do.contiguous()
    doc, dstart, dend = doc_tables(cu_seqlens, N)
    delta = torch.empty((H, N), device=q.device, dtype=torch.float32)
    _delta_kernel[(triton.cdiv(N, 64), H)](o, do, delta, o.stride(0), o.stride(1), do.stride(0), do.stride(1),
                                           N, HEAD_DIM=D, BLOCK_M=64)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = (N, H // Hkv, scale * LOG2E, scale, left, right)
    kernel, kw = _kernel("dkdv", None if blocks is None else blocks[0])
    kernel[_grid(N, Hkv, "BLOCK_N", kw)](
        q, k, v, do, lse, delta, dk, dv, doc, dstart, dend,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), *common, HEAD_DIM=D, **kw)
    kernel, kw = _kernel("dq", None if blocks is None else blocks[1])
    kernel[_grid(N, H, "BLOCK_M", kw)](
        q, k, v, do, lse, delta, dq, doc, dstart, dend,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dq.stride(0), dq.stride(1), *common, HEAD_DIM=D, **kw)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------
# custom ops, so torch.compile keeps one graph

_OP = None


def _define_ops():
    @torch.library.custom_op("seqpack::triton_varlen_fwd", mutates_args=(), device_types="cuda")
    def fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, scale: float,
            left: int, right: int) -> tuple[torch.Tensor, torch.Tensor]:
        return varlen_fwd(q, k, v, cu_seqlens, scale, left, right)

    @fwd.register_fake
    def _(q, k, v, cu_seqlens, scale, left, right):
        return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)

    @torch.library.custom_op("seqpack::triton_varlen_bwd", mutates_args=(), device_types="cuda")
    def bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
            lse: torch.Tensor, cu_seqlens: torch.Tensor, scale: float, left: int,
            right: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return varlen_bwd(do, q, k, v, o, lse, cu_seqlens, scale, left, right)

    @bwd.register_fake
    def _(do, q, k, v, o, lse, cu_seqlens, scale, left, right):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def setup_context(ctx, inputs, output):
        q, k, v, cu_seqlens, scale, left, right = inputs
        ctx.save_for_backward(q, k, v, output[0], output[1], cu_seqlens)
        ctx.args = (scale, left, right)

    def backward(ctx, do, dlse):
        q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = bwd(do, q, k, v, o, lse, cu_seqlens, *ctx.args)
        return dq, dk, dv, None, None, None, None

    fwd.register_autograd(backward, setup_context=setup_context)
    return fwd


if HAVE_TRITON:
    _OP = _define_ops()


class TritonVarlen(Backend):
    name = "triton_varlen"

    def supports(self, req):
        if not HAVE_TRITON:
            return "triton is not installed"
        if req.device_type != "cuda":
            return "the Triton varlen kernel runs on CUDA (tests use TRITON_INTERPRET=1 on CPU)"
        if req.dtype not in (torch.float16, torch.bfloat16):
            return f"the Triton varlen kernel takes fp16/bf16, not {req.dtype}"
        d = req.head_dim
        if d < 16 or d > 128 or d & (d - 1):
            return f"head_dim {d}: the Triton varlen kernel wants a power of two in 16..128"
        if req.tokens * req.num_heads * d >= 2**31:
            return "more than 2**31 elements per tensor: the Triton varlen kernel indexes with int32"
        return None

    def __call__(self, q, k, v, ctx, req, scale):
        b = ctx.boundaries
        left, right = left_right_reach(req.causal, req.window, b.max_seqlen)
        qf, kf, vf = (flat(x).contiguous() for x in (q, k, v))
        out, _ = _OP(qf, kf, vf, b.cu_seqlens, scale, left, right)
        return out.reshape(q.shape)
