"""Property test of `seqpack pack` over random JSONL and Parquet inputs.

Random documents (token ids of any width with or without labels, unicode text, chats,
empty ones), every strategy and overflow policy, through `pack_to_parquet` and the command
line in the same process. What must hold: every token is placed or counted as lost, pieces
are exact slices of their documents, rows stay within capacity, a rerun writes the same
bytes, and bad combinations end in one `InputError` line, never a traceback.
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqpack.cli import main
from seqpack.data.pack import pack_to_parquet
from seqpack.errors import InputError

STRATEGIES = ("bfd", "ffd", "nextfit", "wrapped")
OVERFLOWS = ("error", "split", "truncate", "drop")
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # no lone surrogates
IDS = st.one_of(st.integers(0, 300), st.integers(0, 2**40))  # narrow and wide ids


@st.composite
def documents(draw):
    kind = draw(st.sampled_from(["tokens", "labels", "text", "chat"]))
    n = draw(st.integers(0, 7))
    if kind in ("tokens", "labels"):
        docs = [draw(st.lists(IDS, max_size=30)) for _ in range(n)]
        rows = [{"input_ids": d} for d in docs]
        if kind == "labels":
            for r in rows:
                r["labels"] = [draw(st.one_of(st.just(-100), IDS)) for _ in r["input_ids"]]
    elif kind == "text":
        rows = [{"text": draw(TEXT)} for _ in range(n)]
    else:
        role = st.sampled_from(["system", "user", "assistant"])
        rows = [{"messages": [{"role": draw(role), "content": draw(TEXT)}
                              for _ in range(draw(st.integers(0, 4)))]} for _ in range(n)]
    return kind, rows


def write_input(folder: Path, fmt: str, kind: str, rows: list) -> Path:
    if fmt == "jsonl":
        p = folder / "in.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return p
    p = folder / "in.parquet"
    ids = pa.list_(pa.int64())
    if kind in ("tokens", "labels"):
        cols = {"input_ids": pa.array([r["input_ids"] for r in rows], ids)}
        if kind == "labels":
            cols["labels"] = pa.array([r["labels"] for r in rows], ids)
    elif kind == "text":
        cols = {"text": pa.array([r["text"] for r in rows], pa.string())}
    else:
        msg = pa.struct([("role", pa.string()), ("content", pa.string())])
        cols = {"messages": pa.array([r["messages"] for r in rows], pa.list_(msg))}
    pq.write_table(pa.table(cols), p)
    return p


def source_documents(kind: str, rows: list):
    """(tokens, labels) per document, as `seqpack pack` reads them (labels None = tokens)."""
    if kind in ("tokens", "labels"):
        return [r["input_ids"] for r in rows], [r.get("labels") for r in rows]
    from seqpack.data.tokenize import encode_chat, load_tokenizer

    enc = load_tokenizer()
    if kind == "text":
        ids = enc.encode_batch([r["text"] for r in rows])
        toks = [x.tolist() + [enc.eos_id] if x.size else [] for x in ids]
        return toks, [None] * len(toks)
    toks, labs, _ = encode_chat(enc, [r["messages"] for r in rows])
    return [t.tolist() for t in toks], [x.tolist() for x in labs]


def check_output(out: Path, summary, docs, labels, capacity, overflow, label_shift):
    rows = pq.read_table(out).to_pylist()
    lengths = np.array([len(d) for d in docs], np.int64)
    # tokens in = tokens out + tokens counted as lost
    assert summary.input_tokens == lengths.sum() == summary.placed_tokens + summary.dropped_tokens
    assert sum(len(r["input_ids"]) for r in rows) == summary.placed_tokens
    assert summary.rows == len(rows) and summary.documents == len(docs)
    pieces = {}
    for r in rows:
        assert len(r["input_ids"]) == sum(r["doc_lengths"]) <= capacity
        pos = 0
        for d, s, n in zip(r["doc_ids"], r["doc_starts"], r["doc_lengths"]):
            assert r["input_ids"][pos:pos + n] == docs[d][s:s + n]
            src = docs[d] if labels[d] is None else labels[d]
            lab = r["labels"][pos:pos + n]
            if label_shift == "model":
                assert lab == [-100] + src[s + 1:s + n]
            else:
                assert lab == src[s + 1:s + n] + [-100]
            pieces.setdefault(d, []).append((s, n))
            pos += n
    # each document's pieces tile exactly the part the overflow policy keeps
    kept = lengths.copy()
    if overflow == "truncate":
        kept = np.minimum(lengths, capacity)
    elif overflow == "drop":
        kept[lengths > capacity] = 0
    for d, k in enumerate(kept.tolist()):
        got = sorted(pieces.get(d, []))
        assert sum(n for _, n in got) == k
        assert all(a + n == b for (a, n), (b, _) in zip(got, got[1:])) and (not got or got[0][0] == 0)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])  # capsys is drained per example
@given(documents(), st.sampled_from(["jsonl", "parquet"]), st.sampled_from(STRATEGIES),
       st.sampled_from(OVERFLOWS), st.integers(1, 48), st.sampled_from(["model", "collator"]),
       st.one_of(st.none(), st.integers(1, 4)))
def test_pack_property(capsys, data, fmt, strategy, overflow, capacity, label_shift, max_docs):
    kind, rows = data
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        src = write_input(folder, fmt, kind, rows)
        docs, labels = source_documents(kind, rows)
        lengths = [len(d) for d in docs]
        kw = dict(capacity=capacity, strategy=strategy, overflow=overflow, label_shift=label_shift,
                  max_docs_per_bin=max_docs)
        out = folder / "out.parquet"
        try:
            summary = pack_to_parquet(str(src), out, progress=False, verbose=False, report=False, **kw)
        except InputError as e:
            # only the refusals these inputs call for
            msg = str(e)
            if "but capacity is" in msg:
                assert overflow == "error" and max(lengths) > capacity
            elif "nothing to pack" in msg and "dropped" not in msg:
                assert sum(lengths) == 0
            else:
                assert "every document was dropped" in msg and overflow == "drop"
                assert all(n == 0 or n > capacity for n in lengths)
            summary = None
        argv = ["pack", str(src), "-o", str(folder / "cli.parquet"), "--capacity", str(capacity),
                "--strategy", strategy, "--overflow", overflow, "--label-shift", label_shift,
                "--no-progress", "--no-report"] + (["--max-docs-per-row", str(max_docs)] if max_docs else [])
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if summary is None:
            assert rc == 2 and len(err.strip().splitlines()) == 1 and not out.exists()
            return
        assert rc == 0, err
        check_output(out, summary, docs, labels, capacity, overflow, label_shift)
        # the same input and options give the same bytes (CLI run, and a rerun over our own output)
        first = out.read_bytes()
        assert (folder / "cli.parquet").read_bytes() == first
        pack_to_parquet(str(src), out, progress=False, verbose=False, report=False, **kw)
        assert out.read_bytes() == first
        assert not [p for p in folder.iterdir() if "seqpack-tmp" in p.name]
