"""Every CPU-capable backend against the per-document float64 reference, and isolation."""

from unittest import mock

import pytest
import torch
from attn_ref import boundaries, grads, make_qkv, reference, rel_err
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from seqpack.attention import backend_support, prepare, varlen_attention
from seqpack.attention import sdpa as sdpa_mod
from seqpack.boundaries import DocBoundaries

CPU_BACKENDS = ["sdpa_dense", "eager", "sdpa_njt"]  # forward and backward on CPU
# NJT calls are slow (one nested tensor per call, per-component kernels): fewer examples.
EXAMPLES = {"sdpa_dense": 30, "eager": 20, "sdpa_njt": 10}


@st.composite
def calls(draw, backend):
    b = draw(boundaries())
    kv_heads = draw(st.sampled_from([1, 2]))
    heads = kv_heads * draw(st.sampled_from([1, 2, 3]))
    if backend == "sdpa_njt":  # nested tensors: bidirectional, no window on CPU
        causal, window = False, None
    else:
        causal = draw(st.booleans())
        window = draw(st.one_of(st.none(), st.integers(1, 12)))
    # Small chunks make sdpa_dense/eager cut 1D buffers into bands even at these sizes.
    min_chunk = draw(st.sampled_from([4, 16, 128]))
    return b, heads, kv_heads, causal, window, min_chunk


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_per_document_reference(backend):
    @settings(max_examples=EXAMPLES[backend], deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(call=calls(backend), seed=st.integers(0, 2**16))
    def check(call, seed):
        b, heads, kv_heads, causal, window, min_chunk = call
        q, k, v = make_qkv(b, heads, kv_heads, 8, seed=seed)
        w = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
        assume(backend_support(q, k, v, b, causal=causal, window=window)[backend] is None)
        with mock.patch.object(sdpa_mod, "MIN_CHUNK", min_chunk):
            got = grads(lambda *x: varlen_attention(*x, b, causal=causal, window=window, backend=backend), q, k, v, w)
        want = grads(lambda *x: reference(*x, b, causal, window), q, k, v, w)
        assert got[0].shape == q.shape and got[0].dtype == q.dtype
        for name, g, r in zip(("out", "dq", "dk", "dv"), got, want):
            assert rel_err(g, r) < 1e-10, (name, rel_err(g, r))

    check()


def test_auto_and_one_d_view_of_rows_match_reference():
    b = DocBoundaries.from_row_lengths([[3, 1, 9], [16], []], 16)
    q, k, v = make_qkv(b, 4, 2, 8, dtype=torch.float32)
    want = reference(q, k, v, b, True, None)
    got = varlen_attention(q, k, v, b)  # auto
    assert got.shape == q.shape and rel_err(got, want) < 1e-5
    # A rows batch passed as one 1D buffer: same segments, same answer.
    flat = varlen_attention(q.reshape(48, 4, 8), k.reshape(48, 2, 8), v.reshape(48, 2, 8), b)
    assert flat.shape == (48, 4, 8) and rel_err(flat.reshape(q.shape), want) < 1e-5


def test_scale_is_honoured():
    b = DocBoundaries.from_lengths([5, 7], 14)
    q, k, v = make_qkv(b, 2, 2, 8)
    for backend in ["sdpa_dense", "eager"]:
        got = varlen_attention(q, k, v, b, scale=0.3, backend=backend)
        assert rel_err(got, reference(q, k, v, b, True, None, scale=0.3)) < 1e-10
        assert rel_err(got, reference(q, k, v, b, True, None)) > 1e-3


def test_flex_forward_matches_reference_and_isolates():
    """flex on CPU (forward only). Fixed shapes so the compiled kernel is built once."""
    T, M = 256, 96
    gen = torch.Generator().manual_seed(0)
    cases = [(True, None), (True, 7), (False, None), (False, 5)]
    for i, (causal, window) in enumerate(cases * 2):
        lens = []
        while sum(lens) < T - 40:
            lens.append(int(torch.randint(1, M + 1, (1,), generator=gen)) if i % 2 else int(torch.randint(1, 4, (1,), generator=gen)))
        lens = lens[:-1] + [1]  # a length-1 document
        rows = i >= len(cases)
        b = (DocBoundaries.from_row_lengths([lens], T, max_seqlen=M) if rows
             else DocBoundaries.from_lengths(lens, T, max_seqlen=M)).static(120)
        q, k, v = make_qkv(b, 4, 2, 16, dtype=torch.float32, seed=i)
        ctx = prepare(b, causal=causal, window=window)
        with torch.no_grad():
            out = varlen_attention(q, k, v, ctx, causal=causal, window=window, backend="flex")
            assert rel_err(out, reference(q, k, v, b, causal, window)) < 1e-5, (causal, window, rows)
            # isolation: change one document, nothing else moves
            j = 1
            s, e = int(b.cu_seqlens[j]), int(b.cu_seqlens[j + 1])
            q2, k2, v2 = q.clone(), k.clone(), v.clone()
            sel = (0, slice(s, e)) if rows else (slice(s, e),)
            for x in (q2, k2, v2):
                x[sel] += 1.0
            out2 = varlen_attention(q2, k2, v2, ctx, causal=causal, window=window, backend="flex")
            keep = torch.ones(T, dtype=torch.bool)
            keep[s:e] = False
            o1, o2 = out.reshape(T, -1), out2.reshape(T, -1)
            assert torch.equal(o1[keep], o2[keep])
            assert not torch.equal(o1[~keep], o2[~keep])


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["auto"])
def test_isolation_perturbing_one_document_changes_no_other(backend):
    """Outputs and input gradients of every other document stay bit-identical."""

    @settings(max_examples=10, deadline=None)
    @given(b=boundaries(), data=st.data())
    def check(b, data):
        docs = [(s, e) for s, e in zip(b.cu_seqlens[:-1].tolist(), b.cu_seqlens[1:].tolist()) if e > s]
        assume(len(docs) >= 2)
        s, e = data.draw(st.sampled_from(docs))
        causal = backend != "sdpa_njt" and data.draw(st.booleans())
        window = None if backend == "sdpa_njt" else data.draw(st.one_of(st.none(), st.integers(1, 9)))
        q, k, v = make_qkv(b, 2, 1, 8, seed=s)
        w = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(e))
        fn = lambda *x: varlen_attention(*x, b, causal=causal, window=window, backend=backend)  # noqa: E731
        base = grads(fn, q, k, v, w)
        flat = lambda t: t.detach().reshape(-1, *t.shape[-2:])  # noqa: E731
        q2, k2, v2 = (flat(x).clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[s:e] += torch.randn(x[s:e].shape, dtype=x.dtype, generator=torch.Generator().manual_seed(7))
        moved = grads(fn, q2.reshape(q.shape), k2.reshape(k.shape), v2.reshape(v.shape), w)
        others = torch.ones(b.numel, dtype=torch.bool)
        others[s:e] = False
        for name, a, c in zip(("out", "dq", "dk", "dv"), base, moved):
            assert torch.equal(flat(a)[others], flat(c)[others]), name
        assert not torch.equal(flat(base[0])[s:e], flat(moved[0])[s:e])

    check()
