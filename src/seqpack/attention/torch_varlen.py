"""PyTorch's own varlen kernel: ``torch.nn.attention.varlen.varlen_attn`` (bundled FlashAttention-2).

Its signature moved between releases, so we read it instead of the version string:
- 2.10: ``(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None)``;
- 2.11: ``(..., *, return_aux=None, scale=None, window_size=(-1, -1))``, causal is
  ``window_size=(-1, 0)``;
- 2.12+: adds ``enable_gqa`` and ``seqused_k``.
Without ``scale`` we fold it into q; without ``enable_gqa`` we repeat the KV heads.
CUDA only, fp16/bf16. A registered custom op with a backward: compiles without a break.
"""

from __future__ import annotations

import inspect
import math

import torch

from seqpack.attention.base import Backend, flash_window, flat, repeat_kv

__all__ = ["TorchVarlen"]


def _load():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, frozenset()
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


_VARLEN, _PARAMS = _load()


class TorchVarlen(Backend):
    name = "torch_varlen"

    def supports(self, req):
        if _VARLEN is None:
            return f"torch.nn.attention.varlen needs torch >= 2.10 (this is {torch.__version__})"
        if req.device_type != "cuda":
            return f"varlen_attn is CUDA only ({req.device_type} raises NotImplementedError)"
        if req.dtype not in (torch.float16, torch.bfloat16):
            return f"varlen_attn runs FlashAttention-2: fp16/bf16 only, not {req.dtype}"
        if req.head_dim > 256 or req.head_dim % 8:
            return f"head_dim {req.head_dim}: FlashAttention-2 wants a multiple of 8 up to 256"
        if req.window is not None and "window_size" not in _PARAMS:
            return f"varlen_attn in torch {torch.__version__} has no window_size (torch >= 2.11)"
        return None

    def __call__(self, q, k, v, ctx, req, scale):
        b = ctx.boundaries
        qf, kf, vf = flat(q), flat(k), flat(v)
        kwargs = {}
        if req.gqa_groups > 1:
            if "enable_gqa" in _PARAMS:
                kwargs["enable_gqa"] = True
            else:
                kf, vf = repeat_kv(kf, req.gqa_groups), repeat_kv(vf, req.gqa_groups)
        if "window_size" in _PARAMS:
            kwargs["window_size"] = flash_window(req.causal, req.window)
        elif req.causal:
            kwargs["is_causal"] = True
        if "scale" in _PARAMS:
            kwargs["scale"] = scale
        else:  # the kernel uses 1/sqrt(D): pre-scale q to get ours
            qf = qf * (scale * math.sqrt(req.head_dim))
        cu, m = b.cu_seqlens, b.max_seqlen
        out = _VARLEN(qf, kf, vf, cu, cu, m, m, **kwargs)
        return out.reshape(q.shape)
