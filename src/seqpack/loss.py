"""Cross-entropy for packed batches, with the normalisations training needs.

Notable:
- ``"mean"`` divides by the number of label tokens in the batch: the same number the
  unpacked batch's token mean gives over the same tokens.
- ``"doc_mean"`` averages each document's own token mean, so every document weighs the
  same, as when documents are trained one per row with a per-row mean.
- ``"sum"`` returns ``(sum, count)`` (both tensors, no host sync) so gradient
  accumulation can divide by the token count of the whole optimiser step.
- Half-precision logits are upcast to float32 for the softmax: bf16 log-softmax over 50K classes loses
  about two digits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqpack.boundaries import DocBoundaries
from seqpack.labels import IGNORE_INDEX, check_label_shift

__all__ = ["packed_cross_entropy"]

_REDUCTIONS = ("mean", "doc_mean", "sum", "none")


def packed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, boundaries: DocBoundaries | None = None,
                         *, reduction: str = "mean", label_shift: str = "model", ignore_index: int = IGNORE_INDEX,
                         shifted: bool | None = None):
    """Cross-entropy over a packed batch.

    Args:
        logits: ``(B, L, V)`` or ``(T, V)``.
        labels: ``(B, L)`` or ``(T,)``; ``ignore_index`` where no loss is wanted.
        boundaries: the batch's `DocBoundaries`; needed for ``"doc_mean"`` only.
        reduction: ``"mean"`` (per label token), ``"doc_mean"`` (per document, then
            averaged over documents that have a label), ``"sum"`` (returns
            ``(sum, num_tokens)``) or ``"none"`` (per position, 0 where ignored).
        label_shift: ``"model"`` if labels align with inputs (Hugging Face convention:
            position i predicts ``labels[i + 1]``, so the collator set -100 on each
            document's first token); ``"collator"`` if labels already are next-token
            targets (nanochat convention). The name `collate_packed` uses for the same idea.
        shifted: deprecated spelling of ``label_shift`` (True = ``"collator"``).
    """
    if shifted is not None:
        import warnings

        warnings.warn("packed_cross_entropy(shifted=...) is deprecated: pass label_shift='collator' (shifted=True) "
                      "or label_shift='model' (shifted=False)", DeprecationWarning, stacklevel=2)
        label_shift = "collator" if shifted else "model"
    check_label_shift(label_shift)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree: "
                         f"logits must be labels' shape plus a vocabulary dimension")
    V = logits.shape[-1]
    if label_shift == "model":
        # Shift within each row; a row's first label is never predicted.
        targets = torch.full_like(labels, ignore_index)
        targets[..., :-1] = labels[..., 1:]
    else:
        targets = labels
    flat_logits = logits.reshape(-1, V)
    if flat_logits.dtype in (torch.float16, torch.bfloat16):
        flat_logits = flat_logits.float()
    flat_targets = targets.reshape(-1)
    per_tok = F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index, reduction="none")
    valid = flat_targets != ignore_index
    if reduction == "none":
        return per_tok.reshape(labels.shape)
    count = valid.sum()
    total = per_tok.sum()
    if reduction == "sum":
        return total, count
    if reduction == "mean":
        return total / count.clamp(min=1)
    if boundaries is None:
        raise ValueError("reduction='doc_mean' needs the batch's boundaries to know which document each token is in")
    if boundaries.numel != labels.numel():
        raise ValueError(f"boundaries cover {boundaries.numel} tokens but labels have {labels.numel()}")
    doc = boundaries.doc_ids().reshape(-1)  # the predicting position's document
    S = boundaries.num_segments
    doc_sum = per_tok.new_zeros(S).scatter_add_(0, doc, per_tok)
    doc_cnt = per_tok.new_zeros(S).scatter_add_(0, doc, valid.to(per_tok.dtype))
    has = doc_cnt > 0
    per_doc = doc_sum / doc_cnt.clamp(min=1)
    return (per_doc * has).sum() / has.sum().clamp(min=1)
