"""seqpack: packed sequences with block-diagonal attention.

The pipeline, one module per stage:

    lengths --plan--> PackPlan --collate--> PackedBatch --> DocBoundaries --> attention
    (plan.py)                    (batch.py)                 (boundaries.py)   (attention/)

`collate_packed` is the one road from planned pieces to a batch: packed files, the online
packer, the trainer and the Hugging Face collator all go through it (rows packed elsewhere
become a plan with `PackPlan.from_rows`). `seqpack.labels` holds the label rules
(`IGNORE_INDEX`, the two shift conventions) without importing torch.

Integrations (``seqpack.hf`` for Hugging Face transformers), data streaming
(``seqpack.data``), the demo GPT and its training loop (``seqpack.model``,
``seqpack.train``) build on that core and are imported only when touched, so
``import seqpack`` stays light: torch and numpy, nothing else. Benchmark harnesses live
in ``seqpack.bench``, which product code never imports.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access (PEP 562).
_LAZY = {
    # boundaries
    "DocBoundaries": "seqpack.boundaries",
    "get_seqlens_in_batch": "seqpack.boundaries",
    "get_unpad_data": "seqpack.boundaries",
    # planning
    "plan_packing": "seqpack.plan",
    "PackPlan": "seqpack.plan",
    # batching
    "PackedBatch": "seqpack.batch",
    "collate_packed": "seqpack.batch",
    "Documents": "seqpack.batch",
    "IGNORE_INDEX": "seqpack.labels",
    # loss
    "packed_cross_entropy": "seqpack.loss",
    # attention
    "varlen_attention": "seqpack.attention",
    # integrations (transformers is imported only when these are used)
    "configure_packing": "seqpack.integrations.hf",
}

_SUBMODULES = {"hf": "seqpack.hf"}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'seqpack' has no attribute {name!r}")
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__():
    return __all__
