"""Attention over packed documents: one entry point, many backends, the fastest picked for you.

    ctx = prepare(batch.boundaries, device="cuda")       # once per batch
    out = varlen_attention(q, k, v, ctx)                  # in every layer

Modules: ``api`` (the entry point, `prepare`), ``base`` (the backend contract),
``select`` (auto and the calibration tables), ``blockmask`` (flex BlockMask from
``cu_seqlens``), one module per backend family (``flash``, ``torch_varlen``, ``flex``,
``sdpa``, ``eager``), ``bench`` (``seqpack bench attention``). docs/attention.md has the
support matrix.
"""

from seqpack.attention.api import BACKEND_ALIASES, BACKENDS, backend_support, choose_backend, prepare, register_backend, varlen_attention
from seqpack.attention.base import AttentionContext, AttentionRequest, Backend, BackendUnavailable
from seqpack.attention.blockmask import build_block_mask

__all__ = ["varlen_attention", "prepare", "AttentionContext", "BACKENDS", "BACKEND_ALIASES", "Backend", "AttentionRequest",
           "BackendUnavailable", "backend_support", "choose_backend", "register_backend", "build_block_mask"]
