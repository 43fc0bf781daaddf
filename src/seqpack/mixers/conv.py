"""Causal depthwise convolution (the short convolutions of Mamba, Mamba2, gated DeltaNet, LFM2)
whose receptive field stops at document boundaries."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqpack.mixers._segments import segment_positions

__all__ = ["causal_conv1d"]


def _activate(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return x
    if activation in ("silu", "swish"):
        return F.silu(x)
    raise ValueError(f"activation must be None, 'silu' or 'swish'; got {activation!r}")


def _cuda_kernel():
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return None
    return causal_conv1d_fn


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  seq_idx: torch.Tensor | None = None, activation: str | None = None, *,
                  use_kernel: bool | None = None) -> torch.Tensor:
    """Causal depthwise conv1d, channels first: ``x (B, C, L)``, ``weight (C, K)`` -> ``(B, C, L)``.

    ``out[:, c, t] = bias[c] + sum_j weight[c, j] * x[:, c, t - (K-1) + j]`` over the inputs in
    the same segment as ``t`` (``seq_idx``, ``(B, L)``; None: one segment per row), then
    ``activation`` (None or ``"silu"``). Equal to ``F.conv1d(x, weight[:, None], bias,
    padding=K-1, groups=C)[..., :L]`` run on each segment alone.

    ``use_kernel``: the ``causal_conv1d`` package's CUDA kernel with ``seq_idx`` (None: when
    importable and ``x`` is on CUDA; True: required).
    """
    B, C, L = x.shape
    K = weight.shape[-1]
    weight = weight.reshape(C, K)
    kernel = None
    if use_kernel or (use_kernel is None and x.is_cuda):
        kernel = _cuda_kernel()
        if kernel is None and use_kernel:
            raise ImportError("use_kernel=True needs the causal_conv1d package: pip install causal-conv1d")
    if kernel is not None and x.is_cuda:
        # The kernel reads seq_idx only with channels-last inputs.
        xc = x.transpose(1, 2).contiguous().transpose(1, 2)
        idx = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()
        return kernel(xc, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), seq_idx=idx,
                      activation=activation)
    w = weight.to(x.dtype)
    out = x * w[:, K - 1, None]
    pos = None if seq_idx is None else segment_positions(seq_idx)[:, None, :]  # (B, 1, L)
    for k in range(1, min(K, L)):
        shifted = F.pad(x[..., :L - k], (k, 0))  # x[t - k], zero before the row
        if pos is not None:
            shifted = shifted * (pos >= k).to(x.dtype)
        out = out + shifted * w[:, K - 1 - k, None]
    if bias is not None:
        out = out + bias.to(x.dtype)[:, None]
    return _activate(out, activation)
