"""flex_attention with the document BlockMask built from ``cu_seqlens``.

Notable:
- The BlockMask comes from the context (`prepare` builds it once per batch and every
  layer reuses it) or, when the caller passed plain boundaries, is built on the spot
  (O(blocks), cheap, but repeated per layer).
- flex_attention is only fast compiled: outside ``torch.compile`` we call a compiled
  copy (``dynamic=False``: one compile per shape, which packed batches keep constant);
  inside a compiled model we call it plainly and inductor lowers it with the rest.
- CPU: forward only (PyTorch has no flex backward on CPU), and not inside a compiled
  model (inductor's CPU flex template fails there; our own compiled call is fine).
"""

from __future__ import annotations

import torch

from seqpack.attention.base import AttentionContext, Backend
from seqpack.attention.blockmask import build_block_mask

__all__ = ["Flex", "block_mask_for"]

_compiled_flex = None


def _flex_fn():
    from torch.nn.attention.flex_attention import flex_attention

    global _compiled_flex
    if torch.compiler.is_compiling():
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def block_mask_for(ctx: AttentionContext, causal: bool, window: int | None, block_size: int = 128):
    """The context's BlockMask for (causal, window), built and cached on first use."""
    key = (causal, window) if block_size == 128 else (causal, window, block_size)
    bm = ctx.block_masks.get(key)
    if bm is None:
        bm = build_block_mask(ctx.boundaries, causal=causal, window=window, block_size=block_size)
        if not torch.compiler.is_compiling():
            ctx.block_masks[key] = bm
    return bm


def _small_block_options(bs: int) -> dict:
    # flex's kernel tiles must divide the sparse block: forward BLOCK_M x BLOCK_N, backward
    # dK/dV tiles BLOCK_M1 x BLOCK_N1 and dQ tiles BLOCK_M2 x BLOCK_N2.
    return {"BLOCK_M": bs, "BLOCK_N": bs, "BLOCK_M1": bs // 2, "BLOCK_N1": bs, "BLOCK_M2": bs, "BLOCK_N2": bs // 2}


class Flex(Backend):
    """flex_attention; ``block_size`` is the BlockMask's (and, below 128, the kernel's) tile."""

    def __init__(self, name: str = "flex", block_size: int = 128):
        self.name, self.block_size = name, block_size

    def supports(self, req):
        if req.device_type not in ("cuda", "cpu"):
            return f"flex_attention runs on CUDA and CPU, not {req.device_type}"
        if req.device_type == "cpu" and req.requires_grad:
            return "flex_attention has no backward on CPU (PyTorch raises NotImplementedError); forward only there"
        if req.device_type == "cpu" and req.compiling:
            # Seen with torch 2.13: inductor's CPU flex template fails inside a larger graph
            # ("Unsupported for epilogue_nodes", views of 3D inputs); alone it compiles fine.
            return "inductor's CPU flex_attention template fails inside a larger compiled graph; use sdpa_dense"
        if req.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"flex_attention takes fp16/bf16/fp32, not {req.dtype}"
        d = req.head_dim
        if d < 16 or d & (d - 1):
            return f"head_dim {d}: flex_attention's kernels want a power of two >= 16"
        return None

    def __call__(self, q, k, v, ctx, req, scale):
        bm = block_mask_for(ctx, req.causal, req.window, self.block_size)
        # [B, L, H, D] -> [B, H, L, D]; [T, H, D] -> [1, H, T, D] with the same strides as B=1 rows
        if req.layout == "rows":
            to, back = (lambda x: x.transpose(1, 2)), (lambda o: o.transpose(1, 2))
        else:
            to, back = (lambda x: x.unsqueeze(0).transpose(1, 2)), (lambda o: o.transpose(1, 2).squeeze(0))
        kwargs = {"enable_gqa": True} if req.gqa_groups > 1 else {}
        # No ROWS_GUARANTEED_SAFE, although every query sees itself: a query can meet a block
        # where all its keys are masked before any unmasked one (a later document of the
        # tile), and the flag drops the kernel's guard for exactly that: exp2(-inf - -inf) is
        # NaN. Seen on the H100 with torch 2.11: NaN in every output.
        if req.device_type == "cuda" and self.block_size < 128:
            kwargs["kernel_options"] = _small_block_options(self.block_size)
        if not req.requires_grad:  # flex refuses CPU inputs that require grad even under no_grad
            q, k, v = q.detach(), k.detach(), v.detach()
        out = _flex_fn()(to(q), to(k), to(v), block_mask=bm, scale=scale, **kwargs)
        return back(out)
