"""The runtime isolation check: it sees a real leak (fp32 and bf16), passes exact models, runs once per
implementation/dtype/form, leaves no trace on the model, and can be turned off."""

import copy

import pytest
import torch

from seqpack.integrations import hf, hf_check
from seqpack.integrations.hf_collator import DataCollatorForPacking

from hf_util import tiny  # noqa: E402


def leaky(monkeypatch):
    """A "fix" that finds the documents and then does nothing with them: every packed call leaks."""
    monkeypatch.setattr(hf, "_apply_boundaries", lambda kwargs, b, route: kwargs.update(attention_mask=None))


def packed_call(model):
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3])
    return model(input_ids=ids, attention_mask=mask)


def count_forwards(model):
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize("impl", ["eager", "sdpa", "seqpack"])
def test_exact_model_passes_and_check_runs_once(impl):
    model = hf.enable_packing(tiny("llama"), attn_implementation=impl)
    calls = count_forwards(model)
    packed_call(model)
    first = len(calls)
    assert first == 1 + 1 + 3  # the call, the probe's packed forward, its three documents alone
    packed_call(model)
    assert len(calls) == first + 1  # checked once for this implementation, dtype and form
    model(input_ids=torch.tensor([[5, 6, 7]]), position_ids=torch.tensor([[0, 1, 0]]))
    assert len(calls) == first + 1 + 1 + 4  # a new form (restarting position_ids): probed again


def test_leak_is_refused_at_the_first_packed_call(monkeypatch):
    leaky(monkeypatch)
    model = hf.enable_packing(tiny("llama"), attn_implementation="sdpa")
    with pytest.raises(hf.PackingError, match=r"LlamaForCausalLM \(model_type 'llama'\) with attn_implementation "
                                              r"'sdpa' does not keep packed documents apart.*int_mask form"):
        packed_call(model)
    with pytest.raises(hf.PackingError, match="does not keep packed documents apart"):
        hf.check_isolation(model)  # explicitly, every form


def test_check_can_be_turned_off(monkeypatch):
    leaky(monkeypatch)
    packed_call(hf.enable_packing(tiny("llama"), check=False))
    monkeypatch.setenv(hf_check.ENV_VAR, "0")
    packed_call(hf.enable_packing(tiny("llama")))


def test_probe_leaves_no_trace():
    model = tiny("llama")
    model.train()
    model.model.layers[1].eval()  # a submodule the user froze in eval mode keeps it
    params = copy.deepcopy(model.state_dict())
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert hf.check_isolation(model) <= 1e-4
    assert torch.equal(torch.rand(3), expected)
    assert model.training and not model.model.layers[1].training and model.model.layers[0].training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in params.items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("width", [64, 256])
def test_bf16_tolerance_separates_rounding_from_a_leak(width):
    """bf16: the exact model stays well under 5e-2 on every implementation, the bare model's leak well over."""
    from seqpack.integrations.hf_verify import load_model
    base = load_model("llama") if width == 64 else _wide_llama(width)
    tol = hf_check.isolation_tolerance(torch.bfloat16)
    for impl in ("eager", "sdpa", "seqpack"):
        model = hf.enable_packing(copy.deepcopy(base).to(torch.bfloat16), attn_implementation=impl, check=False)
        assert hf.check_isolation(model) < tol / 2, impl
        hf.disable_packing(model)
        leak = hf.check_isolation(model, forms=["position_ids", "int_mask"], tol=float("inf"))
        assert leak > 2 * tol, (impl, leak)


def _wide_llama(width):
    from transformers import AutoModelForCausalLM
    from seqpack.integrations.hf_verify import tiny_config
    torch.manual_seed(0)
    config = tiny_config("llama", hidden_size=width, intermediate_size=4 * width, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=width // 8, vocab_size=512)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def test_collator_checks_its_model_at_the_first_batch():
    examples = [{"input_ids": list(range(3, 3 + n))} for n in (5, 7, 4)]
    bare = tiny("llama", "sdpa", packing=False)
    DataCollatorForPacking(max_length=16, model=bare)(examples)  # its own dict works without the hook
    with pytest.raises(hf.PackingError, match=r"collator:attention_mask"):
        DataCollatorForPacking(max_length=16, format="attention_mask", model=bare)(examples)
    hf.enable_packing(bare)
    DataCollatorForPacking(max_length=16, format="attention_mask", model=bare)(examples)


def test_switching_to_an_implementation_the_model_cannot_take_is_refused():
    from transformers import AutoModelForCausalLM
    from seqpack.integrations.hf_verify import tiny_config
    model = AutoModelForCausalLM.from_config(tiny_config("openai-gpt"))
    with pytest.raises(hf.PackingError, match="cannot switch to attn_implementation 'seqpack'.*keeps 'eager'"):
        hf.enable_packing(model, attn_implementation="seqpack")


def test_configure_packing_arms_the_check(monkeypatch):
    from types import SimpleNamespace

    from seqpack.integrations.hf_verify import load_model
    leaky(monkeypatch)
    hf.configure_packing(SimpleNamespace(block_diag_attn=True), True)
    try:
        model = load_model("llama", attn_implementation="sdpa")
    finally:
        hf.unconfigure_packing()
    with pytest.raises(hf.PackingError, match="does not keep packed documents apart"):
        packed_call(model)
