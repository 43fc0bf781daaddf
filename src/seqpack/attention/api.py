"""The one entry point, `varlen_attention`, and `prepare` (per-batch work shared by all layers).

Notable:
- Checks are on shapes, dtypes and devices only (no tensor data), so a call costs no host
  sync and traces under ``torch.compile``; the boundaries' own constructors check the
  data (offsets start at 0, never decrease, end at the token count, ``max_seqlen``),
  and `prepare` can re-check boundaries that were built with ``validate=False``.
- A backend named explicitly that cannot honour the call raises `BackendUnavailable`
  (a ``ValueError``) naming the backend, the reason and the backends that can. There
  is no fallback that would attend across documents: every backend here is
  block-diagonal, and auto only ever chooses among backends that said yes.
"""

from __future__ import annotations

import torch

from seqpack.attention.base import AttentionContext, AttentionRequest, Backend, BackendUnavailable, default_scale
from seqpack.attention.eager import Eager
from seqpack.attention.flash import FlashAttn2, FlashAttn3, FlashAttn4
from seqpack.attention.flex import Flex
from seqpack.attention.sdpa import SdpaDense, SdpaNJT
from seqpack.attention.select import capability, rank_backends
from seqpack.attention.torch_varlen import TorchVarlen
from seqpack.boundaries import DocBoundaries, check_cu_seqlens

__all__ = ["varlen_attention", "prepare", "BACKENDS", "BACKEND_ALIASES", "register_backend", "backend_support",
           "choose_backend"]

BACKENDS: dict[str, Backend] = {}
# the short names users know, for the FlashAttention backends named after their packages
BACKEND_ALIASES = {"fa2": "flash_attn", "fa3": "flash_attn_interface", "fa4": "flash_attn.cute"}


def register_backend(backend: Backend) -> None:
    """Make ``backend`` selectable by name and by auto (a later one with the same name replaces the earlier)."""
    BACKENDS[backend.name] = backend


for _b in (FlashAttn4(), FlashAttn3(), FlashAttn2(), TorchVarlen(), Flex(), SdpaDense(), SdpaNJT(), Eager()):
    register_backend(_b)


# ----------------------------------------------------------------------------------------
# requests


def _context(boundaries, q) -> AttentionContext:
    if isinstance(boundaries, AttentionContext):
        ctx = boundaries
    elif isinstance(boundaries, DocBoundaries):
        ctx = AttentionContext(boundaries)
    else:
        raise TypeError(f"boundaries must be a DocBoundaries or an AttentionContext (from prepare); got "
                        f"{type(boundaries).__name__}. From raw offsets: DocBoundaries.from_cu_seqlens(cu_seqlens, "
                        f"max_seqlen=...)")
    b = ctx.boundaries
    if q.dim() == 3 and b.layout == "rows":
        # Segments never cross rows, so a rows batch is also a valid 1D buffer.
        ctx = AttentionContext(b.flatten(), mean_seqlen=ctx.mean_seqlen)
    return ctx


def _request(q, k, v, ctx: AttentionContext, causal: bool, window) -> AttentionRequest:
    if q.dim() not in (3, 4):
        raise ValueError(f"q must be [T, H, D] (1D buffer) or [B, L, H, D] (rows); got shape {tuple(q.shape)}")
    if k.dim() != q.dim() or v.dim() != q.dim() or k.shape[:-2] != q.shape[:-2] or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"q, k, v must share the token dims and k, v the heads: q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    H, Hkv, D = q.shape[-2], k.shape[-2], q.shape[-1]
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"{H} query heads cannot share {Hkv} key/value heads: H must be a multiple of Hkv (GQA)")
    if k.shape[-1] != D or v.shape[-1] != D:
        raise ValueError(f"q, k and v must have the same head dim; got {D}, {k.shape[-1]}, {v.shape[-1]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    b = ctx.boundaries
    if q.dim() == 4 and b.layout != "rows":
        raise ValueError(f"q is rows {tuple(q.shape[:2])} but the boundaries are a 1D buffer {b.shape}: build "
                         f"rows boundaries (DocBoundaries.from_row_lengths) or pass q as [B * L, H, D]")
    if tuple(q.shape[:-2]) != tuple(b.shape):
        raise ValueError(f"q has token dims {tuple(q.shape[:-2])} but the boundaries describe {b.shape}")
    if b.device != q.device or k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v and the boundaries must be on one device; got q {q.device}, k {k.device}, "
                         f"v {v.device}, boundaries {b.device} (move them with boundaries.to(q.device))")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be None or a positive number of tokens; got {window!r}")
    rows = q.dim() == 4
    return AttentionRequest(
        device_type=q.device.type, dtype=q.dtype,
        requires_grad=torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad),
        causal=bool(causal), window=window, num_heads=H, num_kv_heads=Hkv, head_dim=D,
        layout="rows" if rows else "1d", batch=q.shape[0] if rows else 1, seqlen=q.shape[1] if rows else q.shape[0],
        max_seqlen=b.max_seqlen, compiling=torch.compiler.is_compiling(), capability=capability(q.device))


def _support(req: AttentionRequest) -> dict[str, str | None]:
    return {name: be.supports(req) for name, be in BACKENDS.items()}


def _select(req: AttentionRequest, ctx: AttentionContext, device: torch.device) -> Backend:
    ok = [name for name, why in _support(req).items() if why is None and name != "eager"]
    if not ok:
        return BACKENDS["eager"]
    # Under torch.compile only static features: the choice is a constant of the graph.
    if req.compiling:
        feature = ctx.boundaries.numel / max(ctx.boundaries.num_segments, 1)
    else:
        feature = ctx.feature
    ranked = rank_backends(ok, device=device, feature=feature, layout=req.layout, requires_grad=req.requires_grad,
                           work=req.tokens * req.num_heads * req.head_dim,
                           compile_s={n: BACKENDS[n].self_compile_s(req) for n in ok})
    return BACKENDS[ranked[0]]


def _named(name: str, req: AttentionRequest) -> Backend:
    be = BACKENDS.get(BACKEND_ALIASES.get(name, name))
    if be is None:
        raise ValueError(f"unknown attention backend {name!r}; known: {', '.join(BACKENDS)}, "
                         f"{', '.join(BACKEND_ALIASES)} or 'auto'")
    why = be.supports(req)
    if why is not None:
        others = [n for n, w in _support(req).items() if w is None]
        raise BackendUnavailable(f"attention backend {name!r} cannot run this call ({req.describe()}): {why}. "
                                 f"Backends that can: {', '.join(others) or 'none'}; or pass backend='auto'")
    return be


# ----------------------------------------------------------------------------------------


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, boundaries, *, causal: bool = True,
                     window: int | None = None, scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """Block-diagonal attention over packed documents: no token attends to another document.

    Args:
        q: ``[T, H, D]`` (one 1D buffer, FlashAttention varlen layout) or ``[B, L, H, D]`` (rows).
        k, v: same token dims as q with ``Hkv`` heads, ``H % Hkv == 0`` (GQA: query head h
            reads key/value head ``h // (H // Hkv)``), same head dim D.
        boundaries: `DocBoundaries` whose ``shape`` is q's token dims (a rows batch may also be
            given with a 1D q of ``B * L`` tokens), or an `AttentionContext` from `prepare`
            (build once per batch: it holds the flex BlockMasks every layer reuses).
        causal: a query sees keys at or before it (True) or its whole document (False).
        window: None, or a positive number of tokens: with ``causal=True`` a query at position p
            sees keys p - window + 1 .. p of its own document (FlashAttention
            ``window_size=(window - 1, 0)``); with ``causal=False`` keys with |p - k| < window.
        scale: softmax scale, default ``1 / sqrt(D)``.
        backend: ``"auto"`` (the fastest backend that can run this call exactly, by the
            calibration table) or a name from ``BACKENDS``: ``flash_attn`` (FA2, alias
            ``fa2``), ``flash_attn_interface`` (FA3, ``fa3``), ``flash_attn.cute`` (FA4, ``fa4``), ``torch_varlen``,
            ``flex``, ``sdpa_dense``, ``sdpa_njt``, ``eager``.

    Padding segments of the boundaries are segments like any other: their tokens attend
    among themselves and real tokens never see them. Returns q's shape and dtype.
    Raises `BackendUnavailable` (a ``ValueError``) if the named backend cannot run the call.
    """
    ctx = _context(boundaries, q)
    req = _request(q, k, v, ctx, causal, window)
    be = _select(req, ctx, q.device) if backend == "auto" else _named(backend, req)
    return be(q, k, v, ctx, req, default_scale(req.head_dim, scale))


def backend_support(q, k, v, boundaries, *, causal: bool = True, window: int | None = None) -> dict[str, str | None]:
    """For each backend: None if it can run this call, else the reason it cannot."""
    ctx = _context(boundaries, q)
    return _support(_request(q, k, v, ctx, causal, window))


def choose_backend(q, k, v, boundaries, *, causal: bool = True, window: int | None = None) -> str:
    """The backend ``backend="auto"`` would run for this call (pin it in a compiled model)."""
    ctx = _context(boundaries, q)
    return _select(_request(q, k, v, ctx, causal, window), ctx, q.device).name


def _check_data(b: DocBoundaries) -> None:
    """The data checks of DocBoundaries' constructor, for boundaries built with validate=False."""
    check_cu_seqlens(b.cu_seqlens, b.shape)
    seqlens = b.seqlens
    if seqlens.numel():
        longest = int(seqlens.max())
        if longest > b.max_seqlen:
            seg = int(seqlens.argmax())
            raise ValueError(f"segment {seg} has {longest} tokens but max_seqlen is {b.max_seqlen}: pass a larger "
                             f"max_seqlen or split the document (plan_packing overflow='split')")


def prepare(boundaries: DocBoundaries, *, causal: bool = True, window=None, device=None,
            block_mask: bool = True, validate: bool | None = None) -> AttentionContext:
    """Per-batch work every attention layer can share; pass the result to `varlen_attention`.

    Args:
        boundaries: the batch's `DocBoundaries`.
        causal, window: the attention the model will ask for; ``window`` may be a list
            (e.g. ``[None, 1024]`` for a model mixing full and sliding-window layers): one
            flex BlockMask is built for each. Other combinations still work, built on use.
        device: move the boundaries there (after reading what is free to read on the host).
        block_mask: build the flex BlockMasks now (O(blocks), well under a millisecond).
        validate: re-check the offsets and ``max_seqlen`` (raises ``ValueError``). Default:
            only when ``cu_seqlens`` is on the CPU, where it costs no device sync.

    The auto feature (mean tokens per non-empty segment) is measured here when
    ``cu_seqlens`` is on the CPU; on a GPU it is estimated from shapes.
    """
    b = boundaries
    if not isinstance(b, DocBoundaries):
        raise TypeError(f"prepare takes DocBoundaries; got {type(b).__name__}")
    on_host = b.device.type == "cpu"
    if validate or (validate is None and on_host):
        _check_data(b)
    mean = None
    if on_host:
        nonempty = int((b.seqlens > 0).sum())
        mean = b.numel / max(nonempty, 1)
    if device is not None and torch.device(device) != b.device:
        b = b.to(device, non_blocking=True)
    ctx = AttentionContext(b, mean_seqlen=mean)
    if block_mask:
        from seqpack.attention.flex import block_mask_for
        for w in (window if isinstance(window, (list, tuple)) else (window,)):
            block_mask_for(ctx, bool(causal), w)
    return ctx
