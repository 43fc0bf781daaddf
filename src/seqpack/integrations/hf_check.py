"""The runtime isolation check: does *this* model, as the user runs it, keep packed documents apart?

``check_isolation(model)`` runs the real model on a tiny packed probe (three short random
documents in two rows, the second padded) and on the same documents one by one, on the
model's device, dtype and current ``attn_implementation``, and raises `PackingError` if any
document's output moves beyond a dtype-aware tolerance. It catches what no list of families
names: a new architecture, a custom attention function, a remote-code model, a patched mask.

Notable:
- When it runs: `seqpack.hf.enable_packing` and `configure_packing` arm it; it runs at the
  model's first packed call, with that call's form (integer mask, restarting position_ids,
  cu_seq_lens / the collator's dict, a `PackedBatch`), and again when the implementation,
  dtype or form changes. ``DataCollatorForPacking(model=model)`` runs it at its first batch
  in its own output format. ``check_isolation(model)`` runs it explicitly (every form).
- Turning it off: ``enable_packing(model, check=False)``, ``DataCollatorForPacking(model=None)``,
  or the environment variable ``SEQPACK_CHECK=0`` (everywhere, configure_packing included).
- Side effects: none that outlive the probe. It runs under ``torch.no_grad()`` with every
  module in eval mode (dropout off), then restores each module's own training flag, the CPU
  and CUDA random states and every buffer (a rotary cache a model rewrites in forward).
- Cost: ``1 + n_docs`` forwards of at most 16 tokens per checked form (4 by default), once.
  Compiled code (``layer.compile``, ``torch.compile(model)``) runs eagerly for the probe
  (``torch.compiler.set_stance("force_eager")``): the probe's shapes never add a graph or
  a recompilation to the compiled training step.
- Under torch.autocast the probe runs inside the caller's autocast, and the tolerance is
  that of the autocast dtype. Under FSDP / ZeRO-3 every rank runs the probe at its first
  packed call (same collectives on every rank).
- Tolerance, relative to the largest reference logit (at least 1): fp32 1e-4; fp16 1e-2;
  bf16 5e-2. Packed and one-by-one run different shapes, so their reductions round
  differently: about 1e-6 relative in fp32, and in bf16 (8 mantissa bits, 2^-9 = 0.2 %
  per rounding, a few roundings deep) up to ~1e-2. A leak changes a document's context
  (other tokens attended, wrong positions), which moves logits by a sizeable fraction of
  their scale (0.1-0.6 of it on the tiny test models); tests/hf/test_hf_check.py shows the
  bf16 floor staying below and a real leak staying above these thresholds.
"""

from __future__ import annotations

import os
from typing import Iterable

import torch

__all__ = ["check_isolation", "isolation_tolerance", "call_form", "ENV_VAR", "PROBE_LENGTHS"]

ENV_VAR = "SEQPACK_CHECK"
# Three documents, two rows: [doc0 doc1] and [doc2 pad pad]: the first document of a row, a later one, and
# a padded row with batch size 2. Short, so the probe costs a few small forwards.
PROBE_LENGTHS = (5, 7, 4)
PROBE_ROWS = ((0, 1), (2,))
PROBE_ROW_LEN = 14
FORMS = ("collator", "int_mask", "position_ids", "packed_batch")
_TOL = {torch.float32: 1e-4, torch.float64: 1e-6, torch.float16: 1e-2, torch.bfloat16: 5e-2}
_RUNNING = [False]  # a probe is running (its nested packed calls, inner models' hooks included, are not probed)
_DONE = "_seqpack_checked"
_OFF = "_seqpack_check_off"


def isolation_tolerance(dtype: torch.dtype) -> float:
    """Largest allowed ``max |packed - alone| / max(1, max |alone|)`` for logits computed in ``dtype``."""
    return _TOL.get(dtype, 5e-2)


def check_disabled_by_env() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "off", "no")


def call_form(kwargs) -> str:
    """The input form of a packed call (its kwargs, before seqpack rewrites them)."""
    if kwargs.get("cu_seq_lens_q") is not None or kwargs.get("cu_seq_lens_k") is not None:
        return "collator"
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.dtype != torch.bool:
        return "int_mask"
    return "position_ids"


def _compute_dtype(model: torch.nn.Module, device: torch.device) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _first_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _logits(out) -> torch.Tensor:
    x = getattr(out, "logits", None)
    if x is None:
        x = getattr(out, "last_hidden_state", None)
    return (out[0] if x is None else x).detach().float()


def _describe(model) -> tuple[str, str]:
    config = getattr(model, "config", None)
    return type(model).__name__, getattr(config, "model_type", None) or "?"


def _alternatives(impl: str, form: str) -> str:
    others = [i for i in ("sdpa", "eager", "seqpack", "flex_attention") if i != impl]
    text = (f"try another implementation ({', '.join(repr(i) for i in others)}: `seqpack verify` lists which are "
            f"exact for this family), or train unpacked (DataCollatorForPacking(pack=False))")
    if form == "int_mask":
        text += "; the collator's own output (cu_seq_lens + position_ids) is another form to try"
    return text


def check_isolation(model: torch.nn.Module, *, forms: Iterable[str] | None = None, tol: float | None = None,
                    seed: int = 0) -> float:
    """Run ``model`` on a tiny packed probe and on its documents one by one; raise if they differ.

    Args:
        model: the model exactly as it will be called (PEFT-wrapped, on its device and dtype, with its
            ``attn_implementation``); with `enable_packing` for every form but the collator's.
        forms: input forms to probe, among ``"collator"`` (the collator's dict: cu_seq_lens + position_ids),
            ``"int_mask"`` (LLaMA-Factory's integer mask), ``"position_ids"`` (restarting, no mask) and
            ``"packed_batch"`` (a `PackedBatch` as first argument). Default: all four with the hook, only
            ``"collator"`` without it. ``"collator:position_ids"`` / ``"collator:attention_mask"`` probe the
            collator's other output formats.
        tol: the tolerance (relative to the reference logits' scale); default `isolation_tolerance`.

    Returns the largest relative difference seen. Raises `PackingError` naming the model, family,
    implementation, form, each document's difference and what to use instead.
    """
    from seqpack.integrations import hf
    from seqpack.integrations.hf_verify import make_rows

    if _RUNNING[0]:
        return 0.0
    hooked = hf.is_packing_enabled(model)
    forms = tuple(forms) if forms is not None else (FORMS if hooked else ("collator",))
    config = model.config
    impl = getattr(config, "_attn_implementation", None) or "eager"
    device = _first_device(model)
    dtype = _compute_dtype(model, device)
    limit = isolation_tolerance(dtype) if tol is None else float(tol)
    vocab = int(config.get_text_config().vocab_size if hasattr(config, "get_text_config") else config.vocab_size)
    docs, batch = make_rows(PROBE_LENGTHS, PROBE_ROWS, min(vocab, 1000), capacity=PROBE_ROW_LEN, seed=seed,
                            device=device)

    modes = [(m, m.training) for m in model.modules()]
    rng_cpu = torch.get_rng_state()
    rng_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    _RUNNING[0] = True
    worst, failures = 0.0, []
    try:
        model.eval()
        # force_eager: compiled layers (layer.compile, torch.compile(model)) run eagerly for the probe, so its
        # shapes add no graph and no recompilation to the user's compiled step.
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            refs = [_logits(model(input_ids=d[None], use_cache=False))[0] for d in docs]
            scale = max(1.0, max(float(r.abs().max()) for r in refs))
            b = batch.boundaries
            cu = b.cu_seqlens.tolist()
            seg_docs = [i for i, is_doc in enumerate(b.is_doc.tolist()) if is_doc]
            for form in forms:
                flat = _logits(_probe_call(model, batch, form)).reshape(b.numel, -1)
                diffs = []
                for i, seg in enumerate(seg_docs):
                    ref = refs[int(batch.doc_index[i])]
                    diffs.append(float((flat[cu[seg]:cu[seg + 1]] - ref).abs().max()) / scale)
                worst = max(worst, *diffs)
                if max(diffs) > limit:
                    failures.append((form, diffs))
    finally:
        for m, training in modes:
            m.training = training
        torch.set_rng_state(rng_cpu)
        if rng_cuda is not None:
            torch.cuda.set_rng_state_all(rng_cuda)
        with torch.no_grad():
            for buf, saved in buffers:
                if buf.shape == saved.shape:
                    buf.copy_(saved)
        _RUNNING[0] = False
    if failures:
        cls, family = _describe(model)
        form, diffs = max(failures, key=lambda f: max(f[1]))
        where = ", ".join(f"doc {i} {d:.2g}" for i, d in enumerate(diffs))
        raise hf.PackingError(
            f"{cls} (model_type {family!r}) with attn_implementation {impl!r} does not keep packed documents apart: "
            f"on seqpack's probe ({form} form, {str(dtype).replace('torch.', '')}) the packed logits differ from the "
            f"documents run one by one by up to {max(diffs):.3g} of their scale (tolerance {limit:.0e}; per document, "
            f"first of row 0 / second of row 0 / first of the padded row: {where}). {_alternatives(impl, form)}. "
            f"(This check runs once per model; check=False or {ENV_VAR}=0 turns it off.)")
    return worst


def _probe_call(model, batch, form: str):
    from seqpack.integrations.hf_collator import packed_model_inputs
    from seqpack.integrations.hf_verify import _call
    if form.startswith("collator:"):
        return model(**packed_model_inputs(batch, format=form.split(":", 1)[1]))
    return _call(model, batch, form)


def set_check(model: torch.nn.Module, enabled: bool) -> None:
    """Arm (or disarm) the check `on_packed_call` runs at the model's first packed calls."""
    object.__setattr__(model, _OFF, not enabled)


def on_packed_call(model: torch.nn.Module, kwargs, form: str | None = None) -> None:
    """Run the check once per (implementation, dtype, form) of this model; called by the packing hook
    (and by the collator with ``form``) before a packed call proceeds."""
    if _RUNNING[0] or getattr(model, _OFF, False) or check_disabled_by_env():
        return
    form = form or call_form(kwargs)
    key = (getattr(getattr(model, "config", None), "_attn_implementation", None),
           _compute_dtype(model, _first_device(model)), form)
    done = getattr(model, _DONE, None)
    if done is None:
        done = set()
        object.__setattr__(model, _DONE, done)
    if key in done:
        return
    check_isolation(model, forms=(form,))
    done.add(key)
    for inner in model.modules():  # models inside this one (configure_packing hooks them too): covered
        if inner is not model and getattr(inner, "_seqpack_packing_hook", None) is not None:
            object.__setattr__(inner, _OFF, True)
