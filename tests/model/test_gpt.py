"""The GPT on packed batches: gradients equal the one-document steps, documents are
isolated, positions per document or per buffer agree, the fused head matches."""

import pytest
import torch

from seqpack.batch import Documents, collate_packed
from seqpack.boundaries import DocBoundaries
from seqpack.loss import packed_cross_entropy
from seqpack.model import GPT, gpt_config
from seqpack.boundaries import DocBoundaries
from seqpack.model.gpt import apply_rotary, norm, prepare_context, rope_angles, rope_norm
from seqpack.model.head import linear_cross_entropy
from seqpack.plan import plan_packing

VOCAB = 96
LENGTHS = [17, 5, 40, 1, 23, 9, 31, 2, 12]


def randomize(model: GPT, seed: int = 0) -> GPT:
    """Non-zero everywhere (the real init zeroes output projections, which would hide
    cross-document leaks behind identity blocks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def make_docs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def grads_of(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def packed_step(model, docs, layout, capacity=64):
    plan = plan_packing([len(d) for d in docs], capacity, strategy="bfd")
    batch = collate_packed(plan, Documents.from_lists(docs), layout=layout, label_shift="collator",
                           max_num_docs=24)
    model.zero_grad()
    loss, count = model(batch.input_ids, batch.labels, boundaries=prepare_context(batch.boundaries, model.config),
                        position_ids=batch.position_ids)
    loss.backward()
    return loss.detach(), int(count), grads_of(model)


def one_by_one(model, docs):
    model.zero_grad()
    total, count = 0.0, 0
    for d in docs:
        ids = torch.tensor(d)
        labels = torch.tensor(d[1:] + [-100])  # next token; a document's last token has none
        loss, n = model(ids, labels, boundaries=DocBoundaries.from_lengths([len(d)]))
        loss.backward()  # gradients accumulate: the sum of the one-document steps
        total, count = total + loss.detach(), count + int(n)
    return total, count, grads_of(model)


def max_rel_err(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-30)) for k in b)


CONFIGS = {
    "default": dict(),
    "gqa+window+tied": dict(n_head=4, n_kv_head=2, window=7, window_pattern="SG", n_layer=3, tie_embeddings=True),
    "buffer positions": dict(positions="buffer"),
    "fused head": dict(loss_chunk=13),
    "no qk norm": dict(qk_norm=False),
    "fused rope+norm, fused qkv": dict(fused_rope_norm=True, fused_qkv=True),
    "fused, gqa, no qk norm": dict(fused_rope_norm=True, fused_qkv=True, n_head=4, n_kv_head=2, qk_norm=False),
}


@pytest.mark.parametrize("layout", ["1d", "rows"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_packed_gradients_equal_sum_of_one_document_steps(name, layout):
    torch.manual_seed(0)
    model = randomize(GPT(gpt_config("tiny", vocab_size=VOCAB, **CONFIGS[name])))
    docs = make_docs(LENGTHS)
    loss_p, n_p, g_p = packed_step(model, docs, layout)
    loss_1, n_1, g_1 = one_by_one(model, docs)
    assert n_p == n_1 == sum(LENGTHS) - len(LENGTHS)
    assert torch.allclose(loss_p, loss_1, rtol=1e-5)
    assert max_rel_err(g_p, g_1) <= 1e-5


def test_documents_are_isolated_and_naive_rows_are_not():
    torch.manual_seed(0)
    # sdpa_dense: auto would pick flex for a CPU forward, which compiles itself (slow here)
    model = randomize(GPT(gpt_config("tiny", vocab_size=VOCAB, attn_backend="sdpa_dense"))).eval()
    a, b = make_docs([20, 30], seed=1)
    b2 = make_docs([20, 30], seed=2)[0]  # a different first document
    bnd = DocBoundaries.from_lengths([20, 30])
    with torch.no_grad():
        out1 = model(torch.tensor(a + b), boundaries=bnd)
        out2 = model(torch.tensor(b2 + b), boundaries=bnd)
        naive1 = model(torch.tensor(a + b))  # causal over the whole buffer (no boundaries)
        naive2 = model(torch.tensor(b2 + b))
    assert torch.equal(out1[20:], out2[20:])           # document b never sees document a
    assert not torch.allclose(naive1[20:], naive2[20:])  # ... unless attention crosses documents


def test_causal_rows_is_one_segment_per_row():
    b = DocBoundaries.causal_rows((3, 8))
    assert b.cu_seqlens.tolist() == [0, 8, 16, 24] and b.max_seqlen == 8
    assert b.position_ids().tolist() == [list(range(8))] * 3
    assert DocBoundaries.causal_rows((5,)).cu_seqlens.tolist() == [0, 5]


def test_config_presets_and_checks():
    cfg = gpt_config("304M", vocab_size=50304)
    with torch.device("meta"):  # shapes only: no 1.2 GB of random init
        model = GPT(cfg)
    # REFERENCE.md's 304M: 16 x 12 d^2 + untied embedding and head of 50304 x 1024
    assert model.num_params() == 16 * 12 * 1024 ** 2 + 2 * 50304 * 1024
    assert GPT(gpt_config("tiny", vocab_size=64, tie_embeddings=True)).num_params() == 2 * 12 * 64 ** 2 + 64 * 64
    assert gpt_config("tiny", n_layer=4, window=16, window_pattern="SSG").layer_windows() == [16, 16, None, None]
    with pytest.raises(ValueError, match="window"):
        gpt_config("tiny", window_pattern="S")
    with pytest.raises(ValueError, match="multiple"):
        gpt_config("tiny", n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="preset"):
        gpt_config("huge")


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_head_matches_plain_cross_entropy(autocast):
    torch.manual_seed(0)
    h = torch.randn(50, 24, requires_grad=True)
    w = torch.randn(70, 24, requires_grad=True)
    t = torch.randint(0, 70, (50,))
    t[::4] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, n = linear_cross_entropy(h, w, t, chunk_size=16)
    (2 * loss).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ref, n_ref = packed_cross_entropy(h @ w.t(), t, reduction="sum", label_shift="collator")
    (2 * ref).backward()
    tol = 2e-2 if autocast else 1e-5
    assert int(n) == int(n_ref) == 37
    assert torch.allclose(loss, ref.float(), rtol=tol)
    assert float((gh - h.grad).norm() / h.grad.norm()) < tol
    assert float((gw - w.grad).norm() / w.grad.norm()) < tol


@pytest.mark.parametrize("qk_norm", [True, False])
def test_fused_options_compute_the_same_function(qk_norm):
    """fused_rope_norm and fused_qkv change the kernels, not the function: same loss and
    gradients as the reference path for the same weights (fp32)."""
    torch.manual_seed(0)
    model = randomize(GPT(gpt_config("tiny", vocab_size=VOCAB, n_head=4, n_kv_head=2, qk_norm=qk_norm)))
    docs = make_docs(LENGTHS)
    ref = packed_step(model, docs, "1d")
    model.configure(fused_rope_norm=True, fused_qkv=True)
    fused = packed_step(model, docs, "1d")
    assert torch.allclose(fused[0], ref[0], rtol=1e-6)
    assert max_rel_err(fused[2], ref[2]) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("normalize", [True, False])
def test_rope_norm_matches_rotary_then_norm(dtype, normalize):
    torch.manual_seed(0)
    x = torch.randn(40, 3, 16, dtype=dtype, requires_grad=True)
    cos, sin = rope_angles(torch.arange(40) % 13, 16, 10000.0)
    g = torch.randn(40, 3, 16, dtype=dtype)
    ref = apply_rotary(x, cos, sin)
    ref = norm(ref) if normalize else ref
    (g_ref,) = torch.autograd.grad(ref, x, g)
    out = rope_norm(x, cos, sin, normalize)
    (g_out,) = torch.autograd.grad(out, x, g)
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16: the reference rounds the rotated x before the norm
    out, ref = out.detach(), ref.detach()
    assert out.dtype == dtype
    assert float((out.float() - ref.float()).norm() / ref.float().norm()) < tol
    assert float((g_out.float() - g_ref.float()).norm() / g_ref.float().norm()) < tol


def test_bf16_residual_is_a_no_op_without_autocast_and_close_with_it():
    torch.manual_seed(0)
    model = randomize(GPT(gpt_config("tiny", vocab_size=VOCAB)), seed=1)
    docs = make_docs(LENGTHS)
    ref = packed_step(model, docs, "1d")
    model.configure(residual="autocast")
    same = packed_step(model, docs, "1d")
    assert torch.equal(same[0], ref[0])  # fp32: nothing to change
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = packed_step(model, docs, "1d")
        model.configure(residual="fp32")
        high = packed_step(model, docs, "1d")
    assert torch.isfinite(low[0]) and abs(float(low[0] - high[0])) / float(high[0]) < 5e-2


def test_configure_only_changes_per_call_options():
    model = GPT(gpt_config("tiny", vocab_size=VOCAB))
    model.configure(attn_backend="sdpa_dense", fused_qkv=True)
    assert model.config.attn_backend == "sdpa_dense" and all(b.attn.fused_qkv for b in model.blocks)
    assert all(b.attn.backend == "sdpa_dense" for b in model.blocks)
    with pytest.raises(ValueError, match="cannot change"):
        model.configure(n_layer=3)
    with pytest.raises(ValueError, match="residual"):
        model.configure(residual="fp16")
