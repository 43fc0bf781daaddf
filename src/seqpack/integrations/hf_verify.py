"""``seqpack verify MODEL_OR_CONFIG``: does this Hugging Face model keep packed documents apart?

Runs the model on a few packed rows (bsz > 1, with padding) and on the same documents one
by one, then reports the largest logit difference and the largest relative gradient
difference for each attention implementation and each way of handing the documents to
the model. Exits 1 when any difference is over the tolerance (a leak), 0 otherwise.

Notable:
- MODEL_OR_CONFIG is a local model directory (weights loaded when present), a
  ``config.json``, or a family name (``llama``, ``qwen2``, ...) for a tiny random model.
  Nothing is downloaded.
- The reference is the plainest computation there is: each document alone in a batch
  of one, ``use_cache=False``; the packed call leaves ``use_cache`` at its default, as a
  training loop does.
- "without seqpack" rows run the same packed call on the bare model: the leak seqpack
  prevents, and the proof that the check can see one on this model.
- `compare_packed` is the check itself; the test suite runs it on every family.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch

from seqpack.batch import collate_packed
from seqpack.integrations.hf_collator import packed_model_inputs
from seqpack.plan import PackPlan

__all__ = ["compare_packed", "tiny_config", "load_model", "verify", "FORMS", "Result"]

# How documents reach the model: LLaMA-Factory's integer mask, per-document position_ids
# (no mask), a PackedBatch as first argument, and the collator's dict.
FORMS = ("int_mask", "position_ids", "packed_batch", "collator")

# A tiny model of any family: small enough for a CPU test, big enough to mix documents. Head
# dim 16: flex_attention on CUDA refuses smaller heads (hidden 64 / 4 heads, for families that
# derive the head dim from the hidden size).
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=256,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
# Per-family settings, applied as explicit overrides (they always win over TINY and SHRINK).
_GDN = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
            linear_conv_kernel_dim=4, layer_types=["linear_attention", "full_attention"])
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
# Multi-head latent attention: value head dim (12) differs from the query/key head dim (16).
_MLA = dict(num_key_value_heads=4, head_dim=8, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=12,
            kv_lora_rank=16, q_lora_rank=24)
FAMILY_OVERRIDES = {
    # Sliding windows and chunks shorter than the documents, so packed windows are exercised too.
    "mistral": dict(sliding_window=4),
    "qwen2": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen3": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "phi3": dict(sliding_window=None),
    "phimoe": dict(sliding_window=4),
    "llama4_text": dict(attention_chunk_size=4),
    "reformer": dict(is_decoder=True),  # its causal-LM head refuses an encoder config
    "xmod": dict(default_language="en_XX"),  # its adapters need a language with every input
    "deepseek_v3": _MLA, "minicpm3": _MLA, "deepseek_v32": _MLA, "glm_moe_dsa": _MLA,
    # Hybrid and recurrent families: both kinds of layer present (token mixer first, then attention),
    # several heads, states and chunks smaller than the documents.
    "qwen3_5_text": _GDN,
    "qwen3_5_moe_text": {**_GDN, **_MOE},
    "qwen3_next": {**_GDN, **_MOE},
    "olmo_hybrid": _GDN,
    "lfm2": dict(layer_types=["conv", "full_attention"], conv_L_cache=3),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], conv_L_cache=3, num_experts=4,
                     num_experts_per_tok=2, moe_intermediate_size=32, num_dense_layers=1),
    # Mamba2 family: 4 heads of 8 over 2 groups, state 8, chunk 8 (documents span chunks)
    "mamba2": dict(num_heads=8, head_dim=16, state_size=8, n_groups=2, expand=2, conv_kernel=4, chunk_size=8),
    "bamba": dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=2, mamba_expand=2,
                  mamba_chunk_size=8, attn_layer_indices=[1]),
    "granitemoehybrid": dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=2, mamba_expand=2,
                             mamba_chunk_size=8, layer_types=["mamba", "attention"], num_local_experts=4,
                             shared_intermediate_size=64),
    "falcon_h1": dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=2, mamba_expand=2,
                      mamba_d_ssm=128, mamba_chunk_size=8),
    "nemotron_h": dict(mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=8, n_groups=2, expand=2, chunk_size=8,
                       layers_block_type=["mamba", "attention", "mlp"], n_routed_experts=4,
                       moe_intermediate_size=32, moe_shared_expert_intermediate_size=32),
    "zamba2": dict(n_mamba_heads=8, mamba_headdim=16, mamba_d_state=8, mamba_ngroups=2, mamba_expand=2,
                   chunk_size=8, attention_hidden_size=128, attention_head_dim=32, num_query_groups=4,
                   hybrid_layer_ids=[1], layers_block_type=["mamba", "hybrid"], use_mem_eff_path=False),
    # Mamba1 family
    "mamba": dict(state_size=8, expand=2, conv_kernel=4, time_step_rank=8),
    "falcon_mamba": dict(state_size=8, expand=2, conv_kernel=4, time_step_rank=8),
    "jamba": dict(mamba_d_state=8, mamba_expand=2, mamba_dt_rank=8, attn_layer_period=2, attn_layer_offset=1,
                  expert_layer_period=2, expert_layer_offset=1, num_experts=4, use_mamba_kernels=False),
    "zamba": dict(n_mamba_heads=2, mamba_d_state=8, mamba_expand=2, mamba_dt_rank=8, attention_hidden_size=128,
                  attention_head_dim=32, layer_types=["mamba", "hybrid"], use_mamba_kernels=False),
    "minimax": dict(layer_types=["linear_attention", "full_attention"], block_size=8, num_local_experts=4,
                    num_experts_per_tok=2),
    "recurrent_gemma": dict(lru_width=64, block_types=["recurrent", "attention"], attention_window_size=8,
                            num_key_value_heads=4),
    # Kimi delta attention (decay per key channel) + MLA attention
    "kimi_linear": dict(linear_num_heads=4, linear_head_dim=16, layer_types=["linear_attention", "full_attention"],
                        mlp_layer_types=["dense", "sparse"], num_experts=4, num_experts_per_token=2,
                        moe_intermediate_size=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                        v_head_dim=16, head_dim=16, num_key_value_heads=4),
    "bailing_hybrid": dict(layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "sparse"],
                           num_experts=4, num_experts_per_token=2, moe_intermediate_size=32, kv_lora_rank=16,
                           qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, head_dim=16, layer_group_size=2,
                           num_key_value_heads=4, num_nextn_predict_layers=0, num_expert_group=1, topk_group=1),
}


# Sizes of the parts some families add (mixture of experts, latent attention, ...): set only where the
# family's config has the attribute, so each family keeps its own structure, just small.
# Latent attention (MLA) keeps its shape: query/key head dim (16 + 8) differs from the value head dim (16).
SHRINK = dict(num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_num_experts=4,
              moe_topk=2, moe_intermediate_size=32, shared_expert_intermediate_size=32, n_shared_experts=1,
              n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
              v_head_dim=16, index_head_dim=16, index_n_heads=2, index_topk=8, d_model=64,
              encoder_layers=2, decoder_layers=2, num_layers=2, n_layer=2, n_embd=64, n_head=4, d_ff=128,
              ffn_dim=128, num_heads=4, n_positions=256, max_seq_len=256, seq_length=256, encoder_attention_heads=4,
              decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, rotary_dim=8,
              is_decoder=True)  # encoder families (bert, roberta, ...) run as causal LMs only as decoders


def tiny_config(family: str, **overrides):
    """A small random-weights config of ``family`` (a transformers ``model_type``).

    `TINY` and `SHRINK` are applied where the family's config (and, for a composite config,
    its text config) has the attribute; ``layer_types``-style per-layer lists are cut to the
    number of layers. ``overrides``, and the family's `FAMILY_OVERRIDES` under them, are always
    applied (to the text config of a composite config, listed under its text family's name).
    """
    from transformers import CONFIG_MAPPING
    cls = CONFIG_MAPPING[family]
    overrides = {**FAMILY_OVERRIDES.get(family, {}), **overrides}
    wanted = {**SHRINK, **TINY}
    try:
        default = cls()
    except Exception:  # noqa: BLE001 - a config without defaults: the previous, direct way
        return cls(**{**wanted, **overrides})
    known = {k: v for k, v in wanted.items() if _has(default, k) and k not in overrides}
    try:
        config = cls(**known, **overrides)
    except Exception:  # noqa: BLE001 - some sizes do not fit this family's defaults: set them one by one
        config = cls(**overrides)
        _shrink(config, known)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        _shrink(text, {k: v for k, v in {**wanted, **overrides}.items() if _has(text, k)})
        if getattr(text, "model_type", None) != family:
            _shrink(text, FAMILY_OVERRIDES.get(text.model_type, {}))
    for cfg in {id(config): config, id(text): text}.values():
        _cut_layer_lists(cfg)
        if not hasattr(cfg, "pad_token_id"):  # some configs of transformers 5.0 lack it; their models read it
            cfg.pad_token_id = overrides.get("pad_token_id", TINY["pad_token_id"])
        if isinstance(getattr(cfg, "qk_rope_head_dim", None), int) and "head_dim" not in overrides:
            # latent attention: rotary over the rope part only; keys are expanded to every head
            _shrink(cfg, {"head_dim": cfg.qk_rope_head_dim, "num_key_value_heads": cfg.num_attention_heads})
    return config


def _has(config, key: str) -> bool:
    return key in getattr(config, "attribute_map", {}) or key in config.__dict__ or hasattr(type(config), key)


def _shrink(config, values: dict) -> None:
    for k, v in values.items():
        try:
            setattr(config, k, v)
        except Exception:  # noqa: BLE001 - a value this family validates differently keeps its default
            pass


def _cut_layer_lists(config) -> None:
    """Per-layer lists (``layer_types``, ...) as long as the (tiny) number of layers."""
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int):
        return
    for key in ("layer_types", "attention_layers", "block_types", "mlp_only_layers_types"):
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and len(value) > n:
            try:
                setattr(config, key, type(value)(value[:n]))
            except Exception:  # noqa: BLE001
                pass


def load_model(spec: str, *, attn_implementation: str = "eager", dtype=torch.float32, seed: int = 0):
    """A causal LM from a local directory, a config.json or a family name (tiny, random weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(seed)
    if os.path.isdir(spec):
        has_weights = any(f.endswith((".safetensors", ".bin")) for f in os.listdir(spec))
        if has_weights:
            return AutoModelForCausalLM.from_pretrained(spec, local_files_only=True, dtype=dtype,
                                                        attn_implementation=attn_implementation)
        config = AutoConfig.from_pretrained(spec, local_files_only=True)
    elif os.path.isfile(spec):
        config = AutoConfig.from_pretrained(spec, local_files_only=True)
    else:
        config = tiny_config(spec)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)


def make_rows(lengths, rows, vocab_size: int, *, capacity: int | None = None, seed: int = 0, device="cpu",
              row_len: int | None = None):
    """Random documents of these lengths packed as ``rows`` (lists of document indices).

    Returns ``(docs, batch)``: the documents as 1D LongTensors and the `PackedBatch`
    (HF label convention, padding to ``capacity`` or the longest row; ``row_len`` is its
    deprecated name).
    """
    from seqpack.errors import renamed_keyword

    capacity = renamed_keyword(capacity, row_len, "row_len", "capacity", "make_rows")
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(3, vocab_size, (int(n),), generator=g) for n in lengths]
    order = np.asarray([d for row in rows for d in row], dtype=np.int64)
    lens = np.asarray(lengths, dtype=np.int64)[order]
    used = [sum(int(lengths[d]) for d in row) for row in rows]
    L = max(used) if capacity is None else int(capacity)
    plan = PackPlan.from_rows(lens, [len(r) for r in rows], L, doc=order, doc_lengths=lengths)
    batch = collate_packed(plan, [{"input_ids": d.numpy()} for d in docs], layout="rows", label_shift="model")
    return [d.to(device) for d in docs], batch.to(device)


def _call(model, batch, form: str):
    """Run ``model`` on the packed batch handed over as ``form``; use_cache left at its default."""
    if form == "packed_batch":
        return model(batch)
    if form == "collator":
        return model(**packed_model_inputs(batch, format="flash"))
    if form == "position_ids":
        return model(input_ids=batch.input_ids, position_ids=batch.position_ids, labels=batch.labels)
    if form == "int_mask":
        # LLaMA-Factory hands over the integer mask and labels that are not masked at boundaries.
        mask = batch.boundaries.attention_mask()
        labels = torch.where(mask > 0, batch.input_ids, torch.full_like(batch.input_ids, -100))
        return model(input_ids=batch.input_ids, attention_mask=mask, labels=labels)
    raise ValueError(f"form must be one of {FORMS}; got {form!r}")


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def compare_packed(model, docs, batch, *, form: str = "collator", backward: bool = True,
                   reference_attn: str | None = None) -> dict[str, float]:
    """Packed call vs each document alone: ``{"logits": max |diff|, "grads": max relative diff,
    "loss": |diff|}``.

    The packed loss is the model's own (token mean over the batch's labels); the reference
    is the same mean over the documents run one by one, on ``reference_attn`` (default: the
    model's own implementation). ``grads`` is, over parameters, the largest
    ``||g_packed - g_ref|| / ||g_ref||`` (nan when ``backward`` is False).
    """
    model.zero_grad(set_to_none=True)
    impl = model.config._attn_implementation
    with torch.set_grad_enabled(backward):
        out = _call(model, batch, form)
        if backward:
            out.loss.backward()
        packed_grads = _grads(model) if backward else {}
        if reference_attn and reference_attn != impl:
            model.set_attn_implementation(reference_attn)
        b = batch.boundaries
        flat = out.logits.detach().float().reshape(b.numel, -1)
        cu = b.cu_seqlens.tolist()
        seg_docs = np.flatnonzero(b.is_doc.cpu().numpy())  # segments holding a document, in order
        # Reference: each document alone, summed token losses / all predicted tokens.
        total = sum(len(docs[int(i)]) - 1 for i in batch.doc_index)
        ref_loss, logit_diff = 0.0, 0.0
        for i, seg in enumerate(seg_docs):
            d = docs[int(batch.doc_index[i])]
            ref = model(input_ids=d[None], labels=d[None], use_cache=False)
            loss_i = ref.loss * (len(d) - 1) / total
            if backward:
                loss_i.backward()
            ref_loss += float(loss_i.detach())
            got = flat[cu[seg]:cu[seg + 1]]
            logit_diff = max(logit_diff, float((got - ref.logits[0].detach().float()).abs().max()))
        if model.config._attn_implementation != impl:
            model.set_attn_implementation(impl)
    grad_rel = float("nan")
    if backward:
        ref_grads = _grads(model)
        grad_rel = 0.0
        for name, g in ref_grads.items():
            diff = (packed_grads[name] - g).norm() if name in packed_grads else g.norm()
            grad_rel = max(grad_rel, float(diff / g.norm().clamp_min(1e-12)))
    return {"logits": logit_diff, "grads": grad_rel, "loss": abs(float(out.loss.detach()) - ref_loss)}


# ----------------------------------------------------------------------------------------
# the command


@dataclass
class Result:
    attn_implementation: str
    form: str
    seqpack: bool  # False: the bare model (what transformers does without seqpack)
    logits: float = float("nan")
    grads: float = float("nan")
    loss: float = float("nan")
    dtype: str = ""
    error: str = ""
    leak: bool = False


def default_implementations(device: str) -> list[str]:
    from seqpack.integrations.hf import register_seqpack_attention
    impls = ["eager", "sdpa", "flex_attention"]
    if register_seqpack_attention():
        impls.append("seqpack")
    if device.startswith("cuda"):
        from transformers.utils import is_flash_attn_2_available
        if is_flash_attn_2_available():
            impls.append("flash_attention_2")
        try:
            from transformers.utils import is_flash_attn_3_available
            if is_flash_attn_3_available():
                impls.append("flash_attention_3")
        except ImportError:
            pass
    return impls


_HALF_ONLY = ("flash_attention", "flash-attn", "flash_attn")


def verify(spec: str, *, attn_implementations=None, forms=("collator", "int_mask", "position_ids"), device: str = "cpu",
           dtype: str = "auto", tol: float | None = None, baseline: bool = True, seed: int = 0,
           lengths=(5, 11, 3, 8, 6, 9, 4), rows=((0, 1), (2, 3, 4), (5, 6)), log=print) -> list[Result]:
    """Check ``spec``'s model per attention implementation and form; see the module docstring."""
    from seqpack.integrations import hf
    hf.register_seqpack_attention()
    impls = list(attn_implementations or default_implementations(device))
    base = load_model(spec, attn_implementation="eager", seed=seed).to(device)
    vocab = base.config.get_text_config().vocab_size
    results = []
    for impl in impls:
        half = dtype in ("bfloat16", "float16") or (dtype == "auto" and any(s in impl for s in _HALF_ONLY))
        torch_dtype = getattr(torch, dtype) if dtype not in ("auto",) and half else (
            torch.bfloat16 if half else torch.float32)
        limit = tol if tol is not None else (5e-2 if half else 1e-4)
        # fp32: documents alone on eager, the plainest kernel (torch's CPU flex kernel recompiles
        # for every new length, slowly and, on torch 2.13, not always correctly). Half precision:
        # the same implementation, so kernel rounding does not pass for a leak.
        reference = impl if half else "eager"
        model = copy.deepcopy(base).to(torch_dtype)
        try:
            model.set_attn_implementation(impl)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next implementation
            results.append(Result(impl, "-", True, dtype=str(torch_dtype), error=f"{type(exc).__name__}: {exc}",
                                  leak=True))
            log(f"{impl:>22}: cannot use it here: {exc}")
            continue
        # flex_attention has no backward on CPU (torch 2.13): forward only there.
        backward = not (impl == "flex_attention" and not str(device).startswith("cuda"))
        model.requires_grad_(backward)
        docs, batch = make_rows(lengths, rows, vocab, capacity=max(sum(lengths[d] for d in r) for r in rows) + 2,
                                seed=seed, device=device)
        for with_seqpack in ([True, False] if baseline else [True]):
            if with_seqpack:
                hf.enable_packing(model, check=False)  # this command is the check, measured in full
            else:
                hf.disable_packing(model)
            for form in forms:
                if form == "packed_batch" and not with_seqpack:
                    continue  # a bare model cannot take a PackedBatch
                r = Result(impl, form, with_seqpack, dtype=str(torch_dtype).replace("torch.", ""))
                try:
                    r.logits, r.grads, r.loss = compare_packed(model, docs, batch, form=form, backward=backward,
                                                               reference_attn=reference).values()
                    r.leak = with_seqpack and not (r.logits <= limit and (np.isnan(r.grads) or r.grads <= limit))
                except Exception as exc:  # noqa: BLE001
                    r.error = f"{type(exc).__name__}: {exc}"
                    r.leak = with_seqpack
                results.append(r)
                log(_line(r, limit))
        hf.disable_packing(model)
        del model
    return results


def _line(r: Result, limit: float) -> str:
    who = "seqpack" if r.seqpack else "without seqpack"
    if r.error:
        return f"{r.attn_implementation:>22} {r.form:>13} {who:>16}: ERROR {r.error}"
    verdict = ("LEAK" if r.leak else "ok") if r.seqpack else ("leaks" if r.logits > limit else "(no leak seen)")
    grads = "fwd only" if np.isnan(r.grads) else f"{r.grads:.2e}"
    return (f"{r.attn_implementation:>22} {r.form:>13} {who:>16}: max |logit diff| {r.logits:.2e}  "
            f"grad rel diff {grads:>9}  [{r.dtype}, tol {limit:.0e}] {verdict}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_OR_CONFIG",
                        help="local model directory, config.json, or a family name (llama, qwen2, ...) for a tiny "
                             "random model")
    parser.add_argument("--attn", default=None,
                        help="comma-separated attn_implementations (default: eager, sdpa, flex_attention, seqpack, "
                             "and flash_attention_2/3 when installed on CUDA)")
    parser.add_argument("--forms", default="collator,int_mask,position_ids",
                        help=f"comma-separated input forms among {', '.join(FORMS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: float32, bfloat16 for FlashAttention implementations")
    parser.add_argument("--tol", type=float, default=None, help="tolerance (default 1e-4 fp32, 5e-2 bf16/fp16)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the runs without seqpack")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def _check_spec(spec: str) -> None:
    """Refuse, in one line, a MODEL_OR_CONFIG that is neither an existing path nor a known family."""
    from seqpack.errors import InputError

    if os.path.exists(spec):
        return
    looks_like_path = os.sep in spec or spec.startswith((".", "~")) or spec.endswith(".json")
    if looks_like_path:
        raise InputError(f"{spec!r} does not exist: pass a local model directory, a config.json, "
                         f"or a model family name such as llama or qwen2")
    import difflib

    from transformers import CONFIG_MAPPING

    if spec not in CONFIG_MAPPING:
        close = difflib.get_close_matches(spec, list(CONFIG_MAPPING.keys()), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "use a model type such as llama or qwen2"
        raise InputError(f"{spec!r} is neither a path nor a transformers model family: {hint}")


def run(args) -> int:
    _check_spec(args.model)
    impls = [s for s in args.attn.split(",") if s] if args.attn else None
    forms = [s for s in args.forms.split(",") if s]
    bad = [f for f in forms if f not in FORMS]
    if bad:
        print(f"unknown form(s) {bad}: choose among {FORMS}", file=sys.stderr)
        return 2
    results = verify(args.model, attn_implementations=impls, forms=forms, device=args.device, dtype=args.dtype,
                     tol=args.tol, baseline=not args.no_baseline)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    leaks = [r for r in results if r.leak]
    if leaks:
        print(f"FAIL: {len(leaks)} check(s) leak across documents or failed: "
              + ", ".join(sorted({f'{r.attn_implementation}/{r.form}' for r in leaks})))
        return 1
    print(f"OK: packed and one-by-one agree on {len({r.attn_implementation for r in results})} attention "
          f"implementation(s)")
    return 0
