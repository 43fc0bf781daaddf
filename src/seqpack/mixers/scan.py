"""Token-by-token recurrences with a reset at every document boundary: Mamba1's selective scan
and RecurrentGemma's RG-LRU."""

from __future__ import annotations

import torch

from seqpack.mixers._segments import segment_starts

__all__ = ["selective_scan", "rg_lru"]


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   seq_idx: torch.Tensor | None = None, *, D: torch.Tensor | None = None,
                   z: torch.Tensor | None = None) -> torch.Tensor:
    """Mamba1's selective scan, channels first, state reset where a segment of ``seq_idx`` starts.

    ``u, delta (B, Dm, L)`` (delta already softplus'ed), ``A (Dm, N)``, ``B, C (B, N, L)``,
    ``D (Dm,)``, ``z (B, Dm, L)`` (output gate, ``y * silu(z)``)::

        h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t,   y_t = h_t . C_t + D u_t

    Returns ``y (B, Dm, L)`` in ``u``'s dtype; fp32 inside.
    """
    dtype = u.dtype
    Bsz, Dm, L = u.shape
    u32, delta = u.float(), delta.float()
    dA = torch.exp(delta[..., None] * A.float()[None, :, None, :])  # (B, Dm, L, N)
    if seq_idx is not None:
        dA = dA * (~segment_starts(seq_idx)).to(dA.dtype)[:, None, :, None]  # forget the previous document
    dBu = (delta * u32)[..., None] * B.float().transpose(1, 2)[:, None]  # (B, Dm, L, N)
    Cf = C.float()
    h = u32.new_zeros(Bsz, Dm, A.shape[-1])
    ys = []
    for t in range(L):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append((h * Cf[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u32 * D.float()[:, None]
    if z is not None:
        y = y * torch.nn.functional.silu(z.float())
    return y.to(dtype)


def rg_lru(x: torch.Tensor, log_a: torch.Tensor, seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """RecurrentGemma's RG-LRU scan, ``x, log_a (B, L, D)``, reset where a segment starts::

        h_t = a_t h_{t-1} + sqrt(1 - a_t^2) x_t,   and at a segment start   h_t = x_t

    (``a = exp(log_a)``; the gates that make ``x`` and ``log_a`` are the layer's). Returns
    ``h (B, L, D)`` in ``x``'s dtype; fp32 inside.
    """
    dtype = x.dtype
    Bsz, L, Dm = x.shape
    if seq_idx is None:
        starts = torch.zeros(Bsz, L, dtype=torch.bool, device=x.device)
        starts[:, 0] = True
    else:
        starts = segment_starts(seq_idx)
    reset = starts[..., None]
    log_a = log_a.float()
    a = torch.exp(log_a)
    mult = torch.where(reset, torch.ones_like(a), torch.sqrt(1 - torch.exp(2 * log_a)))
    xs = x.float() * mult
    a = a * (~reset)
    h = xs.new_zeros(Bsz, Dm)
    hs = []
    for t in range(L):
        h = a[:, t] * h + xs[:, t]
        hs.append(h)
    return torch.stack(hs, dim=1).to(dtype)
