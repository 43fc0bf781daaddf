"""Each configuration under which packed documents would leak raises an error saying what to change;
calls that are not packed pass through untouched."""

import pytest
import torch
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM, DynamicCache

from seqpack.batch import collate_packed
from seqpack.integrations import hf
from seqpack.integrations.hf import PackingError

from hf_util import packed, tiny


@pytest.fixture(scope="module")
def model():
    return tiny("llama", "sdpa", grad=False)


@pytest.fixture(scope="module")
def batch():
    return packed("bsz3_padded")[1]


def int_mask_call(batch, **extra):
    return dict(input_ids=batch.input_ids, attention_mask=batch.boundaries.attention_mask(), **extra)


@pytest.mark.parametrize("extra, words", [
    (dict(use_cache=True), "use_cache=True"),
    (dict(past_key_values="cache"), "past_key_values"),
])
def test_cache_with_packed_batch_is_refused(model, batch, extra, words):
    if extra.get("past_key_values") == "cache":
        extra = dict(past_key_values=DynamicCache(config=model.config))
    with pytest.raises(PackingError, match=words):
        model(**int_mask_call(batch, **extra))


def test_default_use_cache_is_turned_off(model, batch):
    out = model(**int_mask_call(batch))
    assert out.past_key_values is None  # no cache was built, so the document mask stayed on


@pytest.mark.parametrize("mask_of", [lambda m: m > 0, lambda m: (m > 0).long()], ids=["bool", "zero_one"])
def test_mask_that_lost_its_labels_is_refused(model, batch, mask_of):
    mask = mask_of(batch.boundaries.attention_mask())
    with pytest.raises(PackingError, match="lost its document labels"):
        model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids)
    with pytest.raises(PackingError, match="lost its document labels"):
        model(input_ids=batch.input_ids, attention_mask=mask, cu_seq_lens_q=batch.boundaries.cu_seqlens,
              cu_seq_lens_k=batch.boundaries.cu_seqlens, max_length_q=11, max_length_k=11)


def test_plain_padded_batch_and_generation_untouched():
    bare, hooked = tiny("llama", "sdpa", packing=False, grad=False), tiny("llama", "sdpa", grad=False)
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    torch.testing.assert_close(hooked(input_ids=ids, attention_mask=mask).logits,
                               bare(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=0)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(hooked.generate(ids[:1], **kw), bare.generate(ids[:1], **kw))


def tiny_recurrent(model_type):
    kw = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, pad_token_id=0)
    extra = {
        "mamba": dict(state_size=8, expand=2, conv_kernel=4),
        "mamba2": dict(num_heads=4, head_dim=16, state_size=8, n_groups=1, expand=2, conv_kernel=4),
        "bamba": dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, mamba_n_heads=4,
                      mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1, mamba_expand=2,
                      attn_layer_indices=[1]),
    }[model_type]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw, **extra))


@pytest.mark.parametrize("model_type", ["mamba", "mamba2", "bamba"])
def test_layers_needing_seq_idx_are_refused(model_type, batch, monkeypatch):
    # These families' mixers are made document-aware (hf_hybrid); without that they must be refused.
    from seqpack.integrations import hf_hybrid
    monkeypatch.setattr(hf_hybrid, "MIXERS", {})
    model = tiny_recurrent(model_type)
    with pytest.raises(PackingError, match="mix tokens outside attention"):
        hf.enable_packing(model)
    # The global switch (configure_packing) hooks every model; the first packed call refuses.
    hf._attach(model)
    with pytest.raises(PackingError, match="mix tokens outside attention"):
        model(input_ids=batch.input_ids, attention_mask=batch.boundaries.attention_mask())


@pytest.mark.parametrize("version, ok", [("4.57.1", False), ("4.53.0", False), ("5.0.0", True), ("5.23.0", True)])
def test_transformers_version_guard(version, ok, monkeypatch):
    if ok:
        assert hf.check_transformers_version(version) == version
        return
    with pytest.raises(PackingError, match="older than 5.0.0"):
        hf.check_transformers_version(version)
    import transformers
    monkeypatch.setattr(transformers, "__version__", version)
    with pytest.raises(PackingError, match="pip install"):
        hf.enable_packing(tiny("llama", packing=False))


def test_unknown_attention_implementation_is_refused(batch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    AttentionInterface.register("my_attention", sdpa_attention_forward)  # no mask builder: HF drops masks
    model = tiny("llama", "sdpa", grad=False)
    model.set_attn_implementation("my_attention")
    with pytest.raises(PackingError, match="'my_attention' is not one seqpack knows"):
        model(**int_mask_call(batch))
    model(input_ids=batch.input_ids)  # an unpacked call still runs
    with pytest.raises(PackingError, match="my_attention"):
        hf.enable_packing(tiny("llama", packing=False), attn_implementation="my_attention")


def test_packed_batch_with_collator_label_shift_is_refused(model):
    docs, batch = packed("bsz1")
    shifted = collate_packed(_one_bin(batch), [{"input_ids": d.numpy()} for d in docs], label_shift="collator")
    with pytest.raises(PackingError, match="label_shift='model'"):
        model(shifted)


def _one_bin(batch):
    from seqpack.plan import PackPlan

    n = len(batch.doc_index)
    return PackPlan.from_rows(batch.doc_stop - batch.doc_start, [n], batch.boundaries.shape[1],
                              doc=batch.doc_index, start=batch.doc_start)


def test_seqpack_attention_refuses_dropout(batch):
    pytest.importorskip("seqpack.attention")
    model = tiny("llama", "seqpack").train()
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    with pytest.raises(PackingError, match="dropout"):
        model(**int_mask_call(batch))
