"""seqpack pack: global packing to Parquet, exact contents, determinism, interruption."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from data_util import sft_lengths, token_docs, write_parquet

from seqpack.data.pack import pack_to_parquet, packed_metadata, read_packed


def check_rows(path, docs, capacity, label_shift="model", labels=None):
    """Every row holds pieces of source documents, exactly, and within capacity."""
    t = pq.read_table(path).to_pylist()
    seen = {}
    for row in t:
        ids, lab = np.array(row["input_ids"]), np.array(row["labels"])
        assert len(ids) == sum(row["doc_lengths"]) <= capacity
        pos = 0
        for d, s, n in zip(row["doc_ids"], row["doc_starts"], row["doc_lengths"]):
            src = np.asarray(docs[d])
            assert ids[pos:pos + n].tolist() == src[s:s + n].tolist()
            lsrc = src if labels is None else np.asarray(labels[d])
            if label_shift == "model":
                assert lab[pos] == -100 and lab[pos + 1:pos + n].tolist() == lsrc[s + 1:s + n].tolist()
            else:
                assert lab[pos:pos + n - 1].tolist() == lsrc[s + 1:s + n].tolist() and lab[pos + n - 1] == -100
            seen.setdefault(d, []).append((s, n))
            pos += n
    return t, seen


@pytest.mark.parametrize("label_shift", ["model", "collator"])
def test_pack_parquet_exact_and_global(tmp_path, small_docs, label_shift):
    src = write_parquet(tmp_path / "in.parquet", small_docs, rows_per_group=64)
    out = tmp_path / "out.parquet"
    s = pack_to_parquet(str(src), out, capacity=512, overflow="split", label_shift=label_shift,
                        progress=False, verbose=False, group_tokens=4096,  # many groups
                        report=label_shift == "model")
    rows, seen = check_rows(out, small_docs, 512, label_shift)
    # every token of every non-empty document, exactly once
    for d, doc in enumerate(small_docs):
        pieces = sorted(seen.get(d, []))
        assert sum(n for _, n in pieces) == len(doc)
        assert all(a[0] + a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    assert s.empty_docs == 2 and s.documents == len(small_docs)
    assert s.split_docs == int((np.array([len(d) for d in small_docs]) > 512).sum()) > 0
    assert s.rows == len(rows) and s.fill > 0.97
    meta = packed_metadata(out)
    assert meta["capacity"] == 512 and meta["counts"]["empty_docs"] == 2
    if label_shift == "model":
        assert (tmp_path / "out.report.png").stat().st_size > 10_000
    assert not [p for p in tmp_path.iterdir() if "seqpack-tmp" in p.name]


def test_overflow_policies_count_what_they_lose(tmp_path):
    docs = [np.arange(10), np.arange(300), np.arange(0), np.arange(50)]
    with pytest.raises(ValueError, match="document 1 has 300 tokens but capacity is 100"):
        pack_to_parquet(docs, tmp_path / "e.parquet", capacity=100, progress=False, verbose=False)
    assert not (tmp_path / "e.parquet").exists()
    t = pack_to_parquet(docs, tmp_path / "t.parquet", capacity=100, overflow="truncate", progress=False,
                        verbose=False, report=False)
    assert (t.truncated_docs, t.dropped_tokens, t.empty_docs, t.placed_tokens) == (1, 200, 1, 160)
    d = pack_to_parquet(docs, tmp_path / "d.parquet", capacity=100, overflow="drop", progress=False,
                        verbose=False, report=False)
    assert (d.dropped_docs, d.dropped_tokens, d.placed_tokens) == (1, 300, 60)


def test_rerun_is_byte_identical_and_readable(tmp_path, small_docs):
    src = write_parquet(tmp_path / "in.parquet", small_docs)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    for out in (a, b):
        pack_to_parquet(str(src), out, capacity=1024, overflow="split", progress=False, verbose=False)
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a.report.png").read_bytes() == (tmp_path / "b.report.png").read_bytes()
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(a), split="train")
    assert ds.num_rows == pq.ParquetFile(a).metadata.num_rows
    assert ds[0]["input_ids"] == pq.read_table(a).slice(0, 1).to_pylist()[0]["input_ids"]


def test_directory_output_in_shards(tmp_path, small_docs, monkeypatch):
    import seqpack.data.pack as pack

    monkeypatch.setattr(pack, "SHARD_TOKENS", 8192)  # several shards, written two at a time
    single, shards = tmp_path / "one.parquet", tmp_path / "dir"
    kw = dict(capacity=512, overflow="split", progress=False, verbose=False, group_tokens=2048)
    pack_to_parquet(small_docs, single, report=False, **kw)
    pack_to_parquet(small_docs, shards, **kw)
    files = pack.packed_files(shards)
    assert len(files) > 2 and (tmp_path / "dir.report.png").exists()
    assert pq.read_table(shards).to_pylist() == pq.read_table(single).to_pylist()
    assert sum(b.input_ids.shape[0] for b in read_packed(shards, 3)) == pq.read_metadata(single).num_rows
    first = {f: open(f, "rb").read() for f in files}
    pack_to_parquet(small_docs, shards, report=False, **kw)  # replaces the directory, same bytes
    assert {f: open(f, "rb").read() for f in pack.packed_files(shards)} == first
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_dir=str(shards), split="train")
    assert ds.num_rows == pq.read_metadata(single).num_rows


def test_read_packed_gives_packed_batches(tmp_path, small_docs):
    out = tmp_path / "p.parquet"
    pack_to_parquet(small_docs, out, capacity=1024, overflow="split", progress=False, verbose=False,
                    report=False)
    rows = pq.read_table(out).to_pylist()
    batches = list(read_packed(out, batch_size=4))
    assert sum(b.input_ids.shape[0] for b in batches) == len(rows)
    b = batches[0]
    assert b.input_ids.shape == (4, 1024)
    assert b.input_ids[0, :len(rows[0]["input_ids"])].tolist() == rows[0]["input_ids"]
    assert b.boundaries.doc_seqlens().tolist()[:len(rows[0]["doc_lengths"])] == rows[0]["doc_lengths"]
    (flat,) = list(read_packed(out, batch_size=2, layout="1d", max_num_docs=64))[:1]
    assert flat.input_ids.shape == (2048,) and flat.boundaries.cu_seqlens.shape == (65,)


def test_chats_are_masked_and_split_between_turns(tmp_path):
    conv = []
    for i in range(12):
        conv.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 40})
    jl = tmp_path / "chat.jsonl"
    jl.write_text(json.dumps({"messages": conv}) + "\n" + json.dumps({"messages": conv[:2]}) + "\n")
    out = tmp_path / "chat.parquet"
    s = pack_to_parquet(str(jl), out, capacity=128, overflow="split", progress=False, verbose=False,
                        report=False)
    from seqpack.data.tokenize import encode_chat, load_tokenizer

    (ids, ids2), (labels, labels2), (turns, _) = encode_chat(load_tokenizer(), [conv, conv[:2]])
    check_rows(out, [ids, ids2], 128, labels=[labels, labels2])
    starts = [x for r in pq.read_table(out).to_pylist() for d, x in zip(r["doc_ids"], r["doc_starts"]) if d == 0]
    assert s.split_at_turns == 1 and len(starts) > 1
    assert set(starts) <= set(turns.tolist())  # every cut of the long chat is at a turn start


def test_chitchat_fill_at_2048(tmp_path):
    s = pack_to_parquet("chitchat", tmp_path / "c.parquet", capacity=2048, overflow="split",
                        progress=False, verbose=False, report=False)
    assert s.fill >= 0.99 and s.documents == 7168


def test_cli_and_kill_minus_9_then_rerun(tmp_path):
    lengths = sft_lengths(25_000, seed=5, median=200)
    src = write_parquet(tmp_path / "big.parquet", token_docs(lengths), rows_per_group=5000)
    out = tmp_path / "out.parquet"
    cmd = [sys.executable, "-m", "seqpack.cli", "pack", str(src), "-o", str(out), "--capacity", "2048",
           "--overflow", "split", "--no-progress", "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    spill = None
    while time.time() < deadline and proc.poll() is None:  # kill once the scan is under way
        work = [p for p in tmp_path.iterdir() if "seqpack-tmp" in p.name]
        if work and any(work[0].glob("spill-*")):
            spill = work[0]
            break
        time.sleep(0.01)
    assert spill is not None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing that looks finished
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "fill:" in r.stderr and "tokens/s" in r.stderr
    assert not spill.exists()  # the dead run's work directory was cleaned up
    clean = tmp_path / "clean.parquet"
    pack_to_parquet(str(src), clean, capacity=2048, overflow="split", progress=False, verbose=False,
                    report=False)
    assert out.read_bytes() == clean.read_bytes()
    assert pq.ParquetFile(out).metadata.num_rows > 0


def test_cli_reports_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-m", "seqpack.cli", "pack", str(tmp_path / "none.parquet"), "-o",
                        str(tmp_path / "o.parquet"), "--capacity", "64"], capture_output=True, text=True)
    assert r.returncode == 2 and "none.parquet" in r.stderr and "does not exist" in r.stderr
