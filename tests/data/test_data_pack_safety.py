"""seqpack pack on bad input and unsafe outputs: refusals with the place and the fix, nothing
of the user's replaced, ids of any width kept, killed runs cleaned up."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqpack.cli import main
from seqpack.data.pack import pack_to_parquet
from seqpack.errors import InputError

KW = dict(progress=False, verbose=False, report=False)


def cli(capsys, *argv):
    """Run `seqpack ...` in-process: (exit status, stderr)."""
    rc = main(list(map(str, argv)))
    return rc, capsys.readouterr().err


def one_line_error(rc, err, *needles):
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("seqpack "), err
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def jsonl(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"input_ids": list(range(1, n + 1))}) + "\n" for n in (5, 9, 3, 7)))
    return p


# ----------------------------------------------------------------------------------------
# 1. outputs: never replace what seqpack did not write


def test_output_directory_of_user_files_is_refused(tmp_path, jsonl, capsys):
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    rc, err = cli(capsys, "pack", jsonl, "-o", mine, "--capacity", 16, "--no-progress")
    one_line_error(rc, err, mine, "did not write", "choose another -o")
    assert (mine / "notes.txt").read_text() == "x" and sorted(os.listdir(mine)) == ["notes.txt"]
    rc, err = cli(capsys, "pack", jsonl, "-o", mine, "--capacity", 16, "--no-progress", "--force")
    one_line_error(rc, err, mine)  # --force never replaces what seqpack did not write
    assert sorted(os.listdir(mine)) == ["notes.txt"]


def test_output_equal_to_containing_or_inside_the_input_is_refused(tmp_path, jsonl, capsys, monkeypatch):
    before = jsonl.read_bytes()
    rc, err = cli(capsys, "pack", jsonl, "-o", jsonl, "--capacity", 16)
    one_line_error(rc, err, "is the input itself")
    monkeypatch.chdir(tmp_path)
    rc, err = cli(capsys, "pack", "in.jsonl", "-o", ".", "--capacity", 16)
    one_line_error(rc, err, "contains the input")
    rc, err = cli(capsys, "pack", tmp_path, "-o", tmp_path / "packed.parquet", "--capacity", 16)
    one_line_error(rc, err, "inside the input directory")
    assert jsonl.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_only_complete_seqpack_outputs_are_replaced(tmp_path, jsonl):
    # a file that is not ours, with or without the .parquet suffix
    for name, data in (("user.parquet", b"not parquet"), ("userfile", b"mine")):
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(InputError, match="seqpack did not write"):
            pack_to_parquet(str(jsonl), p, capacity=16, **KW)
        assert p.read_bytes() == data
    # a Parquet file of the user's (no seqpack metadata)
    user = tmp_path / "table.parquet"
    pq.write_table(pa.table({"a": [1]}), user)
    with pytest.raises(InputError, match="table.parquet exists and is a file that seqpack did not write"):
        pack_to_parquet(str(jsonl), user, capacity=16, **KW)
    # our own outputs are replaced, file and directory
    for out in (tmp_path / "ours.parquet", tmp_path / "ours"):
        pack_to_parquet(str(jsonl), out, capacity=16, **KW)
        first = pq.read_table(out).to_pylist()
        pack_to_parquet(str(jsonl), out, capacity=32, **KW)
        assert pq.read_table(out).to_pylist() != first
    marker = json.loads((tmp_path / "ours" / ".seqpack.json").read_text())
    assert sorted(marker["files"]) == sorted(os.listdir(tmp_path / "ours"))[1:]  # all but the marker
    # a user's file inside our directory makes it theirs too
    (tmp_path / "ours" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"holds files seqpack did not write \(notes.txt\)"):
        pack_to_parquet(str(jsonl), tmp_path / "ours", capacity=16, force=True, **KW)
    assert (tmp_path / "ours" / "notes.txt").exists()
    # an incomplete output of ours needs --force
    (tmp_path / "ours" / "notes.txt").unlink()
    shard = sorted((tmp_path / "ours").glob("*.parquet"))[0]
    shard.unlink()
    with pytest.raises(InputError, match=f"incomplete seqpack output.*{shard.name} is missing.*--force"):
        pack_to_parquet(str(jsonl), tmp_path / "ours", capacity=16, **KW)
    pack_to_parquet(str(jsonl), tmp_path / "ours", capacity=16, force=True, **KW)
    assert shard.exists()


def test_report_of_the_user_is_not_replaced(tmp_path, jsonl):
    rep = tmp_path / "out.report.png"
    rep.write_bytes(b"my picture")
    with pytest.raises(InputError, match="out.report.png exists and seqpack did not write it.*--no-report"):
        pack_to_parquet(str(jsonl), tmp_path / "out.parquet", capacity=16, progress=False, verbose=False)
    assert rep.read_bytes() == b"my picture" and not (tmp_path / "out.parquet").exists()
    rep.unlink()
    pack_to_parquet(str(jsonl), tmp_path / "out.parquet", capacity=16, progress=False, verbose=False)
    pack_to_parquet(str(jsonl), tmp_path / "out.parquet", capacity=16, progress=False, verbose=False)  # ours now


def test_refusals_come_before_the_scan(tmp_path, jsonl, monkeypatch):
    import seqpack.data.pack as pack

    def no_scan(*a, **k):
        raise AssertionError("the scan ran")

    monkeypatch.setattr(pack, "_run", no_scan)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(InputError, match="did not write"):
        pack_to_parquet(str(jsonl), tmp_path / "taken", capacity=16, **KW)
    with pytest.raises(InputError, match="unknown Parquet compression 'bogus'"):
        pack_to_parquet(str(jsonl), tmp_path / "o.parquet", capacity=16, compression="bogus", **KW)


def test_stale_work_directories_of_dead_runs_are_cleaned(tmp_path, jsonl, capsys):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = socket.gethostname()

    def work_dir(name, pid, marker=True):
        d = tmp_path / f".{name}.seqpack-tmp-{pid}"
        d.mkdir()
        (d / "spill-tokens.bin").write_bytes(b"\0" * 1000)
        if marker:
            (d / "_seqpack-work.json").write_text(json.dumps({"pid": int(pid), "host": host}))
        return d

    stale = work_dir("other.parquet", dead)  # another output's, same folder
    live = work_dir("busy.parquet", os.getppid())  # a live process
    unmarked = work_dir("x.parquet", dead, marker=False)  # not provably ours
    rc, err = cli(capsys, "pack", jsonl, "-o", tmp_path / "o.parquet", "--capacity", 16, "--no-progress",
                  "--no-report")
    assert rc == 0, err
    assert not stale.exists() and live.exists() and unmarked.exists()
    assert f"removed the work directory {stale}" in err and f"cleaned:       {stale}" in err
    assert f"run pid {dead}, no longer alive" in err


# ----------------------------------------------------------------------------------------
# 2. ids keep their value


def test_wide_ids_keep_their_value_parquet_and_jsonl(tmp_path):
    ids = [1, 2**31, 2**32 + 5]
    p = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([ids, [7, 8]], pa.list_(pa.int64()))}), p)
    j = tmp_path / "wide.jsonl"
    j.write_text(json.dumps({"input_ids": ids}) + "\n" + json.dumps({"input_ids": [7, 8]}) + "\n")
    for src in (p, j):
        out = tmp_path / f"{src.stem}-{src.suffix[1:]}.parquet"
        pack_to_parquet(str(src), out, capacity=8, **KW)
        t = pq.read_table(out)
        assert t.schema.field("input_ids").type == pa.list_(pa.int64())
        (row,) = t.to_pylist()
        ends = np.cumsum(row["doc_lengths"]).tolist()
        by_doc = {d: row["input_ids"][e - n:e] for d, n, e in zip(row["doc_ids"], row["doc_lengths"], ends)}
        assert by_doc == {0: ids, 1: [7, 8]}
        assert 2**32 + 5 in row["labels"] and 2**31 in row["labels"]
    # ids that fit keep the narrow int32 columns
    small = tmp_path / "small.parquet"
    pack_to_parquet([[1, 2], [3]], small, capacity=4, **KW)
    assert pq.read_schema(small).field("input_ids").type == pa.list_(pa.int32())


def test_wide_labels_and_uint64_ids(tmp_path):
    p = tmp_path / "lab.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([[1, 2, 3]], pa.list_(pa.int64())),
                             "labels": pa.array([[-100, 2**40, 3]], pa.list_(pa.int64()))}), p)
    out = tmp_path / "lab-out.parquet"
    pack_to_parquet(str(p), out, capacity=8, **KW)
    assert pq.read_table(out).to_pylist()[0]["labels"] == [-100, 2**40, 3]
    u = tmp_path / "u64.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([[1], [4, 2**63 + 7]], pa.list_(pa.uint64()))}), u)
    with pytest.raises(InputError, match=r"u64.parquet row 1: input_ids\[1\] = 9223372036854775815 does not fit"):
        pack_to_parquet(str(u), tmp_path / "x.parquet", capacity=8, **KW)
    ok = tmp_path / "u64ok.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([[1, 2**62]], pa.list_(pa.uint64()))}), ok)
    pack_to_parquet(str(ok), tmp_path / "y.parquet", capacity=8, **KW)
    assert pq.read_table(tmp_path / "y.parquet").to_pylist()[0]["input_ids"] == [1, 2**62]


def test_jsonl_ids_beyond_int64_and_negative_are_refused_with_place(tmp_path):
    j = tmp_path / "big.jsonl"
    j.write_text('{"input_ids": [1]}\n{"input_ids": [2, 18446744073709551615]}\n')
    with pytest.raises(InputError, match=r"big.jsonl line 2: input_ids\[1\] = 18446744073709551615 does not fit"):
        pack_to_parquet(str(j), tmp_path / "o.parquet", capacity=8, **KW)
    j.write_text('{"input_ids": [1]}\n{"input_ids": [2, 9223372036854775815]}\n')
    with pytest.raises(InputError, match=r"line 2: input_ids\[1\] = 9223372036854775815 does not fit"):
        pack_to_parquet(str(j), tmp_path / "o.parquet", capacity=8, **KW)
    j.write_text('{"input_ids": [1, 2], "labels": [-100, 2]}\n{"input_ids": [1, 2], "labels": [-5, 2]}\n')
    with pytest.raises(InputError, match=r"line 2: labels\[0\] is a negative id -5 \(the only negative value allowed is -100\)"):
        pack_to_parquet(str(j), tmp_path / "o.parquet", capacity=8, **KW)


# ----------------------------------------------------------------------------------------
# 3. strings are not token ids


def test_parquet_string_input_ids_are_refused_like_jsonl(tmp_path):
    p = tmp_path / "s.parquet"
    pq.write_table(pa.table({"input_ids": ["hello world", "more"]}), p)
    for column in (None, "input_ids"):
        with pytest.raises(InputError, match=r"s.parquet: column 'input_ids' holds strings.*lists of integers"):
            pack_to_parquet(str(p), tmp_path / "o.parquet", capacity=64, column=column, **KW)
    j = tmp_path / "s.jsonl"
    j.write_text(json.dumps({"input_ids": "hello world"}) + "\n")
    with pytest.raises(InputError, match="input_ids is a string"):
        pack_to_parquet(str(j), tmp_path / "o.parquet", capacity=64, **KW)
    t = tmp_path / "t.parquet"  # a text column is still tokenized
    pq.write_table(pa.table({"text": ["hello world"]}), t)
    assert pack_to_parquet(str(t), tmp_path / "o.parquet", capacity=64, **KW).input_tokens == 3


# ----------------------------------------------------------------------------------------
# 4. errors with their place


def test_null_inside_a_list_column_names_row_and_column(tmp_path):
    p = tmp_path / "n.parquet"
    pq.write_table(pa.table({"input_ids": pa.array([[1, 2], [3, None, 5]], pa.list_(pa.int64()))}), p)
    with pytest.raises(InputError, match=r"n.parquet row 1, column 'input_ids': element 1 is null"):
        pack_to_parquet(str(p), tmp_path / "o.parquet", capacity=8, **KW)
    pq.write_table(pa.table({"input_ids": pa.array([[1, 2], [3, 4]], pa.list_(pa.int64())),
                             "labels": pa.array([[1, 2], [None, 4]], pa.list_(pa.int64()))}), p)
    with pytest.raises(InputError, match=r"row 1, column 'labels': element 0 is null"):
        pack_to_parquet(str(p), tmp_path / "o.parquet", capacity=8, **KW)
    j = tmp_path / "n.jsonl"
    j.write_text('{"input_ids": [1]}\n{"input_ids": [1, null]}\n')
    with pytest.raises(InputError, match=r"n.jsonl line 2: input_ids must be a flat list of integer token ids; input_ids\[1\] is null"):
        pack_to_parquet(str(j), tmp_path / "o.parquet", capacity=8, **KW)


def test_jsonl_bad_bytes_and_syntax_name_line_and_column(tmp_path, capsys):
    j = tmp_path / "b.jsonl"
    j.write_bytes(b'{"text": "ok"}\n{"text": "caf\xff"}\n')
    with pytest.raises(InputError, match=r"b.jsonl line 2: byte 0xff at byte offset 28 \(column 14 of the line\) is not UTF-8"):
        pack_to_parquet(str(j), tmp_path / "o.parquet", capacity=64, **KW)
    j.write_text('{"input_ids": [1]}\n{"text": "é", "input_ids": [1,, 2]}\n')
    with pytest.raises(InputError, match=r"b.jsonl line 2, column 31: invalid JSON \(Expecting value\)"):
        pack_to_parquet(str(j), tmp_path / "o.parquet", capacity=64, **KW)
    rc, err = cli(capsys, "pack", j, "-o", tmp_path / "o.parquet", "--capacity", 64, "--no-progress")
    one_line_error(rc, err, "line 2, column 31")


def test_bogus_compression_is_refused_at_argument_parsing(tmp_path, jsonl, capsys):
    with pytest.raises(SystemExit) as e:
        main(["pack", str(jsonl), "-o", str(tmp_path / "o.parquet"), "--capacity", "16", "--compression", "bogus"])
    assert e.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


def test_unwritable_output_and_full_disk_are_one_line(tmp_path, jsonl, capsys, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    rc, err = cli(capsys, "pack", jsonl, "-o", blocker / "sub" / "o.parquet", "--capacity", 16, "--no-progress")
    one_line_error(rc, err, blocker)
    assert blocker.read_text() == "x"
    import seqpack.data.pack as pack

    def full(self, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pack._Spill, "add", full)
    out = tmp_path / "full.parquet"
    rc, err = cli(capsys, "pack", jsonl, "-o", out, "--capacity", 16, "--no-progress")
    one_line_error(rc, err, "No space left on device", f"while writing {out}")
    assert not [p for p in tmp_path.iterdir() if "seqpack-tmp" in p.name]


# ----------------------------------------------------------------------------------------
# 6. wrapped applies the overflow it prints


@pytest.mark.parametrize("overflow", ["error", "split", "truncate", "drop"])
def test_wrapped_applies_overflow(tmp_path, capsys, overflow):
    j = tmp_path / "w.jsonl"
    docs = [list(range(1, 5)), list(range(1, 26)), list(range(1, 4))]
    j.write_text("".join(json.dumps({"input_ids": d}) + "\n" for d in docs))
    out = tmp_path / "w.parquet"
    rc, err = cli(capsys, "pack", j, "-o", out, "--capacity", 10, "--strategy", "wrapped", "--overflow",
                  overflow, "--no-progress", "--no-report")
    if overflow == "error":
        one_line_error(rc, err, "document 1 has 25 tokens but capacity is 10")
        return
    assert rc == 0 and "(wrapped, overflow=" + overflow + ")" in err
    rows = pq.read_table(out).to_pylist()
    kept = {"split": 25, "truncate": 10, "drop": 0}[overflow]
    assert sum(len(r["input_ids"]) for r in rows) == 4 + kept + 3
    assert all(len(r["input_ids"]) <= 10 for r in rows)
    meta = json.loads(pq.read_schema(out).metadata[b"seqpack"])
    assert meta["counts"]["dropped_tokens"] == 25 - kept


# ----------------------------------------------------------------------------------------
# 12. nothing to pack


def test_empty_inputs_are_refused(tmp_path, capsys):
    cases = {"none.jsonl": "", "blank.jsonl": "\n\n", "allempty.jsonl": '{"input_ids": []}\n{"text": ""}\n'}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    rc, err = cli(capsys, "pack", tmp_path / "none.jsonl", "-o", tmp_path / "o.parquet", "--capacity", 8, "--no-progress")
    one_line_error(rc, err, "none.jsonl holds no documents: nothing to pack")
    rc, err = cli(capsys, "pack", tmp_path / "blank.jsonl", "-o", tmp_path / "o.parquet", "--capacity", 8, "--no-progress")
    one_line_error(rc, err, "holds no documents")
    (tmp_path / "allempty.jsonl").write_text('{"input_ids": []}\n{"input_ids": []}\n')
    rc, err = cli(capsys, "pack", tmp_path / "allempty.jsonl", "-o", tmp_path / "o.parquet", "--capacity", 8, "--no-progress")
    one_line_error(rc, err, "holds 2 documents, all empty")
    with pytest.raises(InputError, match="every document was dropped"):
        pack_to_parquet([[1] * 20, [2] * 30], tmp_path / "o.parquet", capacity=8, overflow="drop", **KW)
    assert not (tmp_path / "o.parquet").exists()
    assert not [p for p in tmp_path.iterdir() if "seqpack-tmp" in p.name]
