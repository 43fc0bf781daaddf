"""Eager reference: masked softmax attention written out in fp32 (fp64 stays fp64).

Same chunking as ``sdpa_dense`` (rows or bands, see `seqpack.attention.sdpa`), then
``softmax(q k^T * scale + mask) v`` in plain tensor ops. Slow, obvious, any device,
forward and backward: the backend to compare the others with, and the last resort.
"""

from __future__ import annotations

import torch

from seqpack.attention.base import Backend
from seqpack.attention.sdpa import chunked

__all__ = ["Eager"]


class Eager(Backend):
    name = "eager"

    def supports(self, req):
        if not req.dtype.is_floating_point:
            return f"dtype {req.dtype} is not floating point"
        return None

    def __call__(self, q, k, v, ctx, req, scale):
        work = torch.float64 if q.dtype == torch.float64 else torch.float32
        qc, kc, vc, mask, unchunk = chunked(q, k, v, ctx, req)
        g = req.gqa_groups
        kc, vc = kc.repeat_interleave(g, dim=1), vc.repeat_interleave(g, dim=1)  # [n, H, Ck, D]
        s = torch.matmul(qc.to(work), kc.to(work).transpose(-1, -2)) * scale
        s = s.masked_fill(~mask, float("-inf"))
        p = torch.softmax(s, dim=-1)
        out = torch.matmul(p, vc.to(work))
        return unchunk(out).to(q.dtype)
