"""LLaMA-Factory's configure_packing(model_args, is_trainable): same signature and meaning, working
on transformers 5.x: models built after it honour integer-labelled masks."""

from types import SimpleNamespace

import pytest

import seqpack
from seqpack.integrations import hf
from seqpack.integrations.hf_verify import compare_packed

from hf_util import packed, tiny


@pytest.fixture
def configured():
    yield
    hf.unconfigure_packing()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_models_built_after_configure_keep_documents_apart(configured, impl):
    seqpack.configure_packing(SimpleNamespace(block_diag_attn=True), is_trainable=True)
    model = tiny("qwen2", impl, packing=False)
    assert hf.is_packing_enabled(model)
    docs, batch = packed("bsz3_padded")
    r = compare_packed(model, docs, batch, form="int_mask")
    assert r["logits"] <= 1e-4 and r["grads"] <= 1e-4


@pytest.mark.parametrize("args, trainable", [
    (SimpleNamespace(block_diag_attn=False), True),
    (SimpleNamespace(block_diag_attn=True), False),
    (SimpleNamespace(), True),
])
def test_configure_acts_only_with_block_diag_attn_when_training(configured, args, trainable):
    seqpack.configure_packing(args, is_trainable=trainable)
    assert not hf.is_packing_enabled(tiny("llama", packing=False))


def test_unconfigure_restores_model_construction(configured):
    seqpack.configure_packing(SimpleNamespace(block_diag_attn=True), is_trainable=True)
    seqpack.configure_packing(SimpleNamespace(block_diag_attn=True), is_trainable=True)  # idempotent
    hf.unconfigure_packing()
    assert not hf.is_packing_enabled(tiny("llama", packing=False))
