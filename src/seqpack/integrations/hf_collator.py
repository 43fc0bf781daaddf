"""A ``data_collator`` for ``transformers.Trainer`` and TRL's ``SFTTrainer`` that packs.

``DataCollatorForPacking(max_length=4096)`` turns a list of tokenized examples into rows of
at most ``max_length`` tokens holding several documents each (best-fit decreasing over
the batch, `seqpack.plan_packing`), or takes rows someone already packed, and returns the
dict a Hugging Face causal LM takes.

Notable:
- One output works on every attention implementation, with or without
  `seqpack.hf.enable_packing`: ``position_ids`` restarting per document (sdpa, eager and
  flex build the block-diagonal mask from them), ``cu_seq_lens_q/k`` + ``max_length_q/k``
  over the flattened ``(B * L)`` rows (FlashAttention varlen, ``"seqpack"``) and
  ``use_cache=False`` (with a cache transformers skips the document mask). No
  ``attention_mask``: FlashAttention would unpad by it and ignore the documents.
  ``format="attention_mask"`` returns LLaMA-Factory's integer-labelled mask instead
  (needs `enable_packing` or `configure_packing`).
- Labels: aligned with inputs (the model shifts them), -100 on each document's first
  token, on padding and wherever the example said so (``labels`` = -100,
  ``completion_mask``/``assistant_masks`` = 0). So ``labels != -100`` counts exactly the
  predicted tokens and ``transformers.Trainer``'s ``num_items_in_batch`` is right under
  gradient accumulation on every 5.x version.
- Pre-packed rows are recognised by ``seq_lengths`` (TRL's ``pack_dataset``), by
  ``position_ids`` that restart, or by an integer-labelled ``attention_mask``
  (LLaMA-Factory); they stay one row each.
- An example's ``attention_mask`` 0 at the start or end of its row is padding (LLaMA-Factory
  right-pads its packed rows, tokenizers pad on their ``padding_side``): those tokens are
  dropped, and the collator pads again. A 0 between tokens that are not padding is refused
  (`seqpack.errors.InputError` naming the row and position): no reading of it is safe.
- ``return_tensors`` is ``"pt"``; anything else is refused when the collator is built.
- Rows are as long as the longest row (rounded up to ``pad_to_multiple_of``), or exactly
  ``max_length`` with ``fixed_length=True`` (static shapes for ``torch.compile``; add
  ``max_num_docs`` to pad ``cu_seq_lens`` to a fixed size too).
- Imports torch and seqpack's core only; transformers is not needed to build batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from seqpack.batch import PackedBatch, collate_packed
from seqpack.errors import InputError
from seqpack.labels import IGNORE_INDEX
from seqpack.plan import PackPlan

__all__ = ["DataCollatorForPacking", "packed_model_inputs", "FORMATS"]

FORMATS = ("flash", "position_ids", "attention_mask")


def packed_model_inputs(batch: PackedBatch, *, format: str = "flash") -> dict[str, Any]:
    """The keyword arguments a Hugging Face causal LM takes for a `PackedBatch`.

    ``format``: ``"flash"`` (position_ids + cu_seq_lens_q/k + max_length_q/k; every
    attention implementation), ``"position_ids"`` (mask-built implementations only:
    eager, sdpa, flex) or ``"attention_mask"`` (LLaMA-Factory's integer-labelled mask;
    needs `seqpack.hf.enable_packing`). A 1D batch becomes one row ``(1, T)``.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}; got {format!r}")
    b = batch.boundaries
    as_row = (lambda t: t.reshape(1, -1)) if b.layout == "1d" else (lambda t: t)
    out = {"input_ids": as_row(batch.input_ids), "labels": as_row(batch.labels),
           "position_ids": as_row(batch.position_ids), "use_cache": False}
    if format == "flash":
        out["cu_seq_lens_q"] = out["cu_seq_lens_k"] = b.cu_seqlens
        out["max_length_q"] = out["max_length_k"] = b.max_seqlen
    elif format == "attention_mask":
        out["attention_mask"] = as_row(b.attention_mask())
    return out


def _as_list(x) -> list:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return list(x)


def _labels_of(example: Mapping, row: int) -> np.ndarray:
    """Per-token labels aligned with input_ids: given labels, else the tokens; masks fold in as -100."""
    ids = np.asarray(_as_list(example["input_ids"]), dtype=np.int64)
    labels = np.asarray(_as_list(example["labels"]), dtype=np.int64) if example.get("labels") is not None else ids.copy()
    if labels.shape != ids.shape:
        raise InputError(f"row {row}: labels have {labels.size} tokens but input_ids {ids.size}; "
                         f"give one label per token (-100 where no loss is wanted)")
    for key in ("completion_mask", "assistant_masks"):
        if example.get(key) is not None:
            keep = np.asarray(_as_list(example[key]), dtype=bool)
            if keep.shape != ids.shape:
                raise InputError(f"row {row}: {key} has {keep.size} entries but input_ids {ids.size}; "
                                 f"give one entry per token")
            labels = np.where(keep, labels, IGNORE_INDEX)
    return labels


def _padding_span(example: Mapping, row: int) -> tuple[int, int]:
    """``(start, stop)`` of the tokens a row's ``attention_mask`` marks as real (not 0).

    Zeros at either end are padding (LLaMA-Factory right-pads its packed rows; a tokenizer
    pads on its ``padding_side``) and are dropped: the collator pads again itself. A 0
    between real tokens is refused: neither a document nor padding can be in the middle of
    a row, so no reading of it is safe.
    """
    n = len(example["input_ids"])
    mask = example.get("attention_mask")
    if mask is None:
        return 0, n
    m = np.asarray(_as_list(mask), dtype=np.int64)
    if m.shape != (n,):
        raise InputError(f"row {row}: attention_mask has {m.size} entries but input_ids {n}; "
                         f"give one mask entry per token")
    real = np.flatnonzero(m != 0)
    if real.size == 0:
        return 0, 0
    start, stop = int(real[0]), int(real[-1]) + 1
    if real.size != stop - start:
        p = start + int(np.flatnonzero(m[start:stop] == 0)[0])
        raise InputError(f"row {row}: attention_mask is 0 (padding) at position {p}, between tokens "
                         f"that are not padding; padding may only come at the start or end of a row: "
                         f"remove it there, or give the documents as separate examples")
    return start, stop


def _docs_in_row(example: Mapping, row: int, start: int, stop: int) -> list[int] | None:
    """Document lengths of the pre-packed row ``[start, stop)`` (padding cut off), or None for a
    plain example (one document)."""
    n = stop - start
    if example.get("seq_lengths") is not None:
        lens = [int(x) for x in _as_list(example["seq_lengths"])]
        if sum(lens) != n:
            raise InputError(f"row {row}: seq_lengths sum to {sum(lens)} but the row has {n} tokens"
                             f"{' besides padding' if n != len(example['input_ids']) else ''}; "
                             f"give one length per document, padding excluded")
        return lens
    mask = example.get("attention_mask")
    if mask is not None:
        m = np.asarray(_as_list(mask), dtype=np.int64)[start:stop]
        if m.size and m.max() > 1:
            change = np.flatnonzero(np.diff(m) != 0) + 1
            bounds = np.concatenate([[0], change, [m.size]])
            return np.diff(bounds).tolist()
    pos = example.get("position_ids")
    if pos is not None:
        p = np.asarray(_as_list(pos), dtype=np.int64)[start:stop]
        starts = np.flatnonzero(np.diff(p) != 1) + 1
        if starts.size:
            bounds = np.concatenate([[0], starts, [p.size]])
            return np.diff(bounds).tolist()
    return None


@dataclass
class DataCollatorForPacking:
    """Pack tokenized examples into rows with block-diagonal attention for a Hugging Face model.

    Use as ``Trainer(..., data_collator=DataCollatorForPacking(max_length=4096))`` or with
    TRL's ``SFTTrainer`` (``packing=False, padding_free=False``: the collator packs). With
    ``Trainer``'s default ``remove_unused_columns=True``, example keys the model's forward
    does not name (``seq_lengths``, ``completion_mask``) are dropped before the collator:
    set ``remove_unused_columns=False`` to keep them.

    Args:
        max_length: tokens per row (the packing capacity). None: rows as long as the
            longest example (``pack=False`` only).
        pad_token_id: input id written into padding (its label is always -100).
        pack: True packs the batch's examples together (best-fit decreasing); False
            keeps one example per row (padding baseline, or rows packed beforehand).
        overflow: an example longer than ``max_length``: ``"truncate"`` (default, as
            Trainer pipelines do), ``"split"`` (pieces in several rows; every token
            kept), ``"drop"`` or ``"error"``.
        pad_to_multiple_of: round the row length up to a multiple of this.
        fixed_length: rows exactly ``max_length`` tokens (static shapes).
        max_num_docs: pad ``cu_seq_lens`` to this many segments (static shapes).
        format: ``"flash"`` (default), ``"position_ids"`` or ``"attention_mask"``; see
            `packed_model_inputs`.
        return_packed_batch: return the `PackedBatch` itself instead of a dict.
        return_tensors: ``"pt"`` only (the batch is torch tensors); other values are
            refused here rather than ignored.
        model: the model the batches are for; when given, the collator's first batch first runs
            `seqpack.hf.check_isolation` on it in this collator's format (raises `PackingError` if
            the model would let packed documents attend to each other). Runs in the process that
            collates: with DataLoader workers, call ``check_isolation(model)`` yourself instead.
    """

    max_length: int | None = 4096
    pad_token_id: int = 0
    pack: bool = True
    overflow: str = "truncate"
    strategy: str = "bfd"
    pad_to_multiple_of: int | None = None
    fixed_length: bool = False
    max_num_docs: int | None = None
    format: str = "flash"
    return_packed_batch: bool = False
    return_tensors: str = "pt"
    model: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.return_tensors != "pt":
            raise InputError(f"return_tensors={self.return_tensors!r} is not supported: DataCollatorForPacking "
                             f"returns torch tensors; leave return_tensors at 'pt'")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}; got {self.format!r}")
        if self.pack and self.max_length is None:
            raise ValueError("pack=True needs max_length (the tokens per row)")
        if self.fixed_length and self.max_length is None:
            raise ValueError("fixed_length=True needs max_length")

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any] | PackedBatch:
        if not features:
            raise ValueError("the collator got an empty list of examples")
        if self.model is not None and not getattr(self, "_model_checked", False):
            self._check_model()
        docs, row_of_doc, prepacked = self._documents(features)
        lengths = np.fromiter((len(d["input_ids"]) for d in docs), dtype=np.int64, count=len(docs))
        if self.pack and not prepacked:
            bins = self._plan(lengths)
        else:
            bins = self._rows_as_given(lengths, row_of_doc, len(features))
        batch = collate_packed(bins, docs, layout="rows", label_shift="model", pad_token_id=self.pad_token_id,
                               max_num_docs=self.max_num_docs, max_seqlen=bins.capacity)
        if self.return_packed_batch:
            return batch
        return packed_model_inputs(batch, format=self.format)

    # ------------------------------------------------------------------ helpers

    def _check_model(self) -> None:
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("DataCollatorForPacking(model=...) checks the model in the process that collates, "
                               "but this is a DataLoader worker: call seqpack.hf.check_isolation(model) before "
                               "training and build the collator without model=")
        from seqpack.integrations import hf_check
        form = {"flash": "collator"}.get(self.format, f"collator:{self.format}")
        hf_check.on_packed_call(self.model, {}, form=form)
        self._model_checked = True

    def _documents(self, features):
        """Flat list of documents ``{"input_ids", "labels"}``, the row each came from, and
        whether the rows were packed beforehand."""
        docs, row_of_doc, prepacked = [], [], False
        for r, ex in enumerate(features):
            first, last = _padding_span(ex, r)
            ids = np.asarray(_as_list(ex["input_ids"]), dtype=np.int64)[first:last]
            labels = _labels_of(ex, r)[first:last]
            lens = _docs_in_row(ex, r, first, last)
            if lens is None:
                lens = [ids.size]
            else:
                prepacked = True
            start = 0
            for n in lens:
                if n > 0:  # an empty example adds nothing (its row may end up all padding)
                    docs.append({"input_ids": ids[start:start + n], "labels": labels[start:start + n]})
                    row_of_doc.append(r)
                start += n
        return docs, np.asarray(row_of_doc, dtype=np.int64), prepacked

    def _row_length(self, longest: int) -> int:
        if self.fixed_length:
            return int(self.max_length)
        L = max(int(longest), 1)
        m = self.pad_to_multiple_of
        if m:
            L = -(-L // m) * m
        return L

    def _plan(self, lengths: np.ndarray) -> PackPlan:
        from seqpack.plan import plan_packing
        plan = plan_packing(lengths, int(self.max_length), strategy=self.strategy, overflow=self.overflow)
        used = plan.bin_lengths()
        L = self._row_length(int(used.max()) if used.size else 1)
        return replace(plan, capacity=L)  # rows as long as the fullest one (or fixed_length)

    def _rows_as_given(self, lengths, row_of_doc, num_rows) -> PackPlan:
        used = np.bincount(row_of_doc, weights=lengths, minlength=num_rows).astype(np.int64)
        longest = int(used.max()) if used.size else 1
        if self.max_length is not None and longest > self.max_length:
            r = int(used.argmax())
            if self.overflow != "truncate" or (row_of_doc == r).sum() > 1:
                raise ValueError(f"row {r} has {longest} tokens but max_length is {self.max_length}: raise "
                                 f"max_length, or let the collator pack (pack=True, overflow='split')")
            longest = self.max_length
        cap = self._row_length(longest)
        stop = np.minimum(lengths, cap)  # only a lone over-long example is cut (overflow='truncate')
        counts = np.bincount(row_of_doc, minlength=num_rows)
        return PackPlan.from_rows(stop, counts, cap, doc=np.arange(lengths.size), doc_lengths=lengths)
