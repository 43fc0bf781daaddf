"""Loading a training corpus: a data spec -> documents (and, for a packed file, its rows).

`load_documents(spec)` is what ``seqpack train --data`` reads; `load_packed(path)` reads a
`seqpack pack` output back as documents plus the plan that puts them in their stored rows,
so training sees exactly the packed rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seqpack.errors import InputError

__all__ = ["load_documents", "load_packed"]


def load_documents(spec: str, max_docs: int | None = None):
    """``(Documents, vocab_size, plan)`` for a data spec.

    - ``"chitchat"``: the bundled corpus (plan None: the loader plans it).
    - a `seqpack pack` output (Parquet file or directory with seqpack metadata): its rows
      as stored (`load_packed`).
    - ``hf:NAME[:SPLIT[:COLUMN]]``: a Hugging Face dataset (split ``train`` by default;
      COLUMN names the column of token ids or text, as `open_source`'s ``column``).
    - anything else `seqpack.data.sources.open_source` reads (Parquet/JSONL of documents):
      documents, plan None.

    ``max_docs`` keeps the first documents only. Errors of the source (which name the file,
    row and column) are `InputError`s.
    """
    from seqpack.batch import Documents

    if spec == "chitchat":
        from seqpack.data.corpus import VOCAB_SIZE, load_chitchat

        return load_chitchat(max_docs), VOCAB_SIZE, None
    if not spec.startswith("hf:") and Path(spec).exists():
        try:
            from seqpack.data.pack import packed_metadata

            packed_metadata(spec)
        except (ValueError, OSError, KeyError):
            pass
        else:
            return load_packed(spec)
    source, column = spec, None
    if spec.startswith("hf:"):
        try:
            import datasets
        except ImportError:
            raise InputError(f"--data {spec}: Hugging Face datasets need the `datasets` package "
                             f"(pip install datasets)") from None

        name, *rest = spec[3:].split(":")
        if len(rest) > 2 or not name:
            raise InputError(f"--data {spec}: write hf:NAME[:SPLIT[:COLUMN]], e.g. hf:imdb:train:text")
        source = datasets.load_dataset(name, split=rest[0] if rest and rest[0] else "train")
        column = rest[1] if len(rest) > 1 and rest[1] else None
    toks, offs, labs, n = [], [np.zeros(1, np.int64)], [], 0
    has_labels = False
    for chunk in _read_chunks(source, spec, column):
        toks.append(np.asarray(chunk.tokens, dtype=np.int64))
        labs.append(None if chunk.labels is None else np.asarray(chunk.labels, dtype=np.int64))
        has_labels |= chunk.labels is not None
        offs.append(np.asarray(chunk.offsets[1:], dtype=np.int64) + n)
        n += int(chunk.offsets[-1])
        if max_docs is not None and sum(len(o) for o in offs) - 1 >= max_docs:
            break
    tokens = np.concatenate(toks) if toks else np.zeros(0, np.int64)
    offsets = np.concatenate(offs)
    labels = None
    if has_labels:
        labels = np.concatenate([t if lab is None else lab for t, lab in zip(toks, labs)])
    docs = Documents(tokens, offsets, labels)
    if max_docs is not None and len(docs) > max_docs:
        end = int(offsets[max_docs])
        docs = Documents(tokens[:end], offsets[:max_docs + 1], None if labels is None else labels[:end])
    vocab = int(tokens.max()) + 1 if tokens.size else 1
    return docs, vocab, None


def _read_chunks(source, spec: str, column):
    """The source's chunks; its errors (which name the file, row and column) become
    `InputError`s, so the command line prints them as one line."""
    from seqpack.data.sources import open_source

    try:
        yield from open_source(source, column=column).chunks()
    except InputError:
        raise
    except ValueError as e:
        raise InputError(f"--data {spec}: {e}") from None


def load_packed(path):
    """A `seqpack pack` output as ``(Documents, vocab_size, PackPlan)``: piece k of the
    file is document k, and the plan's bin r holds row r's pieces in their stored order.

    Labels are kept: stored next-token labels (``label_shift="collator"``) are moved one
    place right so that collation reads them back, at the cost of the target of a split
    piece's last token (the first token of the next piece), which becomes -100.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from seqpack.batch import Documents
    from seqpack.data.pack import _flat_list, packed_files, packed_metadata
    from seqpack.labels import exclusive_cumsum, to_aligned
    from seqpack.plan import PackPlan

    meta = packed_metadata(path)
    cap = int(meta["capacity"])
    table = pa.concat_tables([pq.read_table(f, columns=["input_ids", "labels", "doc_lengths"])
                              for f in packed_files(path)]).combine_chunks()

    def flat(name):
        col = table.column(name)
        return _flat_list(col.chunk(0) if col.num_chunks else pa.array([], col.type))

    tokens, _ = flat("input_ids")
    labels, _ = flat("labels")
    lens, row_off = flat("doc_lengths")
    lens = lens.astype(np.int64)
    offsets = exclusive_cumsum(lens)
    labels = labels.astype(np.int64)
    if meta.get("label_shift", "model") == "collator":
        labels = to_aligned(labels, offsets)
    docs = Documents(tokens.astype(np.int64), offsets, labels)
    plan = PackPlan.from_rows(lens, np.diff(row_off), cap, strategy=f"{meta.get('strategy', '?')} (stored)")
    vocab = int(tokens.max()) + 1 if tokens.size else 1
    return docs, vocab, plan
