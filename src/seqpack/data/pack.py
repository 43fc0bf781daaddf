"""Offline packing: a whole dataset -> packed rows in one Parquet file (``seqpack pack``).

The plan is global (every document can share a row with any other) while memory holds only
per-document lengths and per-piece plan arrays, never the token set:

1. **scan**: read the input once (tokenizing text and chats) for the lengths, appending the
   tokens to a flat spill file: reading it back costs a fraction of decoding Parquet or
   tokenizing again, and one-shot iterators need it anyway.
2. **plan**: `plan_packing` over the lengths (chats with ``overflow="split"`` are first cut
   at turn boundaries where possible).
3. **scatter**: read the tokens again in input order and append every piece to the region
   of its *group* (a run of consecutive output rows, ~8M tokens) in a bucket file. All
   writes are sequential per group; nothing is memory-mapped, so the page cache, not the
   process, holds the data.
4. **write**: for each group, read its region (bounded memory), put pieces in row order,
   and append the rows to the Parquet file (or, for a directory output, to its shard; two
   shards are encoded at a time, one per core).

Everything goes to a temporary directory beside the output; the finished file is renamed
into place last, so an interrupted run never leaves a file that looks complete, and a
re-run (also after ``kill -9``) starts over and writes the same bytes.

Output schema, one row per packed row (documents back to back, no padding):
``input_ids`` list<int32>, ``labels`` list<int32> (-100 = no loss; ``label_shift`` says
whether they align with the inputs (HF, default) or are next-token targets),
``doc_lengths`` list<int32>, ``doc_ids`` list<int64> (index of the source document),
``doc_starts`` list<int32> (offset of the piece inside that document). The file's
key-value metadata ``seqpack`` (JSON) records the options and counts.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seqpack.errors import InputError
from seqpack.labels import check_label_shift, exclusive_cumsum, piece_labels

__all__ = ["pack_to_parquet", "PackSummary", "read_packed", "packed_metadata", "packed_files"]

FORMAT_VERSION = 1
GROUP_TOKENS = 1 << 23  # tokens per scatter group: bounds the write phase's memory
ROW_GROUP_TOKENS = 1 << 20  # Parquet row groups of about 1M tokens
SHARD_TOKENS = 1 << 29  # directory output: files of about 512M tokens (~2.5 GB), at least 2
WRITERS = 2  # Parquet encoding threads (it releases the GIL); one per core here


@dataclass
class PackSummary:
    """What `pack_to_parquet` did. Counts describe the input; ``seconds`` the run."""

    output: str
    capacity: int
    strategy: str
    overflow: str
    documents: int = 0
    input_tokens: int = 0
    empty_docs: int = 0
    split_docs: int = 0
    split_at_turns: int = 0
    truncated_docs: int = 0
    dropped_docs: int = 0
    dropped_tokens: int = 0
    placed_tokens: int = 0
    rows: int = 0
    pieces: int = 0
    fill: float = 0.0
    docs_per_row_mean: float = 0.0
    docs_per_row_max: int = 0
    report: str | None = None
    cleaned: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        t = sum(self.seconds.values())
        return self.input_tokens / t if t > 0 else float("nan")

    def text(self) -> str:
        s = self.seconds
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in s.items())
        return "\n".join([
            f"packed {self.documents:,} documents ({self.input_tokens:,} tokens) -> {self.rows:,} rows "
            f"of {self.capacity:,} ({self.strategy}, overflow={self.overflow})",
            f"  fill:          {100 * self.fill:.2f}%",
            f"  docs per row:  {self.docs_per_row_mean:.2f} mean, {self.docs_per_row_max} max "
            f"({self.pieces:,} pieces)",
            f"  split:         {self.split_docs:,} documents ({self.split_at_turns:,} at turn boundaries)",
            f"  truncated:     {self.truncated_docs:,} documents; dropped: {self.dropped_docs:,} documents; "
            f"{self.dropped_tokens:,} tokens lost",
            f"  empty skipped: {self.empty_docs:,}",
            f"  throughput:    {self.tokens_per_second / 1e6:.2f}M tokens/s end to end ({phases})",
            f"  output:        {self.output}" + (f"\n  report:        {self.report}" if self.report else ""),
        ] + [f"  cleaned:       {c}" for c in self.cleaned])


# ----------------------------------------------------------------------------------------
# temporary files


MARKER = ".seqpack.json"  # in a directory output: proof seqpack wrote it (hidden: datasets and pyarrow skip it)
WORK_MARKER = "_seqpack-work.json"  # inside a work directory: whose it is (pid, host)
REPORT_TAG = b"tEXtSoftware\x00seqpack"  # the report PNG's text chunk: proof that seqpack wrote it
COMPRESSIONS = ("zstd", "snappy", "gzip", "brotli", "lz4", "none")  # Parquet codecs (--compression)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tree_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def _clean_stale(folder: Path) -> list[str]:
    """Remove the work directories that killed runs left in ``folder`` (for any output).

    Removed only with proof: the name ``.NAME.seqpack-tmp-PID``, our work marker inside
    it naming this host and that PID, and no live process of that PID. Returns one line
    per directory removed (for the summary)."""
    import socket

    removed = []
    for p in sorted(folder.glob(".*.seqpack-tmp-*")):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            mark = json.loads((p / WORK_MARKER).read_text())
        except (ValueError, OSError):
            continue  # not ours, or not provably ours: leave it
        if (not isinstance(mark, dict) or not p.is_dir() or p.is_symlink() or mark.get("pid") != pid
                or mark.get("host") != socket.gethostname()):
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        size = _tree_bytes(p)
        shutil.rmtree(p, ignore_errors=True)
        removed.append(f"{p} ({size / 1e6:,.1f} MB, left by run pid {pid}, no longer alive)")
    return removed


def _make_work(out: Path) -> Path:
    import socket

    work = out.parent / f".{out.name}.seqpack-tmp-{os.getpid()}"
    work.mkdir()
    (work / WORK_MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "output": str(out)}))
    return work


def _report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".report.png")


def _is_our_report(p: Path) -> bool:
    with open(p, "rb") as f:
        return REPORT_TAG in f.read(4096)


def _is_our_parquet(p: Path) -> bool:
    """A complete Parquet file (its footer reads) whose metadata says seqpack wrote it."""
    import pyarrow.parquet as pq

    try:
        md = pq.read_schema(p).metadata or {}
        return "format" in json.loads(md.get(b"seqpack", b"{}"))
    except Exception:  # unreadable footer, not Parquet, not JSON: not provably ours
        return False


def _existing_output_problem(out: Path, force: bool) -> str | None:
    """Why ``out`` may not be replaced (None: absent, or a seqpack output we may replace).

    A directory output is ours when it holds our marker and nothing but the files the
    marker lists; a file output when it is Parquet with our ``seqpack`` metadata.
    ``force`` also replaces our directory output with listed shards missing (incomplete).
    """
    if not os.path.lexists(out):
        return None
    fix = "choose another -o, or remove it yourself"
    if out.is_symlink():
        return f"output {out} is a symbolic link; {fix}"
    if out.is_dir():
        try:
            mark = json.loads((out / MARKER).read_text())
            listed = set(mark["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return (f"output {out} is an existing directory that seqpack did not write (no valid "
                    f"{MARKER}); {fix}")
        present = set(os.listdir(out)) - {MARKER}
        extra = sorted(present - listed)
        if extra:
            more = f" (+{len(extra) - 3} more)" if len(extra) > 3 else ""
            return (f"output {out} holds files seqpack did not write ({', '.join(extra[:3])}{more}); "
                    f"{fix}")
        missing = sorted(listed - present)
        if missing and not force:
            return (f"output {out} is an incomplete seqpack output ({missing[0]} is missing); pass "
                    f"--force (force=True) to replace it, or {fix}")
        return None
    if out.is_file() and out.suffix == ".parquet" and _is_our_parquet(out):
        return None
    what = "a file" if out.is_file() else "not a regular file or directory"
    return f"output {out} exists and is {what} that seqpack did not write; {fix}"


def _input_paths(inputs, source) -> list[Path]:
    """Every file and directory the input names (resolved), for the output-overlap check."""
    specs = [inputs] if isinstance(inputs, (str, Path)) else (
        list(inputs) if isinstance(inputs, (list, tuple)) and all(isinstance(x, (str, Path)) for x in inputs)
        else [])
    paths = [Path(p) for p in getattr(source, "paths", [])]
    paths += [Path(s) for s in specs if os.path.isdir(s)]
    return [p.expanduser().resolve() for p in paths]


def _check_output(out: Path, inputs, source, report: bool, force: bool) -> None:
    """Refuse, before any work, an output that would overwrite or sit on top of the input or
    of anything seqpack did not write."""
    if out.suffix == ".parquet" and out.is_dir() and not (out / MARKER).exists():
        raise InputError(f"output {out} is a directory; give a file name such as packed.parquet "
                         f"or a directory name without .parquet")
    for p in _input_paths(inputs, source):
        if out == p:
            raise InputError(f"output {out} is the input itself; choose another -o")
        if out in p.parents:
            raise InputError(f"output {out} contains the input {p}; choose another -o")
        if p in out.parents:
            raise InputError(f"output {out} is inside the input directory {p}; choose an -o outside it")
    problem = _existing_output_problem(out, force)
    if problem:
        raise InputError(problem)
    rep = _report_path(out)
    if report and os.path.lexists(rep) and (rep.is_symlink() or not rep.is_file() or not _is_our_report(rep)):
        raise InputError(f"report {rep} exists and seqpack did not write it; choose another -o, pass "
                         f"--no-report (report=False), or remove it yourself")


def _check_compression(compression: str) -> str:
    import pyarrow as pa

    c = str(compression).lower()
    if c not in COMPRESSIONS or (c != "none" and not pa.Codec.is_available(c)):
        ok = [x for x in COMPRESSIONS if x == "none" or pa.Codec.is_available(x)]
        raise InputError(f"unknown Parquet compression {compression!r}: use one of {', '.join(ok)}")
    return c


def _id_dtype(max_id: int) -> np.dtype:
    """The narrowest dtype that keeps ids up to ``max_id``: uint16, int32 or int64."""
    return np.dtype(np.uint16 if max_id < 2**16 else np.int32 if max_id < 2**31 else np.int64)


def _rewrite(path: Path, old: np.dtype, new: np.dtype) -> None:
    """Widen a flat file of ``old`` values to ``new`` in place (through a temporary file)."""
    tmp = path.with_suffix(".narrow")
    os.replace(path, tmp)
    with open(tmp, "rb") as src, open(path, "wb") as dst:
        while True:
            block = np.fromfile(src, old, 1 << 24)
            if not block.size:
                break
            dst.write(block.astype(new).tobytes())
    tmp.unlink()


class _Spill:
    """Tokens (and labels) appended flat to files in the work directory, read back in chunks.

    Every input is spilled during the scan, pre-tokenized Parquet included: reading the flat
    file back costs a fraction of decoding Parquet (or tokenizing) a second time. Tokens are
    stored as uint16 while every id fits, else int32, else int64; labels as int32 unless a
    label needs int64. A file is widened (rewritten once) when a wider id first appears, so
    no id ever wraps.
    """

    def __init__(self, work: Path):
        self.tok_path, self.lab_path = work / "spill-tokens.bin", work / "spill-labels.bin"
        self.tok = open(self.tok_path, "wb")
        self.dtype = np.dtype(np.uint16)
        self.lab_dtype = np.dtype(np.int32)
        self.lab = None
        self.n = 0

    def _widen_tokens(self, dtype: np.dtype) -> None:
        self.tok.close()
        _rewrite(self.tok_path, self.dtype, dtype)
        self.tok = open(self.tok_path, "ab")
        self.dtype = dtype

    def _widen_labels(self) -> None:
        self.lab.close()
        _rewrite(self.lab_path, self.lab_dtype, np.dtype(np.int64))
        self.lab = open(self.lab_path, "ab")
        self.lab_dtype = np.dtype(np.int64)

    def add(self, chunk) -> None:
        tokens = chunk.tokens
        if tokens.size and tokens.dtype != self.dtype:
            need = _id_dtype(int(tokens.max()))
            if need.itemsize > self.dtype.itemsize:
                self._widen_tokens(need)
        self.tok.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        if chunk.labels is not None and self.lab is None:
            self.lab = open(self.lab_path, "wb")
            if self.n:  # earlier chunks had no labels: their labels are their tokens
                self.tok.flush()
                if self.dtype == np.int64:
                    self.lab_dtype = np.dtype(np.int64)
                with open(self.tok_path, "rb") as f:
                    while True:
                        block = np.fromfile(f, self.dtype, 1 << 24)
                        if not block.size:
                            break
                        self.lab.write(block.astype(self.lab_dtype).tobytes())
        if self.lab is not None:
            lab = chunk.labels if chunk.labels is not None else tokens
            if (self.lab_dtype == np.int32 and lab.size and lab.dtype.itemsize > 4
                    and (int(lab.max()) >= 2**31 or int(lab.min()) < -2**31)):
                self._widen_labels()
            self.lab.write(np.ascontiguousarray(lab, dtype=self.lab_dtype).tobytes())
        self.n += int(tokens.size)

    def close(self):
        self.tok.close()
        if self.lab is not None:
            self.lab.close()

    def chunks(self, lengths: np.ndarray, tokens_per_chunk: int = 1 << 23):
        """DocChunks of whole documents, about ``tokens_per_chunk`` tokens each."""
        from seqpack.data.sources import DocChunk

        offsets = exclusive_cumsum(lengths)
        # chunk boundaries: the first document starting at or after every multiple of the size
        bounds = np.unique(np.concatenate([
            np.searchsorted(offsets[:-1], np.arange(0, int(offsets[-1]) + 1, tokens_per_chunk)),
            [0, lengths.size]]))
        with open(self.tok_path, "rb") as ft, (open(self.lab_path, "rb") if self.lab else open(os.devnull, "rb")) as fl:
            for d0, d1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                a, b = int(offsets[d0]), int(offsets[d1])
                tok = np.fromfile(ft, self.dtype, b - a)
                lab = np.fromfile(fl, self.lab_dtype, b - a) if self.lab else None
                yield DocChunk(tok, offsets[d0:d1 + 1] - a, lab, None, d0)


# ----------------------------------------------------------------------------------------
# the pipeline


def _progress(progress, **kw):
    from tqdm.auto import tqdm

    return tqdm(disable=not progress, file=sys.stderr, dynamic_ncols=True, mininterval=0.5, **kw)


def _units(lengths: np.ndarray, cut_docs: list, cut_starts: list):
    """Documents cut at turn boundaries become several planning units.

    Returns (unit_lengths, unit_doc, unit_start); unit_doc is None when nothing was cut
    (units are the documents)."""
    if not cut_docs:
        return lengths, None, None
    cut_docs = np.asarray(cut_docs, np.int64)
    pieces = np.ones(lengths.size, np.int64)
    pieces[cut_docs] = [s.size for s in cut_starts]
    unit_doc = np.repeat(np.arange(lengths.size, dtype=np.int64), pieces)
    first = exclusive_cumsum(pieces)[:-1]
    unit_start = np.zeros(unit_doc.size, np.int64)
    for d, s in zip(cut_docs.tolist(), cut_starts):
        unit_start[first[d]:first[d] + s.size] = s
    ends = np.append(unit_start[1:], 0)
    last = np.zeros(unit_doc.size, bool)
    last[np.cumsum(pieces) - 1] = True
    ends[last] = lengths[unit_doc[last]]
    return ends - unit_start, unit_doc, unit_start


def pack_to_parquet(inputs, output, *, capacity: int, strategy: str = "bfd", overflow: str = "error",
                    max_docs_per_bin: int | None = None, seed: int | None = 0, label_shift: str = "model",
                    column: str | None = None, tokenizer=None, mask_prompt: bool = True,
                    report: bool = True, report_rows: int = 32, progress: bool = True,
                    compression: str = "zstd", group_tokens: int = GROUP_TOKENS,
                    verbose: bool = True, force: bool = False) -> PackSummary:
    """Pack every document of ``inputs`` into rows of ``capacity`` tokens, written to ``output``.

    Args:
        inputs: anything `seqpack.data.sources.open_source` accepts (paths, datasets,
            iterables, ``"chitchat"``).
        output: the Parquet file (``*.parquet``) or directory of shards (any other name) to
            write, renamed into place when complete. An existing ``output`` is replaced only
            when it is a complete earlier seqpack output (a Parquet file with seqpack
            metadata; a directory holding our ``.seqpack.json`` and only the files it lists);
            anything else there, an output that is, contains or sits inside an input, is
            refused with `InputError` before any work. ``force`` also replaces an
            incomplete seqpack directory output (a listed shard missing), never anything else.
        capacity, strategy, overflow, max_docs_per_bin, seed: as in `seqpack.plan_packing`.
            With ``overflow="split"``, chats are cut between turns where a cut fits.
        label_shift: ``"model"`` (labels aligned with input_ids, the first token of every
            piece -100: Hugging Face models shift them) or ``"collator"`` (labels are the
            next token inside the piece, the last token of every piece -100).
        column, tokenizer, mask_prompt: how rows become documents (see `open_source`).
        report: also write ``<output stem>.report.png`` (lengths, docs per row, first rows).
        progress: tqdm bars on stderr for the long phases.
        compression: Parquet codec, one of zstd, snappy, gzip, brotli, lz4, none.

    Work directories that killed runs left beside any output in the same folder are
    removed first (see `_clean_stale`); ``summary.cleaned`` lists them.

    Returns a `PackSummary`; prints its text when ``verbose``. Raises `InputError` for bad
    input (with file, row or line, column) and for an input with nothing to pack (no
    document, all empty, or all dropped).
    """
    from seqpack.data.sources import open_source
    from seqpack.plan import plan_packing

    check_label_shift(label_shift)
    compression = _check_compression(compression)
    source = open_source(inputs, column=column, tokenizer=tokenizer, mask_prompt=mask_prompt)
    out = Path(output).expanduser().resolve()
    _check_output(out, inputs, source, report, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = PackSummary(str(out), int(capacity), strategy, overflow)
    summary.cleaned = _clean_stale(out.parent)
    if verbose:
        for line in summary.cleaned:
            print(f"seqpack pack: removed the work directory {line}", file=sys.stderr)
    work = _make_work(out)
    try:
        _run(source, out, work, summary, plan_packing, capacity=capacity, strategy=strategy,
             overflow=overflow, max_docs_per_bin=max_docs_per_bin, seed=seed, label_shift=label_shift,
             report=report, report_rows=report_rows, progress=progress, compression=compression,
             group_tokens=group_tokens, force=force)
    except OSError as e:
        if e.filename is None:  # a full disk names no file: say where we were writing
            raise OSError(e.errno, f"{e.strerror or e} while writing {out} (work files in {work}); "
                                   f"free space there or choose another -o") from e
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if verbose:
        print(summary.text(), file=sys.stderr)
    return summary


def _run(source, out, work, summary, plan_packing, *, capacity, strategy, overflow, max_docs_per_bin,
         seed, label_shift, report, report_rows, progress, compression, group_tokens, force):
    from seqpack.data import _kernels as K
    from seqpack.data.tokenize import split_points

    # ---- 1. scan: lengths (and a spill of tokenized inputs)
    t0 = time.perf_counter()
    spill = _Spill(work)
    total = source.num_rows() if hasattr(source, "num_rows") else (
        len(source.docs) if hasattr(source, "docs") else None)
    lengths_parts, cut_docs, cut_starts = [], [], []
    with _progress(progress, total=total, unit=" docs", unit_scale=True, desc="scan") as bar:
        for chunk in source.chunks():
            lens = chunk.lengths
            lengths_parts.append(lens)
            if overflow == "split" and chunk.turns is not None:
                for j in np.flatnonzero(lens > capacity).tolist():
                    cuts = split_points(int(lens[j]), chunk.turns[j], capacity)
                    cut_docs.append(chunk.first + j)
                    cut_starts.append(cuts)
            spill.add(chunk)
            bar.update(len(chunk))
    spill.close()
    has_labels = spill.lab is not None
    lengths = np.concatenate(lengths_parts) if lengths_parts else np.zeros(0, np.int64)
    del lengths_parts
    summary.documents, summary.input_tokens = int(lengths.size), int(lengths.sum())
    summary.seconds["scan"] = time.perf_counter() - t0
    if summary.input_tokens == 0:
        what = "holds no documents" if not lengths.size else f"holds {lengths.size:,} documents, all empty"
        raise InputError(f"{source.name} {what}: nothing to pack (is it the right file and column?)")

    # ---- 2. plan
    t0 = time.perf_counter()
    unit_len, unit_doc, unit_start = _units(lengths, cut_docs, cut_starts)
    try:
        plan = plan_packing(unit_len, capacity, strategy=strategy, overflow=overflow,
                            max_docs_per_bin=max_docs_per_bin, seed=seed)
    except ValueError as e:
        if unit_doc is not None and "document" in str(e):
            raise ValueError(f"{e} (document numbers count turn-split pieces)") from None
        raise
    if unit_doc is None:
        p_doc, p_start, p_stop = plan.doc, plan.start, plan.stop
    else:
        p_doc = unit_doc[plan.doc]
        p_start = unit_start[plan.doc] + plan.start
        p_stop = unit_start[plan.doc] + plan.stop
    summary.empty_docs = int(plan.empty_docs)
    summary.split_at_turns = len(cut_docs)
    summary.split_docs = int(plan.split_docs) + len(cut_docs)
    summary.truncated_docs, summary.dropped_docs = int(plan.truncated_docs), int(plan.dropped_docs)
    summary.dropped_tokens = int(plan.dropped_tokens)
    summary.placed_tokens, summary.rows, summary.pieces = int(plan.placed_tokens), int(plan.num_bins), int(plan.num_pieces)
    summary.fill = float(plan.efficiency)
    if summary.placed_tokens == 0:
        raise InputError(f"{source.name}: every document was dropped (longer than capacity "
                         f"{capacity:,} with overflow='drop'): nothing to pack; raise --capacity or "
                         f"pass --overflow split or truncate")
    per_row = plan.docs_per_bin()
    summary.docs_per_row_mean = float(per_row.mean()) if per_row.size else 0.0
    summary.docs_per_row_max = int(per_row.max()) if per_row.size else 0
    bin_offsets, nbins = plan.bin_offsets, int(plan.num_bins)
    del plan, unit_len, unit_doc, unit_start

    # layout: pieces in row order form the compact output stream. Memory is the budget
    # here (10M documents -> ~10M pieces): int32 wherever the values allow, int64 only for
    # token positions, and every array dropped as soon as it is used.
    small = np.int32 if max(summary.documents, int(p_stop.max()) if p_stop.size else 0) < 2**31 else np.int64
    len_b = (p_stop - p_start).astype(small)
    gpos = exclusive_cumsum(len_b)  # (P+1,) output offset of every piece
    bin_tok = gpos[bin_offsets]  # (nbins+1,) output offset of every row
    rows_per_group = max(1, group_tokens // capacity)
    rows_per_rg = min(max(1, ROW_GROUP_TOKENS // capacity), rows_per_group)
    rows_per_group = rows_per_rg * max(1, rows_per_group // rows_per_rg)  # whole row groups
    num_groups = -(-nbins // rows_per_group)
    # pieces in input order: by document, then by start
    key = p_doc * (int(p_stop.max()) + 1 if p_stop.size else 1) + p_start
    del p_stop
    order_d = np.argsort(key, kind="stable")
    del key
    p_doc, p_start = p_doc.astype(small), p_start.astype(small)
    doc_d, start_d, len_d = p_doc[order_d], p_start[order_d], len_b[order_d]
    # bucket position: group regions in output order, pieces inside a group in input order
    g_d = (np.repeat(np.arange(nbins, dtype=small), np.diff(bin_offsets))[order_d] // rows_per_group).astype(small)
    perm = np.argsort(g_d, kind="stable")
    del g_d
    bpos_d = np.empty(len_d.size, np.int64)
    bpos_d[perm] = exclusive_cumsum(len_d[perm])[:-1]
    del perm
    bpos_b = np.empty_like(bpos_d)
    bpos_b[order_d] = bpos_d
    del order_d
    summary.seconds["plan"] = time.perf_counter() - t0

    # ---- 3. scatter: every piece to its group's region of the bucket file
    t0 = time.perf_counter()
    tok_dtype, lab_dtype = spill.dtype, spill.lab_dtype
    placed = int(gpos[-1])
    tok_path, lab_path = work / "bucket-tokens.bin", work / "bucket-labels.bin"
    fds = [os.open(tok_path, os.O_RDWR | os.O_CREAT, 0o600)]
    if has_labels:
        fds.append(os.open(lab_path, os.O_RDWR | os.O_CREAT, 0o600))
    try:
        chunks = spill.chunks(lengths)
        with _progress(progress, total=lengths.size, unit=" docs", unit_scale=True, desc="scatter") as bar:
            for chunk in chunks:
                d0, n = chunk.first, len(chunk)
                p0, p1 = np.searchsorted(doc_d, [d0, d0 + n])
                bar.update(n)
                if p1 == p0:
                    continue
                sel = slice(p0, p1)
                src = chunk.offsets[doc_d[sel] - d0] + start_d[sel]
                by_dest = np.argsort(bpos_d[sel], kind="stable")
                src, lens, dest = src[by_dest], len_d[sel][by_dest], bpos_d[sel][by_dest]
                # runs of pieces that land back to back become one write
                breaks = np.flatnonzero(dest[1:] != dest[:-1] + lens[:-1]) + 1
                run_first = np.concatenate([[0], breaks])
                run_tok = exclusive_cumsum(lens)
                arrays = [chunk.tokens.astype(tok_dtype, copy=False)]
                if has_labels:
                    lab = chunk.labels if chunk.labels is not None else chunk.tokens
                    arrays.append(lab.astype(lab_dtype, copy=False))
                for fd, arr in zip(fds, arrays):
                    buf = np.empty(int(run_tok[-1]), arr.dtype)
                    K.gather(arr, src, lens, buf)
                    ends = np.append(run_tok[run_first[1:]], run_tok[-1])
                    for r, a in enumerate(run_tok[run_first].tolist()):
                        b = int(ends[r])
                        os.pwrite(fd, memoryview(buf[a:b]).cast("B"), int(dest[run_first[r]]) * buf.itemsize)
    finally:
        for fd in fds:
            os.close(fd)
    del doc_d, start_d, len_d, bpos_d
    for path in (spill.tok_path, spill.lab_path):
        path.unlink(missing_ok=True)
    summary.seconds["scatter"] = time.perf_counter() - t0

    # ---- 4. write rows group by group
    t0 = time.perf_counter()
    meta = {
        "format": FORMAT_VERSION, "capacity": int(capacity), "strategy": strategy, "overflow": overflow,
        "max_docs_per_bin": max_docs_per_bin, "seed": seed, "label_shift": label_shift,
        "source": source.name if not os.path.isabs(source.name) else os.path.basename(source.name),
        "counts": {k: v for k, v in asdict(summary).items()
                   if k not in ("output", "seconds", "report", "cleaned", "capacity", "strategy", "overflow")},
    }
    as_dir = out.suffix != ".parquet"
    num_shards = max(2, -(-placed // SHARD_TOKENS)) if as_dir else 1
    num_shards = max(1, min(num_shards, num_groups))
    tmp_out = work / ("output" if as_dir else "output.parquet")
    if as_dir:
        tmp_out.mkdir()
        targets = [tmp_out / f"part-{k:05d}-of-{num_shards:05d}.parquet" for k in range(num_shards)]
    else:
        targets = [tmp_out]
    _write_rows(targets, tok_path, lab_path if has_labels else None, tok_dtype, lab_dtype, bin_offsets, nbins,
                len_b, gpos, bin_tok, bpos_b, p_doc, p_start, rows_per_group, rows_per_rg, num_groups,
                label_shift, compression, meta, progress)
    if as_dir:  # the marker that lets a later run recognise (and replace) this directory
        from seqpack import __version__

        (tmp_out / MARKER).write_text(json.dumps(
            {"format": FORMAT_VERSION, "written_by": f"seqpack {__version__} pack", "rows": nbins,
             "files": [t.name for t in targets]}, indent=1, sort_keys=True) + "\n")
    summary.seconds["write"] = time.perf_counter() - t0
    assert placed == summary.placed_tokens

    # ---- 5. report, then the output itself is renamed into place last
    if report:
        t0 = time.perf_counter()
        from seqpack.data.report import write_report

        rep = _report_path(out)
        tmp_rep = work / "report.png"
        write_report(tmp_rep, lengths, np.diff(bin_offsets), len_b, bin_offsets, capacity,
                     rows=report_rows, title=f"{meta['source']}: {summary.documents:,} docs -> "
                     f"{summary.rows:,} rows of {capacity:,} ({strategy}), fill {100 * summary.fill:.2f}%")
        if os.path.lexists(rep) and (rep.is_symlink() or not rep.is_file() or not _is_our_report(rep)):
            raise InputError(f"report {rep} appeared during the run and seqpack did not write it; "
                             f"nothing was replaced")
        os.replace(tmp_rep, rep)
        summary.report = str(rep)
        summary.seconds["report"] = time.perf_counter() - t0
    # checked again: something may have appeared at the output while we worked
    problem = _existing_output_problem(out, force)
    if problem:
        raise InputError(f"{problem} (it appeared during the run; nothing was replaced)")
    if os.path.lexists(out):  # move the old output aside (it goes with the work directory)
        os.replace(out, work / "replaced")
    os.replace(tmp_out, out)


def _write_rows(targets, tok_path, lab_path, tok_dtype, lab_dtype, bin_offsets, nbins, len_b, gpos, bin_tok, bpos_b,
                p_doc, p_start, rows_per_group, rows_per_rg, num_groups, label_shift, compression, meta,
                progress):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from seqpack.data import _kernels as K

    i32, lst = pa.int32(), pa.list_
    # ids are int32 unless one needs int64 (an id or label of 2**31 or more keeps its value)
    wide = np.dtype(tok_dtype) == np.int64 or (lab_path is not None and np.dtype(lab_dtype) == np.int64)
    id_dtype = np.dtype(np.int64 if wide else np.int32)
    ids = pa.from_numpy_dtype(id_dtype)
    schema = pa.schema([("input_ids", lst(ids)), ("labels", lst(ids)), ("doc_lengths", lst(i32)),
                        ("doc_ids", lst(pa.int64())), ("doc_starts", lst(i32))],
                       metadata={"seqpack": json.dumps(meta, sort_keys=True)})
    itemsize = np.dtype(tok_dtype).itemsize
    ft = open(tok_path, "rb")
    fl = open(lab_path, "rb") if lab_path else None

    def table(g):
        """Group g's rows as an Arrow table, built from its region of the bucket files."""
        b0, b1 = g * rows_per_group, min(nbins, (g + 1) * rows_per_group)
        q0, q1 = int(bin_offsets[b0]), int(bin_offsets[b1])
        t0, t1 = int(bin_tok[b0]), int(bin_tok[b1])
        ft.seek(t0 * itemsize)
        region = np.fromfile(ft, tok_dtype, t1 - t0)
        starts, lens = bpos_b[q0:q1] - t0, len_b[q0:q1]
        tokens = np.empty(t1 - t0, id_dtype)
        K.gather(region, starts, lens, tokens)
        if fl is not None:
            fl.seek(t0 * np.dtype(lab_dtype).itemsize)
            region = np.fromfile(fl, lab_dtype, t1 - t0)
            src = np.empty(t1 - t0, id_dtype)
            K.gather(region, starts, lens, src)
        else:
            src = tokens
        del region
        labels = piece_labels(src, gpos[q0:q1] - t0, lens, label_shift, copy=src is tokens)
        row_tok = pa.array((bin_tok[b0:b1 + 1] - t0).astype(np.int32))
        row_piece = pa.array((bin_offsets[b0:b1 + 1] - q0).astype(np.int32))
        return b1 - b0, pa.Table.from_arrays([
            pa.ListArray.from_arrays(row_tok, pa.array(tokens)),
            pa.ListArray.from_arrays(row_tok, pa.array(labels)),
            pa.ListArray.from_arrays(row_piece, pa.array(lens.astype(np.int32))),
            pa.ListArray.from_arrays(row_piece, pa.array(p_doc[q0:q1].astype(np.int64))),
            pa.ListArray.from_arrays(row_piece, pa.array(p_start[q0:q1].astype(np.int32))),
        ], schema=schema)

    # Encoding Parquet lists is the slowest step and releases the GIL. Shards are written
    # WRITERS at a time, each by its own thread, while this thread builds the next tables;
    # a shard's groups are consecutive, so its content does not depend on thread timing.
    from concurrent.futures import ThreadPoolExecutor

    bounds = np.linspace(0, num_groups, len(targets) + 1).round().astype(int)
    opts = dict(compression=compression, write_statistics=False, use_dictionary=False,
                write_batch_size=1 << 16, compression_level=1 if compression == "zstd" else None)
    try:
        with _progress(progress, total=nbins, unit=" rows", unit_scale=True, desc="write") as bar:
            for first in range(0, len(targets), WRITERS):
                shards = range(first, min(len(targets), first + WRITERS))
                writers = {k: pq.ParquetWriter(targets[k], schema, **opts) for k in shards}
                pools = {k: ThreadPoolExecutor(1) for k in shards}
                pending = {k: None for k in shards}
                try:
                    for step in range(max(bounds[k + 1] - bounds[k] for k in shards)):
                        for k in shards:
                            g = bounds[k] + step
                            if g >= bounds[k + 1]:
                                continue
                            nrows, tbl = table(g)
                            if pending[k] is not None:
                                bar.update(pending[k].result())
                            pending[k] = pools[k].submit(
                                lambda w=writers[k], t=tbl, n=nrows: (w.write_table(t, row_group_size=rows_per_rg), n)[1])
                            del tbl
                    for k in shards:
                        if pending[k] is not None:
                            bar.update(pending[k].result())
                finally:
                    for k in shards:
                        pools[k].shutdown(wait=True)
                        writers[k].close()
    finally:
        ft.close()
        if fl is not None:
            fl.close()


# ----------------------------------------------------------------------------------------
# reading packed files back


def packed_files(path) -> list[str]:
    """The Parquet file(s) of a packed output: the file itself, or a directory's shards."""
    p = Path(path)
    return sorted(str(f) for f in p.glob("*.parquet")) if p.is_dir() else [str(p)]


def packed_metadata(path) -> dict:
    """The ``seqpack`` metadata (options and counts) of a packed Parquet file or directory."""
    import pyarrow.parquet as pq

    files = packed_files(path)
    if not files:
        raise ValueError(f"{path} holds no .parquet files")
    md = pq.read_schema(files[0]).metadata or {}
    if b"seqpack" not in md:
        raise ValueError(f"{path} has no seqpack metadata: was it written by `seqpack pack`?")
    return json.loads(md[b"seqpack"])


def read_packed(path, batch_size: int = 8, *, layout: str = "rows", max_num_docs: int | None = None,
                pad_token_id: int = 0, drop_last: bool = False):
    """Iterate a packed Parquet file (or directory of shards) as `PackedBatch`es of ``batch_size`` rows.

    ``layout="rows"`` gives ``(B, capacity)``; ``"1d"`` one buffer of ``B * capacity``
    tokens with ``max_seqlen = capacity``. ``max_num_docs`` pads ``cu_seqlens`` to a fixed
    size. Labels are used as stored (see the file's ``label_shift``).
    """
    from seqpack.batch import Documents, collate_packed
    from seqpack.plan import PackPlan

    meta = packed_metadata(path)
    cap = int(meta["capacity"])
    if layout not in ("rows", "1d"):
        raise ValueError(f"layout must be 'rows' or '1d'; got {layout!r}")
    for rb in _record_batches(path, batch_size):
        if drop_last and rb.num_rows < batch_size:
            return
        toks, _ = _flat_list(rb.column(0))
        labs, _ = _flat_list(rb.column(1))
        lens, doc_off = _flat_list(rb.column(2))
        lens = lens.astype(np.int64)
        # piece k of the batch is document k; its stored labels are final (shift_labels=False)
        plan = PackPlan.from_rows(lens, np.diff(doc_off), cap)
        batch = collate_packed(plan, Documents(toks, exclusive_cumsum(lens), labs), layout=layout,
                               label_shift=meta.get("label_shift", "model"), pad_token_id=pad_token_id,
                               max_num_docs=max_num_docs, shift_labels=False)
        batch.doc_index = batch.doc_start = batch.doc_stop = None  # pieces of the file, not documents
        yield batch


def _record_batches(path, batch_size):
    """Record batches of exactly ``batch_size`` rows (the last may be short) across shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    carry = None
    for f in packed_files(path):
        for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size,
                                                 columns=["input_ids", "labels", "doc_lengths"]):
            if carry is not None:
                rb = pa.Table.from_batches([carry, rb]).combine_chunks().to_batches()[0]
                carry = None
            while rb.num_rows >= batch_size:
                yield rb.slice(0, batch_size)
                rb = rb.slice(batch_size)
            if rb.num_rows:
                carry = rb
    if carry is not None:
        yield carry


def _flat_list(col):
    offs = col.offsets.to_numpy().astype(np.int64)
    vals = col.values.to_numpy(zero_copy_only=False)[offs[0]:offs[-1]]
    return vals, offs - offs[0]
