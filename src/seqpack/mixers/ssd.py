"""Chunked linear attention with a scalar decay per head and token: Mamba2's SSD, lightning
attention (MiniMax), plain linear attention; the state resets at every document boundary."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqpack.mixers._segments import chunk_masks, one_segment_per_row, pad_to_chunks

__all__ = ["chunk_linear_attention", "ssd_scan"]


def chunk_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           log_decay: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None, *,
                           scale: float = 1.0, chunk_size: int = 64) -> torch.Tensor:
    """Causal linear attention with decay, every segment of ``seq_idx`` starting from zero state.

    ``q, k (B, L, H, Dk)``, ``v (B, L, H, Dv)``, ``log_decay (B, L, H)`` (<= 0; None: no decay)::

        S_t = exp(log_decay_t) * S_{t-1} + k_t v_t^T,   o_t = scale * S_t^T q_t

    i.e. ``o_t = scale * sum_{s <= t, same segment} (q_t . k_s) exp(sum_{s < r <= t} log_decay_r) v_s``.
    Returns ``(B, L, H, Dv)`` in ``v``'s dtype; fp32 inside. Chunks of ``chunk_size`` are
    computed as masked matmuls, the state is carried between chunks (zeroed where a segment
    starts).
    """
    dtype = v.dtype
    B, L, H, Dk = q.shape
    C = chunk_size
    if seq_idx is None:
        seq_idx = one_segment_per_row(B, L, q.device)
    q, k, v = (x.transpose(1, 2).float() for x in (q, k, v))  # (B, H, L, D)
    a = q.new_zeros(B, H, L) if log_decay is None else log_decay.transpose(1, 2).float()
    pad = (-L) % C
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    a = F.pad(a, (0, pad))
    N = (L + pad) // C
    same, from_prev, to_end, carry = (m[:, None] for m in chunk_masks(pad_to_chunks(seq_idx, C).reshape(B, N, C)))
    q, k, v = (x.reshape(B, H, N, C, -1) for x in (q, k, v))
    q = q * scale
    cum = a.reshape(B, H, N, C).cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    pair = (cum[..., :, None] - cum[..., None, :]).masked_fill(~(same & causal), float("-inf")).exp()
    intra = ((q @ k.transpose(-1, -2)) * pair) @ v  # (B, H, N, C, Dv)
    q_in = q * (cum.exp() * from_prev)[..., None]
    k_out = k * ((cum[..., -1:] - cum).exp() * to_end)[..., None]
    keep = (cum[..., -1].exp() * carry)[..., None, None]
    S = q.new_zeros(B, H, Dk, v.shape[-1])
    out = []
    for i in range(N):
        out.append(intra[:, :, i] + q_in[:, :, i] @ S)
        S = S * keep[:, :, i] + k_out[:, :, i].transpose(-1, -2) @ v[:, :, i]
    o = torch.stack(out, dim=2).reshape(B, H, N * C, -1)[:, :, :L]
    return o.transpose(1, 2).contiguous().to(dtype)


def _mamba_kernel():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        return None
    return mamba_chunk_scan_combined


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             seq_idx: torch.Tensor | None = None, *, D: torch.Tensor | None = None, chunk_size: int = 64,
             use_kernel: bool | None = None) -> torch.Tensor:
    """Mamba2's state-space scan (SSD) over packed rows, state reset at every segment start.

    ``x (B, L, H, P)``, ``dt (B, L, H)`` (already softplus'ed and clamped), ``A (H,)`` (< 0),
    ``B, C (B, L, G, N)`` with ``H`` a multiple of the ``G`` groups, ``D (H,)`` or None::

        h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   y_t = h_t C_t + D x_t

    Returns ``y (B, L, H, P)`` in ``x``'s dtype. ``use_kernel``: mamba_ssm's
    ``mamba_chunk_scan_combined`` with ``seq_idx`` (None: when importable and on CUDA).
    """
    Bsz, L, H, P = x.shape
    G = B.shape[2]
    if H % G:
        raise ValueError(f"heads ({H}) must be a multiple of groups ({G})")
    kernel = None
    if use_kernel or (use_kernel is None and x.is_cuda):
        kernel = _mamba_kernel()
        if kernel is None and use_kernel:
            raise ImportError("use_kernel=True needs mamba_ssm: pip install mamba-ssm")
    if kernel is not None and x.is_cuda:
        idx = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()
        return kernel(x, dt, A, B, C, chunk_size, D=D, seq_idx=idx)
    Bh = B.repeat_interleave(H // G, dim=2)
    Ch = C.repeat_interleave(H // G, dim=2)
    v = x.float() * dt.float()[..., None]
    y = chunk_linear_attention(Ch, Bh, v, dt.float() * A.float(), seq_idx, chunk_size=chunk_size)
    if D is not None:
        y = y + x.float() * D.float()[:, None]
    return y.to(x.dtype)
