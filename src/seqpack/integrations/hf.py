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
- Families whose own code stands in the way are handled by ``config.model_type``: positions
  restart at ``padding_idx + 1`` where the family numbers them so (roberta and kin); the hook
  builds the block-diagonal mask itself (transformers' builders) for families that never hand
  position_ids to the mask builder (opt, biogpt, afmoe, gpt_oss, mpt, xglm); families that run
  their own attention code on a 0/1 mask, take no position_ids, or mix tokens outside softmax
  attention are refused, as is an implementation the family silently ignores or that transformers
  runs wrongly for it even unpacked (doge on flex_attention, git on "seqpack"), or on which the
  family's code in transformers older than 5.25 leaks (``_LEAKY_BEFORE``).
- Labels: a document's first token is never a target of the previous document's last
  token; the hook sets -100 there when it derives documents from a mask or positions
  (seqpack's collator already does).
- ``configure_packing(model_args, is_trainable)`` is LLaMA-Factory's global switch: it
  runs before the model exists, so it installs the same hook on every transformers
  model built afterwards (by wrapping ``PreTrainedModel.post_init``, gated to the
  versions seqpack supports; ``unconfigure_packing()`` undoes it).
- ``"seqpack"`` is registered as an attention implementation (``AttentionInterface``) so
  ``seqpack.attention.varlen_attention``'s backend choice serves HF models:
  ``enable_packing(model, attn_implementation="seqpack")``. It honours what each module asks
  for (windows and chunks from the config's layer types, value head dim != query head dim,
  non-causal modules); what its kernels cannot compute (sinks, softcapping, chunks, a bias or
  mask the model builds) runs as the module's own eager attention under a block-diagonal mask.
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
import sys

import torch

from seqpack.batch import PackedBatch
from seqpack.boundaries import DocBoundaries
from seqpack.integrations import hf_check
from seqpack.integrations.hf_check import check_isolation
from seqpack.integrations.hf_collator import DataCollatorForPacking, packed_model_inputs
from seqpack.integrations.hf_loss import (
    disable_fused_loss, enable_fused_loss, fused_causal_lm_loss, is_fused_loss_enabled,
)
from seqpack.labels import IGNORE_INDEX

__all__ = [
    "PackingError", "enable_packing", "disable_packing", "is_packing_enabled", "configure_packing",
    "unconfigure_packing", "register_seqpack_attention", "check_transformers_version",
    "attention_route", "DataCollatorForPacking", "packed_model_inputs", "MIN_TRANSFORMERS",
    "enable_fused_loss", "disable_fused_loss", "is_fused_loss_enabled", "fused_causal_lm_loss", "check_isolation",
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
# Families whose token mixing is not (only) softmax attention, with what mixes the tokens.
_OTHER_MIXER_FAMILIES = {
    "xlstm": "xLSTM blocks (recurrent state carried along the row)",
    "zaya": "a causal convolution over the sequence inside its attention",
    "blt": "byte patches: the patcher and local encoder group bytes across the whole row",
}
# "Recurrent" inside a class name, not a family prefix (RecurrentGemmaMlp is an MLP).
_MIXER_CLASS = re.compile(
    r"Mamba|Mixer|DeltaNet|ShortConv|Rwkv|RecurrentBlock|LinearAttention|SSM|LSTM|GRU|\BRecurrent")
_MIXER_LAYER_TYPE = re.compile(r"mamba|linear|conv|recurrent|ssm|rwkv|delta|lstm")


def _mixes_tokens(module: torch.nn.Module) -> bool:
    """A module that mixes tokens along the sequence by itself: a recurrent layer, or a convolution
    wider than one token (transformers' ``Conv1D`` is a linear layer and is not one)."""
    if isinstance(module, torch.nn.RNNBase):
        return True
    if isinstance(module, torch.nn.Conv1d):
        return module.kernel_size[0] > 1
    return False


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
    elif model_type in _OTHER_MIXER_FAMILIES:
        found.append(f"model_type {model_type!r}: {_OTHER_MIXER_FAMILIES[model_type]}")
    for name, module in model.named_modules():
        cls = type(module).__name__
        if _MIXER_CLASS.search(cls) or _mixes_tokens(module):
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
# families whose own code decides what the documents need

# These number positions from ``padding_idx + 1`` (fairseq's convention): a document alone gets
# positions pad+1, pad+2, ..., so packed documents must restart there, not at 0.
_POSITION_OFFSET_FAMILIES = frozenset({
    "roberta", "roberta-prelayernorm", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "xmod",
})
# These never hand position_ids to transformers' mask builder, so it cannot see the documents: on
# the mask-built implementations the hook builds the block-diagonal mask itself (transformers'
# own builders, so dtype and convention are the implementation's) and passes it ready-made, a
# 4D mask (or one per layer type), which the models use as given.
_MASK_BY_HOOK_FAMILIES = frozenset({"opt", "biogpt", "afmoe", "gpt_oss", "mpt", "xglm"})
# Families no document seqpack hands over can reach, and why.
_OWN_CODE = ("runs its own attention code and builds its mask from a 0/1 padding mask: no document mask seqpack "
             "can hand it reaches that code")
_REFUSED_FAMILIES = {
    **{f: _OWN_CODE for f in ("big_bird", "megatron-bert", "openai-gpt", "rembert", "roformer", "xlm", "xlnet",
                              "cpmant")},
    "bloom": "builds its ALiBi bias from the 2D padding mask, so a ready-made document mask cannot reach its "
             "attention (and it runs its own attention code)",
}
# Families whose forward takes no position_ids but need none (ALiBi, relative within a document, or
# no attention at all: state-space models whose mixers hf_hybrid restarts per document): the only
# ones without position_ids that can be packed.
_POSITION_FREE_FAMILIES = frozenset({"mpt", "mamba", "falcon_mamba", "mamba2"})
# (family, implementation) that computes something other than eager even on one unpacked document:
# packing cannot be vouched for there, whatever seqpack hands over.
_WRONG_IMPLEMENTATIONS = {
    ("git", "seqpack"): "its text self-attention runs its own eager code (only the vision tower goes through the "
                        "attention interface), and under 'seqpack' it gets no causal mask",
    ("doge", "flex_attention"): "transformers' flex_attention path for doge does not apply the dynamic mask its "
                                "eager and sdpa paths add",
}

# Implementations on which these families' code in transformers older than `_EXACT_FROM` lets packed
# documents see each other (or, mllama, differs from eager unpacked), as seqpack's family sweep
# (tests/hf/families.py) measured on 5.0.0: their mask or position handling there differs from the
# releases the family fixes above were checked on. Refused there; `"seqpack"` is exact on most of them.
_EXACT_FROM = "5.25.0"
_LEAKY_BEFORE = {
    **{f: ("eager", "sdpa", "flex_attention") for f in (
        "bert", "bert-generation", "camembert", "data2vec-text", "electra", "ernie", "llama4_text", "mllama",
        "mllama_text_model", "roberta", "roberta-prelayernorm", "roc_bert", "xlm-roberta", "xlm-roberta-xl", "xmod")},
    **{f: ("eager", "sdpa") for f in ("fuyu", "persimmon", "stablelm")},
    **{f: ("eager",) for f in ("codegen", "ctrl", "falcon", "git", "gpt_neo", "gpt_neox_japanese", "gptj", "moshi",
                               "mpt", "nemotron", "xglm")},
}


def _leaks_on_this_transformers(family: str | None, impl: str | None) -> bool:
    if impl not in _LEAKY_BEFORE.get(family, ()):
        return False
    import transformers
    from packaging.version import Version
    return Version(transformers.__version__) < Version(_EXACT_FROM)


def _model_type(model) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def _position_offset(model) -> int:
    """First position of a document in this family's convention (0, or ``padding_idx + 1``)."""
    if _model_type(model) not in _POSITION_OFFSET_FAMILIES:
        return 0
    pad = getattr(model.config, "pad_token_id", None)
    return (1 if pad is None else int(pad)) + 1


def _uses_attention_interface(model) -> bool:
    """Whether ``model``'s attention runs the function its config's ``_attn_implementation`` names
    (transformers' attention interface). Families with their own attention code ignore it
    silently, whatever the config says: their modeling module never imports the interface."""
    found = model.__dict__.get("_seqpack_interface")
    if found is None:
        found = False
        for module in model.modules():
            source = sys.modules.get(type(module).__module__)
            if source is not None and hasattr(source, "ALL_ATTENTION_FUNCTIONS"):
                found = True
                break
        model.__dict__["_seqpack_interface"] = found
    return found


def _check_implementation_used(model, impl: str | None) -> None:
    """Refuse an implementation the model would silently not run (it keeps its own eager code), or that
    transformers runs wrongly for this family even unpacked."""
    if _leaks_on_this_transformers(_model_type(model), impl):
        import transformers
        raise PackingError(
            f"{type(model).__name__} ({_model_type(model)!r}) on attn_implementation={impl!r} lets packed documents "
            f"see each other on transformers {transformers.__version__}, whose code for this family differs from the "
            f"releases seqpack checked it exact on (>= {_EXACT_FROM}). Upgrade transformers, or use "
            f"attn_implementation='seqpack' where this family offers it.")
    wrong = _WRONG_IMPLEMENTATIONS.get((_model_type(model), impl))
    if wrong is not None:
        raise PackingError(f"{type(model).__name__} ({_model_type(model)!r}) on attn_implementation={impl!r} computes "
                           f"something other than eager, even on one unpacked document: {wrong}. Use "
                           f"attn_implementation='eager' for this model.")
    if impl not in (None, "eager") and isinstance(model, torch.nn.Module) and not _uses_attention_interface(model):
        raise PackingError(
            f"{type(model).__name__} ({_model_type(model)!r}) runs its own attention code and ignores "
            f"attn_implementation={impl!r} (it would keep eager, and packed documents would not reach "
            f"{impl!r}). Use attn_implementation='eager' for this model: model.set_attn_implementation('eager')")


def _takes_position_ids(model) -> bool:
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model  # PEFT wrappers
    return "position_ids" in _forward_signature(type(base)).parameters


def _check_family(model) -> None:
    family = _model_type(model)
    reason = _REFUSED_FAMILIES.get(family)
    if reason is None and family not in _POSITION_FREE_FAMILIES and not _takes_position_ids(model):
        reason = ("takes no position_ids: it numbers positions from the start of the row (bart-style decoders, "
                  "whisper, musicgen, trocr, ...), so every document after the first would be positioned wrongly")
    if reason is not None:
        raise PackingError(
            f"{type(model).__name__} ({family!r}) {reason}, so packed documents would attend to "
            f"each other or be positioned wrongly. Train this model unpacked (DataCollatorForPacking(pack=False)), "
            f"or use a model whose attention goes through transformers' attention interface (llama, qwen2, gpt2, "
            f"...).")


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


def _find_documents(kwargs, route: str, need_boundaries: bool = False) -> tuple[DocBoundaries | None, bool]:
    """``(boundaries to apply or None, whether the call is packed)``; raises on a lost-label mask.

    With ``need_boundaries`` a packed call always gets its boundaries (the family needs its
    positions rewritten or its mask built), even where transformers would find the documents."""
    b, packed = _find_documents_(kwargs, route, need_boundaries)
    if packed and b is None and need_boundaries:
        pos = kwargs.get("position_ids")
        shape = _input_shape(kwargs)
        if kwargs.get("cu_seq_lens_q") is not None or kwargs.get("cu_seq_lens_k") is not None:
            b = _from_cu_seqlens(kwargs, shape)
        elif pos is not None:
            b = DocBoundaries.from_position_ids(pos.expand(shape[0], -1) if shape else pos)
    return b, packed


def _find_documents_(kwargs, route: str, need_boundaries: bool) -> tuple[DocBoundaries | None, bool]:
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
    if (route == "mask" and not need_boundaries and kwargs.get("use_cache") is False
            and kwargs.get("past_key_values") is None):
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
    offset = _position_offset(module)
    mask_by_hook = route == "mask" and _model_type(module) in _MASK_BY_HOOK_FAMILIES
    boundaries, packed = _find_documents(kwargs, route, need_boundaries=bool(offset) or mask_by_hook)
    if not packed:
        return args, kwargs
    _check_cache(kwargs)
    _check_token_mixers(module)
    _check_family(module)
    _check_implementation_used(module, impl)
    if route is None:
        attention_route(impl)  # raises, naming the implementations that work
    hf_check.on_packed_call(module, kwargs)  # once per implementation/dtype/form: the probe of hf_check
    kwargs["use_cache"] = False
    if boundaries is not None:
        _apply_boundaries(kwargs, boundaries, route, offset)
        if mask_by_hook:
            kwargs["attention_mask"] = _document_masks(module, boundaries)
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


def _apply_boundaries(kwargs, b: DocBoundaries, route: str, offset: int = 0) -> None:
    """Write the documents into the call as the route needs them (kwargs edited in place);
    ``offset``: the family's first position (see `_position_offset`)."""
    from_mask = kwargs.get("attention_mask") is not None
    kwargs["attention_mask"] = None
    if offset:
        kwargs["position_ids"] = b.position_ids() + offset
    elif from_mask or kwargs.get("position_ids") is None:
        kwargs["position_ids"] = b.position_ids()
    labels = kwargs.get("labels")
    if labels is not None and isinstance(labels, torch.Tensor) and labels.numel() == b.numel:
        kwargs["labels"] = _mask_first_labels(labels, b)
    if route == "varlen":
        cu = b.cu_seqlens
        kwargs["cu_seq_lens_q"] = kwargs["cu_seq_lens_k"] = cu
        kwargs["max_length_q"] = kwargs["max_length_k"] = b.max_seqlen


def _document_masks(model, b: DocBoundaries):
    """The block-diagonal mask of ``b`` as ``model``'s implementation takes it ready-made, built by
    transformers' own mask builders from per-document positions: one mask, or a dict per layer
    type for models that mix full and sliding-window layers."""
    from transformers import masking_utils as mu
    config = model.config
    B, L = b.shape if len(b.shape) == 2 else (1, b.numel)
    pos = b.position_ids().reshape(B, L)
    embeds = torch.empty((B, L, 0), dtype=getattr(model, "dtype", torch.float32), device=pos.device)
    builders = {"full_attention": mu.create_causal_mask}
    kinds = set(getattr(config, "layer_types", None) or ())
    if "sliding_attention" in kinds:
        builders["sliding_attention"] = mu.create_sliding_window_causal_mask
    unknown = kinds - set(builders)
    if unknown:
        raise PackingError(f"{type(model).__name__} has layer types {sorted(unknown)} for which seqpack cannot build "
                           f"a document mask on {config._attn_implementation!r}: use attn_implementation='seqpack'")
    masks = {}
    for kind, build in builders.items():
        params = inspect.signature(build).parameters
        kw = dict(config=config, attention_mask=None, position_ids=pos)
        kw["inputs_embeds" if "inputs_embeds" in params else "input_embeds"] = embeds
        if "cache_position" in params:  # transformers < 5.x's later releases
            kw["cache_position"] = torch.arange(L, device=pos.device)
        for name in ("cache", "past_key_values"):
            if name in params:
                kw[name] = None
                break
        masks[kind] = build(**kw)
        if masks[kind] is None:
            raise PackingError(f"transformers built no document mask for {type(model).__name__}; "
                               f"use attn_implementation='seqpack'")
    return masks if kinds else masks["full_attention"]


# ----------------------------------------------------------------------------------------
# public switches


def enable_packing(model: torch.nn.Module, *, attn_implementation: str | None = None,
                   check: bool = True) -> torch.nn.Module:
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
        check: run `check_isolation` at the first packed call (and again when the implementation,
            dtype or input form changes); ``SEQPACK_CHECK=0`` also turns it off.

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
        got = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if got != attn_implementation:
            raise PackingError(f"{type(model).__name__} ({_model_type(model)!r}) kept attn_implementation {got!r} when "
                               f"asked for {attn_implementation!r}: this family runs only its own attention code. "
                               f"Call enable_packing(model) without attn_implementation to use {got!r}.")
    hf_check.set_check(model, check)
    _check_token_mixers(model)
    _check_family(model)
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    _check_implementation_used(model, impl)
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


def _needs_model_mask(config) -> bool:
    """The model reads the mask itself (a sparse-attention indexer scores keys through it), so
    ``"seqpack"`` must hand it a real one rather than None."""
    return getattr(config, "index_topk", None) is not None or getattr(config, "index_head_dim", None) is not None


def _seqpack_mask(*args, **kwargs):
    """Mask builder for ``"seqpack"``: none when the attention function can take the documents
    from cu_seq_lens/position_ids (no padding mask, no cache offset, a model that does not read
    the mask itself); else sdpa's mask."""
    from transformers.masking_utils import sdpa_mask
    mask = kwargs.get("attention_mask")
    q_len = kwargs["q_length"] if "q_length" in kwargs else kwargs["cache_position"].shape[0]
    fresh = q_len == kwargs.get("kv_length") and not kwargs.get("kv_offset")
    if fresh and (mask is None or bool(mask.all())) and not _needs_model_mask(kwargs.get("config")):
        return None
    kwargs["allow_is_causal_skip"] = False
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


class _LayerPlan:
    """What one attention module asks for beyond causal/window attention, read once from the module
    and its config: a sliding window or chunk given only through the mask, attention sinks, and the
    module's own eager attention function (for what the varlen kernels cannot do)."""

    __slots__ = ("window", "chunk", "special", "eager")

    def __init__(self, module):
        config = getattr(module, "config", None)
        layer_types = getattr(config, "layer_types", None)
        idx = getattr(module, "layer_idx", None)
        kind = layer_types[idx] if layer_types and isinstance(idx, int) and 0 <= idx < len(layer_types) else None
        window = chunk = None
        if kind == "sliding_attention":
            window = getattr(config, "sliding_window", None)
        elif kind == "chunked_attention":
            chunk = getattr(config, "attention_chunk_size", None)
        elif kind is None:  # no layer types: the module's own attribute, else the config's window
            if hasattr(module, "sliding_window"):
                window = module.sliding_window
            elif getattr(config, "use_sliding_window", True):
                window = getattr(config, "sliding_window", None)
        self.window = int(window) if window else None
        self.chunk = int(chunk) if chunk else None
        specials = []
        if self.chunk:
            specials.append(f"chunked attention ({self.chunk} tokens)")
        if isinstance(getattr(module, "sinks", None), torch.Tensor):
            specials.append("attention sinks")
        self.special = ", ".join(specials)
        self.eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def _layer_plan(module) -> _LayerPlan:
    plan = module.__dict__.get("_seqpack_plan")
    if plan is None:
        plan = _LayerPlan(module)
        module.__dict__["_seqpack_plan"] = plan
    return plan


def _document_mask(b: DocBoundaries, causal: bool, window: int | None, chunk: int | None) -> torch.Tensor:
    """bool ``(B, 1, L, L)``: query may see key (same document, causal, in the window and chunk,
    positions counted from the document's start)."""
    B, L = b.shape if len(b.shape) == 2 else (1, b.numel)
    seg, pos = b.doc_ids().view(B, L), b.position_ids().view(B, L)
    ok = seg[:, :, None] == seg[:, None, :]
    gap = pos[:, :, None] - pos[:, None, :]
    if causal:
        ok &= gap >= 0
    if window:
        ok &= (gap < window) if causal else (gap.abs() < window)
    if chunk:
        ok &= (pos // chunk)[:, :, None] == (pos // chunk)[:, None, :]
    return ok[:, None]


_SEQPACK_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seqpack_context")


def _masked_attention(module, plan, query, key, value, attention_mask, b, causal, window, dropout, scaling,
                      softcap, reason, kwargs):
    """The module's own eager attention with the documents as a mask (and the model's own mask, a
    padding mask or an additive bias, kept where the documents allow): exact for anything the
    module computes, at the cost of an ``L x L`` mask. Only for modules that need it."""
    if plan.eager is None:
        raise PackingError(f"attn_implementation='seqpack' cannot run {type(module).__name__}: it asks for "
                           f"{reason}, which seqpack's kernels do not compute, and its modeling module has no "
                           f"eager_attention_forward to run instead. Use attn_implementation='eager' or 'sdpa'.")
    L, S = query.shape[2], key.shape[2]
    mask = attention_mask[..., :S] if attention_mask is not None else None
    if L == S and b is not None:
        docs = _document_mask(b, causal, window, plan.chunk)
        if mask is None:
            mask = torch.zeros(docs.shape, dtype=query.dtype, device=query.device)
        elif mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(~mask, float("-inf"))
        mask = mask.to(query.dtype).masked_fill(~docs, torch.finfo(query.dtype).min)
    elif mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~mask, torch.finfo(query.dtype).min)
    extra = {k: v for k, v in kwargs.items() if k not in _SEQPACK_KWARGS}
    if softcap is not None:
        extra["softcap"] = softcap
    if scaling is None:
        scaling = getattr(module, "scaling", None) or query.shape[-1] ** -0.5
    return plan.eager(module, query, key, value, mask, scaling=scaling, dropout=dropout, **extra)


_UNSET = object()


def seqpack_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                              scaling: float | None = None, sliding_window=_UNSET,
                              softcap: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers attention function ``"seqpack"``: `seqpack.attention.varlen_attention` over the
    documents of the call. query ``(B, H, L, D)``, key ``(B, Hkv, S, D)``, value ``(B, Hkv, S, Dv)``
    -> ``(B, L, H, Dv)``.

    Honours what the module asks for: a sliding window or chunk given only through its config's
    layer types (read once per module), a value head dim other than the query's (multi-head
    latent attention: the narrower side zero-padded, output sliced back, exact), and
    non-causal modules. What the varlen kernels cannot compute (a model-built mask or bias,
    attention sinks, logit softcapping, a position bias, chunked attention) runs as the module's
    own eager attention under a block-diagonal mask. With a cache (generation) the module's own
    mask is used as given.
    """
    plan = _layer_plan(module)
    window = plan.window if sliding_window is _UNSET else sliding_window
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    fresh = query.shape[2] == key.shape[2]
    reason = plan.special or ("logit softcapping" if softcap is not None else "") or next(
        (f"{k!r}" for k in ("s_aux", "sinks", "position_bias") if kwargs.get(k) is not None), "")
    if attention_mask is not None or not fresh or reason:
        b = None
        if fresh:
            ctx = kwargs.get("seqpack_context")
            if ctx is not None and not hasattr(ctx, "boundaries"):
                # A context-parallel shard: the eager fallback would see this rank's tokens only.
                raise PackingError(f"{type(module).__name__} asks for {reason or 'a mask of its own'}, which "
                                   f"seqpack's kernels do not compute, so it cannot run under context "
                                   f"parallelism: train it without cp")
            b = ctx.boundaries if ctx is not None else _boundaries_for(query, kwargs)
        return _masked_attention(module, plan, query, key, value, attention_mask, b, causal, window, dropout,
                                 scaling, softcap, reason or "a mask of its own", kwargs)
    if dropout and module.training:
        raise PackingError(f"attn_implementation='seqpack' has no attention dropout (got {dropout}): set the "
                           f"config's attention_dropout to 0 or use 'eager'/'sdpa'")
    from seqpack.parallel import attention_for
    ctx = kwargs.get("seqpack_context")
    if ctx is None:
        ctx = _boundaries_for(query, kwargs)
    dv, dqk = value.shape[-1], query.shape[-1]
    if dv != dqk:
        # Zero columns change neither the scores (padded q/k) nor the output (padded v, sliced off).
        if key.shape[-1] != dqk:
            raise PackingError(f"attn_implementation='seqpack' needs key head dim == query head dim; "
                               f"{type(module).__name__} has {dqk} and {key.shape[-1]}. Use 'eager' or 'sdpa'")
        if scaling is None:
            scaling = dqk ** -0.5
        if dv < dqk:
            value = torch.nn.functional.pad(value, (0, dqk - dv))
        else:
            query = torch.nn.functional.pad(query, (0, dv - dqk))
            key = torch.nn.functional.pad(key, (0, dv - dqk))
    attend = attention_for(ctx)  # varlen_attention; across the cp ranks for a context-parallel shard
    out = attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), ctx,
                 causal=causal, window=window, scale=scaling)
    return (out[..., :dv] if dv != out.shape[-1] else out), None


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
