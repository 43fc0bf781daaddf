"""enable_fused_loss: transformers' causal-LM loss with the same result and gradients, alone, in a
packed model, and under Trainer's gradient accumulation."""

import copy

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from seqpack.integrations import hf
from seqpack.integrations.hf_loss import fused_causal_lm_loss
from seqpack.integrations.hf_verify import compare_packed

from hf_util import packed, tiny

V = 301


def logits_and_labels(dtype, B=3, L=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, L, V, generator=g) * 3).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[0, :7] = -100
    labels[2, 40:] = -100
    return logits, labels


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("num_items", [None, 37, "tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_loss_and_logit_gradients_as_transformers(dtype, num_items, compile):
    logits, labels = logits_and_labels(dtype)
    if num_items == "tensor":
        num_items = torch.tensor(41)
    ref = ForCausalLMLoss(logits, labels, V, num_items_in_batch=num_items)
    (g_ref,) = torch.autograd.grad(ref * 3.0, logits)
    # chunk_size 16 does not divide the 150 tokens: the last chunk is short.
    got = fused_causal_lm_loss(logits, labels, V, num_items_in_batch=num_items, chunk_size=16, compile=compile)
    (g,) = torch.autograd.grad(got * 3.0, logits)
    assert got.dtype == torch.float32 and g.dtype == dtype
    assert abs(float(got) - float(ref)) <= 1e-5 * max(1.0, abs(float(ref)))
    ulp = 1e-6 if dtype == torch.float32 else 2 ** -7  # bf16: one unit in the last place of the largest
    assert float((g.float() - g_ref.float()).abs().max()) <= ulp * float(g_ref.abs().max())


def test_shift_labels_and_no_grad():
    logits, labels = logits_and_labels(torch.float32)
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()
    ref = ForCausalLMLoss(logits, None, V, shift_labels=shift)
    with torch.no_grad():
        got = fused_causal_lm_loss(logits, None, V, shift_labels=shift, compile=False)
    assert abs(float(got) - float(ref)) <= 1e-5
    assert not got.requires_grad


def test_no_label_token_gives_nan_like_transformers():
    logits, labels = logits_and_labels(torch.float32)
    labels[:] = -100
    assert torch.isnan(ForCausalLMLoss(logits, labels, V))
    assert torch.isnan(fused_causal_lm_loss(logits, labels, V, compile=False))


@pytest.mark.parametrize("impl", ["sdpa", "seqpack"])
def test_packed_model_with_fused_loss_matches_documents_one_by_one(impl):
    if impl == "seqpack":
        pytest.importorskip("seqpack.attention")
    model = hf.enable_fused_loss(tiny("llama", impl), chunk_size=7)
    assert hf.is_fused_loss_enabled(model)
    docs, batch = packed("bsz3_padded")
    for form in ("collator", "int_mask"):
        r = compare_packed(model, docs, batch, form=form)
        assert r["logits"] <= 1e-4 and r["grads"] <= 1e-4 and r["loss"] <= 1e-5, r


def test_model_loss_and_gradients_unchanged():
    plain = tiny("llama", "sdpa")
    fused = hf.enable_fused_loss(copy.deepcopy(plain), chunk_size=5)
    _, batch = packed("bsz2_full")
    kwargs = hf.packed_model_inputs(batch)
    outs = []
    for m in (plain, fused):
        out = m(**kwargs, num_items_in_batch=torch.tensor(17))
        out.loss.backward()
        outs.append((out, {n: p.grad for n, p in m.named_parameters()}))
    (a, ga), (b, gb) = outs
    assert torch.equal(a.logits, b.logits)  # only the loss changes
    assert abs(float(a.loss) - float(b.loss)) <= 1e-6
    for name, g in ga.items():
        assert float((gb[name] - g).norm() / g.norm().clamp_min(1e-12)) <= 1e-5, name


def test_enable_disable_and_refusal():
    model = tiny("llama", "sdpa", packing=False)
    hf.enable_fused_loss(model)
    hf.enable_fused_loss(model)  # idempotent
    assert hf.is_fused_loss_enabled(model)
    hf.disable_fused_loss(model)
    assert not hf.is_fused_loss_enabled(model) and model.loss_function is ForCausalLMLoss
    with pytest.raises(ValueError, match="chunk_size"):
        hf.enable_fused_loss(model, chunk_size=0)
    from transformers import AutoModelForSequenceClassification
    from seqpack.integrations.hf_verify import tiny_config
    clf = AutoModelForSequenceClassification.from_config(tiny_config("llama", num_labels=3))
    with pytest.raises(ValueError, match="ForCausalLMLoss"):
        hf.enable_fused_loss(clf)
