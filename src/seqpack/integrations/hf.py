"""Hugging Face transformers: packed documents stay apart on every attention implementation.

``enable_packing(model)`` puts one forward pre-hook on the model. On every call it finds
the documents of the batch (LLaMA-Factory's integer-labelled ``attention_mask``,
per-document ``position_ids``, ``cu_seq_lens_q/k``, or a seqpack `PackedBatch` passed as
the model's first argument) and rewrites the call into the form the model's current
``attn_implementation`` honours through transformers' public paths:

- mask-built implementations (``eager``, ``sdpa``, ``flex_attention``, kernels that use the
  sdpa mask): no ``attention_mask``, ``position_ids`` restarting per document and
  ``use_cache=False``. transformers' mask factory then builds the block-diagonal mask
  itself (its packed-sequence detection), per layer type, sliding windows included.
- varlen implementations (``flash_attention_2/3/4``, ``kernels-community/*flash*``, and
  ``"seqpack"``): the FlashAttention varlen kwargs ``cu_seq_lens_q/k`` and
  ``max_length_q/k`` over the flattened ``(B * L)`` buffer, so bsz > 1 and padding work.

Notable:
- Why a hook: transformers casts a 2D mask to bool before any attention code sees it
  (>= 4.53), so the document labels must be read before the model's forward. The hook
  is the only place seqpack touches a model; no transformers function is replaced.
- ``use_cache`` left at its default (None) is turned off for packed batches: with a cache
  transformers silently skips the document mask. A cache the
  caller asked for explicitly is refused instead (`PackingError`), as are a 0/1 mask
  that lost its document labels, layers that mix tokens outside attention that seqpack
  does not make document-aware (`seqpack.integrations.hf_hybrid` does so for the Mamba,
  gated DeltaNet, short-convolution and other hybrid families it knows), an attention
  implementation seqpack does not know, and transformers older than 5.0.
- Labels: a document's first token is never a target of the previous document's last
  token; the hook sets -100 there when it derives documents from a mask or positions
  (seqpack's collator already does).
- ``configure_packing(model_args, is_trainable)`` is LLaMA-Factory's global switch: it
  runs before the model exists, so it installs the same hook on every transformers
  model built afterwards (by wrapping ``PreTrainedModel.post_init``, gated to the
  versions seqpack supports; ``unconfigure_packing()`` undoes it).
- ``"seqpack"`` is registered as an attention implementation (``AttentionInterface``) so
  ``seqpack.attention.varlen_attention``'s backend choice serves HF models:
  ``enable_packing(model, attn_implementation="seqpack")``.
- ``torch.compile``: the hook reads tensor data (is the mask integer-labelled? do the
  positions restart?), so it is marked ``torch.compiler.disable``: compiling the whole
  model (``torch.compile(model)``, Trainer's ``torch_compile=True``) runs the hook eagerly
  and compiles the forward as one graph; compiling ``model.forward`` or each decoder layer
  never sees it. With ``"seqpack"`` and FlashAttention-4 the kernel is a custom op, so the
  compiled graph has no break either.
- ``enable_fused_loss(model)`` (`seqpack.integrations.hf_loss`) swaps transformers'
  causal-LM loss for a fused one with the same math: independent of packing.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re

import torch

from seqpack.batch import PackedBatch
from seqpack.boundaries import DocBoundaries
from seqpack.integrations.hf_collator import DataCollatorForPacking, packed_model_inputs
from seqpack.integrations.hf_loss import (
    disable_fused_loss, enable_fused_loss, fused_causal_lm_loss, is_fused_loss_enabled,
)
from seqpack.labels import IGNORE_INDEX

__all__ = [
    "PackingError", "enable_packing", "disable_packing", "is_packing_enabled", "configure_packing",
    "unconfigure_packing", "register_seqpack_attention", "check_transformers_version",
    "attention_route", "DataCollatorForPacking", "packed_model_inputs", "MIN_TRANSFORMERS",
    "enable_fused_loss", "disable_fused_loss", "is_fused_loss_enabled", "fused_causal_lm_loss",
]

logger = logging.getLogger(__name__)

# The oldest transformers whose public extension points seqpack uses (AttentionInterface,
# AttentionMaskInterface, FlashAttention varlen kwargs, mask factories that honour
# per-document position_ids); CI tests it and the newest 5.x.
MIN_TRANSFORMERS = "5.0.0"
SEQPACK_ATTENTION = "seqpack"
_HANDLE = "_seqpack_packing_hook"


class PackingError(ValueError):
    """A packed batch met a configuration under which its documents would attend to each other."""


# ----------------------------------------------------------------------------------------
# versions and attention implementations


def check_transformers_version(version: str | None = None) -> str:
    """Raise `PackingError` unless transformers is at least `MIN_TRANSFORMERS`; return the version."""
    from packaging.version import Version
    if version is None:
        import transformers
        version = transformers.__version__
    if Version(version) < Version(MIN_TRANSFORMERS):
        raise PackingError(
            f"transformers {version} is older than {MIN_TRANSFORMERS}, the oldest version seqpack's packing "
            f"supports: before 5.0 integer-labelled masks are cast to bool and packed documents leak on several "
            f"attention paths. Upgrade: pip install 'transformers>={MIN_TRANSFORMERS}'")
    return version


def attention_route(attn_implementation: str | None) -> str:
    """How packed documents reach this attention implementation: ``"mask"`` (transformers builds a
    block-diagonal mask from per-document position_ids) or ``"varlen"`` (cu_seq_lens kwargs).

    Raises `PackingError` for implementations seqpack cannot vouch for.
    """
    from transformers import masking_utils as mu
    impl = attn_implementation or "eager"
    if impl == SEQPACK_ATTENTION:
        return "varlen"
    try:
        builder = mu.ALL_MASK_ATTENTION_FUNCTIONS[impl]
    except KeyError:
        builder = None
    if builder is getattr(mu, "flash_attention_mask", None):
        return "varlen"
    if builder is not None and builder in (mu.sdpa_mask, mu.eager_mask, mu.flex_attention_mask):
        return "mask"
    raise PackingError(
        f"attn_implementation {impl!r} is not one seqpack knows to keep packed documents apart (its mask "
        f"builder is {getattr(builder, '__name__', builder)!r}). Use 'eager', 'sdpa', 'flex_attention', "
        f"'flash_attention_2'/'flash_attention_3', a kernels-community flash kernel, or 'seqpack': "
        f"model.set_attn_implementation('sdpa')")


# ----------------------------------------------------------------------------------------
# layers that mix tokens outside attention (they would need seq_idx / cu_seqlens of their own)

_RECURRENT_FAMILIES = frozenset({
    "mamba", "mamba2", "falcon_mamba", "jamba", "bamba", "zamba", "zamba2", "falcon_h1", "nemotron_h",
    "granitemoehybrid", "lfm2", "lfm2_moe", "lfm2_vl", "qwen3_next", "qwen3_5", "qwen3_5_moe",
    "recurrent_gemma", "rwkv", "kimi_linear", "olmo_hybrid", "minimax",
})
_MIXER_CLASS = re.compile(r"Mamba|Mixer|DeltaNet|ShortConv|Rwkv|RecurrentBlock|LinearAttention|SSM")
_MIXER_LAYER_TYPE = re.compile(r"mamba|linear|conv|recurrent|ssm|rwkv|delta")


def token_mixers_outside_attention(model: torch.nn.Module) -> list[str]:
    """Names of what in ``model`` mixes tokens outside attention (empty when packing is safe)."""
    # --- hybrid/recurrent layers seqpack makes document-aware (hf_hybrid) are safe ---
    from seqpack.integrations import hf_hybrid
    if hf_hybrid.handles(model):
        return []
    # ---
    found = []
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in _RECURRENT_FAMILIES:
        found.append(f"model_type {model_type!r}")
    for name, module in model.named_modules():
        cls = type(module).__name__
        if _MIXER_CLASS.search(cls):
            found.append(f"{cls} at {name or '<root>'}")
            break  # one is enough to name the problem
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for kind in getattr(text_config, "layer_types", None) or ():
        if isinstance(kind, str) and _MIXER_LAYER_TYPE.search(kind):
            found.append(f"layer type {kind!r}")
            break
    return found


def _check_token_mixers(model: torch.nn.Module) -> None:
    found = getattr(model, "_seqpack_mixers", None)
    if found is None:
        found = token_mixers_outside_attention(model)
        model._seqpack_mixers = found
    if found:
        raise PackingError(
            f"{type(model).__name__} has layers that mix tokens outside attention ({', '.join(found)}): their "
            f"state and convolutions run across document boundaries unless each layer is given seq_idx, which "
            f"these layers do not get from transformers here, so packed documents would leak into each other. "
            f"Train this model unpacked (one document per row: DataCollatorForPacking(pack=False)), or use a "
            f"pure-attention model.")


# ----------------------------------------------------------------------------------------
# reading the documents of a call


def _restarts(position_ids: torch.Tensor) -> torch.Tensor:
    """bool ``(B, L-1)``: position ``t+1`` does not continue position ``t``."""
    return position_ids[..., 1:] != position_ids[..., :-1] + 1


def _input_shape(kwargs) -> tuple[int, int] | None:
    x = kwargs.get("input_ids")
    if x is None:
        x = kwargs.get("inputs_embeds")
    return None if x is None else (int(x.shape[0]), int(x.shape[1]))


def _lost_labels_error(where: str) -> PackingError:
    return PackingError(
        f"attention_mask is 0/1 (or bool) but {where}: the mask has lost its document labels, and transformers "
        f"would let the documents attend to each other. Pass LLaMA-Factory's integer-labelled mask (1..n per "
        f"document, 0 = padding; DocBoundaries.attention_mask()), or drop attention_mask and let position_ids "
        f"(restarting at 0 per document) define the documents.")


def _find_documents(kwargs, route: str) -> tuple[DocBoundaries | None, bool]:
    """``(boundaries to apply or None, whether the call is packed)``; raises on a lost-label mask."""
    mask = kwargs.get("attention_mask")
    pos = kwargs.get("position_ids")
    has_cu = kwargs.get("cu_seq_lens_q") is not None or kwargs.get("cu_seq_lens_k") is not None
    shape = _input_shape(kwargs)
    if pos is not None and shape is not None and pos.dim() == 2 and pos.shape[0] != shape[0]:
        pos = pos.expand(shape[0], -1)  # positions given once for all rows
    if mask is not None and not (isinstance(mask, torch.Tensor) and mask.dim() == 2):
        return None, has_cu  # a 4D mask, BlockMask or per-layer dict the caller built: used as given
    if mask is not None:
        if mask.dtype != torch.bool and bool((mask > 1).any()):
            return DocBoundaries.from_attention_mask(mask), True
        if has_cu and not bool(mask.all()):
            raise _lost_labels_error("cu_seq_lens_q/k were also given (FlashAttention ignores them when a "
                                     "padding mask is present)")
        if pos is not None and pos.shape[-1] == mask.shape[-1]:  # (with a cache the mask also covers the past)
            keep = mask.to(torch.bool)
            if bool((_restarts(pos) & keep[:, 1:] & keep[:, :-1]).any()):
                raise _lost_labels_error("position_ids restart inside its non-padding runs")
        if has_cu:  # an all-ones mask says nothing; the cu_seq_lens do
            kwargs["attention_mask"] = None
            return _from_cu_seqlens(kwargs, shape) if pos is None else None, True
        return None, False  # an ordinary padded batch
    if has_cu:
        return (_from_cu_seqlens(kwargs, shape) if pos is None else None), True
    if pos is None or pos.shape[-1] < 2:
        return None, False
    if route == "mask" and kwargs.get("use_cache") is False and kwargs.get("past_key_values") is None:
        return None, False  # transformers builds the document mask from these positions itself
    if not bool(_restarts(pos).any()):
        return None, False
    return DocBoundaries.from_position_ids(pos), True


def _from_cu_seqlens(kwargs, shape) -> DocBoundaries:
    cu = kwargs.get("cu_seq_lens_q")
    cu = kwargs.get("cu_seq_lens_k") if cu is None else cu
    max_len = kwargs.get("max_length_q")
    return DocBoundaries.from_cu_seqlens(cu, shape, max_seqlen=None if max_len is None else int(max_len),
                                         validate=False)


def _mask_first_labels(labels: torch.Tensor, b: DocBoundaries) -> torch.Tensor:
    """Labels with -100 at every segment start: no target crosses a document boundary."""
    n = labels.numel()
    starts = b.cu_seqlens[:-1].to(device=labels.device, dtype=torch.long)
    starts = torch.where(starts < n, starts, torch.zeros_like(starts))  # static filler points past the end
    return labels.reshape(-1).index_fill(0, starts, IGNORE_INDEX).reshape(labels.shape)


def _check_cache(kwargs) -> None:
    if kwargs.get("past_key_values") is not None:
        raise PackingError(
            "past_key_values were passed with a packed batch: a cache holds one sequence per row, so the packed "
            "documents would share it (and transformers turns its document mask off when a cache is in use). "
            "Drop past_key_values for packed training; generate with one document per row.")
    if kwargs.get("use_cache"):
        raise PackingError(
            "use_cache=True with a packed batch: transformers skips the document mask when a cache is in use, so "
            "documents would attend to each other. Pass use_cache=False (or leave it unset: seqpack turns it off "
            "for packed batches).")


def _absorb_packed_batch(args, kwargs):
    """``model(packed_batch, ...)``: unfold a seqpack `PackedBatch` into model kwargs."""
    batch = args[0]
    if batch.label_shift != "model":
        raise PackingError(f"PackedBatch has label_shift={batch.label_shift!r}, but Hugging Face models shift "
                           f"labels themselves: build it with collate_packed(..., label_shift='model')")
    kwargs = dict(kwargs)
    kwargs.update(packed_model_inputs(batch, format="flash"))
    return args[1:], kwargs


@functools.lru_cache(maxsize=None)
def _forward_signature(cls) -> inspect.Signature:
    return inspect.signature(cls.forward)


def _all_keywords(module, args, kwargs):
    """Move positional arguments to their names so the hook sees one dict."""
    bound = _forward_signature(type(module)).bind_partial(module, *args, **kwargs)
    out = {}
    for name, value in list(bound.arguments.items())[1:]:
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                return args, kwargs  # cannot name them; leave the call alone
        else:
            out[name] = value
    return (), out


def _packing_pre_hook(module, args, kwargs):
    """Forward pre-hook: rewrite a packed call into the form the model's attention honours."""
    if args and isinstance(args[0], PackedBatch):
        args, kwargs = _absorb_packed_batch(args, kwargs)
    if args:
        args, kwargs = _all_keywords(module, args, kwargs)
        if args:
            return None
    else:
        kwargs = dict(kwargs)
    config = getattr(module, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    try:
        route = attention_route(impl)
    except PackingError:
        route = None  # refused below, only if the call is packed
    boundaries, packed = _find_documents(kwargs, route)
    if not packed:
        return args, kwargs
    _check_cache(kwargs)
    _check_token_mixers(module)
    if route is None:
        attention_route(impl)  # raises, naming the implementations that work
    kwargs["use_cache"] = False
    if boundaries is not None:
        _apply_boundaries(kwargs, boundaries, route)
    if impl == SEQPACK_ATTENTION and kwargs.get("seqpack_context") is None:
        # One context per batch: every layer reuses its flex BlockMasks and backend feature.
        b = boundaries if boundaries is not None else _from_cu_seqlens(kwargs, _input_shape(kwargs))
        kwargs["seqpack_context"] = _prepare_context(b, config)
    return args, kwargs


def _prepare_context(b: DocBoundaries, config):
    from seqpack.attention import prepare
    window = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config,
                     "sliding_window", None)
    return prepare(b, causal=True, window=[None, window] if window else None)


# The hook reads tensor data (host syncs, data-dependent branches): under torch.compile(model)
# it runs eagerly and the forward is compiled as one graph.
_packing_pre_hook_eager = torch.compiler.disable(_packing_pre_hook)


def _apply_boundaries(kwargs, b: DocBoundaries, route: str) -> None:
    """Write the documents into the call as the route needs them (kwargs edited in place)."""
    from_mask = kwargs.get("attention_mask") is not None
    kwargs["attention_mask"] = None
    if from_mask or kwargs.get("position_ids") is None:
        kwargs["position_ids"] = b.position_ids()
    labels = kwargs.get("labels")
    if labels is not None and isinstance(labels, torch.Tensor) and labels.numel() == b.numel:
        kwargs["labels"] = _mask_first_labels(labels, b)
    if route == "varlen":
        cu = b.cu_seqlens
        kwargs["cu_seq_lens_q"] = kwargs["cu_seq_lens_k"] = cu
        kwargs["max_length_q"] = kwargs["max_length_k"] = b.max_seqlen


# ----------------------------------------------------------------------------------------
# public switches


def enable_packing(model: torch.nn.Module, *, attn_implementation: str | None = None) -> torch.nn.Module:
    """Make ``model`` keep packed documents apart; returns the model.

    After this, calling the model with an integer-labelled ``attention_mask`` (``[B, L]``,
    1..n per document, 0 = padding), with per-document ``position_ids`` and no mask, with
    ``cu_seq_lens_q/k``, or with a seqpack `PackedBatch` as first argument computes
    block-diagonal attention on the model's ``attn_implementation``. Other calls (plain
    padded batches, generation with a cache) pass through unchanged.

    Args:
        model: a transformers model (``PreTrainedModel``); call this model, not a submodule.
        attn_implementation: switch the model to this implementation first, e.g.
            ``"seqpack"`` (registered here) or ``"sdpa"``.

    Raises:
        PackingError: transformers older than `MIN_TRANSFORMERS`, layers that mix tokens
            outside attention that `seqpack.integrations.hf_hybrid` does not make
            document-aware, or an attention implementation seqpack cannot vouch for.
    """
    check_transformers_version()
    register_seqpack_attention()
    if attn_implementation is not None:
        if attn_implementation == SEQPACK_ATTENTION and not register_seqpack_attention():
            raise PackingError("attn_implementation='seqpack' needs seqpack.attention.varlen_attention, which "
                               "failed to import; use 'sdpa' or 'flash_attention_2'")
        model.set_attn_implementation(attn_implementation)
    _check_token_mixers(model)
    attention_route(getattr(getattr(model, "config", None), "_attn_implementation", None))
    _attach(model)
    return model


def _attach(model: torch.nn.Module) -> None:
    if getattr(model, _HANDLE, None) is None:
        handle = model.register_forward_pre_hook(_packing_pre_hook_eager, with_kwargs=True)
        object.__setattr__(model, _HANDLE, handle)
        # --- hybrid/recurrent mixers get the documents (hf_hybrid; its hook runs after this one) ---
        from seqpack.integrations import hf_hybrid
        hf_hybrid.attach(model)
        # ---


def disable_packing(model: torch.nn.Module) -> torch.nn.Module:
    """Remove what `enable_packing` added (the hook); returns the model."""
    handle = getattr(model, _HANDLE, None)
    if handle is not None:
        handle.remove()
        object.__setattr__(model, _HANDLE, None)
        from seqpack.integrations import hf_hybrid  # --- hybrid mixers back to their own forward ---
        hf_hybrid.detach(model)
    return model


def is_packing_enabled(model: torch.nn.Module) -> bool:
    return getattr(model, _HANDLE, None) is not None


_ORIGINAL_POST_INIT = None


def configure_packing(model_args, is_trainable: bool) -> None:
    """LLaMA-Factory's switch: with ``model_args.block_diag_attn`` and training, every
    transformers model built afterwards keeps packed documents apart (as `enable_packing`).

    Same signature and meaning as ``llamafactory.model.model_utils.packing.configure_packing``,
    working on transformers 5.x: the integer-labelled masks LLaMA-Factory's collator
    builds are honoured on eager, sdpa, flex_attention and the FlashAttention paths.
    Does nothing when not training or when ``block_diag_attn`` is false.
    """
    if not is_trainable or not getattr(model_args, "block_diag_attn", False):
        return
    check_transformers_version()
    register_seqpack_attention()
    global _ORIGINAL_POST_INIT
    from transformers import PreTrainedModel
    if _ORIGINAL_POST_INIT is None:
        original = PreTrainedModel.post_init

        @functools.wraps(original)
        def post_init(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            _attach(self)
            return out

        _ORIGINAL_POST_INIT = original
        PreTrainedModel.post_init = post_init
    logger.info("seqpack: block-diagonal attention for packed sequences (no cross-document attention).")


def unconfigure_packing() -> None:
    """Undo `configure_packing` for models built from now on (hooked models keep their hook)."""
    global _ORIGINAL_POST_INIT
    if _ORIGINAL_POST_INIT is not None:
        from transformers import PreTrainedModel
        PreTrainedModel.post_init = _ORIGINAL_POST_INIT
        _ORIGINAL_POST_INIT = None


# ----------------------------------------------------------------------------------------
# the "seqpack" attention implementation


def _seqpack_mask(*args, **kwargs):
    """Mask builder for ``"seqpack"``: none when the attention function can take the documents
    from cu_seq_lens/position_ids (no padding mask, no cache offset); else sdpa's mask."""
    from transformers.masking_utils import sdpa_mask
    mask = kwargs.get("attention_mask")
    q_len = kwargs["q_length"] if "q_length" in kwargs else kwargs["cache_position"].shape[0]
    fresh = q_len == kwargs.get("kv_length") and not kwargs.get("kv_offset")
    if fresh and (mask is None or bool(mask.all())):
        return None
    return sdpa_mask(*args, **kwargs)


def _boundaries_for(query: torch.Tensor, kwargs) -> DocBoundaries:
    """Documents of a ``(B, H, L, D)`` query from the call's kwargs: cu_seq_lens, else position_ids,
    else one document per row."""
    B, L = query.shape[0], query.shape[2]
    if kwargs.get("cu_seq_lens_q") is not None:
        return _from_cu_seqlens(kwargs, (B, L))
    pos = kwargs.get("position_ids")
    if pos is not None and pos.shape[-1] == L:
        return DocBoundaries.from_position_ids(pos.reshape(-1, L).expand(B, -1), max_seqlen=L)
    return DocBoundaries.causal_rows((B, L), query.device)


def seqpack_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                              scaling: float | None = None, sliding_window: int | None = None,
                              softcap: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers attention function ``"seqpack"``: `seqpack.attention.varlen_attention` over the
    documents of the call. query ``(B, H, L, D)``, key/value ``(B, Hkv, S, D)`` -> ``(B, L, H, D)``.

    With a padding mask or a cache (generation) it runs transformers' sdpa function instead.
    """
    if attention_mask is not None or query.shape[2] != key.shape[2]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    if dropout and module.training:
        raise PackingError(f"attn_implementation='seqpack' has no attention dropout (got {dropout}): set the "
                           f"config's attention_dropout to 0 or use 'eager'/'sdpa'")
    if softcap is not None or kwargs.get("s_aux") is not None:
        raise PackingError("attn_implementation='seqpack' supports neither logit softcapping nor attention sinks; "
                           "use 'eager' or 'flex_attention' for this model")
    from seqpack.parallel import attention_for
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    ctx = kwargs.get("seqpack_context")
    if ctx is None:
        ctx = _boundaries_for(query, kwargs)
    attend = attention_for(ctx)  # varlen_attention; across the cp ranks for a context-parallel shard
    out = attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), ctx,
                           causal=causal, window=sliding_window, scale=scaling)
    return out, None


_REGISTERED = None


def register_seqpack_attention() -> bool:
    """Register ``"seqpack"`` with transformers' AttentionInterface and AttentionMaskInterface.

    Returns False (and registers nothing) when `seqpack.attention` cannot be imported.
    """
    global _REGISTERED
    if _REGISTERED is None:
        try:
            import seqpack.attention  # noqa: F401
        except ImportError as exc:
            logger.debug("seqpack attention unavailable: %s", exc)
            _REGISTERED = False
            return False
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
        AttentionInterface.register(SEQPACK_ATTENTION, seqpack_attention_forward)
        AttentionMaskInterface.register(SEQPACK_ATTENTION, _seqpack_mask)
        _REGISTERED = True
    return _REGISTERED


# Importing this module makes attn_implementation="seqpack" available to from_pretrained/from_config.
register_seqpack_attention()
