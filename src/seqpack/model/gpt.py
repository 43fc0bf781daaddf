"""A small GPT whose attention is seqpack's `varlen_attention`.

Notable:
- One token layout in, the same out: a 1D buffer ``(T,)`` (FlashAttention varlen style,
  every document back to back) or rows ``(B, L)``. Linear layers do not care; attention
  gets ``[T, H, D]`` or ``[B, L, H, D]`` and the batch's `DocBoundaries`, so no token sees
  another document whatever the layout.
- Positions (RoPE) restart per document (``positions="doc"``, from the batch's
  ``position_ids``) or run over the row / buffer (``positions="buffer"``). RoPE scores
  depend only on the distance between query and key, and attention never crosses a
  document, so both give the same function; "doc" keeps the angles small (bf16-friendly).
  The cos/sin are computed from the position ids in the forward (a few elementwise ops
  that compile into the graph), so there is no table whose size could be outgrown.
- Plain causal rows (`causal_rows`, the default with ``boundaries=None``): one segment
  per row, still through `varlen_attention`. That is the padded baseline (one document
  per row; a real token never sees the padding after it) and the naive-packing baseline
  (documents see each other: wrong but fast).
- Per-batch attention state (flex BlockMasks) is built once by `prepare_context`, outside
  the compiled model, and shared by every layer.
- Options in the nanochat spirit: RMSNorm without weights, QK norm, relu^2 MLP, no
  biases, GQA (``n_kv_head``), sliding-window layers (``window`` + ``window_pattern``),
  tied or untied head.
- The loss is a sum with its token count, never a mean: the trainer divides by the label
  tokens of the whole optimiser step (all micro-batches, all ranks), so a packed step's
  gradient is exactly the sum of the one-document steps. ``loss_chunk > 0`` computes
  head + cross-entropy chunk by chunk (`seqpack.model.head`) instead of materialising
  ``tokens x vocab`` float32 logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqpack.attention import varlen_attention
from seqpack.boundaries import DocBoundaries

__all__ = ["GPTConfig", "GPT", "PRESETS", "gpt_config", "causal_rows", "prepare_context"]


@dataclass
class GPTConfig:
    vocab_size: int = 50304       # GPT-2's 50,257 padded to a multiple of 64 (faster matmuls)
    n_layer: int = 12
    n_head: int = 6               # query heads
    n_kv_head: int | None = None  # key/value heads (GQA); None = n_head
    n_embd: int = 768
    mlp_ratio: int = 4
    window: int | None = None     # tokens a sliding-window ("S") layer looks back, itself included
    window_pattern: str = "G"     # tiled over layers: G = global, S = sliding; the last layer is global
    tie_embeddings: bool = False
    positions: str = "doc"        # "doc": restart per document; "buffer": run over the row / buffer
    rope_base: float = 10000.0
    qk_norm: bool = True
    attn_backend: str = "auto"    # varlen_attention backend for document attention
    loss_chunk: int = 0           # >0: fused head + cross-entropy, this many tokens per chunk

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head} (GQA)")
        if self.positions not in ("doc", "buffer"):
            raise ValueError(f"positions must be 'doc' or 'buffer'; got {self.positions!r}")
        if set(self.window_pattern) - set("GS") or not self.window_pattern:
            raise ValueError(f"window_pattern must be a string of G and S; got {self.window_pattern!r}")
        if "S" in self.window_pattern and not self.window:
            raise ValueError("window_pattern has sliding ('S') layers but window is not set: pass window=")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"head_dim {self.n_embd // self.n_head} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def layer_windows(self) -> list[int | None]:
        """The window of every layer (None = global attention)."""
        pat = self.window_pattern
        out = [self.window if pat[i % len(pat)] == "S" else None for i in range(self.n_layer)]
        out[-1] = None  # the last layer sees the whole document
        return out

    def to_dict(self) -> dict:
        return asdict(self)


# Presets: tiny (tests, CPU demo) .. 304M (REFERENCE.md section 3: 16 layers, d=1024,
# 8 heads of 128, vocab 50304, untied head).
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64),
    "mini": dict(n_layer=4, n_head=4, n_embd=128),
    "small": dict(n_layer=6, n_head=6, n_embd=384),
    "124M": dict(n_layer=12, n_head=12, n_embd=768),
    "304M": dict(n_layer=16, n_head=8, n_embd=1024),
}


def gpt_config(preset: str = "tiny", **overrides) -> GPTConfig:
    """A `GPTConfig` from a preset name plus field overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; pick one of {', '.join(PRESETS)}")
    fields = dict(PRESETS[preset])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return GPTConfig(**fields)


# ----------------------------------------------------------------------------------------
# small pure helpers


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm without a learnable scale (as nanochat): one fewer parameter type to shard."""
    return F.rms_norm(x, (x.size(-1),))


def rope_angles(position_ids: torch.Tensor, head_dim: int, base: float):
    """cos, sin ``(..., 1, head_dim // 2)`` for positions ``(...)``, float32."""
    inv_freq = base ** -(torch.arange(0, head_dim, 2, device=position_ids.device,
                                      dtype=torch.float32) / head_dim)
    angles = position_ids.to(torch.float32)[..., None] * inv_freq  # (..., D/2)
    return angles.cos()[..., None, :], angles.sin()[..., None, :]  # broadcast over heads


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]) of ``x (..., H, D)`` by the angles; keeps x's dtype."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d].float(), x[..., d:].float()
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1).to(x.dtype)


def causal_rows(shape, device=None) -> DocBoundaries:
    """Boundaries with one segment per row: plain causal attention over whole rows.

    The padded baseline (one document per row; a real token never sees the padding after
    it) and the naive-packing baseline (documents see each other: wrong but fast) both
    attend this way. Built with tensor ops only, so it also traces under torch.compile.
    """
    B, L = (1, shape[0]) if len(shape) == 1 else shape
    cu = torch.arange(B + 1, device=device, dtype=torch.int32) * L
    return DocBoundaries(cu, tuple(shape), is_pad=torch.zeros(B, dtype=torch.bool, device=device),
                         max_seqlen=L, validate=False)


# ----------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.window = config.layer_windows()[layer_idx]
        self.qk_norm = config.qk_norm
        self.backend = config.attn_backend
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos_sin, ctx):
        lead = x.shape[:-1]  # (T,) or (B, L)
        q = self.c_q(x).view(*lead, self.n_head, self.head_dim)
        k = self.c_k(x).view(*lead, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(*lead, self.n_kv_head, self.head_dim)
        q, k = apply_rotary(q, *cos_sin), apply_rotary(k, *cos_sin)
        if self.qk_norm:  # type_as: if autocast ever runs the norm in float32, q/k must still match v
            q, k = norm(q).type_as(v), norm(k).type_as(v)
        y = varlen_attention(q, k, v, ctx, causal=True, window=self.window, backend=self.backend)
        return self.c_proj(y.reshape(*lead, -1))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos_sin, ctx):
        x = x + self.attn(norm(x), cos_sin, ctx)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    """``GPT(config)(input_ids, labels, boundaries=..., position_ids=...)``.

    Args of forward:
        input_ids: ``(T,)`` 1D buffer or ``(B, L)`` rows, int64.
        labels: next-token targets aligned with ``input_ids`` (nanochat convention,
            ``collate_packed(label_shift="collator")``), -100 where no loss is wanted.
            None: return logits.
        boundaries: the batch's `DocBoundaries` (static ones for ``torch.compile``), or a
            context from `prepare_context` (once per batch, shared by all layers);
            None = plain causal rows (`causal_rows`).
        position_ids: per-document positions (``PackedBatch.position_ids``); derived from
            the boundaries when omitted. Ignored with ``positions="buffer"``.

    Returns ``(loss_sum, num_label_tokens)`` (float32 and int64 scalars, no host sync)
    when labels are given, else logits ``(..., vocab_size)``.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.init_weights()

    # ------------------------------------------------------------------ setup

    @torch.no_grad()
    def init_weights(self) -> None:
        """nanochat-style init: fan-in scaled matrices, zero output projections (every block
        starts as the identity), a zero head when untied."""
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                fan_out, fan_in = mod.weight.shape
                std = 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))
                nn.init.normal_(mod.weight, mean=0.0, std=std)
        for block in self.blocks:
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        if self.lm_head is None:
            # Tied: the embedding is also the head, so keep logits O(1) at init.
            nn.init.normal_(self.wte.weight, mean=0.0, std=self.config.n_embd ** -0.5)
        else:
            nn.init.normal_(self.wte.weight, mean=0.0, std=1.0)
            nn.init.zeros_(self.lm_head.weight)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def num_params(self) -> int:
        """Parameters, a tied embedding counted once (REFERENCE's MFU uses all of them)."""
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
                boundaries=None, position_ids: torch.Tensor | None = None):
        cfg = self.config
        ctx = boundaries if boundaries is not None else causal_rows(tuple(input_ids.shape), input_ids.device)
        if cfg.positions == "buffer":
            L = input_ids.shape[-1]
            position_ids = torch.arange(L, device=input_ids.device).expand(input_ids.shape)
        elif position_ids is None:
            position_ids = getattr(ctx, "boundaries", ctx).position_ids()  # a prepared context holds them
        cos_sin = rope_angles(position_ids, cfg.head_dim, cfg.rope_base)

        x = norm(self.wte(input_ids))  # (..., C)
        for block in self.blocks:
            x = block(x, cos_sin, ctx)
        if labels is None:
            return F.linear(norm(x), self.head_weight)
        return self._head_loss(x, labels)

    def _head_loss(self, x: torch.Tensor, labels: torch.Tensor):
        """Final norm, head and summed cross-entropy: ``(loss_sum, num_label_tokens)``."""
        h, targets = norm(x).reshape(-1, x.shape[-1]), labels.reshape(-1)
        if self.config.loss_chunk and torch.is_grad_enabled():
            from seqpack.model.head import linear_cross_entropy

            return linear_cross_entropy(h, self.head_weight, targets, chunk_size=self.config.loss_chunk)
        from seqpack.loss import packed_cross_entropy

        logits = F.linear(h, self.head_weight)  # bf16 under autocast; upcast inside the loss
        return packed_cross_entropy(logits, targets, reduction="sum", shifted=True)

    def compile_loss(self, **compile_kw) -> None:
        """Compile the head + loss on its own (regional compilation, with ``Block.compile``)."""
        self._head_loss = torch.compile(self._head_loss, **compile_kw)


def prepare_context(boundaries: DocBoundaries, config: GPTConfig, device=None, *, block_mask: bool | None = None):
    """Per-batch attention state every layer shares (flex BlockMasks for each window the
    model uses), built once per batch outside the compiled model: ``seqpack.attention.prepare``."""
    from seqpack.attention import prepare

    if block_mask is None:  # flex has no CPU backward; on GPU the masks cost well under a millisecond
        block_mask = torch.device(device if device is not None else boundaries.device).type == "cuda" \
            and config.attn_backend in ("auto", "flex")
    windows = list(dict.fromkeys(config.layer_windows()))
    return prepare(boundaries, causal=True, window=windows, device=device, block_mask=block_mask)
