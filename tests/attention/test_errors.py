"""Clear errors: invalid boundaries, mismatched inputs, and requests a backend cannot honour."""

import pytest
import torch

from seqpack.attention import BackendUnavailable, prepare, varlen_attention
from seqpack.attention import flash as flash_mod
from seqpack.attention import torch_varlen as varlen_mod
from seqpack.attention.base import AttentionRequest
from seqpack.attention.flash import FlashAttn2, FlashAttn4
from seqpack.attention.torch_varlen import TorchVarlen
from seqpack.boundaries import DocBoundaries


def qkv(shape, heads=2, kv_heads=2, dim=16, dtype=torch.float32, grad=False):
    return tuple(torch.randn(*shape, h, dim, dtype=dtype, requires_grad=grad) for h in (heads, kv_heads, kv_heads))


def cuda_request(**kw):
    base = dict(device_type="cuda", dtype=torch.bfloat16, requires_grad=True, causal=True, window=None,
                num_heads=16, num_kv_heads=16, head_dim=128, layout="1d", batch=1, seqlen=1024,
                max_seqlen=1024, compiling=False, capability=(9, 0))
    return AttentionRequest(**{**base, **kw})


# ---------------------------------------------------------------------------- invalid boundaries


@pytest.mark.parametrize("cu, shape, max_seqlen, message", [
    ([0, 3, 5], (6,), None, "ends at 5 but the buffer has 6"),
    ([0, 4, 2, 6], (6,), None, "decreases at index 2: 4 -> 2"),
    ([0, 5, 6], (6,), 4, "segment 0 has 5 tokens but max_seqlen is 4"),
    ([1, 3, 6], (6,), None, "must start at 0"),
    ([0, 3, 5, 8], (2, 4), None, "crosses the end of row 0"),
])
def test_invalid_boundaries_raise_named_errors(cu, shape, max_seqlen, message):
    with pytest.raises(ValueError, match=message):
        DocBoundaries.from_cu_seqlens(torch.tensor(cu), shape, max_seqlen=max_seqlen)
    # Built without validation, prepare() catches the same problems.
    trusted = DocBoundaries(torch.tensor(cu), shape, max_seqlen=max_seqlen or 8, validate=False)
    with pytest.raises(ValueError, match=message):
        prepare(trusted)
    if max_seqlen is None:
        return
    # The max_seqlen bound, checked by prepare even on a validate=False object.
    with pytest.raises(ValueError, match=message):
        prepare(DocBoundaries(torch.tensor(cu), shape, max_seqlen=max_seqlen, validate=False))


def test_prepare_skips_checks_when_asked():
    bad = DocBoundaries(torch.tensor([0, 4, 2, 6]), (6,), max_seqlen=8, validate=False)
    prepare(bad, validate=False, block_mask=False)


@pytest.mark.parametrize("make, message", [
    (lambda b: qkv((7,)), r"q has token dims \(7,\) but the boundaries describe \(6,\)"),
    (lambda b: qkv((2, 3)), "q is rows"),
    (lambda b: qkv((6,), heads=3, kv_heads=2), "3 query heads cannot share 2"),
    (lambda b: (qkv((6,))[0], *qkv((6,), dim=8)[1:]), "same head dim"),
    (lambda b: (qkv((6,))[0].double(), *qkv((6,))[1:]), "dtypes differ"),
])
def test_mismatched_inputs_raise(make, message):
    b = DocBoundaries.from_lengths([2, 4])
    with pytest.raises(ValueError, match=message):
        varlen_attention(*make(b), b)


def test_bad_window_and_boundaries_type():
    b = DocBoundaries.from_lengths([2, 4])
    with pytest.raises(ValueError, match="window must be None or a positive"):
        varlen_attention(*qkv((6,)), b, window=0)
    with pytest.raises(TypeError, match="DocBoundaries.from_cu_seqlens"):
        varlen_attention(*qkv((6,)), torch.tensor([0, 2, 6]))


# ---------------------------------------------------------------------------- unsupported requests


def test_flex_backward_on_cpu_is_refused_with_alternatives():
    b = DocBoundaries.from_lengths([2, 4])
    with pytest.raises(BackendUnavailable, match=r"'flex'.*no backward on CPU.*Backends that can: .*sdpa_dense"):
        varlen_attention(*qkv((6,), grad=True), b, backend="flex")


def test_window_on_nested_tensors_is_refused():
    b = DocBoundaries.from_lengths([2, 4])
    with pytest.raises(BackendUnavailable, match=r"'sdpa_njt'.*no sliding window"):
        varlen_attention(*qkv((6,)), b, causal=False, window=3, backend="sdpa_njt")
    with pytest.raises(BackendUnavailable, match=r"'sdpa_njt'.*is_causal=True"):
        varlen_attention(*qkv((6,)), b, causal=True, backend="sdpa_njt")


def test_cuda_only_backends_refuse_cpu():
    b = DocBoundaries.from_lengths([2, 4])
    with pytest.raises(BackendUnavailable, match="'torch_varlen'.*CUDA only"):
        varlen_attention(*qkv((6,)), b, backend="torch_varlen")
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        varlen_attention(*qkv((6,)), b, backend="flash")


def test_flash_backends_refuse_fp32_and_odd_head_dims(monkeypatch):
    # Pretend FA2/FA4 imported, to reach their request checks on this CPU-only machine.
    monkeypatch.setattr(flash_mod, "_FA2", object())
    monkeypatch.setattr(flash_mod, "_FA4", object())
    monkeypatch.setattr(varlen_mod, "_VARLEN", object())
    monkeypatch.setattr(varlen_mod, "_LOADED", True)
    for backend in (FlashAttn2(), FlashAttn4(), TorchVarlen()):
        assert backend.supports(cuda_request()) is None
        assert "fp16/bf16" in backend.supports(cuda_request(dtype=torch.float32))
        assert "head_dim 100" in backend.supports(cuda_request(head_dim=100))
        assert "CUDA only" in backend.supports(cuda_request(device_type="cpu"))
    assert "sm90/sm100" in FlashAttn4().supports(cuda_request(capability=(8, 0)))


def test_backends_absent_say_so():
    for backend in (FlashAttn2(), FlashAttn4()):
        why = backend.supports(cuda_request())
        if why is not None:  # on a machine with these packages there is nothing to check
            assert "not installed" in why or "failed" in why


@pytest.mark.parametrize("alias, name", [("fa4", "flash_attn.cute"), ("fa3", "flash_attn_interface"),
                                         ("fa2", "flash_attn")])
def test_flash_aliases_name_the_flash_backends(alias, name):
    from seqpack.attention.api import BACKEND_ALIASES, BACKENDS, _named

    assert BACKEND_ALIASES[alias] == name
    req = cuda_request(device_type="cpu", capability=None)
    with pytest.raises(BackendUnavailable, match=f"attention backend '{alias}' cannot run this call"):
        _named(alias, req)  # the backend is known (on CPU it cannot run), not an unknown name
    assert BACKENDS[name].supports(req) is not None
