"""Hugging Face hybrid and recurrent models: their token mixers see the packed documents.

transformers' gated DeltaNet, short-convolution and state-space layers run their state and
convolutions straight across a packed row: document 2 starts from document 1's state. Here
each such layer gets the documents of the call and restarts every document from zero state
(`seqpack.mixers`), so a packed batch computes what the documents compute alone.

How the documents reach a mixer:
- `attach(model)` (called by ``enable_packing``/``configure_packing``) registers a forward
  pre-hook on the model *after* seqpack's own, so it sees the call already rewritten
  (``cu_seq_lens_q`` or per-document ``position_ids``, no mask). For a packed call it builds
  ``seq_idx`` (the segment of every token, ``DocBoundaries.doc_ids()``) once, and hands it
  on two ways: as the keyword ``seqpack_seq_idx``, which transformers threads through the
  decoder layers into the mixers of most families (and which gradient checkpointing saves
  with the layer's inputs, so the recomputation in backward sees it too); and in a context
  variable for the layers that drop extra keywords, cleared when the forward ends.
- Each known mixer gets a per-instance ``forward`` wrapper (no class or module function is
  replaced): with ``seq_idx`` it runs a document-aware forward written here from the
  layer's own parameters; without (unpacked calls, generation with a cache) it calls the
  original forward unchanged.
- A mixer that would get its documents only from the context variable refuses to run
  under gradient checkpointing (the recomputation would not see them).
- On CUDA the mixers use flash-linear-attention, causal_conv1d and mamba_ssm kernels with
  their boundary arguments where installed (see `seqpack.mixers`).

`handles(model)` says whether every token mixer of ``model`` is one this module makes exact;
``seqpack.integrations.hf`` refuses packing for models where it is not.
"""

from __future__ import annotations

import contextvars
import inspect
import re

import torch
import torch.nn.functional as F

from seqpack.boundaries import DocBoundaries
from seqpack.mixers import (causal_conv1d, chunk_gated_delta_rule, chunk_linear_attention, gated_delta_rule_recurrent,
                            selective_scan, ssd_scan)

__all__ = ["handles", "attach", "detach", "packed_seq_idx", "MIXERS", "SEQ_IDX_KWARG", "MIN_TRANSFORMERS"]

SEQ_IDX_KWARG = "seqpack_seq_idx"
_HOOKS = "_seqpack_hybrid_hooks"
_ORIGINAL = "_seqpack_original_forward"
_CURRENT: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("seqpack_seq_idx", default=None)


class _NeedsDocuments(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------
# the documents of a call


def packed_seq_idx(kwargs) -> torch.Tensor | None:
    """``seq_idx`` ``(B, L)`` of a packed model call (kwargs as seqpack's hook left them), else None.

    Packed means: ``cu_seq_lens_q`` given, or no ``attention_mask`` and ``position_ids`` that
    restart inside a row (transformers' own packed-sequence rule). A call with a cache is
    never packed (seqpack's hook refuses packed calls with one).
    """
    if kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None or kwargs.get("use_cache"):
        return None
    x = kwargs.get("input_ids")
    if x is None:
        x = kwargs.get("inputs_embeds")
    if x is None:
        return None
    B, L = int(x.shape[0]), int(x.shape[1])
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        return DocBoundaries.from_cu_seqlens(cu, (B, L), validate=False).doc_ids()
    pos = kwargs.get("position_ids")
    if kwargs.get("attention_mask") is not None or pos is None or pos.shape[-1] != L or L < 2:
        return None
    pos = pos.reshape(-1, L).expand(B, -1)
    if not bool((pos[:, 1:] != pos[:, :-1] + 1).any()):
        return None
    return DocBoundaries.from_position_ids(pos).doc_ids()


# Families whose decoder builds its attention mask without position_ids: on a mask-built attention
# implementation (eager, sdpa, flex) transformers cannot see the documents there, only the varlen
# kwargs reach their attention.
_VARLEN_ONLY = {"granitemoehybrid": "GraniteMoeHybridModel builds its causal mask without position_ids"}


def _check_route(module) -> None:
    config = getattr(module, "config", None)
    reason = _VARLEN_ONLY.get(getattr(config, "model_type", None))
    if reason is None:
        return
    from seqpack.integrations.hf import attention_route
    if attention_route(getattr(config, "_attn_implementation", None)) == "mask":
        raise _packing_error(
            f"{reason}, so on attn_implementation={config._attn_implementation!r} its attention layers would see "
            f"across packed documents: use model.set_attn_implementation('seqpack') (or 'flash_attention_2')")


def _model_pre_hook(module, args, kwargs):
    seq_idx = packed_seq_idx(kwargs) if not args else None
    _CURRENT.set(seq_idx)
    if seq_idx is not None:
        _check_route(module)
    if seq_idx is not None and getattr(module, "_seqpack_threads_kwargs", False):
        kwargs = dict(kwargs)
        kwargs[SEQ_IDX_KWARG] = seq_idx
        return args, kwargs
    return None


def _model_post_hook(module, args, kwargs, output):
    _CURRENT.set(None)
    return None


_model_pre_hook_eager = torch.compiler.disable(_model_pre_hook)
_model_post_hook_eager = torch.compiler.disable(_model_post_hook)


# ----------------------------------------------------------------------------------------
# document-aware forwards, one per kind of mixer (the layer's own parameters, packed math)


def _conv_weight(conv: torch.nn.Conv1d) -> torch.Tensor:
    return conv.weight.reshape(conv.weight.shape[0], -1)  # (C, 1, K) -> (C, K)


def _delta_rule(mod, mixed, a, beta, seq_idx):
    """The gated DeltaNet core shared by its families: short conv over q/k/v, decay, delta rule.
    ``mixed (B, L, 2 * key_dim + value_dim)`` -> ``(B, L, Hv, Dv)``."""
    B, L, _ = mixed.shape
    mixed = causal_conv1d(mixed.transpose(1, 2), _conv_weight(mod.conv1d), mod.conv1d.bias, seq_idx,
                          activation=mod.activation).transpose(1, 2)
    q, k, v = torch.split(mixed, [mod.key_dim, mod.key_dim, mod.value_dim], dim=-1)
    q = q.reshape(B, L, -1, mod.head_k_dim)
    k = k.reshape(B, L, -1, mod.head_k_dim)
    v = v.reshape(B, L, -1, mod.head_v_dim)
    g = -mod.A_log.float().exp() * F.softplus(a.float() + mod.dt_bias)
    return chunk_gated_delta_rule(q, k, v, g, beta, seq_idx, use_qk_l2norm=True)


def _gated_delta_net(mod, hidden_states, seq_idx):
    """Qwen3.5 / Qwen3-Next gated DeltaNet: projections, short conv, gated delta rule, gated norm."""
    B, L, _ = hidden_states.shape
    if hasattr(mod, "in_proj_qkvz"):  # Qwen3-Next: fused, head-interleaved projections
        q, k, v, z, b, a = mod.fix_query_key_value_ordering(mod.in_proj_qkvz(hidden_states),
                                                          mod.in_proj_ba(hidden_states))
        mixed = torch.cat([x.reshape(B, L, -1) for x in (q, k, v)], dim=-1)
    else:  # Qwen3.5: separate projections
        mixed = mod.in_proj_qkv(hidden_states)
        z = mod.in_proj_z(hidden_states).reshape(B, L, -1, mod.head_v_dim)
        b, a = mod.in_proj_b(hidden_states), mod.in_proj_a(hidden_states)
    o = _delta_rule(mod, mixed, a, b.sigmoid(), seq_idx)
    o = mod.norm(o.reshape(-1, mod.head_v_dim), z.reshape(-1, mod.head_v_dim)).reshape(B, L, -1)
    return mod.out_proj(o)


def _olmo_gated_delta_net(mod, hidden_states, seq_idx):
    """OLMo hybrid gated DeltaNet: separate q/k/v/a/b/g projections, beta in [0, 2] with negative eigenvalues."""
    B, L, _ = hidden_states.shape
    h = hidden_states
    mixed = torch.cat([mod.q_proj(h), mod.k_proj(h), mod.v_proj(h)], dim=-1)
    beta = mod.b_proj(h).sigmoid()
    if mod.allow_neg_eigval:
        beta = beta * 2.0
    o = _delta_rule(mod, mixed, mod.a_proj(h), beta, seq_idx)
    o = mod.o_norm(o.reshape(-1, mod.head_v_dim), mod.g_proj(h).reshape(-1, mod.head_v_dim)).reshape(B, L, -1)
    return mod.o_proj(o)


def _lightning_attention(mod, hidden_states, seq_idx):
    """MiniMax lightning attention: linear attention with a fixed decay per head, RMSNorm, sigmoid gate.
    Returns ``(output, None)`` like the layer (no state is kept for a packed batch)."""
    B, L, _ = hidden_states.shape
    H, D = mod.num_attention_heads, mod.head_dim
    qkv = mod.act_fn(mod.qkv_proj(hidden_states)).reshape(B, L, H, 3 * D)
    q, k, v = torch.split(qkv, D, dim=3)
    log_decay = (-mod.slope_rate.reshape(H).float()).expand(B, L, H)
    o = chunk_linear_attention(q, k, v, log_decay, seq_idx, chunk_size=mod.block_size)
    o = mod.norm(o.reshape(B, L, H * D))
    o = torch.sigmoid(mod.output_gate(hidden_states)) * o
    return mod.out_proj(o), None


def _short_conv(mod, hidden_states, seq_idx):
    """LFM2 gated short convolution: ``C * conv(B * x)``."""
    Bx = mod.in_proj(hidden_states).transpose(-1, -2)
    b, c, x = Bx.chunk(3, dim=-2)
    y = c * causal_conv1d(b * x, _conv_weight(mod.conv), mod.conv.bias, seq_idx)
    return mod.out_proj(y.transpose(-1, -2).contiguous())


def _mamba2(mod, hidden_states, seq_idx):
    """Mamba2 mixer (Mamba2, Bamba, Nemotron-H, Granite-4 hybrid, Falcon-H1, Zamba2): projection, short
    conv over x/B/C, SSD scan with D skip, gated RMSNorm (or a SiLU gate), output projection."""
    dtype = hidden_states.dtype
    Bsz, L, _ = hidden_states.shape
    if hasattr(mod, "ssm_in_multiplier"):  # Falcon-H1's muP multipliers
        hidden_states = hidden_states * mod.ssm_in_multiplier
    proj = mod.in_proj(hidden_states)
    if hasattr(mod, "mup_vector"):
        proj = proj * mod.mup_vector
    gate, xbc, dt = proj.split([mod.intermediate_size, mod.conv_dim, mod.num_heads], dim=-1)
    xbc = causal_conv1d(xbc.transpose(1, 2), _conv_weight(mod.conv1d), mod.conv1d.bias, seq_idx,
                        activation=mod.activation).transpose(1, 2)
    G, N = mod.n_groups, mod.ssm_state_size
    x, Bm, Cm = torch.split(xbc, [mod.intermediate_size, G * N, G * N], dim=-1)
    dt = F.softplus(dt + mod.dt_bias.to(dt.dtype))
    lo, hi = mod.time_step_limit
    dt = torch.clamp(dt, min=lo, max=hi)
    A = -torch.exp(mod.A_log.float())
    y = ssd_scan(x.reshape(Bsz, L, mod.num_heads, mod.head_dim), dt, A, Bm.reshape(Bsz, L, G, N),
                 Cm.reshape(Bsz, L, G, N), seq_idx, D=mod.D, chunk_size=mod.chunk_size)
    y = y.reshape(Bsz, L, -1)
    if getattr(mod, "mamba_rms_norm", True):
        y = mod.norm(y, gate)
    else:
        y = y * F.silu(gate)
    return mod.out_proj(y.to(dtype))


def _mamba1(mod, hidden_states, seq_idx):
    """Mamba1 mixer (Mamba, FalconMamba, Jamba): projection, short conv, selective scan gated by SiLU(z),
    output projection; FalconMamba and Jamba RMS-normalise dt, B and C first."""
    dtype = hidden_states.dtype
    proj = mod.in_proj(hidden_states).transpose(1, 2)  # (B, 2I, L)
    x, gate = proj.chunk(2, dim=1)
    x = causal_conv1d(x, _conv_weight(mod.conv1d), mod.conv1d.bias, seq_idx, activation=mod.activation)
    ts, Bm, Cm = torch.split(mod.x_proj(x.transpose(1, 2)), [mod.time_step_rank, mod.ssm_state_size,
                                                             mod.ssm_state_size], dim=-1)
    if hasattr(mod, "dt_layernorm"):
        ts, Bm, Cm = mod.dt_layernorm(ts), mod.b_layernorm(Bm), mod.c_layernorm(Cm)
    dt = mod.dt_proj.weight @ ts.transpose(1, 2)  # (B, I, L)
    if mod.dt_proj.bias is not None:
        dt = dt + mod.dt_proj.bias.to(dt.dtype)[:, None]
    dt = F.softplus(dt)
    A = -torch.exp(mod.A_log.float())
    y = selective_scan(x, dt, A, Bm.transpose(1, 2), Cm.transpose(1, 2), seq_idx, D=mod.D, z=gate)
    return mod.out_proj(y.transpose(1, 2).to(dtype))


def _recurrent_gemma_block(mod, hidden_states, seq_idx):
    """RecurrentGemma recurrent block: the short conv cut at boundaries; the layer's own RG-LRU, which
    restarts wherever its position is 0, given per-document positions. Returns ``(output, None)``."""
    from seqpack.mixers import segment_positions
    y = mod.act_fn(mod.linear_y(hidden_states))
    x = causal_conv1d(mod.linear_x(hidden_states).transpose(1, 2), _conv_weight(mod.conv_1d), mod.conv_1d.bias,
                      seq_idx)
    mod.conv1d_state = None
    mod.rg_lru.recurrent_states = None
    x = mod.rg_lru(x.transpose(1, 2), segment_positions(seq_idx))
    mod.rg_lru.recurrent_states = None  # no state outlives a packed call
    return mod.linear_out(x * y), None


def _zamba_mamba(mod, hidden_states, seq_idx):
    """Zamba's multi-head Mamba1 mixer: one short conv over all channels, then per head the x/dt projections
    and a selective scan gated by SiLU(z); the heads concatenated into the output projection."""
    dtype = hidden_states.dtype
    Bsz, L, _ = hidden_states.shape
    nh, hd = mod.n_mamba_heads, mod.mamba_head_dim
    x, gate = mod.in_proj(hidden_states).transpose(1, 2).view(Bsz, -1, 2, L).chunk(2, dim=2)
    gate = gate.reshape(Bsz, nh, hd, L).transpose(0, 1)
    x = causal_conv1d(x.squeeze(2).contiguous(), _conv_weight(mod.conv1d), mod.conv1d.bias, seq_idx,
                      activation=mod.activation)
    x = x.reshape(Bsz, nh, hd, L).transpose(0, 1)  # (heads, B, hd, L)
    ts, Bm, Cm = torch.split((mod.x_proj_weight[:, None] @ x).transpose(-1, -2),
                             [mod.time_step_rank, mod.ssm_state_size, mod.ssm_state_size], dim=-1)
    dt = mod.dt_proj_weight[:, None] @ ts.transpose(-1, -2)  # (heads, B, hd, L)
    A = -torch.exp(mod.A_log.float())
    ys = []
    for h in range(nh):
        dt_h = F.softplus(dt[h] + mod.dt_proj_bias[h].to(dt.dtype)[:, None])
        ys.append(selective_scan(x[h], dt_h, A[h], Bm[h].transpose(1, 2), Cm[h].transpose(1, 2), seq_idx,
                                 D=mod.D[h], z=gate[h]))
    y = torch.cat(ys, dim=1)  # (B, I, L)
    return mod.out_proj(y.transpose(1, 2).to(dtype))


def _kimi_delta_attention(mod, hidden_states, seq_idx):
    """Kimi delta attention (Kimi Linear, Bailing hybrid): gated delta rule whose decay is per key channel,
    after a short conv over q/k/v; gated RMSNorm on the output (gate from g_a/g_b or g_proj)."""
    B, L, _ = hidden_states.shape
    h = hidden_states
    shape = (B, L, -1, mod.head_dim)
    mixed = torch.cat([mod.q_proj(h), mod.k_proj(h), mod.v_proj(h)], dim=-1)
    mixed = causal_conv1d(mixed.transpose(1, 2), _conv_weight(mod.conv1d), mod.conv1d.bias, seq_idx,
                          activation=mod.activation).transpose(1, 2)
    q, k, v = (x.reshape(shape) for x in torch.split(mixed, [mod.qkv_dim] * 3, dim=-1))
    o = gated_delta_rule_recurrent(q, k, v, mod.forget_gate(h), torch.sigmoid(mod.b_proj(h)), seq_idx,
                                   use_qk_l2norm=True)
    gate = mod.g_b_proj(mod.g_a_proj(h)) if hasattr(mod, "g_a_proj") else mod.g_proj(h)
    return mod.o_proj(mod.o_norm(o, gate.reshape(shape)).reshape(B, L, -1))


# mixer class name -> (packed forward, attributes it reads). A class whose instance lacks one of
# the attributes (another transformers version laid the layer out differently) is not handled.
_GDN_ATTRS = ("conv1d", "A_log", "dt_bias", "norm", "out_proj", "key_dim", "value_dim", "head_k_dim",
              "head_v_dim", "activation")
MIXERS = {
    "Qwen3_5GatedDeltaNet": (_gated_delta_net, _GDN_ATTRS + ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")),
    "Qwen3_5MoeGatedDeltaNet": (_gated_delta_net, _GDN_ATTRS + ("in_proj_qkv", "in_proj_z", "in_proj_b",
                                                                "in_proj_a")),
    "Qwen3NextGatedDeltaNet": (_gated_delta_net, _GDN_ATTRS + ("in_proj_qkvz", "in_proj_ba",
                                                               "fix_query_key_value_ordering")),
    **dict.fromkeys(["Mamba2Mixer", "BambaMixer", "NemotronHMamba2Mixer", "GraniteMoeHybridMambaLayer",
                     "FalconH1Mixer", "Zamba2MambaMixer"],
                    (_mamba2, ("in_proj", "conv1d", "A_log", "D", "dt_bias", "norm", "out_proj", "intermediate_size",
                               "conv_dim", "num_heads", "head_dim", "n_groups", "ssm_state_size",
                               "time_step_limit", "activation", "chunk_size"))),
    **dict.fromkeys(["MambaMixer", "FalconMambaMixer", "JambaMambaMixer"],
                    (_mamba1, ("in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "D", "out_proj", "time_step_rank",
                               "ssm_state_size", "activation"))),
    "OlmoHybridGatedDeltaNet": (_olmo_gated_delta_net, ("conv1d", "A_log", "dt_bias", "key_dim", "value_dim",
                                                        "head_k_dim", "head_v_dim", "activation", "q_proj", "k_proj",
                                                        "v_proj", "a_proj", "b_proj", "g_proj", "o_norm", "o_proj",
                                                        "allow_neg_eigval")),
    "MiniMaxLightningAttention": (_lightning_attention, ("qkv_proj", "act_fn", "slope_rate", "norm", "output_gate",
                                                         "out_proj", "num_attention_heads", "head_dim", "block_size")),
    "RecurrentGemmaRecurrentBlock": (_recurrent_gemma_block, ("linear_x", "linear_y", "linear_out", "conv_1d",
                                                              "rg_lru", "act_fn")),
    "ZambaMambaMixer": (_zamba_mamba, ("in_proj", "conv1d", "x_proj_weight", "dt_proj_weight", "dt_proj_bias",
                                       "A_log", "D", "out_proj", "n_mamba_heads", "mamba_head_dim", "time_step_rank",
                                       "ssm_state_size", "activation")),
    "KimiLinearDeltaAttention": (_kimi_delta_attention, ("q_proj", "k_proj", "v_proj", "conv1d", "forget_gate",
                                                         "b_proj", "g_a_proj", "g_b_proj", "o_norm", "o_proj",
                                                         "head_dim", "qkv_dim", "activation")),
    "BailingHybridDeltaAttention": (_kimi_delta_attention, ("q_proj", "k_proj", "v_proj", "conv1d", "forget_gate",
                                                            "b_proj", "g_proj", "o_norm", "o_proj", "head_dim",
                                                            "qkv_dim", "activation")),
    "Lfm2ShortConv": (_short_conv, ("in_proj", "conv", "out_proj")),
    "Lfm2MoeShortConv": (_short_conv, ("in_proj", "conv", "out_proj")),
}


# ----------------------------------------------------------------------------------------
# which models are handled, and attaching


# Classes named after their family ("Mamba2RMSNorm", Kimi Linear's softmax attention) that mix no tokens
# outside attention.
_NOT_A_MIXER = re.compile(r"Norm|MLP|Embedding|Rotary|Experts|Router|^KimiLinearAttention$")


def _mixers(model: torch.nn.Module):
    """``(name, module, packed_forward)`` of every known mixer, and the names of unknown ones."""
    from seqpack.integrations.hf import _MIXER_CLASS
    known, suspects = [], []
    for name, module in model.named_modules():
        cls = type(module).__name__
        entry = MIXERS.get(cls)
        if entry is not None and all(hasattr(module, a) for a in entry[1]):
            known.append((name, module, entry[0]))
        elif (_MIXER_CLASS.search(cls) and not _NOT_A_MIXER.search(cls)) or entry is not None:
            suspects.append((name, module))
    # A name like "Mamba2Model" or "ZambaMambaDecoderLayer" is a container when a known mixer is inside it.
    inside = {id(m) for _, mixer, _ in known for m in mixer.modules()}
    unknown = [f"{type(m).__name__} at {name or '<root>'}" for name, m in suspects
               if id(m) not in inside and not any(id(c) in {id(k) for _, k, _ in known} for c in m.modules())]
    return known, unknown


# The oldest transformers whose hybrid layers were checked against the documents alone. Older 5.x
# releases lay several of these families out differently (their attention masks or kernels
# differ too), so packing them stays refused there.
MIN_TRANSFORMERS = "5.25.0"


def _transformers_ok() -> bool:
    from packaging.version import Version
    import transformers
    return Version(transformers.__version__) >= Version(MIN_TRANSFORMERS)


def handles(model: torch.nn.Module) -> bool:
    """True when ``model`` has token mixers outside attention and seqpack makes every one of them
    document-aware (transformers >= `MIN_TRANSFORMERS`)."""
    if not _transformers_ok():
        return False
    known, unknown = _mixers(model)
    return bool(known) and not unknown


def _threads_kwargs(model: torch.nn.Module) -> bool:
    try:
        params = inspect.signature(type(model).forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _wrap(module: torch.nn.Module, packed_forward, root: torch.nn.Module) -> None:
    if _ORIGINAL in module.__dict__:
        return
    original = module.forward

    def forward(*args, **kwargs):
        seq_idx = kwargs.pop(SEQ_IDX_KWARG, None)
        from_kwargs = seq_idx is not None
        if seq_idx is None:
            seq_idx = _CURRENT.get()
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if seq_idx is None or hidden is None or tuple(hidden.shape[:2]) != tuple(seq_idx.shape):
            return original(*args, **kwargs)
        if not from_kwargs and root.training and _checkpointing(root):
            raise _packing_error(
                f"{type(module).__name__} does not receive the documents from its decoder layer, so gradient "
                f"checkpointing would recompute it without them: call model.gradient_checkpointing_disable() "
                f"to train this model packed")
        return packed_forward(module, hidden, seq_idx.to(hidden.device))

    module.__dict__[_ORIGINAL] = original
    module.forward = forward


def _checkpointing(model: torch.nn.Module) -> bool:
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # renamed in transformers 5.x
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _packing_error(msg: str):
    from seqpack.integrations.hf import PackingError
    return PackingError(msg)


def attach(model: torch.nn.Module) -> bool:
    """Make the known mixers of ``model`` document-aware for packed calls; True when it has any.

    Call after seqpack's packing hook is registered (its hook must run first). Idempotent.
    """
    known, _ = _mixers(model)
    if not known or not _transformers_ok():
        return False
    for _, module, packed_forward in known:
        _wrap(module, packed_forward, model)
    if getattr(model, _HOOKS, None) is None:
        object.__setattr__(model, "_seqpack_threads_kwargs", _threads_kwargs(model))
        pre = model.register_forward_pre_hook(_model_pre_hook_eager, with_kwargs=True)
        post = model.register_forward_hook(_model_post_hook_eager, with_kwargs=True, always_call=True)
        object.__setattr__(model, _HOOKS, (pre, post))
    return True


def detach(model: torch.nn.Module) -> None:
    """Undo `attach`: the mixers get their own forward back, the hooks go."""
    for module in model.modules():
        original = module.__dict__.pop(_ORIGINAL, None)
        if original is not None:
            del module.forward
    for handle in getattr(model, _HOOKS, None) or ():
        handle.remove()
    object.__setattr__(model, _HOOKS, None)
