"""Throughput and MFU, counted on useful tokens only.

MFU = (6 x params x useful_tokens + causal attention FLOPs) / seconds / peak FLOP/s

- ``useful_tokens``: real document tokens; padding and the cross-document attention of
  naive packing are work done but not counted.
- ``params``: every parameter (a tied embedding once), embeddings included.
- causal attention FLOPs of a training step, per layer and per document of n tokens:
  forward QK^T and PV cost 2 x 2 x H x D FLOPs per visible (query, key) pair, and a
  causal query at position p sees min(p + 1, window) keys; backward costs twice the
  forward, so 12 x H x D x (visible pairs). Without a window that is ~6 x H x D x n^2.
- peak: 989 TFLOP/s for H100/H200 bf16 dense (the datasheet's figure without sparsity).
"""

from __future__ import annotations

import numpy as np

__all__ = ["visible_pairs", "attention_flops", "step_flops", "peak_flops", "PEAK_TFLOPS"]

# Dense bf16 peak, TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "GH200": 989.0, "B200": 2250.0,
               "A100": 312.0, "A800": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


def visible_pairs(lengths, window: int | None = None) -> int:
    """(query, key) pairs causal attention computes over documents of these lengths."""
    n = np.asarray(lengths, dtype=np.int64)
    if window is None or window <= 0:
        return int((n * (n + 1) // 2).sum())
    w = np.minimum(n, window)
    return int((w * (w + 1) // 2 + (n - w) * window).sum())


def attention_flops(lengths, *, n_head: int, head_dim: int, layer_windows) -> int:
    """Causal attention FLOPs of one training step (forward + backward) over all layers."""
    per_window: dict = {}
    total = 0
    for w in layer_windows:
        if w not in per_window:
            per_window[w] = visible_pairs(lengths, w)
        total += 12 * n_head * head_dim * per_window[w]
    return total


def step_flops(num_params: int, useful_tokens: int, lengths, config) -> int:
    """Useful FLOPs of one training step: 6 N tokens + causal attention within documents."""
    return 6 * num_params * int(useful_tokens) + attention_flops(
        lengths, n_head=config.n_head, head_dim=config.head_dim, layer_windows=config.layer_windows())


def peak_flops(device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device (None when unknown, e.g. a CPU)."""
    if override_tflops:
        return float(override_tflops) * 1e12
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None
