"""FlashAttention varlen kernels, when installed: FA2, FA3 (hopper), FA4 (CuTe DSL).

Notable:
- Nothing here is required. Each package is probed once, when this module is imported
  (``find_spec``, then a real import only if it is there), so ``supports`` reads a
  module constant and stays traceable under ``torch.compile``.
- ``flash_attn`` may be only flash-attn-4's namespace (it installs ``flash_attn.cute``
  and no ``flash_attn/__init__.py``): FA2 counts as present only if
  ``flash_attn.flash_attn_varlen_func`` imports.
- FA4 is called with keywords (its 4th positional parameter is ``qv``). Its autograd
  Function breaks ``torch.compile`` graphs, so we register its forward and backward as
  ``torch.library.custom_op``s (``seqpack::fa4_varlen_fwd`` / ``_bwd``) with fake
  implementations and ``register_autograd``: a compiled model keeps one graph. The ops
  call FA4's ``_flash_attn_fwd`` / ``_flash_attn_bwd`` (checked by signature at import;
  if they moved, FA4 still runs eagerly through its public function and refuses compile).
- All three take fp16/bf16 only and need ``cu_seqlens`` int32 and a host ``max_seqlen``,
  which `DocBoundaries` provide; rows are flattened (segments never cross rows).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect

import torch

from seqpack.attention.base import Backend, flash_window, flat

__all__ = ["FlashAttn2", "FlashAttn3", "FlashAttn4", "probe_report"]


def _probe(module: str, attr: str):
    """``(function, None)`` if ``module.attr`` imports, else ``(None, reason)``."""
    top = module.split(".")[0]
    try:
        if importlib.util.find_spec(top) is None or importlib.util.find_spec(module) is None:
            return None, f"{module} is not installed"
        fn = getattr(importlib.import_module(module), attr)
    except Exception as e:  # an installed but broken package must not break seqpack
        return None, f"importing {module}.{attr} failed: {type(e).__name__}: {e}"
    return fn, None


_FA2, _FA2_WHY = _probe("flash_attn", "flash_attn_varlen_func")
_FA3, _FA3_WHY = _probe("flash_attn_interface", "flash_attn_varlen_func")
_FA4, _FA4_WHY = _probe("flash_attn.cute", "flash_attn_varlen_func")


def probe_report() -> dict[str, str]:
    """Which FlashAttention packages imported, and why not the others."""
    return {"flash_attn": _FA2_WHY or "ok", "flash_attn_interface": _FA3_WHY or "ok",
            "flash_attn.cute": _FA4_WHY or "ok"}


def _half_only(req, name):
    if req.device_type != "cuda":
        return f"{name} is CUDA only"
    if req.dtype not in (torch.float16, torch.bfloat16):
        return f"{name} takes fp16/bf16, not {req.dtype} (use flex or sdpa_dense for fp32)"
    if req.head_dim > 256 or req.head_dim % 8:
        return f"head_dim {req.head_dim}: {name} wants a multiple of 8 up to 256"
    return None


# ----------------------------------------------------------------------------------------
# FA2


def _fa2_is_custom_op() -> bool:
    # flash-attn >= 2.7 registers its kernels as torch custom ops, so compile keeps one graph.
    return _FA2 is not None and hasattr(getattr(torch.ops, "flash_attn", None), "_flash_attn_varlen_forward")


class FlashAttn2(Backend):
    name = "flash_attn"

    def supports(self, req):
        if _FA2 is None:
            return _FA2_WHY
        if req.compiling and not _fa2_is_custom_op():
            return "this flash_attn is not a registered custom op (< 2.7): torch.compile would break the graph"
        return _half_only(req, "FlashAttention-2")

    def __call__(self, q, k, v, ctx, req, scale):
        b = ctx.boundaries
        ws = (-1, -1) if req.window is None else flash_window(req.causal, req.window)
        out = _FA2(flat(q), flat(k), flat(v), b.cu_seqlens, b.cu_seqlens, b.max_seqlen, b.max_seqlen,
                   dropout_p=0.0, softmax_scale=scale, causal=req.causal, window_size=ws)
        return out.reshape(q.shape)


# ----------------------------------------------------------------------------------------
# FA3


class FlashAttn3(Backend):
    name = "flash_attn_interface"

    def supports(self, req):
        if _FA3 is None:
            return _FA3_WHY
        if req.capability is not None and req.capability[0] != 9:
            return f"FlashAttention-3 is for Hopper (sm90); this GPU is sm{req.capability[0]}{req.capability[1]}"
        if req.compiling and not hasattr(torch.ops, "flash_attn_3"):
            return "this flash_attn_interface is not a registered custom op: torch.compile would break the graph"
        return _half_only(req, "FlashAttention-3")

    def __call__(self, q, k, v, ctx, req, scale):
        b = ctx.boundaries
        ws = (-1, -1) if req.window is None else flash_window(req.causal, req.window)
        out = _FA3(flat(q), flat(k), flat(v), cu_seqlens_q=b.cu_seqlens, cu_seqlens_k=b.cu_seqlens,
                   max_seqlen_q=b.max_seqlen, max_seqlen_k=b.max_seqlen, softmax_scale=scale,
                   causal=req.causal, window_size=ws)
        out = out[0] if isinstance(out, tuple) else out  # some versions return (out, lse)
        return out.reshape(q.shape)


# ----------------------------------------------------------------------------------------
# FA4 as a custom op


def _fa4_private():
    """FA4's forward/backward entry points if their signatures are what the custom op calls."""
    if _FA4 is None:
        return None, None
    try:
        iface = importlib.import_module("flash_attn.cute.interface")
        fwd, bwd = iface._flash_attn_fwd, iface._flash_attn_bwd
        need = {"cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "window_size_left",
                "window_size_right", "softmax_scale", "causal"}
        if not (need | {"return_lse"}) <= set(inspect.signature(fwd).parameters):
            return None, None
        if not need <= set(inspect.signature(bwd).parameters):
            return None, None
        return fwd, bwd
    except Exception:
        return None, None


_FA4_FWD, _FA4_BWD = _fa4_private()


def _none_if_negative(x: int):
    return None if x < 0 else x


def define_fa4_ops(fa_fwd, fa_bwd, namespace: str = "seqpack", device_types: str = "cuda"):
    """Register ``fa_fwd``/``fa_bwd`` (FA4's ``_flash_attn_fwd``/``_bwd`` signatures) as custom
    ops with fake impls and autograd; return the forward op ``(q, k, v, cu_seqlens, max_seqlen,
    scale, causal, window_left, window_right) -> (out, lse)``. Tests register stand-ins."""
    # Annotations name torch.Tensor: with `from __future__ import annotations` they are strings
    # that infer_schema resolves at module scope.
    @torch.library.custom_op(f"{namespace}::fa4_varlen_fwd", mutates_args=(), device_types=device_types)
    def fa4_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                scale: float, causal: bool, window_left: int, window_right: int) -> tuple[torch.Tensor, torch.Tensor]:
        res = fa_fwd(q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen,
                     max_seqlen_k=max_seqlen, softmax_scale=scale, causal=causal,
                     window_size_left=_none_if_negative(window_left),
                     window_size_right=_none_if_negative(window_right), return_lse=True)
        return res[0], res[1]  # (out [T, H, D], lse [H, T] fp32)

    @fa4_fwd.register_fake
    def _(q, k, v, cu_seqlens, max_seqlen, scale, causal, window_left, window_right):
        return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)

    @torch.library.custom_op(f"{namespace}::fa4_varlen_bwd", mutates_args=(), device_types=device_types)
    def fa4_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float, causal: bool,
                window_left: int, window_right: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        res = fa_bwd(q, k, v, out, dout.contiguous(), lse, softmax_scale=scale, causal=causal,
                     window_size_left=_none_if_negative(window_left),
                     window_size_right=_none_if_negative(window_right),
                     cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
                     max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen)
        return res[0], res[1], res[2]

    @fa4_bwd.register_fake
    def _(dout, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, causal, window_left, window_right):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def setup_context(ctx, inputs, output):
        q, k, v, cu_seqlens, max_seqlen, scale, causal, wl, wr = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.args = (max_seqlen, scale, causal, wl, wr)

    def backward(ctx, dout, dlse):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = fa4_bwd(dout, q, k, v, out, lse, cu_seqlens, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None

    fa4_fwd.register_autograd(backward, setup_context=setup_context)
    return fa4_fwd


_FA4_OP = define_fa4_ops(_FA4_FWD, _FA4_BWD) if _FA4_FWD is not None else None


class FlashAttn4(Backend):
    name = "flash_attn.cute"

    def supports(self, req):
        if _FA4 is None:
            return _FA4_WHY
        if req.capability is not None and req.capability[0] not in (9, 10):
            return f"flash-attn-4 varlen fwd+bwd runs on sm90/sm100; this GPU is sm{req.capability[0]}{req.capability[1]}"
        if req.compiling and _FA4_OP is None:
            return "this flash-attn-4 lacks the _flash_attn_fwd/_bwd signatures our custom op wraps: compile would break"
        return _half_only(req, "flash-attn-4")

    def __call__(self, q, k, v, ctx, req, scale):
        b = ctx.boundaries
        wl, wr = flash_window(req.causal, req.window)
        if _FA4_OP is not None:  # contiguous inputs: the fake outputs are contiguous, like FA4's
            qf, kf, vf = (flat(x).contiguous() for x in (q, k, v))
            out, _ = _FA4_OP(qf, kf, vf, b.cu_seqlens, b.max_seqlen, scale, req.causal, wl, wr)
        else:
            window = (None, None) if req.window is None else (wl, wr)
            out, _ = _FA4(flat(q), flat(k), flat(v), cu_seqlens_q=b.cu_seqlens, cu_seqlens_k=b.cu_seqlens,
                          max_seqlen_q=b.max_seqlen, max_seqlen_k=b.max_seqlen, softmax_scale=scale,
                          causal=req.causal, window_size=window)
        return out.reshape(q.shape)
