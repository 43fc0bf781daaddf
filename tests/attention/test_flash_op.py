"""The flash-attn-4 custom-op plumbing, with CPU stand-ins for FA4's kernels.

FA4 needs an sm90+ GPU; what can be checked here is everything around its kernels: the
window/causal mapping we pass, the fake implementations (shapes seen by torch.compile),
setup_context/backward wiring of ``register_autograd``, and that a compiled caller keeps
one graph. The stand-ins take FA4's ``_flash_attn_fwd``/``_bwd`` keyword signatures and
compute per-document attention in fp32, reading the window as FA4 does (None = unlimited;
causal forces the right window to 0).
"""

import math

import pytest
import torch
from attn_ref import make_qkv, reference, rel_err
from torch._dynamo.utils import counters

from seqpack.attention.base import AttentionContext
from seqpack.attention.flash import FlashAttn4, define_fa4_ops
from seqpack.attention import flash as flash_mod
from seqpack.attention.api import _request
from seqpack.boundaries import DocBoundaries


def _segments(q, k, v, cu, scale, causal, left, right):
    """Per segment: (s, e, q, k, v in fp32 as (H, n, D) with KV heads repeated, probabilities P)."""
    H, Hkv = q.shape[1], k.shape[1]
    if causal:
        right = 0
    for s, e in zip(cu[:-1], cu[1:]):
        if e == s:
            continue
        qq = q[s:e].float().transpose(0, 1)
        kk = k[s:e].float().repeat_interleave(H // Hkv, 1).transpose(0, 1)
        vv = v[s:e].float().repeat_interleave(H // Hkv, 1).transpose(0, 1)
        i, j = torch.arange(e - s)[:, None], torch.arange(e - s)[None, :]
        ok = torch.ones(e - s, e - s, dtype=torch.bool)
        if left is not None:
            ok &= i - j <= left
        if right is not None:
            ok &= j - i <= right
        sc = (qq @ kk.transpose(-1, -2) * scale).masked_fill(~ok, float("-inf"))
        yield s, e, qq, kk, vv, sc


def standin_fwd(q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                window_size_left, window_size_right, return_lse):
    assert torch.equal(cu_seqlens_q, cu_seqlens_k) and max_seqlen_q == max_seqlen_k and return_lse
    out = torch.zeros(q.shape, dtype=torch.float32)
    lse = torch.zeros(q.shape[1], q.shape[0], dtype=torch.float32)
    for s, e, _, _, vv, sc in _segments(q, k, v, cu_seqlens_q.tolist(), softmax_scale, causal,
                                        window_size_left, window_size_right):
        out[s:e] = (sc.softmax(-1) @ vv).transpose(0, 1)
        lse[:, s:e] = sc.logsumexp(-1)
    return out.to(q.dtype), lse, None, None, None  # FA4 4.0.0b36 returns five values


def standin_bwd(q, k, v, out, dout, lse, *, softmax_scale, causal, window_size_left, window_size_right,
                cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    # Written out: autograd does not record inside a custom op's implementation.
    H, Hkv = q.shape[1], k.shape[1]
    dq, dk, dv = (torch.zeros(x.shape, dtype=torch.float32) for x in (q, k, v))
    for s, e, qq, kk, vv, sc in _segments(q, k, v, cu_seqlens_q.tolist(), softmax_scale, causal,
                                          window_size_left, window_size_right):
        p = sc.softmax(-1)                                     # (H, n, n)
        do = dout[s:e].float().transpose(0, 1)                 # (H, n, D)
        dp = do @ vv.transpose(-1, -2)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        fold = lambda t: t.reshape(Hkv, H // Hkv, *t.shape[1:]).sum(1).transpose(0, 1)  # noqa: E731
        dq[s:e] = (ds @ kk * softmax_scale).transpose(0, 1)
        dk[s:e] = fold(ds.transpose(-1, -2) @ qq * softmax_scale)
        dv[s:e] = fold(p.transpose(-1, -2) @ do)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@pytest.fixture(scope="module")
def fa4_op():
    return define_fa4_ops(standin_fwd, standin_bwd, namespace="seqpack_test", device_types="cpu")


@pytest.mark.parametrize("causal, window", [(True, None), (True, 4), (False, None), (False, 3)])
def test_fa4_custom_op_matches_reference_and_compiles(fa4_op, monkeypatch, causal, window):
    monkeypatch.setattr(flash_mod, "_FA4_OP", fa4_op)
    b = DocBoundaries.from_lengths([5, 1, 9, 0, 7], 24, max_seqlen=9).static(9)
    q, k, v = make_qkv(b, 4, 2, 8, dtype=torch.float32)
    ctx = AttentionContext(b)
    req = _request(q, k, v, ctx, causal, window)
    scale = 1 / math.sqrt(8)
    w = torch.randn(q.shape, dtype=torch.float64)

    def run(q, k, v):
        return FlashAttn4()(q, k, v, ctx, req, scale)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(run, fullgraph=True, dynamic=False, backend="aot_eager")
    for fn in (run, compiled):
        qs, ks, vs = (x.detach().clone().requires_grad_() for x in (q, k, v))
        out = fn(qs, ks, vs)
        (out.double() * w).sum().backward()
        qr, kr, vr = (x.detach().clone().requires_grad_() for x in (q, k, v))
        ref = reference(qr, kr, vr, b, causal, window)
        (ref * w).sum().backward()
        assert rel_err(out, ref) < 1e-5
        for got, want in ((qs.grad, qr.grad), (ks.grad, kr.grad), (vs.grad, vr.grad)):
            assert rel_err(got, want) < 1e-5
    assert dict(counters["graph_break"]) == {} and counters["stats"]["unique_graphs"] == 1
