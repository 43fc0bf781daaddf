"""Data: the bundled corpus, input readers, offline and online packing, rank balancing.

    sources.py   anything packable -> chunks of flat token documents (Parquet, JSONL,
                 HF datasets, iterables), errors naming file and row
    tokenize.py  tokenizers from a local path; chats -> tokens, prompt-masked labels, turns
    pack.py      `seqpack pack`: global plan over the lengths, bounded memory, Parquet rows
    online.py    PackedIterableDataset: buffered best fit, exact resume, balanced ranks
    corpus.py    the bundled chitchat corpus and GPT-2 BPE; chitchat_batches()

Modules are imported on use; `import seqpack.data` loads nothing heavy.
"""
