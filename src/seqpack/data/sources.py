"""Inputs: everything that can be packed, read as chunks of token documents.

A `Source` yields `DocChunk`s: a few thousand documents stored flat (tokens, offsets,
optional labels, optional chat turn starts), in a fixed order, so that packing code never
loops over documents in Python. `open_source(x)` accepts:

- a Parquet file, a directory of ``*.parquet`` files, or a glob;
- a JSONL file (one JSON object per line);
- a Hugging Face ``datasets.Dataset`` (map-style) or ``datasets.IterableDataset`` (streaming);
- a `Documents` store, or any iterable of token-id lists / arrays / dicts;
- ``"chitchat"`` (the bundled corpus, plain text) or ``"chitchat:chat"`` (as messages).

Each row supplies one document through one column: ``input_ids`` (a list of integer token
ids, with an optional ``labels`` column of the same lengths, -100 = no loss), ``messages``
(a chat: a list of ``{"role", "content"}``) or ``text`` (a string); the first present in
that order unless ``column=`` names one. Text and chats are tokenized with the given
tokenizer (a local path or a `TextEncoder`; the bundled GPT-2 BPE by default).

Notable:
- Pre-tokenized Parquet is read zero-copy: the list column's offsets and values become the
  chunk's arrays, no Python object per token or per row.
- Errors name the file and the row (or line) and say what was expected.
- ``chunks(skip=n)`` starts at document n without tokenizing the first n (Parquet skips
  whole row groups from the footer), which is how resumed streams catch up.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqpack.errors import InputError
from seqpack.labels import exclusive_cumsum, segment_of


__all__ = ["DocChunk", "Source", "ParquetSource", "JsonlSource", "HFSource", "IterableSource",
           "DocumentsSource", "open_source"]

CHUNK_ROWS = 16384  # rows per chunk: big enough to amortise Python, small enough for cache


@dataclass
class DocChunk:
    """Documents ``first .. first + n - 1`` of a source, stored flat.

    tokens: integer ids in [0, 2**63) (any integer dtype); offsets: int64 ``(n + 1,)``;
    labels: int32 (int64 when a value needs it) or None (None = the tokens themselves); turns: per-document int64 arrays of turn starts
    (chats only) or None.
    """

    tokens: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray | None = None
    turns: list | None = None
    first: int = 0

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def documents(self):
        """The chunk as a `seqpack.batch.Documents` store (views, no copy)."""
        from seqpack.batch import Documents

        return Documents(self.tokens, self.offsets, self.labels)

    def slice(self, i: int, j: int) -> "DocChunk":
        """Documents i..j-1 of this chunk (views, offsets rebased)."""
        a, b = int(self.offsets[i]), int(self.offsets[j])
        return DocChunk(self.tokens[a:b], self.offsets[i:j + 1] - a,
                        None if self.labels is None else self.labels[a:b],
                        None if self.turns is None else self.turns[i:j], self.first + i)


# ----------------------------------------------------------------------------------------
# turning rows into chunks


def _flat(arrays: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((a.size for a in arrays), np.int64, count=len(arrays))
    offsets = exclusive_cumsum(lengths)
    flat = np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)
    return flat, offsets


INT64_MAX = 2**63 - 1


def _bad_element(x, name: str) -> str:
    """What is wrong with the first non-integer or out-of-range element of a list ("" if none)."""
    for k, v in enumerate(x):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            shown = "null" if v is None else repr(v)
            return f"{name} must be a flat list of integer token ids; {name}[{k}] is {shown} ({type(v).__name__})"
        if not -2**63 <= int(v) <= INT64_MAX:
            return (f"{name}[{k}] = {int(v)} does not fit a signed 64-bit integer; token ids must "
                    f"be below 2**63")
    return ""


def as_token_array(x, where: str, name: str = "input_ids") -> np.ndarray:
    if x is None:
        raise InputError(f"{where}: {name} is null; expected a list of integer token ids")
    if isinstance(x, (str, bytes)):
        raise InputError(f"{where}: {name} is a string; expected a list of integer token ids "
                         f"(pass column='text' and a tokenizer for raw text)")
    try:
        a = np.asarray(x)
    except (ValueError, TypeError, OverflowError) as e:
        raise InputError(f"{where}: {name} is not a flat list of integers ({e})") from None
    if a.size == 0:
        return np.zeros(0, np.int64)
    if a.ndim == 1 and a.dtype.kind in "OfUSb" and isinstance(x, (list, tuple)):
        # mixed values: name the first bad one (a null, a float, a string, an id beyond int64)
        bad = _bad_element(x, name)
        if bad:
            raise InputError(f"{where}: {bad}")
        a = np.asarray(x, dtype=np.int64)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        what = f"dtype {a.dtype}" if a.ndim == 1 else f"shape {a.shape}"
        raise InputError(f"{where}: {name} must be a flat list of integer token ids; got {what}")
    if a.dtype == np.uint64 and a.max() > INT64_MAX:
        k = int(np.flatnonzero(a > INT64_MAX)[0])
        raise InputError(f"{where}: {name}[{k}] = {int(a[k])} does not fit a signed 64-bit integer; "
                         f"token ids must be below 2**63")
    return a.astype(np.int64) if a.dtype == np.uint64 else a


def _check_ids(tokens: np.ndarray, offsets: np.ndarray, where, name: str = "input_ids",
               allowed: int | None = None) -> np.ndarray:
    """Refuse ids outside [0, 2**63) (``allowed`` is one more legal value, -100 for labels),
    naming the row and the position in it. Returns the ids as a signed or uint16/32 array."""
    if not tokens.size:
        return tokens
    if tokens.dtype == np.uint64:
        if tokens.max() > INT64_MAX:
            pos = int(np.flatnonzero(tokens > INT64_MAX)[0])
            row = int(segment_of(offsets, pos))
            raise InputError(f"{where(row)}: {name}[{pos - int(offsets[row])}] = {int(tokens[pos])} does "
                             f"not fit a signed 64-bit integer; token ids must be below 2**63")
        return tokens.astype(np.int64)
    if tokens.dtype.kind == "i" and tokens.min() < 0:
        bad = tokens < 0 if allowed is None else (tokens < 0) & (tokens != allowed)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            row = int(segment_of(offsets, pos))
            legal = "" if allowed is None else f" (the only negative value allowed is {allowed})"
            raise InputError(f"{where(row)}: {name}[{pos - int(offsets[row])}] is a negative id "
                             f"{int(tokens[pos])}{legal}")
    return tokens


def _first_null(values, offsets: np.ndarray) -> tuple[int, int]:
    """(row, position in the row) of the first null among a list column's values."""
    pos = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
    row = int(segment_of(offsets, pos))
    return row, pos - int(offsets[row])


def _narrow_labels(labels: np.ndarray) -> np.ndarray:
    """Labels as int32 where every value fits, else int64 (ids of 2**31 and above keep their value)."""
    if labels.dtype == np.int32:
        return labels
    if labels.size and (labels.max() >= 2**31 or labels.min() < -2**31):
        return labels.astype(np.int64, copy=False)
    return labels.astype(np.int32, copy=False)


class _RowReader:
    """Turns rows (Arrow tables or Python values) into DocChunks for one column mode."""

    def __init__(self, column=None, tokenizer=None, mask_prompt=True, add_eos=True):
        self.column = column
        self.tokenizer = tokenizer
        self.mask_prompt = mask_prompt
        self.add_eos = add_eos
        self.mode = None  # "tokens" | "text" | "messages"
        self.labels_column = None
        self._encoder = None
        # the options as given, before the first rows resolve the column and mode
        self.requested = (column, tokenizer, mask_prompt, add_eos)

    def options(self) -> str:
        """The options as the caller gave them, for resume checks: unlike `describe`, the
        same before and after reading (the data is identified separately)."""
        column, tok, mask, eos = self.requested
        if tok is not None and not isinstance(tok, (str, os.PathLike)):
            tok = getattr(tok, "name", type(tok).__name__)
        return f"column={column} tokenizer={tok} mask_prompt={mask} add_eos={eos}"

    @property
    def encoder(self):
        if self._encoder is None:
            from seqpack.data.tokenize import TextEncoder, load_tokenizer

            t = self.tokenizer
            self._encoder = t if isinstance(t, TextEncoder) else load_tokenizer(t)
        return self._encoder

    def describe(self) -> str:
        tok = "" if self.mode == "tokens" else f" tokenizer={self.encoder.name}"
        mask = f" mask_prompt={self.mask_prompt}" if self.mode == "messages" else ""
        return f"column={self.column} mode={self.mode}{tok}{mask}"

    # -- mode detection

    def detect_names(self, names: list[str], where: str) -> None:
        if self.mode is not None:
            return
        if self.column is not None:
            if self.column not in names:
                raise InputError(f"{where}: no column {self.column!r} (columns: {', '.join(names) or 'none'})")
            col = self.column
        else:
            col = next((c for c in ("input_ids", "messages", "text") if c in names), None)
            if col is None:
                raise InputError(f"{where}: none of the columns input_ids, messages or text is present "
                                 f"(columns: {', '.join(names) or 'none'}); name the column with "
                                 f"column= / --column")
        self.column = col
        self.mode = {"input_ids": "tokens", "messages": "messages", "text": "text"}.get(col)
        if col == "input_ids" and "labels" in names:
            self.labels_column = "labels"

    def detect_arrow(self, schema, where: str) -> None:
        import pyarrow as pa

        if self.mode is not None:
            return
        self.detect_names(schema.names, where)
        t = schema.field(self.column).type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            v = t.value_type
            if pa.types.is_integer(v):
                self.mode = "tokens"
            elif pa.types.is_struct(v):
                self.mode = "messages"
            else:
                raise InputError(f"{where}: column {self.column!r} has type {t}; expected a list of "
                                 f"integers (token ids) or a list of {{role, content}} messages")
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            if self.column == "input_ids":
                raise InputError(f"{where}: column 'input_ids' holds strings ({t}); token ids must be "
                                 f"lists of integers. For raw text, name the text column (--column / "
                                 f"column=) or call it 'text'")
            self.mode = "text"
        else:
            raise InputError(f"{where}: column {self.column!r} has type {t}; expected list<int> "
                             f"(token ids), string (text) or list<struct> (chat messages)")
        if self.labels_column is not None:
            lt = schema.field(self.labels_column).type
            if not ((pa.types.is_list(lt) or pa.types.is_large_list(lt)) and pa.types.is_integer(lt.value_type)):
                raise InputError(f"{where}: column 'labels' has type {lt}; expected a list of integers")

    def detect_value(self, value, where: str) -> None:
        if self.mode is not None and self.mode != "auto":
            return
        if self.column is not None and self.mode is None:
            self.mode = {"input_ids": "tokens", "messages": "messages", "text": "text"}.get(self.column)
            if self.mode is not None:
                return
        if isinstance(value, str):
            self.mode = "text"
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            self.mode = "messages"
        else:
            self.mode = "tokens"

    # -- conversions

    def from_arrow(self, table, where_row, first: int) -> DocChunk:
        """A pyarrow Table/RecordBatch -> DocChunk. ``where_row(j)`` names row j."""
        import pyarrow as pa

        self.detect_arrow(table.schema, where_row(0))
        col = table.column(self.column)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        if self.mode != "tokens":
            return self.from_values(col.to_pylist(), None, where_row, first)
        tokens, offsets = self._id_lists(col, self.column, where_row)
        tokens = _check_ids(tokens, offsets, where_row, self.column)
        labels = None
        if self.labels_column is not None:
            lcol = table.column(self.labels_column)
            if isinstance(lcol, pa.ChunkedArray):
                lcol = lcol.combine_chunks() if lcol.num_chunks != 1 else lcol.chunk(0)
            labels, loffsets = self._id_lists(lcol, self.labels_column, where_row)
            if not np.array_equal(loffsets, offsets):
                j = int(np.flatnonzero(np.diff(loffsets) != np.diff(offsets))[0])
                raise InputError(f"{where_row(j)}: labels has {loffsets[j + 1] - loffsets[j]} entries "
                                 f"but input_ids has {offsets[j + 1] - offsets[j]}")
            labels = _narrow_labels(_check_ids(labels, offsets, where_row, "labels", allowed=-100))
        return DocChunk(tokens, offsets, labels, None, first)

    @staticmethod
    def _id_lists(col, name: str, where_row) -> tuple[np.ndarray, np.ndarray]:
        """A list<int> Arrow column -> (values, offsets), refusing nulls and other types."""
        import pyarrow as pa

        t = col.type
        if not ((pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)):
            raise InputError(f"{where_row(0)}: column {name!r} has type {t}; expected a list of "
                             f"integer token ids")
        if col.null_count:
            j = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{where_row(j)}, column {name!r}: the list is null; expected a list of "
                             f"integers")
        try:
            return _list_arrays(col)
        except _NullInList as e:
            raise InputError(f"{where_row(e.row)}, column {name!r}: element {e.index} is null; token "
                             f"ids must be integers") from None

    def from_values(self, values: list, labels: list | None, where_row, first: int) -> DocChunk:
        """Python values of the column (token lists, strings or message lists) -> DocChunk."""
        if values:
            self.detect_value(values[0], where_row(0))
        if self.mode == "tokens":
            arrays = [as_token_array(v, where_row(j)) for j, v in enumerate(values)]
            tokens, offsets = _flat(arrays, np.int64)
            _check_ids(tokens, offsets, where_row)
            lab = None
            if labels is not None:
                larr = [as_token_array(v, where_row(j), "labels") for j, v in enumerate(labels)]
                for j, (a, b) in enumerate(zip(arrays, larr)):
                    if a.size != b.size:
                        raise InputError(f"{where_row(j)}: labels has {b.size} entries but input_ids "
                                         f"has {a.size}")
                lab, _ = _flat(larr, np.int64)
                lab = _narrow_labels(_check_ids(lab, offsets, where_row, "labels", allowed=-100))
            return DocChunk(_narrow(tokens), offsets, lab, None, first)
        enc = self.encoder
        if self.mode == "text":
            for j, v in enumerate(values):
                if not isinstance(v, str):
                    raise InputError(f"{where_row(j)}: {self.column} is {type(v).__name__}, expected a string")
            ids = enc.encode_batch(values)
            if self.add_eos and enc.eos_id is not None:
                eos = np.array([enc.eos_id], np.int32)
                ids = [np.concatenate([x, eos]) if x.size else x for x in ids]
            tokens, offsets = _flat(ids, np.int32)
            return DocChunk(tokens, offsets, None, None, first)
        from seqpack.data.tokenize import encode_chat

        toks, labs, turns = encode_chat(enc, values, mask_prompt=self.mask_prompt, where=where_row)
        tokens, offsets = _flat(toks, np.int32)
        lab = _flat(labs, np.int32)[0] if labs is not None else None
        return DocChunk(tokens, offsets, lab, turns, first)


def _narrow(tokens: np.ndarray) -> np.ndarray:
    if tokens.size and tokens.dtype.itemsize > 4 and tokens.max() < 2**31 and tokens.min() >= -2**31:
        return tokens.astype(np.int32)
    return tokens


def _list_arrays(col) -> tuple[np.ndarray, np.ndarray]:
    """A pyarrow (Large)ListArray of integers -> (values, offsets int64 from 0), zero-copy
    for the values where Arrow allows it."""
    offs = col.offsets.to_numpy()
    vals = col.values
    a, b = int(offs[0]), int(offs[-1])
    if a or b != len(vals):
        vals = vals.slice(a, b - a)
    offsets = offs.astype(np.int64)
    if a:
        offsets = offsets - a
    if vals.null_count:
        j = int(np.flatnonzero(vals.is_null().to_numpy(zero_copy_only=False))[0])
        raise _NullInList(j, offsets)
    values = vals.to_numpy(zero_copy_only=False)
    return values, offsets


class _NullInList(Exception):
    """A null element inside a list column (position in the flat values)."""

    def __init__(self, pos: int, offsets: np.ndarray):
        self.row = int(segment_of(offsets, pos))
        self.index = pos - int(offsets[self.row])


# ----------------------------------------------------------------------------------------
# sources


class Source:
    """Documents in a fixed order, read in chunks. Subclasses set ``name``."""

    name = "source"

    def chunks(self, skip: int = 0) -> Iterator[DocChunk]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies the data and options, for resume checks (not for output metadata)."""
        return self.name

    def __iter__(self) -> Iterator[DocChunk]:
        return self.chunks()


class DocumentsSource(Source):
    """An in-memory `Documents` store (e.g. `load_chitchat()`)."""

    def __init__(self, docs, name: str = "documents", chunk_docs: int = CHUNK_ROWS):
        self.docs = docs
        self.name = name
        self.chunk_docs = chunk_docs

    def chunks(self, skip: int = 0) -> Iterator[DocChunk]:
        d, n = self.docs, len(self.docs)
        for i in range(skip, n, self.chunk_docs):
            j = min(n, i + self.chunk_docs)
            a, b = int(d.offsets[i]), int(d.offsets[j])
            yield DocChunk(d.tokens[a:b], d.offsets[i:j + 1] - a,
                           None if d.labels is None else _narrow_labels(d.labels[a:b]),
                           None, i)

    def fingerprint(self) -> str:
        h = hashlib.sha1(np.ascontiguousarray(self.docs.offsets).tobytes()).hexdigest()[:16]
        return f"{self.name}:{len(self.docs)}:{h}"


class IterableSource(Source):
    """A Python iterable of documents: token-id lists or arrays, strings (text), message
    lists (chats) or dicts with ``input_ids`` (+ ``labels``), ``text`` or ``messages``.

    A sequence (list, tuple) or a zero-argument callable returning a fresh iterator can be
    read again; a plain iterator or generator only once (`seqpack pack` reads its input
    once anyway; an online dataset over it lasts one epoch).
    """

    def __init__(self, items, *, column=None, tokenizer=None, mask_prompt=True, add_eos=True,
                 name: str | None = None, chunk_docs: int = 4096):
        self.items = items
        self.reader = _RowReader(column, tokenizer, mask_prompt, add_eos)
        self.chunk_docs = chunk_docs
        self.reiterable = callable(items) or (hasattr(items, "__len__") and hasattr(items, "__getitem__"))
        self.name = name or (f"iterable:{type(items).__name__}")
        self._used = False

    def _iter(self):
        if callable(self.items):
            return iter(self.items())
        if not self.reiterable:
            if self._used:
                raise RuntimeError(f"{self.name}: this iterator was already consumed; pass a list or "
                                   f"a callable returning a fresh iterator to read it again")
            self._used = True
        return iter(self.items)

    def chunks(self, skip: int = 0) -> Iterator[DocChunk]:
        it = self._iter()
        if skip:
            it = itertools.islice(it, skip, None)
        first = skip
        while True:
            rows = list(itertools.islice(it, self.chunk_docs))
            if not rows:
                return
            yield self._rows_chunk(rows, first)
            first += len(rows)

    def _rows_chunk(self, rows: list, first: int) -> DocChunk:
        where = lambda j: f"{self.name} document {first + j}"  # noqa: E731
        r = self.reader
        if isinstance(rows[0], dict):
            r.detect_names(list(rows[0].keys()), where(0))
            values, labels = [], ([] if r.labels_column else None)
            for j, row in enumerate(rows):
                if not isinstance(row, dict) or r.column not in row:
                    keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                    raise InputError(f"{where(j)}: no {r.column!r} field (has: {keys})")
                values.append(row[r.column])
                if labels is not None:
                    if "labels" not in row:
                        raise InputError(f"{where(j)}: no 'labels' field while earlier rows have one")
                    labels.append(row["labels"])
            return r.from_values(values, labels, where, first)
        return r.from_values(rows, None, where, first)

    def fingerprint(self) -> str:
        n = len(self.items) if hasattr(self.items, "__len__") else "?"
        return f"{self.name}:{n}:{self.reader.options()}"


def _parquet_where(path: str, row: int) -> str:
    return f"{path} row {row}"


class ParquetSource(Source):
    """One or more Parquet files, read by record batches (zero-copy for token-id lists)."""

    def __init__(self, paths, *, column=None, tokenizer=None, mask_prompt=True, add_eos=True,
                 batch_rows: int = CHUNK_ROWS):
        self.paths = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
        if not self.paths:
            raise InputError("no Parquet files given")
        self.reader = _RowReader(column, tokenizer, mask_prompt, add_eos)
        self.batch_rows = batch_rows
        self.name = self.paths[0] if len(self.paths) == 1 else f"{self.paths[0]} (+{len(self.paths) - 1} files)"
        self._meta = None

    def _open(self, path: str):
        import pyarrow.parquet as pq

        if not os.path.exists(path):
            raise FileNotFoundError(f"input file {path!r} does not exist")
        try:
            # streamed page reads: far less memory than pre-buffering whole row groups
            return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
        except Exception as e:
            raise InputError(f"{path}: not a readable Parquet file, it may be truncated or corrupt "
                             f"({type(e).__name__}: {e})") from None

    def _peek(self):
        """Open every file once: check it reads, learn row counts and the column mode."""
        if self._meta is None:
            meta = []
            for p in self.paths:
                f = self._open(p)
                self.reader.detect_arrow(f.schema_arrow, p)
                meta.append([f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)])
            self._meta = meta
        return self._meta

    def num_rows(self) -> int:
        return sum(sum(m) for m in self._peek())

    def chunks(self, skip: int = 0) -> Iterator[DocChunk]:
        meta = self._peek()
        doc = 0  # global index of the first row of the current file
        for path, groups in zip(self.paths, meta):
            nrows = sum(groups)
            if skip >= doc + nrows:
                doc += nrows
                continue
            f = self._open(path)
            self.reader.detect_arrow(f.schema_arrow, path)
            cols = [self.reader.column] + ([self.reader.labels_column] if self.reader.labels_column else [])
            # skip whole row groups before `skip`, then rows inside the first one kept
            g, row = 0, doc
            while g < len(groups) and row + groups[g] <= skip:
                row += groups[g]
                g += 1
            drop = skip - row if skip > row else 0
            batches = f.iter_batches(batch_size=self.batch_rows, row_groups=list(range(g, len(groups))),
                                     columns=cols, use_threads=False)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except Exception as e:
                    group = int(np.searchsorted(np.cumsum(groups), row - doc, side="right"))
                    raise InputError(f"{path}: could not decode rows from {row - doc} on (row group "
                                     f"{group}): the file is corrupt or truncated ({type(e).__name__}: {e})") from None
                if drop:
                    if drop >= batch.num_rows:
                        drop -= batch.num_rows
                        row += batch.num_rows
                        continue
                    batch = batch.slice(drop)
                    row += drop
                    drop = 0
                base = row - doc
                chunk = self.reader.from_arrow(batch, lambda j, b=base: _parquet_where(path, b + j), row)
                row += batch.num_rows
                yield chunk
            doc += nrows

    def fingerprint(self) -> str:
        self._peek()
        parts = [f"{os.path.abspath(p)}:{os.path.getsize(p)}" for p in self.paths]
        return "parquet:" + "|".join(parts) + ":" + self.reader.options()


class JsonlSource(Source):
    """JSON Lines files: one object per line (blank lines are skipped, not counted)."""

    def __init__(self, paths, *, column=None, tokenizer=None, mask_prompt=True, add_eos=True,
                 batch_rows: int = 4096):
        self.paths = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
        self.reader = _RowReader(column, tokenizer, mask_prompt, add_eos)
        self.batch_rows = batch_rows
        self.name = self.paths[0] if len(self.paths) == 1 else f"{self.paths[0]} (+{len(self.paths) - 1} files)"
        for p in self.paths:
            if not os.path.exists(p):
                raise FileNotFoundError(f"input file {p!r} does not exist")

    def _lines(self) -> Iterator[tuple[str, int, int, bytes]]:
        """(path, line number, byte offset of the line in the file, the line) of non-blank lines."""
        for path in self.paths:
            with open(path, "rb") as f:
                offset = 0
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield path, lineno, offset, line
                    offset += len(line)

    def chunks(self, skip: int = 0) -> Iterator[DocChunk]:
        lines = self._lines()
        if skip:
            lines = itertools.islice(lines, skip, None)
        first = skip
        while True:
            block = list(itertools.islice(lines, self.batch_rows))
            if not block:
                return
            rows = []
            for path, lineno, offset, line in block:
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(f"{path} line {lineno}: byte 0x{line[e.start]:02x} at byte offset "
                                     f"{offset + e.start:,} (column {e.start + 1} of the line) is not UTF-8; "
                                     f"JSON Lines must be UTF-8 encoded: re-encode the file") from None
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    cut = "" if line.endswith(b"\n") else " (the last line has no newline: the file looks truncated)"
                    near = text[max(0, e.pos - 20):e.pos + 20].strip()
                    raise InputError(f"{path} line {lineno}, column {e.colno}: invalid JSON ({e.msg}) "
                                     f"near {near!r}{cut}") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
                rows.append(obj)
            where = lambda j, b=block: f"{b[j][0]} line {b[j][1]}"  # noqa: E731
            r = self.reader
            r.detect_names(list(rows[0].keys()), where(0))
            values, labels = [], ([] if r.labels_column else None)
            for j, obj in enumerate(rows):
                if r.column not in obj:
                    raise InputError(f"{where(j)}: no {r.column!r} field (has: {', '.join(obj) or 'nothing'})")
                values.append(obj[r.column])
                if labels is not None:
                    labels.append(obj.get("labels"))
            yield r.from_values(values, labels, where, first)
            first += len(rows)

    def fingerprint(self) -> str:
        parts = [f"{os.path.abspath(p)}:{os.path.getsize(p)}" for p in self.paths]
        return "jsonl:" + "|".join(parts) + ":" + self.reader.options()


class HFSource(Source):
    """A Hugging Face ``datasets.Dataset`` (read as Arrow) or ``IterableDataset`` (streamed)."""

    def __init__(self, dataset, *, column=None, tokenizer=None, mask_prompt=True, add_eos=True,
                 batch_rows: int = 4096):
        self.ds = dataset
        self.streaming = type(dataset).__name__ == "IterableDataset"
        self.reader = _RowReader(column, tokenizer, mask_prompt, add_eos)
        self.batch_rows = batch_rows
        self.name = f"hf:{'streaming' if self.streaming else 'map'}"

    def chunks(self, skip: int = 0) -> Iterator[DocChunk]:
        import pyarrow as pa

        first = skip
        if not self.streaming:
            ds = self.ds.select(range(skip, len(self.ds))) if skip else self.ds
            for tbl in ds.with_format("arrow").iter(batch_size=self.batch_rows):
                where = lambda j, b=first: f"{self.name} row {b + j}"  # noqa: E731
                chunk = self.reader.from_arrow(tbl, where, first)
                first += tbl.num_rows
                yield chunk
            return
        ds = self.ds.skip(skip) if skip else self.ds
        for batch in ds.iter(batch_size=self.batch_rows):
            where = lambda j, b=first: f"{self.name} row {b + j}"  # noqa: E731
            if isinstance(batch, dict):
                self.reader.detect_names(list(batch), where(0))
                n = len(batch[self.reader.column])
                if self.reader.mode in (None, "tokens"):
                    try:
                        tbl = pa.table({k: batch[k] for k in [self.reader.column]
                                        + ([self.reader.labels_column] if self.reader.labels_column else [])})
                    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                        raise InputError(f"{where(0)}: column {self.reader.column!r} is not a list of "
                                         f"integers ({e})") from None
                    chunk = self.reader.from_arrow(tbl, where, first)
                else:
                    chunk = self.reader.from_values(batch[self.reader.column], None, where, first)
            else:  # arrow-formatted streaming
                n = batch.num_rows
                chunk = self.reader.from_arrow(batch, where, first)
            first += n
            yield chunk

    def fingerprint(self) -> str:
        fp = getattr(self.ds, "_fingerprint", None)
        n = len(self.ds) if not self.streaming else "?"
        return f"{self.name}:{fp}:{n}:{self.reader.options()}"


class _ChitchatChat(IterableSource):
    def __init__(self, tokenizer=None, mask_prompt=True):
        from seqpack.data.corpus import chitchat_messages

        super().__init__(chitchat_messages(), column="messages", tokenizer=tokenizer,
                         mask_prompt=mask_prompt, name="chitchat:chat")


def _expand_paths(spec: str) -> list[str]:
    if any(ch in spec for ch in "*?["):
        paths = sorted(_glob.glob(spec))
        if not paths:
            raise FileNotFoundError(f"no file matches {spec!r}")
        return paths
    if os.path.isdir(spec):
        paths = sorted(str(p) for p in Path(spec).iterdir()
                       if p.suffix in (".parquet", ".jsonl") or p.name.endswith(".json"))
        if not paths:
            raise FileNotFoundError(f"directory {spec!r} holds no .parquet or .jsonl files")
        return paths
    if not os.path.exists(spec):
        raise FileNotFoundError(f"input {spec!r} does not exist (expected a .parquet or .jsonl file, "
                                f"a directory of them, a glob, or 'chitchat')")
    return [spec]


def open_source(inputs, *, column=None, tokenizer=None, mask_prompt: bool = True,
                add_eos: bool = True) -> Source:
    """Anything packable -> a `Source` (see the module docstring for what is accepted)."""
    if isinstance(inputs, Source):
        return inputs
    batch = sys.modules.get("seqpack.batch")  # a Documents store implies batch was imported
    if batch is not None and isinstance(inputs, batch.Documents):
        return DocumentsSource(inputs)
    if isinstance(inputs, (str, Path)) or (isinstance(inputs, (list, tuple)) and inputs
                                           and all(isinstance(x, (str, Path)) for x in inputs)
                                           and not isinstance(inputs, str) and _looks_like_paths(inputs)):
        specs = [str(inputs)] if isinstance(inputs, (str, Path)) else [str(x) for x in inputs]
        if specs == ["chitchat"]:
            from seqpack.data.corpus import load_chitchat

            return DocumentsSource(load_chitchat(), name="chitchat")
        if specs == ["chitchat:chat"]:
            return _ChitchatChat(tokenizer, mask_prompt)
        paths = [p for s in specs for p in _expand_paths(s)]
        kinds = {"parquet" if p.endswith(".parquet") else "jsonl" if p.endswith((".jsonl", ".json")) else "?"
                 for p in paths}
        if "?" in kinds or len(kinds) != 1:
            raise InputError(f"inputs must all be .parquet or all .jsonl files; got {', '.join(paths[:4])}")
        cls = ParquetSource if kinds == {"parquet"} else JsonlSource
        return cls(paths, column=column, tokenizer=tokenizer, mask_prompt=mask_prompt, add_eos=add_eos)
    if type(inputs).__module__.startswith("datasets"):
        return HFSource(inputs, column=column, tokenizer=tokenizer, mask_prompt=mask_prompt, add_eos=add_eos)
    if isinstance(inputs, Iterable) or callable(inputs):
        return IterableSource(inputs, column=column, tokenizer=tokenizer, mask_prompt=mask_prompt,
                              add_eos=add_eos)
    raise TypeError(f"cannot read documents from a {type(inputs).__name__}")


def _looks_like_paths(items) -> bool:
    # a list of strings is a list of paths when the first one names a file, a directory or a glob
    first = str(items[0])
    return os.path.sep in first or first.endswith((".parquet", ".jsonl", ".json")) or os.path.exists(first)
