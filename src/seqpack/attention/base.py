"""The backend contract: a request, a backend, a context, and the layout helpers they share.

Notable:
- An `AttentionRequest` holds only what a backend needs to say yes or no (device, dtype,
  grad, causal, window, heads, head dim, layout, whether we are inside ``torch.compile``):
  Python values read off tensor metadata, never tensor data, so building one and asking
  every backend costs no host sync and traces cleanly under ``torch.compile``.
- A `Backend` is a name, ``supports(request) -> None | reason`` and ``__call__``. Nothing
  else: auto selection, errors and the benchmark are written once against this contract.
- `AttentionContext` is what `prepare` returns: the boundaries plus everything derived
  from them that several layers can share (flex BlockMasks, the auto feature). Plain
  `DocBoundaries` are wrapped in a throwaway context, so backends see one type.
- Window semantics, the same on every backend: with ``causal=True`` a query at position
  p of a document sees keys p - window + 1 .. p of that document (FlashAttention
  ``window_size=(window - 1, 0)``); with ``causal=False`` it sees keys with
  |p - k| < window (``window_size=(window - 1, window - 1)``), as ``DocBoundaries.dense_mask``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import torch

from seqpack.boundaries import DocBoundaries

__all__ = ["AttentionRequest", "Backend", "AttentionContext", "BackendUnavailable"]


class BackendUnavailable(ValueError):
    """An explicitly named backend cannot honour the request (the message says why and what to use)."""


# ----------------------------------------------------------------------------------------
# small pure helpers


def constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing ``torch._dynamo`` now.

    The public decorator imports dynamo (and with it inductor and Triton: 2-4 s) only to set
    one attribute on the function. While dynamo is not loaded nothing can trace the
    function, so we set that attribute ourselves (tests/attention/test_select.py checks it
    is still what dynamo sets). Under ``torch.compile`` dynamo calls such a function once,
    eagerly, and bakes its result into the graph as a constant.
    """
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


def left_right_reach(causal: bool, window: int | None, max_seqlen: int) -> tuple[int, int]:
    """How far (in tokens) a query may look left and right inside its document."""
    reach = max(max_seqlen - 1, 0)
    if window is not None:
        reach = min(reach, window - 1)
    return reach, (0 if causal else reach)


def flash_window(causal: bool, window: int | None) -> tuple[int, int]:
    """Our window as FlashAttention's ``window_size`` (-1 = unlimited)."""
    if window is None:
        return (-1, 0) if causal else (-1, -1)
    return (window - 1, 0) if causal else (window - 1, window - 1)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """GQA by copying: ``[..., Hkv, D] -> [..., Hkv * groups, D]`` (head h reads kv head h // groups)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=-2)


def flat(x: torch.Tensor) -> torch.Tensor:
    """``[B, L, H, D]`` or ``[T, H, D]`` -> ``[N, H, D]`` (a view when contiguous)."""
    return x.reshape(-1, *x.shape[-2:])


# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionRequest:
    """Everything a backend may look at to decide whether it can run a call."""

    device_type: str          # "cuda", "cpu", ...
    dtype: torch.dtype
    requires_grad: bool       # grad enabled and some input requires it
    causal: bool
    window: int | None
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layout: str               # "rows" (B, L, H, D) or "1d" (T, H, D)
    batch: int                # rows (1 for "1d")
    seqlen: int               # L for rows, T for 1d
    max_seqlen: int
    compiling: bool
    capability: tuple[int, int] | None = None  # CUDA compute capability, None elsewhere

    @property
    def gqa_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def tokens(self) -> int:
        return self.batch * self.seqlen

    def describe(self) -> str:
        w = "" if self.window is None else f", window={self.window}"
        g = "" if self.gqa_groups == 1 else f", GQA {self.num_heads}/{self.num_kv_heads}"
        return (f"{self.device_type} {str(self.dtype).replace('torch.', '')} "
                f"{'fwd+bwd' if self.requires_grad else 'fwd'}, {'causal' if self.causal else 'bidirectional'}"
                f"{w}{g}, head_dim={self.head_dim}, {self.layout}{', compiling' if self.compiling else ''}")


class Backend:
    """One way to run block-diagonal attention. Subclasses set ``name`` and implement both methods.

    ``__call__(q, k, v, ctx, req, scale)`` receives q ``[B, L, H, D]`` or ``[T, H, D]``,
    k/v with ``req.num_kv_heads`` heads, returns q's shape and dtype; it is only called
    after ``supports(req)`` returned None.
    """

    name: str = "?"

    def supports(self, req: AttentionRequest) -> str | None:
        """None if this backend can run ``req`` exactly; else a short reason."""
        raise NotImplementedError

    def __call__(self, q, k, v, ctx: "AttentionContext", req: AttentionRequest, scale: float) -> torch.Tensor:
        raise NotImplementedError

    def self_compile_s(self, req: AttentionRequest) -> float:
        """Seconds of one-off compilation this call may start (a backend that compiles itself
        per new shape outside ``torch.compile``); auto weighs it on CPU. Default 0."""
        return 0.0

    def __repr__(self) -> str:
        return f"<attention backend {self.name}>"


@dataclass
class AttentionContext:
    """Boundaries plus what several attention calls on one batch can share.

    Build it with `seqpack.attention.prepare` once per batch and pass it to
    `varlen_attention` in place of the boundaries in every layer.

    Attributes:
        boundaries: the batch's `DocBoundaries`.
        block_masks: flex BlockMasks keyed by ``(causal, window)``.
        mean_seqlen: mean length of the non-empty segments (the auto feature), exact when
            it could be read without a host sync, else ``tokens / segments`` from shapes.
    """

    boundaries: DocBoundaries
    block_masks: dict = field(default_factory=dict)
    mean_seqlen: float | None = None

    @property
    def feature(self) -> float:
        """Mean tokens per segment, for auto; from static shapes when not measured."""
        if self.mean_seqlen is not None:
            return self.mean_seqlen
        b = self.boundaries
        return b.numel / max(b.num_segments, 1)


def default_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
