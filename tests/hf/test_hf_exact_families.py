"""Families whose own code stood between seqpack and exact packing: each is now exact (packed rows
compute what the documents compute one by one) or refused with a PackingError naming why.

Tiny random models (hidden 64, 2 layers, fp32) built from each family's config class (with
`hf_verify.FAMILY_OVERRIDES`: latent attention with value head dim != query/key head dim,
windows and chunks shorter than the documents), five documents in two rows (the second
padded); forward only where the backward adds nothing family-specific.
"""

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from seqpack.integrations import hf
from seqpack.integrations.hf import PackingError
from seqpack.integrations.hf_verify import compare_packed, make_rows, tiny_config

TOL = 1e-4
LENGTHS = (5, 11, 3, 8, 6)
ROWS = ((0, 1, 2), (3, 4))


def model_of(family, impl, *, packing=True):
    torch.manual_seed(0)
    try:
        config = tiny_config(family)
    except KeyError:
        pytest.skip(f"{family} is not in transformers {transformers.__version__}")
    model = AutoModelForCausalLM.from_config(config, attn_implementation=impl)
    model.requires_grad_(False).eval()  # no dropout: the comparison is exact
    return hf.enable_packing(model) if packing else model


def batch_for(model):
    vocab = model.config.get_text_config().vocab_size
    return make_rows(LENGTHS, ROWS, vocab, capacity=max(sum(LENGTHS[d] for d in r) for r in ROWS) + 2)


def assert_exact(family, impl, forms=("int_mask", "collator", "position_ids")):
    if hf._leaks_on_this_transformers(family, impl):  # this family's code in an older transformers
        with pytest.raises(PackingError, match="lets packed documents see each other"):
            model_of(family, impl)
        pytest.skip(f"{family} on {impl} leaks on transformers {transformers.__version__}: refused, as checked")
    model = model_of(family, impl)
    docs, batch = batch_for(model)
    for form in forms:
        r = compare_packed(model, docs, batch, form=form, backward=False)
        assert r["logits"] <= TOL, (family, impl, form, r)


# Positions numbered from padding_idx + 1 (fairseq convention): documents restart there.
@pytest.mark.parametrize("impl", ["sdpa", "seqpack"])
@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_position_offset_families(family, impl):
    assert_exact(family, impl)


# Models that never hand position_ids to the mask builder: the hook builds the mask.
@pytest.mark.parametrize("family, impl", [
    ("opt", "sdpa"), ("opt", "eager"), ("biogpt", "sdpa"), ("afmoe", "sdpa"), ("gpt_oss", "eager"),
    ("mpt", "eager"), ("xglm", "eager"),
])
def test_mask_built_by_the_hook(family, impl):
    assert_exact(family, impl)


def test_mask_built_by_the_hook_leaves_unpacked_calls_alone():
    bare, hooked = model_of("opt", "sdpa", packing=False), model_of("opt", "sdpa")
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    torch.testing.assert_close(hooked(input_ids=ids, attention_mask=mask).logits,
                               bare(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=0)


# "seqpack" honours what the module asks for: chunks and windows given only through the config's
# layer types or the mask, softcapping, sinks, a model-built bias, value head dim != query head dim,
# sparse-attention indexers that read the mask.
@pytest.mark.parametrize("family", ["llama4_text", "phimoe", "gemma2", "gpt_oss", "doge", "deepseek_v3",
                                    "minicpm3", "deepseek_v32", "glm_moe_dsa", "mimo_v2_flash"])
def test_seqpack_attention_honours_the_module(family):
    assert_exact(family, "seqpack", forms=("collator", "int_mask"))


@pytest.mark.parametrize("family", ["deepseek_v3", "deepseek_v32"])
def test_mla_and_indexer_on_sdpa(family):
    assert_exact(family, "sdpa", forms=("int_mask",))


def test_mla_backward_on_seqpack():
    model = model_of("deepseek_v3", "seqpack")
    model.requires_grad_(True)
    docs, batch = batch_for(model)
    r = compare_packed(model, docs, batch, form="collator")
    assert r["logits"] <= TOL and r["grads"] <= TOL, r


@pytest.mark.parametrize("family, words", [
    ("xlstm", "xLSTM"), ("zaya", "convolution"), ("openai-gpt", "own attention code"),
    ("bloom", "ALiBi"), ("trocr", "takes no position_ids"), ("bart", "takes no position_ids"),
])
def test_refused_families(family, words):
    model = model_of(family, "eager", packing=False)
    with pytest.raises(PackingError, match=words):
        hf.enable_packing(model)


def test_implementation_the_family_ignores_is_refused():
    """mpt keeps its own eager code whatever attn_implementation says: asking for "seqpack" raises."""
    model = model_of("mpt", "eager", packing=False)
    with pytest.raises(PackingError, match="own attention code"):
        hf.enable_packing(model, attn_implementation="seqpack")


def test_unknown_sequence_convolution_is_caught():
    model = model_of("llama", "sdpa", packing=False)
    model.model.layers[0].add_module("conv", torch.nn.Conv1d(64, 64, kernel_size=4, groups=64))
    with pytest.raises(PackingError, match="Conv1d"):
        hf.enable_packing(model)


def test_byte_patch_family_is_refused_by_name():
    """blt groups bytes into patches across the whole row (its tiny model is large: named, not built)."""
    from transformers import AutoConfig

    class Blt(torch.nn.Module):
        config = AutoConfig.for_model("blt")

    with pytest.raises(PackingError, match="byte patches"):
        hf.enable_packing(Blt())
