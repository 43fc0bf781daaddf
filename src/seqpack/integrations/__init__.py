"""Integrations with other libraries; each imports its library only when used.

- `seqpack.integrations.hf` (also ``seqpack.hf``): Hugging Face transformers. Packed
  documents honoured on every attention implementation, LLaMA-Factory's
  ``configure_packing``, the ``"seqpack"`` attention implementation.
- `seqpack.integrations.hf_collator`: the ``data_collator`` for ``transformers.Trainer`` and
  TRL's ``SFTTrainer`` (needs only torch, not transformers).
- `seqpack.integrations.hf_verify`: ``seqpack verify MODEL_OR_CONFIG``, packed vs one by one.

The core (plan, batch, boundaries, loss, attention) never imports from here.
"""
