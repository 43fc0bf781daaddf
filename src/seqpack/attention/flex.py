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


def block_mask_for(ctx: AttentionContext, causal: bool, window: int | None):
    """The context's BlockMask for (causal, window), built and cached on first use."""
    bm = ctx.block_masks.get((causal, window))
    if bm is None:
        bm = build_block_mask(ctx.boundaries, causal=causal, window=window)
        if not torch.compiler.is_compiling():
            ctx.block_masks[(causal, window)] = bm
    return bm


class Flex(Backend):
    """flex_attention on 128-token blocks.

    64-token blocks (less waste on short documents) were tried: the backward does not
    compile on the H100 (torch 2.11), since inductor keeps only its default backward
    configs whose tiles divide the sparse block, and for head dim 128 none does.
    """

    name = "flex"

    # The compile a call outside torch.compile starts (once per new shape), in seconds, for
    # auto's payback rule (`select.PAYBACK_CALLS`): cold-cache figures of docs/bench/attention.md.
    COMPILE_S = {"cpu": 15.0, "cuda": 8.0}

    def self_compile_s(self, req):
        return 0.0 if req.compiling else self.COMPILE_S.get(req.device_type, 15.0)

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
        bm = block_mask_for(ctx, req.causal, req.window)
        # [B, L, H, D] -> [B, H, L, D]; [T, H, D] -> [1, H, T, D] with the same strides as B=1 rows
        if req.layout == "rows":
            to, back = (lambda x: x.transpose(1, 2)), (lambda o: o.transpose(1, 2))
        else:
            to, back = (lambda x: x.unsqueeze(0).transpose(1, 2)), (lambda o: o.transpose(1, 2).squeeze(0))
        kwargs = {"enable_gqa": True} if req.gqa_groups > 1 else {}
        # No kernel_options={"ROWS_GUARANTEED_SAFE": True}, although every query sees itself:
        # a query can meet a block where all its keys are masked before any unmasked one (a
        # later document of the tile), and the flag drops the kernel's guard for exactly that,
        # exp2(-inf - -inf) = NaN. Seen on the H100 with torch 2.11: NaN in every output.
        if not req.requires_grad:  # flex refuses CPU inputs that require grad even under no_grad
            q, k, v = q.detach(), k.detach(), v.detach()
        out = _flex_fn()(to(q), to(k), to(v), block_mask=bm, scale=scale, **kwargs)
        return back(out)
