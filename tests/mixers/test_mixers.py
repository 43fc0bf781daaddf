"""Each document-aware mixer on packed rows equals the documents run alone (outputs and gradients)."""

import pytest
import torch
import torch.nn.functional as F

from seqpack.boundaries import DocBoundaries
from seqpack.mixers import (causal_conv1d, chunk_gated_delta_rule, chunk_linear_attention, rg_lru,
                            segment_positions, selective_scan, ssd_scan)

CHUNK = 8
# Two rows of 24: documents shorter and longer than a chunk, a boundary on a chunk edge (16) and
# inside chunks, a document spanning three chunks, and padding at the end of row 1.
ROWS = [[5, 8, 3, 8], [19, 4]]
L = 24


def layout():
    b = DocBoundaries.from_row_lengths(ROWS, L)
    docs = [(r, s, s + n) for r, row in enumerate(ROWS) for s, n in zip([sum(row[:i]) for i in range(len(row))], row)]
    return b.doc_ids(), docs


def close(got, want, what, rel=1e-5):
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    assert err <= rel, f"{what}: relative error {err:.2e}"


def check(run, tensors, time_dim, seed=1):
    """``run(*tensors, seq_idx)`` packed vs on each document alone (seq_idx=None), outputs and grads.

    ``time_dim`` per tensor: its sequence axis (None: not per token, shared by all documents).
    """
    seq_idx, docs = layout()
    leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in tensors]
    out = run(*leaves, seq_idx)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.shape, generator=g)
    tdim = 1 if out.shape[1] == L else 2
    loss_p, loss_r = 0.0, 0.0
    for r, s, e in docs:
        parts = [t if d is None else t[r:r + 1].narrow(d, s, e - s) for t, d in zip(leaves, time_dim)]
        ref = run(*parts, None)
        got = out[r:r + 1].narrow(tdim, s, e - s)
        close(got.detach(), ref.detach(), f"output of document at row {r} [{s}, {e})")
        wd = w[r:r + 1].narrow(tdim, s, e - s)
        loss_p = loss_p + (got * wd).sum()
        loss_r = loss_r + (ref * wd).sum()
    wrt = [x for x in leaves if x.requires_grad]
    gp = torch.autograd.grad(loss_p, wrt, allow_unused=True)
    gr = torch.autograd.grad(loss_r, wrt, allow_unused=True)
    for i, (a, b) in enumerate(zip(gp, gr)):
        assert (a is None) == (b is None), f"gradient of input {i} exists on one side only"
        if a is not None:
            close(a, b, f"gradient of input {i}")
    return out


def test_segment_positions():
    seq_idx, _ = layout()
    pos = segment_positions(seq_idx)
    assert pos[0].tolist() == list(range(5)) + list(range(8)) + list(range(3)) + list(range(8))
    assert pos[1].tolist() == list(range(19)) + list(range(4)) + [0]


@pytest.mark.parametrize("K", [2, 4])
def test_causal_conv1d_matches_documents_alone(K):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 6, L), torch.randn(6, K), torch.randn(6)
    check(lambda x, w, b, s: causal_conv1d(x, w, b, s, activation="silu"), [x, w, b], [2, None, None])


def test_causal_conv1d_without_boundaries_is_torch_conv():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 6, L), torch.randn(6, 4), torch.randn(6)
    want = F.conv1d(x, w[:, None], b, padding=3, groups=6)[..., :L]
    close(causal_conv1d(x, w, b), want, "conv")


def naive_gated_delta(q, k, v, g, beta, seq_idx, scale):
    """Token by token, the recurrence as written (one document per row when seq_idx is None)."""
    B, T, H, Dk = q.shape
    out = torch.zeros(B, T, H, v.shape[-1])
    for b in range(B):
        S = torch.zeros(H, Dk, v.shape[-1])
        for t in range(T):
            if seq_idx is not None and t > 0 and seq_idx[b, t] != seq_idx[b, t - 1]:
                S = torch.zeros_like(S)
            kt, vt, qt = k[b, t], v[b, t], q[b, t] * scale
            S = S * g[b, t].exp()[:, None, None]
            delta = (vt - torch.einsum("hkv,hk->hv", S, kt)) * beta[b, t][:, None]
            S = S + kt[:, :, None] * delta[:, None, :]
            out[b, t] = torch.einsum("hkv,hk->hv", S, qt)
    return out


def gdn_inputs(Hk=2, Hv=4, Dk=8, Dv=6):
    torch.manual_seed(0)
    q, k = torch.randn(2, L, Hk, Dk), torch.randn(2, L, Hk, Dk)
    v = torch.randn(2, L, Hv, Dv)
    g = -F.softplus(torch.randn(2, L, Hv))
    beta = torch.rand(2, L, Hv)
    return q, k, v, g, beta


def test_gated_delta_rule_matches_documents_alone():
    run = lambda q, k, v, g, beta, s: chunk_gated_delta_rule(q, k, v, g, beta, s, use_qk_l2norm=True,
                                                              chunk_size=CHUNK)
    check(run, gdn_inputs(), [1] * 5)


def test_gated_delta_rule_matches_the_recurrence():
    from seqpack.mixers.delta import l2norm
    q, k, v, g, beta = gdn_inputs(Hk=4)
    seq_idx, _ = layout()
    got = chunk_gated_delta_rule(q, k, v, g, beta, seq_idx, use_qk_l2norm=True, chunk_size=CHUNK)
    want = naive_gated_delta(l2norm(q), l2norm(k), v, g, beta, seq_idx, q.shape[-1] ** -0.5)
    close(got, want, "gated delta rule vs its recurrence")


def naive_linear(q, k, v, a, seq_idx, scale):
    B, T, H, Dk = q.shape
    out = torch.zeros(B, T, H, v.shape[-1])
    for b in range(B):
        S = torch.zeros(H, Dk, v.shape[-1])
        for t in range(T):
            if seq_idx is not None and t > 0 and seq_idx[b, t] != seq_idx[b, t - 1]:
                S = torch.zeros_like(S)
            S = S * a[b, t].exp()[:, None, None] + k[b, t][:, :, None] * v[b, t][:, None, :]
            out[b, t] = scale * torch.einsum("hkv,hk->hv", S, q[b, t])
    return out


@pytest.mark.parametrize("decay", [True, False])
def test_linear_attention_matches_documents_alone_and_the_recurrence(decay):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, L, 3, 5), torch.randn(2, L, 3, 5), torch.randn(2, L, 3, 4)
    a = -F.softplus(torch.randn(2, L, 3)) if decay else torch.zeros(2, L, 3)
    run = lambda q, k, v, a, s: chunk_linear_attention(q, k, v, a if decay else None, s, scale=0.5, chunk_size=CHUNK)
    check(run, [q, k, v, a], [1] * 4)
    seq_idx, _ = layout()
    close(run(q, k, v, a, seq_idx), naive_linear(q, k, v, a, seq_idx, 0.5), "linear attention vs recurrence")


def test_ssd_scan_matches_documents_alone_and_the_recurrence():
    torch.manual_seed(0)
    H, P, G, N = 4, 3, 2, 5
    x = torch.randn(2, L, H, P)
    dt = F.softplus(torch.randn(2, L, H))
    A = -torch.rand(H) * 2
    Bm, Cm, D = torch.randn(2, L, G, N), torch.randn(2, L, G, N), torch.randn(H)
    run = lambda x, dt, A, Bm, Cm, D, s: ssd_scan(x, dt, A, Bm, Cm, s, D=D, chunk_size=CHUNK)
    out = check(run, [x, dt, A, Bm, Cm, D], [1, 1, None, 1, 1, None])
    seq_idx, _ = layout()
    want = naive_linear(Cm.repeat_interleave(2, 2), Bm.repeat_interleave(2, 2), x * dt[..., None],
                        dt * A, seq_idx, 1.0) + x * D[:, None]
    close(out.detach(), want, "ssd vs recurrence")


def test_selective_scan_matches_documents_alone():
    torch.manual_seed(0)
    Dm, N = 6, 4
    u, delta = torch.randn(2, Dm, L), F.softplus(torch.randn(2, Dm, L))
    A = -torch.rand(Dm, N) * 2
    Bm, Cm, D, z = torch.randn(2, N, L), torch.randn(2, N, L), torch.randn(Dm), torch.randn(2, Dm, L)
    run = lambda u, d, A, Bm, Cm, D, z, s: selective_scan(u, d, A, Bm, Cm, s, D=D, z=z)
    check(run, [u, delta, A, Bm, Cm, D, z], [2, 2, None, 2, 2, None, 2])


def test_rg_lru_matches_documents_alone():
    torch.manual_seed(0)
    x, log_a = torch.randn(2, L, 6), -F.softplus(torch.randn(2, L, 6))
    check(lambda x, la, s: rg_lru(x, la, s), [x, log_a], [1, 1])


def test_recurrent_delta_rule_with_a_decay_per_key_channel():
    """Kimi delta attention: per-channel decay, packed = documents alone; scalar decay = the chunked form."""
    from seqpack.mixers import gated_delta_rule_recurrent
    torch.manual_seed(0)
    q, k, v = torch.randn(2, L, 3, 8), torch.randn(2, L, 3, 8), torch.randn(2, L, 3, 5)
    g = -F.softplus(torch.randn(2, L, 3, 8))
    beta = torch.rand(2, L, 3)
    check(lambda q, k, v, g, b, s: gated_delta_rule_recurrent(q, k, v, g, b, s, use_qk_l2norm=True),
          [q, k, v, g, beta], [1] * 5)
    seq_idx, _ = layout()
    g1 = g[..., 0]
    close(gated_delta_rule_recurrent(q, k, v, g1, beta, seq_idx, use_qk_l2norm=True),
          chunk_gated_delta_rule(q, k, v, g1, beta, seq_idx, use_qk_l2norm=True, chunk_size=CHUNK),
          "recurrent vs chunked gated delta rule")
