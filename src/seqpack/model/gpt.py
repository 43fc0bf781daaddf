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
- Plain causal rows (`DocBoundaries.causal_rows`, the default with ``boundaries=None``): one segment
  per row, still through `varlen_attention`. That is the padded baseline (one document
  per row; a real token never sees the padding after it) and the naive-packing baseline
  (documents see each other: wrong but fast).
- Per-batch attention state (flex BlockMasks) is built once by `prepare_context`, outside
  the compiled model, and shared by every layer.
- Context parallelism: given a `seqpack.parallel.CPContext` in place of the boundaries,
  ``input_ids`` is this rank's shard of the buffer and attention runs across the cp ranks
  (`seqpack.parallel.ulysses_attention`); everything else is per token and unchanged.
- Options in the nanochat spirit: RMSNorm without weights, QK norm, relu^2 MLP, no
  biases, GQA (``n_kv_head``), sliding-window layers (``window`` + ``window_pattern``),
  tied or untied head.
- The loss is a sum with its token count, never a mean: the trainer divides by the label
  tokens of the whole optimiser step (all micro-batches, all ranks), so a packed step's
  gradient is exactly the sum of the one-document steps. ``loss_chunk > 0`` computes
  head + cross-entropy chunk by chunk (`seqpack.model.head`) instead of materialising
  ``tokens x vocab`` float32 logits.
- Throughput options, all off by default (the GPU benchmark sweeps them):
  ``fused_rope_norm`` computes RoPE and the QK norm as one autograd function with a
  hand-written backward (same function: RMS is rotation-invariant, so the norm's scale
  comes from the input; it saves only the input, and compiles to one kernel each way);
  ``fused_qkv`` computes q, k, v with one matmul over the concatenated weights (same
  parameters and state dict); ``residual="autocast"`` carries the residual stream in the
  autocast dtype (bf16) instead of float32, halving its memory traffic: that one changes
  the numerics (as nanochat does), not the function, and does nothing without autocast.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqpack.boundaries import DocBoundaries
from seqpack.parallel import CPContext, attention_for

__all__ = ["GPTConfig", "GPT", "PRESETS", "gpt_config", "prepare_context", "rope_norm"]


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
    fused_rope_norm: bool = False  # RoPE + QK norm as one autograd function (same function)
    fused_qkv: bool = False       # q, k, v from one matmul over the concatenated weights (same parameters)
    residual: str = "fp32"        # residual stream under autocast: "fp32" or "autocast" (bf16: numerics change)

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
        if self.residual not in ("fp32", "autocast"):
            raise ValueError(f"residual must be 'fp32' or 'autocast'; got {self.residual!r}")

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


# Presets: tiny (tests, CPU demo) .. 304M (the benchmark model of docs/bench/train.md:
# 16 layers, d=1024, 8 heads of 128, vocab 50304, untied head).
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


def _opmath(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs computed in float32 (as aten's opmath), others as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _rope_norm_forward(x, cos, sin, normalize: bool):
    xf = _opmath(x)
    d = xf.shape[-1] // 2
    x1, x2 = xf[..., :d], xf[..., d:]
    r1, r2 = x1 * cos + x2 * sin, x2 * cos - x1 * sin
    if normalize:
        # A rotation keeps the RMS, so rms(rope(x)) is read from x; eps as F.rms_norm's
        # default (the epsilon of its float32 opmath for bf16/fp16/fp32 inputs).
        rstd = torch.rsqrt((xf * xf).mean(-1, keepdim=True) + torch.finfo(xf.dtype).eps)
        r1, r2 = r1 * rstd, r2 * rstd
    return torch.cat([r1, r2], dim=-1).to(x.dtype)


class _RopeNorm(torch.autograd.Function):
    """``norm(rope(x))`` (or ``rope(x)``) with a hand-written backward that recomputes from
    ``x``: one saved tensor in x's dtype, no float32 intermediates kept for the backward."""

    @staticmethod
    def forward(ctx, x, cos, sin, normalize: bool):
        ctx.save_for_backward(x, cos, sin)
        ctx.normalize = normalize
        return _rope_norm_forward(x, cos, sin, normalize)

    @staticmethod
    def backward(ctx, grad):
        x, cos, sin = ctx.saved_tensors
        xf, g = _opmath(x), _opmath(grad)
        d = xf.shape[-1] // 2
        g1, g2 = g[..., :d], g[..., d:]
        if ctx.normalize:
            # y = r * rstd(r): dL/dr = rstd * (g - y * mean(g * y))
            rstd = torch.rsqrt((xf * xf).mean(-1, keepdim=True) + torch.finfo(xf.dtype).eps)
            x1, x2 = xf[..., :d], xf[..., d:]
            y1, y2 = (x1 * cos + x2 * sin) * rstd, (x2 * cos - x1 * sin) * rstd
            dot = ((g1 * y1).sum(-1, keepdim=True) + (g2 * y2).sum(-1, keepdim=True)) / xf.shape[-1]
            g1, g2 = rstd * (g1 - y1 * dot), rstd * (g2 - y2 * dot)
        # the transposed rotation
        gx = torch.cat([g1 * cos - g2 * sin, g1 * sin + g2 * cos], dim=-1).to(x.dtype)
        return gx, None, None, None


def rope_norm(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``norm(apply_rotary(x, cos, sin))`` (``normalize``) or ``apply_rotary(x, cos, sin)``
    as one autograd function; keeps x's dtype. Same function as the two-step path, up to
    rounding: the two-step path rounds the rotated x to x's dtype before the norm."""
    return _RopeNorm.apply(x, cos, sin, bool(normalize))


# ----------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.window = config.layer_windows()[layer_idx]
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.sync_options(config)

    def sync_options(self, config: GPTConfig) -> None:
        """Read the per-call options from the config (`GPT.configure` changes them in place)."""
        self.qk_norm = config.qk_norm
        self.backend = config.attn_backend
        self.fused_rope_norm = config.fused_rope_norm
        self.fused_qkv = config.fused_qkv

    def forward(self, x, cos_sin, ctx):
        lead = x.shape[:-1]  # (T,) or (B, L)
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        if self.fused_qkv:  # one matmul, same parameters; v is a strided slice: made contiguous
            w = torch.cat([self.c_q.weight, self.c_k.weight, self.c_v.weight])
            q, k, v = F.linear(x, w).split([H * D, Hkv * D, Hkv * D], dim=-1)
            q, k, v = q.view(*lead, H, D), k.view(*lead, Hkv, D), v.contiguous().view(*lead, Hkv, D)
        else:
            q = self.c_q(x).view(*lead, H, D)
            k = self.c_k(x).view(*lead, Hkv, D)
            v = self.c_v(x).view(*lead, Hkv, D)
        if self.fused_rope_norm:
            q, k = rope_norm(q, *cos_sin, self.qk_norm).type_as(v), rope_norm(k, *cos_sin, self.qk_norm).type_as(v)
        else:
            q, k = apply_rotary(q, *cos_sin), apply_rotary(k, *cos_sin)
            if self.qk_norm:  # type_as: if autocast ever runs the norm in float32, q/k must still match v
                q, k = norm(q).type_as(v), norm(k).type_as(v)
        attend = attention_for(ctx)  # varlen_attention, or across the cp ranks for a CPContext
        y = attend(q, k, v, ctx, causal=True, window=self.window, backend=self.backend)
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
            None = plain causal rows (`DocBoundaries.causal_rows`); or a `seqpack.parallel.CPContext`
            (context parallel: ``input_ids``, ``labels``, ``position_ids`` are this rank's shard).
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

    def configure(self, **changes) -> None:
        """Change per-call options in place (``attn_backend``, ``loss_chunk``, ``qk_norm``,
        ``fused_rope_norm``, ``fused_qkv``, ``residual``, ``positions``), keeping the
        weights: e.g. compare attention backends on one model. Options that shape the
        weights (layers, widths) cannot change and raise ValueError. A compiled model guards
        on these options, so the next call compiles again for the new values."""
        allowed = ("attn_backend", "loss_chunk", "qk_norm", "fused_rope_norm", "fused_qkv", "residual", "positions")
        for k, v in changes.items():
            if k not in allowed:
                raise ValueError(f"{k!r} cannot change after construction; changeable: {', '.join(allowed)}")
            setattr(self.config, k, v)
        self.config.__post_init__()  # re-validate
        for block in self.blocks:
            block.attn.sync_options(self.config)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def num_params(self) -> int:
        """Parameters, a tied embedding counted once (MFU counts all of them)."""
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
                boundaries=None, position_ids: torch.Tensor | None = None):
        cfg = self.config
        ctx = boundaries if boundaries is not None else DocBoundaries.causal_rows(tuple(input_ids.shape), input_ids.device)
        cp = isinstance(ctx, CPContext)  # context parallel: input_ids is this rank's shard of ctx's buffer
        if cfg.positions == "buffer":
            L = input_ids.shape[-1]
            position_ids = torch.arange(L, device=input_ids.device).expand(input_ids.shape)
            if cp:
                position_ids = position_ids + ctx.offset
        elif position_ids is None and cp:
            raise ValueError("under context parallelism pass the shard's position_ids (ContextShard.position_ids)")
        elif position_ids is None:
            position_ids = getattr(ctx, "boundaries", ctx).position_ids()  # a prepared context holds them
        cos_sin = rope_angles(position_ids, cfg.head_dim, cfg.rope_base)

        x = norm(self.wte(input_ids))  # (..., C), float32 (the embedding is not autocast)
        dev = x.device.type
        if cfg.residual == "autocast" and torch.is_autocast_enabled(dev):
            x = x.to(torch.get_autocast_dtype(dev))  # the residual stream in bf16 from here on
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
        return packed_cross_entropy(logits, targets, reduction="sum", label_shift="collator")

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
