"""Labels and offsets: the rules every path from pieces to a batch shares (numpy; no torch).

This module imports neither torch nor anything that does, so the Parquet writer and the
readers use the same rules as `seqpack.batch.collate_packed` without paying for torch.

Two label conventions (``label_shift``):

- ``"model"`` (Hugging Face): labels are aligned with the inputs and the model shifts
  them. The first token of every piece gets `IGNORE_INDEX`: the model would otherwise
  predict it from the previous segment, a target that crosses documents.
- ``"collator"`` (nanochat): labels already are the next token. The last token of every
  document gets `IGNORE_INDEX`; the last token of a piece of a split document keeps its
  real target (the next token of the same document) where the caller still has it.

A label the caller set to `IGNORE_INDEX` (prompt masking) is kept; padding gets it too.
`to_next_token` works on numpy arrays and torch tensors alike (slicing only).
"""

from __future__ import annotations

import numpy as np

from seqpack.errors import InputError

__all__ = ["IGNORE_INDEX", "LABEL_SHIFTS", "check_label_shift", "exclusive_cumsum", "segment_of",
           "piece_labels", "to_next_token", "to_aligned"]

IGNORE_INDEX = -100  # the label value PyTorch's and Hugging Face's losses skip
LABEL_SHIFTS = ("model", "collator")


def check_label_shift(label_shift: str) -> str:
    """``label_shift`` if it is one of `LABEL_SHIFTS`, else an `InputError` naming it."""
    if label_shift not in LABEL_SHIFTS:
        raise InputError(f"label_shift must be 'model' (HF) or 'collator' (nanochat); got {label_shift!r}")
    return label_shift


def exclusive_cumsum(x) -> np.ndarray:
    """``(n + 1,)`` int64 offsets starting at 0: lengths or counts -> where each one starts."""
    x = np.asarray(x)
    out = np.zeros(x.size + 1, np.int64)
    np.cumsum(x, out=out[1:])
    return out


def segment_of(offsets: np.ndarray, positions) -> np.ndarray:
    """Which segment of ``offsets`` (non-decreasing, as from `exclusive_cumsum`) holds each
    position: segment s holds p when ``offsets[s] <= p < offsets[s + 1]``."""
    return np.searchsorted(offsets, positions, side="right") - 1


def piece_labels(src: np.ndarray, first: np.ndarray, lens: np.ndarray, label_shift: str, *,
                 copy: bool = True) -> np.ndarray:
    """Labels of pieces laid back to back, from their label sources ``src`` (aligned with
    the tokens: the tokens themselves, or labels with `IGNORE_INDEX` on prompts).

    ``first`` and ``lens`` say where each piece starts in ``src`` and how long it is. Every
    piece is treated as ending its document: under ``"collator"`` its last token gets
    `IGNORE_INDEX` (a caller that knows the next token of a split document writes it after).
    ``copy=False`` may write into ``src`` (``"model"`` only).
    """
    if label_shift == "model":
        out = src.copy() if copy else src
        out[first] = IGNORE_INDEX
        return out
    check_label_shift(label_shift)
    out = np.empty_like(src)
    out[:-1] = src[1:]
    last = (first + lens - 1)[lens > 0]
    out[last] = IGNORE_INDEX
    return out


def to_next_token(labels):
    """Labels aligned with inputs (``"model"``, first token of each document `IGNORE_INDEX`)
    -> next-token targets (``"collator"``) over the whole flattened buffer. The first-token
    `IGNORE_INDEX` becomes the previous document's last target, so none crosses a document.
    Works on numpy arrays and torch tensors."""
    flat = labels.reshape(-1)
    out = flat.clone() if hasattr(flat, "clone") else flat.copy()
    out[:-1] = flat[1:]
    out[-1:] = IGNORE_INDEX
    return out


def to_aligned(labels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Next-token labels of documents stored back to back (``offsets`` as from
    `exclusive_cumsum`) -> labels aligned with the tokens, as `collate_packed` reads them.
    The first token of each document gets `IGNORE_INDEX`; a document's last target (the
    token after it, which it does not hold) is lost."""
    out = np.empty_like(labels)
    out[1:] = labels[:-1]
    out[offsets[:-1][offsets[:-1] < labels.size]] = IGNORE_INDEX
    return out
