"""PyTorch's own varlen kernel: ``torch.nn.attention.varlen.varlen_attn`` (bundled FlashAttention-2).

Its signature moved between releases, so we read it instead of the version string:
- 2.10: ``(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None)``;
- 2.11: ``(..., *, return_aux=None, scale=None, window_size=(-1, -1))``, causal is
  ``window_size=(-1, 0)``;
- 2.12+: adds ``enable_gqa`` and ``seqused_k``.
Without ``scale`` we fold it into q; without ``enable_gqa`` we repeat the KV heads.
CUDA only, fp16/bf16. A registered custom op with a backward: compiles without a break.
Imported on the first CUDA request, not with seqpack (the module imports torch._dynamo).
"""

from __future__ import annotations

import inspect
import math

import torch

from seqpack.attention.base import Backend, constant_result, flash_window, flat, repeat_kv

__all__ = ["TorchVarlen", "varlen_params"]

# Filled on first use, not at import: importing torch.nn.attention.varlen imports
# torch._dynamo (2-4 s), which a CPU-only user of seqpack should never pay for.
_VARLEN = None
_PARAMS: frozenset = frozenset()
_LOADED = False


def _load() -> None:
    global _VARLEN, _PARAMS, _LOADED
    if _LOADED:
        return
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    _VARLEN = varlen_attn
    _PARAMS = frozenset(inspect.signature(varlen_attn).parameters) if varlen_attn is not None else frozenset()
    _LOADED = True


@constant_result
def varlen_params() -> tuple[str, ...] | None:
    """``varlen_attn``'s parameter names (sorted), or None when this torch has none.

    Imports it on the first call. Marked constant for ``torch.compile``: a model compiled
    before any eager call gets the import done once, outside the traced code.
    """
    _load()
    return None if _VARLEN is None else tuple(sorted(_PARAMS))


class TorchVarlen(Backend):
    name = "torch_varlen"

    def supports(self, req):
        if req.device_type != "cuda":  # first: a CPU call never imports varlen_attn
            return f"varlen_attn is CUDA only ({req.device_type} raises NotImplementedError)"
        params = varlen_params()
        if params is None:
            return f"torch.nn.attention.varlen needs torch >= 2.10 (this is {torch.__version__})"
        if req.dtype not in (torch.float16, torch.bfloat16):
            return f"varlen_attn runs FlashAttention-2: fp16/bf16 only, not {req.dtype}"
        if req.head_dim > 256 or req.head_dim % 8:
            return f"head_dim {req.head_dim}: FlashAttention-2 wants a multiple of 8 up to 256"
        if req.window is not None and "window_size" not in params:
            return f"varlen_attn in torch {torch.__version__} has no window_size (torch >= 2.11)"
        return None

    def __call__(self, q, k, v, ctx, req, scale):
        # supports() ran first, so _VARLEN and _PARAMS are loaded (plain globals: they trace)
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
