"""Online packing: an `IterableDataset` that packs a stream as it arrives, resumably.

`PackedIterableDataset(source, capacity=..., batch_size=...)` keeps a bounded buffer of
documents (``buffer_size``) and, for every *step*, fills ``world_size x batch_size`` rows of
``capacity`` tokens from it, longest document first:

- each document goes to the rank with the least attention cost so far (sum of squared
  document lengths) among the ranks where it still fits, into that rank's best-fitting
  row (least room left that holds it). Long documents are spread over ranks first, the
  short ones then fill the gaps, so every rank gets about the same tokens *and* the same
  attention work per step.
- every rank (and every DataLoader worker) runs the same deterministic step builder over
  the same stream and keeps only its own share, so all ranks yield the same number of
  batches with no communication; worker k of K materialises steps k, k+K, ... (counted
  from where the iteration started, so that a resumed DataLoader keeps the order)
- documents longer than a row follow ``overflow`` ("split" cuts chats between turns where
  possible); empty documents are skipped and counted.

Resuming: ``state_dict()`` holds the position in the source, the buffered pieces (their
tokens when the source cannot be indexed), the step and the counters; ``load_state_dict``
refuses a state saved for another source or other options and says which. With a plain
DataLoader and worker processes, build with ``attach_state=True``: every batch then carries
its worker's state (``batch.state``), and `LoaderState` keeps the last consumed one, which
resumes every worker in the uninterrupted order (all workers build every step). torchdata's
``StatefulDataLoader`` needs nothing more: it calls ``state_dict``/``load_state_dict``
inside each worker.

Order: map-style sources (`Documents`, lists) are shuffled per epoch with
``np.random.default_rng([seed, epoch])`` (``set_epoch``); streams are read in order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from seqpack.batch import Documents, PackedBatch, collate_packed
from seqpack.errors import InputError
from seqpack.labels import IGNORE_INDEX, check_label_shift, exclusive_cumsum, piece_labels
from seqpack.plan import PackPlan

__all__ = ["PackedIterableDataset", "StreamBatch", "LoaderState", "rank_and_world_size"]

STATE_VERSION = 1


def rank_and_world_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: as given, else from an initialised torch.distributed, else (0, 1)."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise InputError(f"rank must be in [0, world_size={world_size}); got {rank}")
    return int(rank), int(world_size)


@dataclass
class StreamBatch(PackedBatch):
    """A `PackedBatch` that knows which step, rank and worker made it, and (with
    ``attach_state=True``) the state of its worker right after it."""

    step: int = -1
    rank: int = 0
    worker: int = 0
    state: dict | None = field(default=None, repr=False)

    def _extra(self):
        return {"step": self.step, "rank": self.rank, "worker": self.worker, "state": self.state}

    def to(self, device, non_blocking: bool = False) -> "StreamBatch":
        return StreamBatch(**_fields_of(super().to(device, non_blocking)), **self._extra())

    def pin_memory(self) -> "StreamBatch":
        return StreamBatch(**_fields_of(super().pin_memory()), **self._extra())


def _fields_of(b: PackedBatch) -> dict:
    return {f.name: getattr(b, f.name) for f in fields(PackedBatch)}


class LoaderState:
    """Resume a plain ``DataLoader`` with worker processes exactly, in the same order.

    Call ``update(batch)`` on every batch the training loop has consumed; ``state_dict()``
    is then the state right after the last consumed batch. Every worker builds every step
    (keeping only its own), so that one state resumes them all: the workers restart at the
    next step in the DataLoader's round-robin order (worker 0 first), so the resumed run
    yields exactly the batches the uninterrupted run would have yielded next, in the same
    order, with any ``num_workers``. Batches prefetched but not consumed are made again.
    Needs ``attach_state=True`` on the dataset. Before any batch, the state is ``{}``
    (start from the beginning).
    """

    def __init__(self):
        self.latest: dict | None = None

    def update(self, batch: StreamBatch) -> None:
        if batch.state is None:
            raise InputError("this batch carries no state: build the dataset with attach_state=True")
        if self.latest is None or _position(batch.state) > _position(self.latest):
            self.latest = batch.state

    def state_dict(self) -> dict:
        return {} if self.latest is None else _for_any_worker(self.latest)

    def load_state_dict(self, state: dict) -> None:
        self.latest = state or None


def _position(state: dict) -> tuple[int, int]:
    return int(state["epoch"]), int(state["step"])


def _for_any_worker(state: dict) -> dict:
    """A worker's state as one every worker resumes from: the DataLoader asks worker 0
    first, so worker w makes steps ``next + w, next + w + K, ...``."""
    return {**state, "worker": None, "workers_total": None, "base": int(state["step"])}


# ----------------------------------------------------------------------------------------


@dataclass
class _Piece:
    doc: int  # document index in the source
    start: int
    stop: int
    tokens: np.ndarray  # the piece's tokens (a view)
    labels: np.ndarray | None  # the piece's label sources, None = tokens
    next_label: int  # label source of the token after the piece (-100 at the document end)


class _Reader:
    """Documents in epoch order -> pieces of at most ``limit`` tokens."""

    def __init__(self, ds: "PackedIterableDataset", epoch: int, pos: int):
        self.ds, self.pos = ds, pos
        self.exhausted = False
        if ds._docs is not None:
            n = len(ds._docs)
            self.order = (np.random.default_rng([ds.seed, epoch]).permutation(n) if ds.shuffle
                          else np.arange(n))
            self._it = self._indexed(pos)
        else:
            self._it = self._streamed(pos)

    def _indexed(self, pos):
        d = self.ds._docs
        off, lab = d.offsets, d.labels
        for i in self.order[pos:].tolist():
            a, b = int(off[i]), int(off[i + 1])
            yield i, d.tokens[a:b], None if lab is None else lab[a:b], None

    def _streamed(self, pos):
        for chunk in self.ds._source.chunks(skip=pos):
            off = chunk.offsets.tolist()
            for j in range(len(chunk)):
                a, b = off[j], off[j + 1]
                yield (chunk.first + j, chunk.tokens[a:b],
                       None if chunk.labels is None else chunk.labels[a:b],
                       None if chunk.turns is None else chunk.turns[j])

    def read(self, want: int, counters: dict) -> list[_Piece]:
        """About ``want`` more pieces (whole documents; fewer at the end of the stream)."""
        from seqpack.data.tokenize import split_points

        out: list[_Piece] = []
        limit, overflow = self.ds.max_piece, self.ds.overflow
        while len(out) < want:
            try:
                doc, toks, labs, turns = next(self._it)
            except StopIteration:
                self.exhausted = True
                break
            self.pos += 1
            n = toks.size
            counters["docs"] += 1
            if n == 0:
                counters["empty_docs"] += 1
                continue
            if n <= limit:
                out.append(_Piece(doc, 0, n, toks, labs, IGNORE_INDEX))
                continue
            if overflow == "error":
                raise InputError(f"document {doc} has {n:,} tokens but rows hold {limit:,}: pass "
                                 f"overflow='split', 'truncate' or 'drop'")
            if overflow == "drop":
                counters["dropped_docs"] += 1
                counters["dropped_tokens"] += n
                continue
            if overflow == "truncate":
                counters["truncated_docs"] += 1
                counters["dropped_tokens"] += n - limit
                out.append(_Piece(doc, 0, limit, toks[:limit], None if labs is None else labs[:limit],
                                  int((labs if labs is not None else toks)[limit])))
                continue
            counters["split_docs"] += 1
            starts = split_points(n, turns, limit).tolist() + [n]
            src = labs if labs is not None else toks
            for s, e in zip(starts[:-1], starts[1:]):
                out.append(_Piece(doc, s, e, toks[s:e], None if labs is None else labs[s:e],
                                  int(src[e]) if e < n else IGNORE_INDEX))
        return out


class PackedIterableDataset(torch.utils.data.IterableDataset):
    """Packs documents into batches on the fly (see the module docstring).

    Args:
        source: a `Documents` store or a list of token lists / dicts (indexable: shuffled
            per epoch, buffer resumed by reference), or anything `open_source` reads
            (files, HF datasets, iterables: streamed in order, buffer resumed by value).
        capacity: tokens per row (``layout="rows"``) or per bin of the 1D buffer.
        batch_size: rows per batch and rank; a 1D batch is ``batch_size * capacity`` tokens.
        layout: ``"rows"`` -> ``(batch_size, capacity)`` tensors; ``"1d"`` -> one buffer
            ``(batch_size * capacity,)``, padding at the end, ``max_seqlen`` constant.
        buffer_size: documents (pieces) held for best fit; more gives fuller rows and
            better rank balance, at the cost of memory and of order.
        max_num_docs: pad ``cu_seqlens`` to this many segments (static shapes); the packer
            then never puts more documents in a batch than fit.
        max_seqlen: longest piece (default ``capacity``); longer documents follow ``overflow``.
        overflow: "split" (default; chats between turns where possible), "truncate",
            "drop" or "error".
        seed, shuffle: epoch shuffle of indexable sources.
        label_shift: "model" (HF) or "collator" (nanochat), as `collate_packed`.
        rank, world_size: this process's share; default from torch.distributed.
        attach_state: put the worker's state on every batch (for `LoaderState`).
        column, tokenizer, mask_prompt: how rows become documents (see `open_source`).
    """

    def __init__(self, source, *, capacity: int, batch_size: int = 1, layout: str = "rows",
                 buffer_size: int = 1024, max_num_docs: int | None = None, max_seqlen: int | None = None,
                 overflow: str = "split", seed: int = 0, shuffle: bool = True, label_shift: str = "model",
                 rank: int | None = None, world_size: int | None = None, pad_token_id: int = 0,
                 attach_state: bool = False, balance: float = 0.005, max_wait: int = 256,
                 column=None, tokenizer=None, mask_prompt: bool = True):
        super().__init__()
        if layout not in ("rows", "1d"):
            raise InputError(f"layout must be 'rows' or '1d'; got {layout!r}")
        check_label_shift(label_shift)
        if overflow not in ("split", "truncate", "drop", "error"):
            raise InputError(f"overflow must be 'split', 'truncate', 'drop' or 'error'; got {overflow!r}")
        self.capacity = _positive_int(capacity, "capacity")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.buffer_size = _positive_int(buffer_size, "buffer_size")
        self.max_seqlen = self.capacity if max_seqlen is None else _positive_int(max_seqlen, "max_seqlen")
        self.max_wait = _int(max_wait, "max_wait")
        if self.max_wait < 0:
            raise InputError(f"PackedIterableDataset: max_wait must be >= 0 (steps), got {max_wait!r}")
        max_num_docs = None if max_num_docs is None else _positive_int(max_num_docs, "max_num_docs")
        if isinstance(balance, bool) or not isinstance(balance, (int, float, np.floating, np.integer)) \
                or not 0 <= balance < float("inf"):
            raise InputError(f"PackedIterableDataset: balance must be a finite number >= 0, got {balance!r}")
        self.layout, self.overflow, self.seed, self.shuffle = layout, overflow, _int(seed, "seed"), shuffle
        if self.seed < 0:
            raise InputError(f"PackedIterableDataset: seed must be >= 0, got {seed!r}")
        self.label_shift, self.attach_state = label_shift, attach_state
        self.pad_token_id = _int(pad_token_id, "pad_token_id")
        self.max_piece = min(self.capacity, self.max_seqlen)
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        self.max_num_docs = max_num_docs
        self.balance = float(balance)
        # segments other than documents: one padding run per row, or the 1D padding in runs
        pad_runs = self.batch_size if layout == "rows" else -(-self.batch_size * self.capacity // self.max_seqlen)
        self.doc_budget = 1 << 30 if max_num_docs is None else int(max_num_docs) - pad_runs
        if self.doc_budget < 1:
            raise InputError(f"max_num_docs={max_num_docs} leaves no room for documents: a batch can have "
                             f"{pad_runs} padding segments; raise max_num_docs above {pad_runs}")

        if isinstance(source, Documents):
            self._docs, self._source = source, None
        elif _token_lists(source):
            from seqpack.data.sources import as_token_array

            arrays = [as_token_array(x, f"document {i}") for i, x in enumerate(source)]
            self._docs, self._source = Documents.from_lists(arrays, dtype=np.int64), None
        else:
            from seqpack.data.sources import open_source

            self._docs = None
            self._source = open_source(source, column=column, tokenizer=tokenizer, mask_prompt=mask_prompt)
        self.epoch = 0
        self._pending: dict | None = None
        self._live: _Iterator | None = None

    # -------------------------------------------------------------- public API

    def set_epoch(self, epoch: int) -> None:
        """Shuffle indexable sources differently each epoch (as DistributedSampler.set_epoch)."""
        self.epoch = int(epoch)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        state = self._pending
        self._pending = None
        it = _Iterator(self, worker, workers, state)
        self._live = it
        return it

    def state_dict(self) -> dict:
        """The state of the iteration in this process (in a worker: that worker's)."""
        if self._live is not None:
            return self._live.state()
        if self._pending is not None:
            return self._pending
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        return _Iterator(self, worker, workers, None).state()

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state`` at the next ``iter()``: one worker's ``state_dict()`` (as
        torchdata's StatefulDataLoader stores them) or a `LoaderState`'s (any worker; ``{}``
        = from the beginning). Refuses (`InputError`, with the reason) a state from another
        source, other options or another number of ranks, or a worker's state in another
        worker."""
        if not isinstance(state, dict):
            raise InputError(f"cannot resume: not a seqpack packing state (got a {type(state).__name__})")
        if "workers" in state:  # per-worker states: the latest one resumes them all
            subs = [s for s in state["workers"].values() if s]
            state = _for_any_worker(max(subs, key=_position)) if subs else {}
        if state:
            self._check(state)
        self._pending = state or None
        self._live = None

    def fingerprint(self) -> dict:
        src = (self._source.fingerprint() if self._source is not None
               else "documents:" + hashlib.sha1(np.ascontiguousarray(self._docs.offsets).tobytes()).hexdigest()[:16])
        return {"source": src, "capacity": self.capacity, "batch_size": self.batch_size, "layout": self.layout,
                "buffer_size": self.buffer_size, "max_num_docs": self.max_num_docs, "max_seqlen": self.max_seqlen,
                "overflow": self.overflow, "seed": self.seed, "shuffle": self.shuffle,
                "label_shift": self.label_shift, "rank": self.rank, "world_size": self.world_size,
                "balance": self.balance, "max_wait": self.max_wait}

    def _check(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise InputError(f"cannot resume: not a seqpack packing state of version {STATE_VERSION}")
        mine, theirs = self.fingerprint(), state["fingerprint"]
        diff = [f"{k}: saved {theirs.get(k)!r}, now {v!r}" for k, v in mine.items() if theirs.get(k) != v]
        if diff:
            raise InputError("cannot resume from this state: it was saved for a different dataset or "
                             "options (" + "; ".join(diff) + ")")


def _positive_int(value, name: str) -> int:
    """An option that must be a whole number >= 1: floats are refused, never floored."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"PackedIterableDataset: {name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise InputError(f"PackedIterableDataset: {name} must be >= 1, got {value!r}")
    return int(value)


def _int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"PackedIterableDataset: {name} must be an integer, got {value!r}")
    return int(value)


def _token_lists(source) -> bool:
    """A list/tuple of token-id lists or arrays (not texts, dicts, chats or paths)."""
    if not isinstance(source, (list, tuple)) or not source:
        return False
    first = source[0]
    if isinstance(first, np.ndarray):
        return True
    return isinstance(first, (list, tuple)) and (not first or isinstance(first[0], (int, np.integer)))


class _Iterator:
    """One pass over an epoch in one process (main or worker)."""

    def __init__(self, ds: PackedIterableDataset, worker: int, workers: int, state: dict | None):
        self.ds, self.worker, self.workers = ds, worker, workers
        self.counters = dict(docs=0, empty_docs=0, split_docs=0, truncated_docs=0, dropped_docs=0,
                             dropped_tokens=0)
        self.step, self.epoch = 0, ds.epoch
        # the buffer: pieces (object array, so that selecting them is one numpy call), their
        # lengths and the steps each has waited
        self.items = np.empty(0, object)
        self.lens = np.zeros(0, np.int64)
        self.waited = np.zeros(0, np.int64)
        pos = 0
        self.base = 0  # worker w makes the steps s with (s - base) % workers == w
        if state is not None:
            if state["worker"] is not None and (state["workers_total"] != workers or state["worker"] != worker):
                raise InputError(f"cannot resume: the state is for worker {state['worker']} of "
                                 f"{state['workers_total']} but this is worker {worker} of {workers}; "
                                 f"resume with the same num_workers (or from a LoaderState)")
            self.step, self.epoch, pos = state["step"], state["epoch"], state["source_pos"]
            self.base = int(state.get("base", 0))
            self.counters.update(state["counters"])
        self.reader = _Reader(ds, self.epoch, pos)
        if state is not None:
            self._add(self._restore(state["buffer"]), np.asarray(state["buffer"]["waited"], np.int64))
            self.reader.exhausted = state["exhausted"]

    # -- state

    def state(self) -> dict:
        b = self.items.tolist()
        buf = {"doc": np.array([p.doc for p in b], np.int64), "start": np.array([p.start for p in b], np.int64),
               "stop": np.array([p.stop for p in b], np.int64),
               "next_label": np.array([p.next_label for p in b], np.int64),
               "waited": self.waited.copy()}
        if self.ds._docs is None:  # a stream cannot be re-read at random: keep the tokens
            buf["tokens"] = np.concatenate([p.tokens for p in b]) if b else np.zeros(0, np.int64)
            if any(p.labels is not None for p in b):
                buf["labels"] = np.concatenate([p.labels if p.labels is not None else p.tokens for p in b])
        return {"version": STATE_VERSION, "fingerprint": self.ds.fingerprint(), "epoch": self.epoch,
                "step": self.step, "source_pos": self.reader.pos, "exhausted": self.reader.exhausted,
                "worker": self.worker, "workers_total": self.workers, "base": self.base,
                "counters": dict(self.counters),
                "buffer": buf}

    def _restore(self, buf: dict) -> list[_Piece]:
        doc, start, stop, nxt = (np.asarray(buf[k]).tolist() for k in ("doc", "start", "stop", "next_label"))
        out = []
        if self.ds._docs is not None:
            d = self.ds._docs
            for i, s, e, n in zip(doc, start, stop, nxt):
                a = int(d.offsets[i])
                out.append(_Piece(i, s, e, d.tokens[a + s:a + e],
                                  None if d.labels is None else d.labels[a + s:a + e], n))
            return out
        toks, labs, pos = np.asarray(buf["tokens"]), buf.get("labels"), 0
        for i, s, e, n in zip(doc, start, stop, nxt):
            L = e - s
            out.append(_Piece(i, s, e, toks[pos:pos + L], None if labs is None else np.asarray(labs)[pos:pos + L], n))
            pos += L
        return out

    def _add(self, pieces: list, waited: np.ndarray) -> None:
        items = np.empty(len(pieces), object)
        items[:] = pieces
        lens = np.fromiter((p.stop - p.start for p in pieces), np.int64, count=len(pieces))
        self.items = np.concatenate([self.items, items])
        self.lens = np.concatenate([self.lens, lens])
        self.waited = np.concatenate([self.waited, waited])

    # -- iteration

    def __iter__(self):
        return self

    def __next__(self) -> PackedBatch:
        while True:
            placed = self._next_step()
            if placed is None:
                raise StopIteration
            step = self.step - 1
            if (step - self.base) % self.workers == self.worker:
                batch = self._collate(placed, step)
                if self.ds.attach_state:
                    batch.state = self.state()
                return batch

    def _next_step(self):
        """Build the next step from the buffer: this rank's pieces as (row, piece) in
        placement order, or None at the end of the epoch."""
        from seqpack.data import _kernels as K

        ds = self.ds
        if self.lens.size < ds.buffer_size and not self.reader.exhausted:
            new = self.reader.read(ds.buffer_size - self.lens.size, self.counters)
            self._add(new, np.zeros(len(new), np.int64))
        if not self.lens.size:
            return None
        lengths = self.lens
        order = np.argsort(-lengths, kind="stable")  # longest first, older first among equals
        out_rank = np.full(lengths.size, -1, np.int64)
        out_row = np.full(lengths.size, -1, np.int64)
        forced = self.waited >= ds.max_wait
        # a round may differ in attention cost by `balance` of what one rank gets per step
        tol = ds.balance * ds.batch_size * ds.capacity * float((lengths.astype(np.float64) ** 2).sum()) / float(lengths.sum())
        args = (ds.world_size, ds.batch_size, ds.capacity, ds.doc_budget, tol, out_rank, out_row)
        if K.fill_step(lengths, order, forced, *args) == 0:
            # only partnerless documents are left (the end of the stream): place them anyway
            K.fill_step(lengths, order, np.ones_like(forced), *args)
        sel = order[out_rank[order] == ds.rank]  # this rank's pieces in placement order
        mine = list(zip(out_row[sel].tolist(), self.items[sel].tolist()))
        keep = out_rank < 0
        self.items, self.lens, self.waited = self.items[keep], self.lens[keep], self.waited[keep] + 1
        self.step += 1
        return mine

    def _collate(self, placed, step) -> StreamBatch:
        """This rank's pieces as a batch through `collate_packed`: the pieces become the
        documents of a plan from rows, with their labels made final here (a split piece's
        last target is the next token of its document, which only the piece knows)."""
        ds = self.ds
        placed.sort(key=lambda rp: rp[0])  # by row, placement order kept inside a row (stable)
        pieces = [p for _, p in placed]
        counts = np.bincount(np.fromiter((r for r, _ in placed), np.int64, len(placed)), minlength=ds.batch_size)
        lens = np.fromiter((p.stop - p.start for p in pieces), np.int64, len(pieces))
        doc_index = np.fromiter((p.doc for p in pieces), np.int64, len(pieces))
        doc_start = np.fromiter((p.start for p in pieces), np.int64, len(pieces))
        offsets = exclusive_cumsum(lens)
        if pieces:
            tokens = np.concatenate([p.tokens for p in pieces]).astype(np.int64, copy=False)
            src = np.concatenate([p.tokens if p.labels is None else p.labels for p in pieces]).astype(np.int64,
                                                                                                   copy=False)
        else:
            tokens = src = np.zeros(0, np.int64)
        labels = piece_labels(src, offsets[:-1], lens, ds.label_shift, copy=False)
        if ds.label_shift == "collator" and lens.size:
            labels[offsets[1:] - 1] = np.fromiter((p.next_label for p in pieces), np.int64, len(pieces))
        plan = PackPlan.from_rows(lens, counts, ds.capacity)
        batch = collate_packed(plan, Documents(tokens, offsets, labels), layout=ds.layout,
                               label_shift=ds.label_shift, pad_token_id=ds.pad_token_id,
                               max_num_docs=ds.max_num_docs, max_seqlen=ds.max_seqlen, shift_labels=False)
        batch.doc_index, batch.doc_start, batch.doc_stop = doc_index, doc_start, doc_start + lens
        return StreamBatch(**_fields_of(batch), step=step, rank=ds.rank, worker=self.worker)


def state_to_json(state: dict) -> str:
    """A state as JSON (numpy arrays as lists), e.g. to store beside a checkpoint."""
    return json.dumps(state, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else int(o))
