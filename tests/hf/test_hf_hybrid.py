"""Hybrid and recurrent families pack exactly: packed logits and gradients equal the documents alone,
on every way of handing the documents over; unpacked calls and generation are untouched."""

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from seqpack.integrations import hf, hf_hybrid
from seqpack.integrations.hf_verify import FORMS, compare_packed

from hf_util import packed
from hybrid_util import HYBRID_OVERRIDES, NO_ATTENTION, hybrid_config

FAMILIES = list(HYBRID_OVERRIDES)
# Attention implementations per family: both routes (mask-built, varlen) where the family has attention.
CASES = [(f, impl) for f in FAMILIES for impl in (["eager"] if f in NO_ATTENTION else
                                                  ["seqpack"] if f == "granitemoehybrid" else ["sdpa", "seqpack"])]


def build(family, impl="sdpa", *, packing=True, **overrides):
    """A tiny model of ``family``. Skips where this transformers lacks the family; where its layers
    are laid out in a way seqpack does not know, asserts packing is refused, then skips."""
    torch.manual_seed(0)
    impl = "eager" if family in NO_ATTENTION else impl
    try:
        config = hybrid_config(family, **overrides)
    except (ValueError, KeyError) as exc:
        pytest.skip(f"{family} is not in transformers {transformers.__version__} ({type(exc).__name__})")
    try:
        model = AutoModelForCausalLM.from_config(config, attn_implementation=impl, dtype=torch.float32)
    except ValueError as exc:  # e.g. an older transformers without sdpa for this family
        pytest.skip(f"{family} with {impl} cannot be built on transformers {transformers.__version__} "
                    f"({str(exc)[:80]})")
    if not hf_hybrid.handles(model):
        with pytest.raises(hf.PackingError, match="mix tokens outside attention"):
            hf.enable_packing(model)
        pytest.skip(f"{family} on transformers {transformers.__version__} is not one seqpack makes exact "
                    f"(hybrid packing needs >= {hf_hybrid.MIN_TRANSFORMERS}): refused, as checked")
    with torch.no_grad():  # some mixers start with zero projections (Zamba's x_proj): the scan would be idle
        for m in model.modules():
            if type(m).__name__ in hf_hybrid.MIXERS:
                for p in m.parameters(recurse=False):
                    if not p.any():
                        p.normal_(0, 0.1)
    return hf.enable_packing(model) if packing else model


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_handled_and_the_bare_model_leaks(family):
    model = build(family, packing=False)  # skips unless handled
    assert hf.token_mixers_outside_attention(model) == []
    docs, batch = packed("bsz2_full")
    bare = compare_packed(model, docs, batch, form="position_ids", backward=False)
    # 10x the tolerance of the packed checks: a leak those checks would see (else they prove nothing)
    assert bare["logits"] > 1e-3, "the bare model should leak through its mixers"


@pytest.mark.parametrize("family, impl", CASES)
def test_packed_equals_documents_alone(family, impl):
    model = build(family, impl)
    docs, batch = packed("bsz3_padded")  # three rows, padding at the end of each
    for form in FORMS:
        r = compare_packed(model, docs, batch, form=form)
        assert r["logits"] <= 1e-4, (form, r)
        assert r["grads"] <= 1e-4, (form, r)


@pytest.mark.parametrize("family", ["qwen3_5_text", "lfm2"])
def test_gradient_checkpointing_recomputes_with_the_documents(family):
    model = build(family)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    docs, batch = packed("bsz2_full")
    r = compare_packed(model, docs, batch, form="collator")
    assert r["logits"] <= 1e-4 and r["grads"] <= 1e-4, r


def test_documents_longer_than_a_chunk():
    """Documents over the scan's 64-token chunk, boundaries inside and at chunk edges."""
    from seqpack.integrations.hf_verify import make_rows
    model = build("qwen3_5_text")
    docs, batch = make_rows((64, 70, 30, 100), ((0, 1), (2, 3)), 128, capacity=140)
    r = compare_packed(model, docs, batch, form="collator")
    assert r["logits"] <= 1e-4 and r["grads"] <= 1e-4, r


@pytest.mark.parametrize("family", ["qwen3_5_text", "lfm2"])
def test_unpacked_calls_and_generation_untouched(family):
    bare, hooked = build(family, packing=False), build(family)
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    with torch.no_grad():
        torch.testing.assert_close(hooked(input_ids=ids, attention_mask=mask).logits,
                                   bare(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=0)
        torch.testing.assert_close(hooked(input_ids=ids).logits, bare(input_ids=ids).logits, rtol=0, atol=0)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(hooked.generate(ids[:1], **kw), bare.generate(ids[:1], **kw))


def test_disable_packing_restores_the_mixers():
    model = build("qwen3_5_text")
    mixer = next(m for m in model.modules() if type(m).__name__ in hf_hybrid.MIXERS)
    assert "forward" in mixer.__dict__
    hf.disable_packing(model)
    assert "forward" not in mixer.__dict__ and getattr(model, "_seqpack_hybrid_hooks") is None


def test_configure_packing_hooks_hybrid_models_built_afterwards():
    from types import SimpleNamespace
    hf.configure_packing(SimpleNamespace(block_diag_attn=True), is_trainable=True)
    try:
        model = build("lfm2", packing=False)
    finally:
        hf.unconfigure_packing()
    docs, batch = packed("bsz3_padded")
    r = compare_packed(model, docs, batch, form="int_mask")
    assert r["logits"] <= 1e-4 and r["grads"] <= 1e-4, r


def test_a_mixer_laid_out_differently_stays_refused(monkeypatch):
    """Another transformers version may name the layer's parameters differently: then it is not handled."""
    model = build("qwen3_5_text", packing=False)
    fn, attrs = hf_hybrid.MIXERS["Qwen3_5GatedDeltaNet"]
    monkeypatch.setitem(hf_hybrid.MIXERS, "Qwen3_5GatedDeltaNet", (fn, attrs + ("no_such_parameter",)))
    assert not hf_hybrid.handles(model)
    with pytest.raises(hf.PackingError, match="mix tokens outside attention"):
        hf.enable_packing(model)


def test_mask_route_is_refused_where_the_family_ignores_packed_positions():
    model = build("granitemoehybrid", "sdpa")
    docs, batch = packed("bsz2_full")
    with pytest.raises(hf.PackingError, match="set_attn_implementation\\('seqpack'\\)"):
        compare_packed(model, docs, batch, form="collator")


def test_checkpointing_is_refused_where_the_documents_would_not_reach_the_recomputation():
    """Mamba's blocks do not pass extra keywords to the mixer, so the documents reach it only for the
    forward; recomputing it in backward without them would leak: refused."""
    model = build("mamba")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    docs, batch = packed("bsz2_full")
    with pytest.raises(hf.PackingError, match="gradient checkpointing"):
        compare_packed(model, docs, batch, form="collator")


def test_older_transformers_stay_refused(monkeypatch):
    model = build("lfm2", packing=False)
    monkeypatch.setattr(hf_hybrid, "MIN_TRANSFORMERS", "99.0.0")
    assert not hf_hybrid.handles(model)
    with pytest.raises(hf.PackingError, match="mix tokens outside attention"):
        hf.enable_packing(model)
