"""A fused cross-entropy for Hugging Face causal LMs: transformers' loss, without its float32 copies.

``enable_fused_loss(model)`` sets ``model.loss_function`` (transformers' public setter) to
`fused_causal_lm_loss`, a drop-in for ``transformers.loss.loss_utils.ForCausalLMLoss``:
same arguments, same shift of the labels, same normalisation (token mean, or the sum
divided by ``num_items_in_batch`` under gradient accumulation), same float32 softmax.

Notable:
- Why: ``ForCausalLMLoss`` upcasts the whole ``(tokens, vocab)`` logits to float32, runs
  log_softmax and nll_loss on them and keeps the float32 log-probabilities for backward. At
  32K tokens and a 32K vocabulary that is 4 GB per copy and ~40 GB of memory traffic per
  step (~15 ms on an H100), and ~10 GB of peak memory.
- Here the gradient with respect to the logits (softmax - one-hot, times the 1/denominator
  of the mean) is computed in the forward, in float32, rounded once to the logits' dtype
  and kept for backward (the Liger-kernel trick); backward only multiplies it by the
  incoming gradient (1 in a plain ``loss.backward()``: exact). The float32 values exist
  only inside one fused kernel: on CUDA the per-token arithmetic is ``torch.compile``d once
  (a few seconds, shape-generic after a second size); without compile (CPU by default)
  it runs in chunks of ``chunk_size`` tokens so float32 copies stay small.
- The math is the same as transformers': float32 log-sum-exp of the logits as the model
  produced them (after any softcapping the model applies), the same targets; sums run in
  a different order (differences of float32 rounding), and the gradient is rounded to
  bf16 once, as autograd does on transformers' path.
- Only the loss changes: ``outputs.logits`` are the model's, untouched. The logits are
  not needed in backward and are freed with the outputs.
"""

from __future__ import annotations

import torch

from seqpack.labels import IGNORE_INDEX

__all__ = ["fused_causal_lm_loss", "enable_fused_loss", "disable_fused_loss", "is_fused_loss_enabled"]

_compiled = None


def _ce_math(logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor, want_grad: bool,
             ignore_index: int):
    """``(loss sum * scale [float32], d loss / d logits [logits.dtype] or None)`` for ``(n, V)`` logits."""
    x = logits.float()
    valid = targets != ignore_index
    safe = torch.where(valid, targets, 0)
    lse = torch.logsumexp(x, dim=-1)
    target_logit = x.gather(1, safe[:, None]).squeeze(1)
    loss = torch.where(valid, lse - target_logit, 0.0).sum() * scale
    if not want_grad:
        return loss, None
    onehot = torch.arange(x.shape[-1], device=x.device)[None, :] == safe[:, None]
    g = (torch.exp(x - lse[:, None]) - onehot.to(x.dtype)) * (valid.to(x.dtype) * scale)[:, None]
    return loss, g.to(logits.dtype)


def _ce_compiled():
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_ce_math)  # automatic dynamic: one recompile at most for a new length
    return _compiled


def _use_compile(compile: bool | None, device: torch.device) -> bool:
    if torch.compiler.is_compiling():
        return False  # inside a compiled model inductor fuses the plain math with the rest
    return device.type == "cuda" if compile is None else bool(compile)


class _FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, scale, ignore_index: int, chunk_size: int, compile: bool):
        want_grad = ctx.needs_input_grad[0]
        if compile:
            loss, grad = _ce_compiled()(logits, targets, scale, want_grad, ignore_index)
        else:
            n = logits.shape[0]
            loss = torch.zeros((), dtype=torch.float32, device=logits.device)
            grad = torch.empty_like(logits) if want_grad else None
            for lo in range(0, n, chunk_size):
                part, g = _ce_math(logits[lo:lo + chunk_size], targets[lo:lo + chunk_size], scale, want_grad,
                                   ignore_index)
                loss = loss + part
                if want_grad:
                    grad[lo:lo + chunk_size] = g
        if want_grad:
            ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return grad * grad_loss.to(grad.dtype), None, None, None, None, None


def fused_causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                         num_items_in_batch: torch.Tensor | int | None = None, ignore_index: int = IGNORE_INDEX,
                         shift_labels: torch.Tensor | None = None, *, chunk_size: int = 4096,
                         compile: bool | None = None, **kwargs) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss``, fused: same arguments, result and gradients (see the module doc).

    Args:
        logits: ``(..., V)`` as the model's head produced them (any float dtype).
        labels: aligned with the inputs (position i predicts ``labels[i + 1]``), -100 = no loss;
            ignored when ``shift_labels`` (already next-token targets) is given.
        num_items_in_batch: divide the summed loss by this (gradient accumulation); default:
            the mean over this call's label tokens.
        chunk_size: tokens per chunk when not compiled (float32 copies of ``chunk_size x V``).
        compile: fuse the per-token arithmetic with ``torch.compile`` (default: on CUDA).
    """
    if shift_labels is None:
        labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
        shift_labels = labels[..., 1:]
    flat = logits.reshape(-1, vocab_size)
    targets = shift_labels.reshape(-1).to(flat.device)
    if targets.shape[0] != flat.shape[0]:
        raise ValueError(f"{flat.shape[0]} logit rows but {targets.shape[0]} targets")
    if num_items_in_batch is None:
        denom = (targets != ignore_index).sum()
    elif torch.is_tensor(num_items_in_batch):
        denom = num_items_in_batch.to(flat.device)
    else:
        denom = torch.tensor(num_items_in_batch, device=flat.device)
    scale = 1.0 / denom.to(torch.float32)
    return _FusedCrossEntropy.apply(flat, targets, scale, int(ignore_index), int(chunk_size),
                                    _use_compile(compile, flat.device))


def _causal_lm_loss():
    from transformers.loss.loss_utils import ForCausalLMLoss
    return ForCausalLMLoss


def enable_fused_loss(model: torch.nn.Module, *, chunk_size: int = 4096, compile: bool | None = None):
    """Make ``model`` compute its loss with `fused_causal_lm_loss`; returns the model.

    Sets ``model.loss_function`` (transformers' own extension point). Only for models whose
    loss is transformers' causal-LM loss (``...ForCausalLM``); raises ``ValueError`` otherwise.
    `disable_fused_loss` puts transformers' loss back.
    """
    import functools
    current = getattr(model, "loss_function", None)
    if getattr(current, "_seqpack_fused", False):
        current = _causal_lm_loss()
    if current is not _causal_lm_loss():
        raise ValueError(f"{type(model).__name__}'s loss is {getattr(current, '__name__', current)!r}, not "
                         f"transformers' ForCausalLMLoss: the fused loss replaces only the causal-LM loss")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    fn = functools.partial(fused_causal_lm_loss, chunk_size=chunk_size, compile=compile)
    fn._seqpack_fused = True
    model.loss_function = fn
    return model


def disable_fused_loss(model: torch.nn.Module) -> torch.nn.Module:
    """Undo `enable_fused_loss` (transformers' loss again); returns the model."""
    if is_fused_loss_enabled(model):
        del model._loss_function
    return model


def is_fused_loss_enabled(model: torch.nn.Module) -> bool:
    return getattr(getattr(model, "_loss_function", None), "_seqpack_fused", False)
