"""Context parallelism for Hugging Face causal LMs: the ``"seqpack"`` attention across cp ranks.

``shard_inputs(model, batch, cp)`` turns one packed batch (the dict `DataCollatorForPacking`
returns, or a `PackedBatch`) into this rank's model kwargs and next-token labels. The model
runs on its shard of the tokens; its ``"seqpack"`` attention function receives the shard's
`seqpack.parallel.CPContext` (as the ``seqpack_context`` kwarg transformers passes down to
attention) and runs `seqpack.parallel.ulysses_attention` over the whole buffer.

Notable:
- The batch is flattened into one buffer (rows after rows) and cut into cp equal pieces;
  documents may span pieces. Position ids come from the whole buffer, so they stay per
  document on every rank; labels are shifted over the whole buffer before cutting, so the
  last token of a piece keeps its target (the first token of the next piece).
- Compute the loss outside the model (the model's own loss would shift inside the piece and
  average over it): ``packed_cross_entropy(logits, labels, reduction="sum", label_shift="collator")``,
  then `seqpack.parallel.token_mean_loss` and `seqpack.parallel.all_reduce_grads` (or DDP /
  FSDP over all ranks with the loss times the world size).
- `seqpack.hf.enable_packing` is not needed: the kwargs carry the documents (the
  ``seqpack_context``), which the ``"seqpack"`` attention function reads before anything else.
"""

from __future__ import annotations

import torch

from seqpack.boundaries import DocBoundaries
from seqpack.errors import InputError

__all__ = ["shard_inputs"]


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _boundaries_of(batch: dict) -> DocBoundaries:
    """The documents of a collator dict: cu_seq_lens, an integer-labelled mask, or position_ids."""
    ids = batch["input_ids"]
    shape = tuple(ids.shape)
    cu = batch.get("cu_seq_lens_q")
    if cu is not None:
        ml = batch.get("max_length_q")
        return DocBoundaries.from_cu_seqlens(cu, (ids.numel(),), max_seqlen=None if ml is None else int(ml))
    mask = batch.get("attention_mask")
    if mask is not None:
        return DocBoundaries.from_attention_mask(mask.reshape(-1, shape[-1])).flatten()
    pos = batch.get("position_ids")
    if pos is None:
        raise InputError("the batch has neither cu_seq_lens_q, attention_mask nor position_ids: nothing says where "
                         "its documents are; build it with seqpack's DataCollatorForPacking")
    return DocBoundaries.from_position_ids(pos.reshape(-1, shape[-1])).flatten()


def shard_inputs(model, batch, cp, *, pad_token_id: int = 0) -> tuple[dict, torch.Tensor | None]:
    """``(model kwargs, labels)`` for this rank's piece of a packed batch under context parallelism.

    Args:
        model: a transformers causal LM with ``attn_implementation="seqpack"``.
        batch: a dict from `DataCollatorForPacking` (any format) or a `PackedBatch` with
            ``label_shift="model"``; on the device the model runs on.
        cp: a `seqpack.parallel.ContextParallel`.
        pad_token_id: fills the padding added when the token count is not a multiple of cp.

    Returns the kwargs (``input_ids`` and ``position_ids`` of shape ``(1, T / cp)``,
    ``use_cache=False``, ``seqpack_context``) and the piece's next-token labels ``(1, T / cp)``
    (None if the batch has none).

    Raises `InputError` if the model does not use the ``"seqpack"`` attention or its heads
    cannot be split over cp.
    """
    from seqpack.attention import prepare
    from seqpack.batch import PackedBatch

    config = model.config
    impl = getattr(config, "_attn_implementation", None)
    if impl != "seqpack":
        raise InputError(f"context parallelism runs through the 'seqpack' attention implementation; this model uses "
                         f"{impl!r}: build it with attn_implementation='seqpack' or call "
                         f"model.set_attn_implementation('seqpack')")
    text = _text_config(config)
    heads = text.num_attention_heads
    cp.check_heads(heads, getattr(text, "num_key_value_heads", None) or heads)
    if isinstance(batch, PackedBatch):
        if batch.label_shift != "model":
            raise InputError(f"PackedBatch has label_shift={batch.label_shift!r}; Hugging Face models take labels "
                             f"aligned with inputs: collate with label_shift='model'")
        shard = cp.shard_batch(batch, pad_token_id=pad_token_id)
    else:
        b = _boundaries_of(batch).to(batch["input_ids"].device)
        shard = cp.shard(batch["input_ids"].reshape(-1), batch.get("labels"),
                         None if batch.get("position_ids") is None else batch["position_ids"].reshape(-1), b,
                         label_shift="model", pad_token_id=pad_token_id)
    window = getattr(text, "sliding_window", None)
    device = shard.input_ids.device
    ctx = prepare(shard.boundaries, causal=True, window=[None, window] if window else None,
                  block_mask=device.type == "cuda")
    kwargs = {"input_ids": shard.input_ids[None], "position_ids": shard.position_ids[None], "use_cache": False,
              "seqpack_context": shard.context(ctx)}
    return kwargs, None if shard.labels is None else shard.labels[None]
