"""Data: the bundled corpus, input readers, offline and online packing, rank balancing.

    sources.py   anything packable -> chunks of flat token documents (Parquet, JSONL,
                 HF datasets, iterables), errors naming file and row
    tokenize.py  tokenizers from a local path; chats -> tokens, prompt-masked labels, turns
    pack.py      `seqpack pack`: global plan over the lengths, bounded memory, Parquet rows
    load.py      a training corpus from a data spec; a packed file back as documents + rows
    online.py    PackedIterableDataset: buffered best fit, exact resume, balanced ranks
    corpus.py    the bundled chitchat corpus and GPT-2 BPE; chitchat_batches()

Modules are imported on use; `import seqpack.data` loads nothing heavy.
"""

import importlib

# name -> module that defines it; resolved on first attribute access (PEP 562)
_LAZY = {
    "open_source": "seqpack.data.sources",
    "load_tokenizer": "seqpack.data.tokenize",
    "pack_to_parquet": "seqpack.data.pack",
    "read_packed": "seqpack.data.pack",
    "load_documents": "seqpack.data.load",
    "load_packed": "seqpack.data.load",
    "PackedIterableDataset": "seqpack.data.online",
    "LoaderState": "seqpack.data.online",
    "load_chitchat": "seqpack.data.corpus",
    "chitchat_batches": "seqpack.data.corpus",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'seqpack.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
