"""Inputs: every reader gives the same documents, and bad input fails naming file and row."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_util import write_parquet

from seqpack.data.sources import open_source
from seqpack.data.tokenize import encode_chat, load_tokenizer, split_points


def read_all(src, skip=0):
    out = []
    for c in src.chunks(skip=skip):
        out += [c.tokens[c.offsets[i]:c.offsets[i + 1]].tolist() for i in range(len(c))]
    return out


def test_parquet_reads_documents_and_skips_row_groups(tmp_path, small_docs):
    p = write_parquet(tmp_path / "a.parquet", small_docs, rows_per_group=37)
    src = open_source(str(p))
    assert read_all(src) == [d.tolist() for d in small_docs]
    assert read_all(src, skip=100) == [d.tolist() for d in small_docs[100:]]
    assert src.num_rows() == len(small_docs)


def test_parquet_labels_column(tmp_path):
    docs = [np.arange(5), np.arange(3)]
    labels = [[-100, -100, 2, 3, 4], [0, 1, -100]]
    p = write_parquet(tmp_path / "l.parquet", docs, labels=labels)
    (chunk,) = list(open_source(str(p)).chunks())
    assert chunk.labels.tolist() == labels[0] + labels[1]


def test_iterables_hf_and_jsonl_agree(tmp_path, small_docs):
    lists = [d.tolist() for d in small_docs]
    assert read_all(open_source(lists)) == lists
    assert read_all(open_source(lambda: iter(lists))) == lists
    assert read_all(open_source([{"input_ids": x} for x in lists]), skip=7) == lists[7:]
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps({"input_ids": x}) + "\n" for x in lists))
    assert read_all(open_source(str(jl))) == lists
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input_ids": lists})
    assert read_all(open_source(ds)) == lists
    assert read_all(open_source(ds), skip=11) == lists[11:]
    assert read_all(open_source(ds.to_iterable_dataset(num_shards=2))) == lists


def test_text_is_tokenized_with_the_bundled_bpe(tmp_path):
    jl = tmp_path / "t.jsonl"
    jl.write_text(json.dumps({"text": "Hello world"}) + "\n" + json.dumps({"text": ""}) + "\n")
    docs = read_all(open_source(str(jl)))
    tok = load_tokenizer()
    assert docs[0] == tok.encode_batch(["Hello world"])[0].tolist() + [50256]
    assert docs[1] == []  # empty text stays empty (skipped and counted when packing)


def test_chat_masks_prompts_and_keeps_turn_starts():
    tok = load_tokenizer()
    conv = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    (ids,), (labels,), (turns,) = encode_chat(tok, [conv])
    header = tok.encode_batch(["assistant: "])[0]
    body = tok.encode_batch(["Hello!\n"])[0]
    assert turns[0] == 0 and 0 < turns[1] < ids.size
    a = int(turns[1])
    assert (labels[:a] == -100).all()  # user turn: no loss
    assert (labels[a:a + header.size] == -100).all()  # the role header is prompt too
    assert labels[a + header.size:-1].tolist() == body.tolist()
    assert labels[-1] == ids[-1] == 50256  # end of text after the assistant is trained on
    _, no_mask, _ = encode_chat(tok, [conv], mask_prompt=False)
    assert no_mask is None


def test_split_points_prefer_turn_boundaries():
    turns = np.array([0, 300, 700, 1600])
    assert split_points(2000, turns, 1000).tolist() == [0, 700, 1600]
    assert split_points(2500, [0], 1000).tolist() == [0, 1000, 2000]  # one long turn: every limit
    assert split_points(900, turns, 1000).tolist() == [0]


def test_tokenizer_from_a_local_file_and_directory(tmp_path):
    from seqpack.data.corpus import gpt2_tokenizer

    gpt2_tokenizer().save(str(tmp_path / "tokenizer.json"))
    for path in (tmp_path / "tokenizer.json", tmp_path):
        tok = load_tokenizer(path)
        assert tok.encode_batch(["Hello world"])[0].tolist() == [15496, 995]
        assert tok.eos_id == 50256


# ---------------------------------------------------------------------------- bad input


def test_missing_tokenizer_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")


def test_missing_column_lists_the_columns(tmp_path):
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"content": ["a", "b"]}), p)
    with pytest.raises(ValueError, match=r"x.parquet.*none of the columns.*content"):
        list(open_source(str(p)).chunks())
    with pytest.raises(ValueError, match=r"no column 'body'"):
        list(open_source(str(p), column="body").chunks())
    jl = tmp_path / "x.jsonl"
    jl.write_text('{"text": "a"}\n{"txt": "b"}\n')
    with pytest.raises(ValueError, match=r"x.jsonl line 2: no 'text' field \(has: txt\)"):
        list(open_source(str(jl)).chunks())


def test_mistyped_columns(tmp_path):
    p = tmp_path / "f.parquet"
    pq.write_table(pa.table({"input_ids": [[1.5, 2.0]]}), p)
    with pytest.raises(ValueError, match=r"input_ids.*list<element: double>.*expected a list of integers"):
        list(open_source(str(p)).chunks())
    p2 = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), p2)
    with pytest.raises(ValueError, match="'text' has type int64"):
        list(open_source(str(p2)).chunks())
    with pytest.raises(ValueError, match=r"document 1: input_ids must be a flat list of integer token ids; input_ids\[0\] is 0.5 \(float\)"):
        list(open_source([[1, 2], [0.5]]).chunks())
    with pytest.raises(ValueError, match=r"row 1: input_ids\[1\] is a negative id -3"):
        list(open_source(str(write_parquet(tmp_path / "neg.parquet", [[1], [2, -3]]))).chunks())
    with pytest.raises(ValueError, match=r"document 0: messages\[1\] \(assistant\) has no string 'content'"):
        list(open_source([[{"role": "user", "content": "hi"}, {"role": "assistant"}]]).chunks())
    with pytest.raises(ValueError, match="labels has 1 entries but input_ids has 2"):
        list(open_source(str(write_parquet(tmp_path / "lab.parquet", [[1, 2]], labels=[[1]]))).chunks())


def test_corrupt_and_truncated_parquet_name_the_file(tmp_path, small_docs):
    good = write_parquet(tmp_path / "good.parquet", small_docs, rows_per_group=50)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.parquet"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"trunc.parquet: not a readable Parquet file.*truncated or corrupt"):
        list(open_source(str(trunc)).chunks())
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all" * 10)
    with pytest.raises(ValueError, match="junk.parquet: not a readable Parquet file"):
        list(open_source(str(junk)).chunks())
    # a footer that is fine but a damaged page in the middle: the error names the rows
    bad = bytearray(data)
    md = pq.ParquetFile(good).metadata
    col = md.row_group(3).column(0)
    start = col.data_page_offset
    bad[start + 20:start + 400] = b"\xff" * 380
    mid = tmp_path / "mid.parquet"
    mid.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"mid.parquet: could not decode rows from \d+ on \(row group \d\)"):
        list(open_source(str(mid)).chunks())


def test_truncated_jsonl_names_file_and_line(tmp_path):
    jl = tmp_path / "cut.jsonl"
    jl.write_text('{"input_ids": [1, 2]}\n{"input_ids": [3, 4]}\n{"input_ids": [5,')
    with pytest.raises(ValueError, match=r"cut.jsonl line 3, column 18: invalid JSON.*looks truncated"):
        list(open_source(str(jl)).chunks())


def test_missing_input_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        open_source(str(tmp_path / "missing.parquet"))
