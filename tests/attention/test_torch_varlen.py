"""torch_varlen against each varlen_attn signature (2.10, 2.11, 2.12+), with CPU stand-ins.

varlen_attn is CUDA only; what can be checked here is that we call each signature right:
causal as ``is_causal`` or ``window_size=(-1, 0)``, our window as ``(window - 1, 0)`` or
``(window - 1, window - 1)``, the scale folded into q when there is no ``scale``, and GQA
by ``enable_gqa`` or by repeating KV heads. The stand-ins read their arguments the way
FlashAttention does and refuse what their version would refuse.
"""

import inspect
import math

import pytest
import torch
from attn_ref import make_qkv, reference, rel_err

from seqpack.attention import torch_varlen as tv
from seqpack.attention.api import _request
from seqpack.attention.base import AttentionContext
from seqpack.boundaries import DocBoundaries


def fa_math(q, k, v, cu, scale, left, right):
    """FlashAttention semantics: window (left, right), -1 = unlimited; GQA by head groups."""
    H, Hkv = q.shape[1], k.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if e == s:
            continue
        qq = q[s:e].double().transpose(0, 1)
        kk = k[s:e].double().repeat_interleave(H // Hkv, 1).transpose(0, 1)
        vv = v[s:e].double().repeat_interleave(H // Hkv, 1).transpose(0, 1)
        i, j = torch.arange(e - s)[:, None], torch.arange(e - s)[None, :]
        ok = torch.ones(e - s, e - s, dtype=torch.bool)
        if left >= 0:
            ok &= i - j <= left
        if right >= 0:
            ok &= j - i <= right
        sc = (qq @ kk.transpose(-1, -2) * scale).masked_fill(~ok, float("-inf"))
        out[s:e] = (sc.softmax(-1) @ vv).transpose(0, 1)
    return out.to(q.dtype)


def varlen_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    assert query.shape[1] == key.shape[1], "2.10 has no GQA"
    return fa_math(query, key, value, cu_seq_q, 1 / math.sqrt(query.shape[-1]), -1, 0 if is_causal else -1)


def varlen_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1)):
    assert query.shape[1] == key.shape[1], "2.11 has no GQA"
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    return fa_math(query, key, value, cu_seq_q, scale, *window_size)


def varlen_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                window_size=(-1, -1), enable_gqa=False, seqused_k=None):
    assert enable_gqa or query.shape[1] == key.shape[1]
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    return fa_math(query, key, value, cu_seq_q, scale, *window_size)


@pytest.mark.parametrize("fn", [varlen_2_10, varlen_2_11, varlen_2_12], ids=["2.10", "2.11", "2.12"])
@pytest.mark.parametrize("causal, window", [(True, None), (False, None), (True, 3), (False, 4)])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_each_signature_is_called_right(monkeypatch, fn, causal, window, kv_heads):
    monkeypatch.setattr(tv, "_VARLEN", fn)
    monkeypatch.setattr(tv, "_PARAMS", frozenset(inspect.signature(fn).parameters))
    monkeypatch.setattr(tv, "_LOADED", True)
    b = DocBoundaries.from_row_lengths([[5, 1, 6], [12]], 12, max_seqlen=12).static(8)
    q, k, v = make_qkv(b, 4, kv_heads, 8)
    req = _request(q, k, v, AttentionContext(b), causal, window)
    why = tv.TorchVarlen().supports(req.__class__(**{**req.__dict__, "device_type": "cuda",
                                                     "dtype": torch.bfloat16}))
    if window is not None and fn is varlen_2_10:
        assert "no window_size" in why
        return
    assert why is None
    out = tv.TorchVarlen()(q, k, v, AttentionContext(b), req, 0.2)
    assert out.shape == q.shape
    assert rel_err(out, reference(q, k, v, b, causal, window, scale=0.2)) < 1e-10
