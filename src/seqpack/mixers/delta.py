"""Gated delta rule (gated DeltaNet: Qwen3.5, Qwen3-Next, OLMo hybrid), chunked, with the state
reset at every document boundary."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqpack.mixers._segments import chunk_masks, one_segment_per_row, pad_to_chunks, segment_starts

__all__ = ["chunk_gated_delta_rule", "gated_delta_rule_recurrent", "cu_seqlens_of"]


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dim, as flash-linear-attention normalises q and k."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def cu_seqlens_of(seq_idx: torch.Tensor) -> torch.Tensor:
    """int32 offsets of the segments of ``seq_idx`` ``(B, L)`` over the flattened ``(B * L)`` buffer
    (a row start is always a segment start). One host sync."""
    starts = segment_starts(seq_idx).flatten().nonzero().flatten()
    total = starts.new_tensor([seq_idx.numel()])
    return torch.cat([starts, total]).to(torch.int32)


def _fla_kernel():
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as kernel
    except ImportError:
        return None
    return kernel


def fla_unsafe_reason(device: torch.device) -> str | None:
    """Why flash-linear-attention's gated-delta kernel must not run on ``device``, or None.

    flash-linear-attention 0.6 refuses its own backward on Hopper (sm90) with Triton >= 3.4.0 and
    < 3.7.1 unless tilelang is installed (those Tritons compute its gated ``chunk_bwd_dqkwg``
    wrongly), and it raises only in the backward pass. Checked before the forward, so a training
    step never starts on a kernel whose gradients would be refused.
    """
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:
        return None
    try:
        import triton
    except ImportError:
        return None
    version = tuple(int(p) for p in triton.__version__.split("+")[0].split(".")[:3] if p.isdigit())
    if not ((3, 4, 0) <= version < (3, 7, 1)):
        return None
    try:
        import tilelang  # noqa: F401
        return None
    except ImportError:
        return (f"flash-linear-attention's gated-delta backward is wrong on Hopper with Triton {triton.__version__} "
                f"(needs Triton >= 3.7.1 or tilelang)")


def chunk_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           beta: torch.Tensor, seq_idx: torch.Tensor | None = None, *,
                           scale: float | None = None, use_qk_l2norm: bool = False, chunk_size: int = 64,
                           use_kernel: bool | None = None) -> torch.Tensor:
    """Gated delta rule over packed rows; every segment of ``seq_idx`` starts from a zero state.

    Shapes: ``q, k (B, L, Hk, Dk)``, ``v (B, L, Hv, Dv)``, ``g, beta (B, L, Hv)``; ``Hv`` a
    multiple of ``Hk`` (each q/k head serves ``Hv // Hk`` consecutive value heads). Per token
    and value head, with ``q`` scaled by ``scale`` (default ``Dk ** -0.5``) and l2-normalised
    first when ``use_qk_l2norm``::

        S_t = exp(g_t) * S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,   o_t = S_t q_t

    with ``S_{t-1} = 0`` at the first token of a segment. Returns ``o`` ``(B, L, Hv, Dv)`` in
    ``v``'s dtype; the math runs in fp32. ``g`` must be <= 0.

    ``use_kernel``: flash-linear-attention's Triton ``chunk_gated_delta_rule`` with
    ``cu_seqlens`` (None: when importable, the inputs are on CUDA and `fla_unsafe_reason` finds
    nothing; True: required, or an error naming why it cannot run).
    """
    B, L, Hk, Dk = k.shape
    Hv = v.shape[2]
    if Hv % Hk:
        raise ValueError(f"value heads ({Hv}) must be a multiple of key heads ({Hk})")
    if Hv != Hk:
        q = q.repeat_interleave(Hv // Hk, dim=2)
        k = k.repeat_interleave(Hv // Hk, dim=2)
    scale = Dk ** -0.5 if scale is None else scale
    if seq_idx is None:
        seq_idx = one_segment_per_row(B, L, q.device)
    kernel = None
    if use_kernel or (use_kernel is None and q.is_cuda):
        kernel = _fla_kernel()
        if kernel is None and use_kernel:
            raise ImportError("use_kernel=True needs flash-linear-attention: pip install flash-linear-attention")
        unsafe = fla_unsafe_reason(q.device) if kernel is not None else None
        if unsafe and use_kernel:
            raise RuntimeError(f"use_kernel=True: {unsafe}")
        if unsafe:
            kernel = None  # the torch path below computes the same rule
    if kernel is not None and q.is_cuda:
        return _fla_varlen(kernel, q, k, v, g, beta, seq_idx, scale, use_qk_l2norm)
    return _torch_chunked(q, k, v, g, beta, seq_idx, scale, use_qk_l2norm, chunk_size)


def _fla_varlen(kernel, q, k, v, g, beta, seq_idx, scale, use_qk_l2norm):
    """The packed rows as one varlen sequence of B * L tokens for flash-linear-attention."""
    B, L = seq_idx.shape
    flat = [x.reshape(1, B * L, *x.shape[2:]) for x in (q, k, v, g, beta)]
    out, _ = kernel(*flat, scale=scale, initial_state=None, output_final_state=False,
                    cu_seqlens=cu_seqlens_of(seq_idx).long(), use_qk_l2norm_in_kernel=use_qk_l2norm)
    return out.reshape(B, L, *out.shape[2:]).to(v.dtype)


def _torch_chunked(q, k, v, g, beta, seq_idx, scale, use_qk_l2norm, C):
    dtype = v.dtype
    B, L, H, Dk = k.shape
    # (B, L, H, ...) -> (B, H, L, ...), fp32
    q, k, v = (x.transpose(1, 2).float() for x in (q, k, v))
    beta, g = (x.transpose(1, 2).float() for x in (beta, g))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q = q * scale
    pad = (-L) % C
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    beta, g = (F.pad(x, (0, pad)) for x in (beta, g))
    N = (L + pad) // C
    same, from_prev, to_end, carry = (m[:, None] for m in chunk_masks(pad_to_chunks(seq_idx, C).reshape(B, N, C)))

    k_beta = (k * beta[..., None]).reshape(B, H, N, C, Dk)
    v_beta = (v * beta[..., None]).reshape(B, H, N, C, -1)
    q, k = q.reshape(B, H, N, C, Dk), k.reshape(B, H, N, C, Dk)
    cum = g.reshape(B, H, N, C).cumsum(-1)  # log decay from the chunk start to t (inclusive)

    # Decay between positions j <= i of one segment; 0 across a boundary and above the diagonal.
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    pair = (cum[..., :, None] - cum[..., None, :]).masked_fill(~(same & causal), float("-inf")).exp()
    # UT transform: the chunk's delta-rule updates as one triangular solve (block-diagonal by segment).
    ut = (k_beta @ k.transpose(-1, -2)) * pair
    from_start = cum.exp() * from_prev  # decay of the incoming state up to t; 0 in a new segment
    new_values = torch.linalg.solve_triangular(ut, v_beta, upper=False, unitriangular=True)
    k_cumdecay = torch.linalg.solve_triangular(ut, k_beta * from_start[..., None], upper=False, unitriangular=True)
    intra = (q @ k.transpose(-1, -2)) * pair
    q_in = q * from_start[..., None]
    k_out = k * ((cum[..., -1:] - cum).exp() * to_end)[..., None]  # tokens that write the outgoing state
    keep = (cum[..., -1].exp() * carry)[..., None, None]  # the incoming state survives the chunk

    S = q.new_zeros(B, H, Dk, v.shape[-1])
    out = []
    for i in range(N):
        v_new = new_values[:, :, i] - k_cumdecay[:, :, i] @ S
        out.append(q_in[:, :, i] @ S + intra[:, :, i] @ v_new)
        S = S * keep[:, :, i] + k_out[:, :, i].transpose(-1, -2) @ v_new
    o = torch.stack(out, dim=2).reshape(B, H, N * C, -1)[:, :, :L]
    return o.transpose(1, 2).contiguous().to(dtype)


def gated_delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                               beta: torch.Tensor, seq_idx: torch.Tensor | None = None, *,
                               scale: float | None = None, use_qk_l2norm: bool = False) -> torch.Tensor:
    """The gated delta rule token by token, with a decay per key channel allowed (Kimi delta attention).

    Same contract as `chunk_gated_delta_rule` (``q, k (B, L, H, Dk)``, ``v (B, L, H, Dv)``, one q/k
    head per value head here), except ``g`` may be ``(B, L, H)`` or ``(B, L, H, Dk)``: the state's
    key rows decay by ``exp(g_t)`` channel by channel. The state restarts from zero at every segment
    start of ``seq_idx``. A loop over tokens: exact, slow for long rows.
    """
    dtype = v.dtype
    B, L, H, Dk = k.shape
    scale = Dk ** -0.5 if scale is None else scale
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q = q * scale
    decay = g.exp() if g.dim() == 4 else g.exp()[..., None].expand(B, L, H, Dk)
    if seq_idx is not None:
        decay = decay * (~segment_starts(seq_idx)).to(decay.dtype)[:, :, None, None]  # forget the last document
    S = q.new_zeros(B, H, Dk, v.shape[-1])
    out = []
    for t in range(L):
        S = S * decay[:, t, :, :, None]
        delta = (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t])) * beta[:, t, :, None]
        S = S + k[:, t, :, :, None] * delta[:, :, None, :]
        out.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return torch.stack(out, dim=1).to(dtype)
