"""The bundled corpus: chat view and quick packed batches."""

import numpy as np

from seqpack.data.corpus import chitchat_batches, chitchat_messages, chitchat_turns, load_chitchat


def test_chitchat_messages_alternate_roles():
    msgs, turns = chitchat_messages(), chitchat_turns()
    assert len(msgs) == len(turns) == 7168
    conv = msgs[0]
    assert [m["role"] for m in conv[:3]] == ["user", "assistant", "user"]
    assert [m["content"] for m in conv] == turns[0]


def test_chitchat_batches_cover_the_corpus():
    batches = chitchat_batches(capacity=1024, batch_size=4, max_docs=400, max_num_docs=200)
    docs = load_chitchat(400)
    assert all(b.input_ids.shape[1:] == (1024,) for b in batches) and batches[0].input_ids.shape[0] == 4
    assert batches[0].boundaries.cu_seqlens.shape == (201,)
    placed = sum(int((b.doc_stop - b.doc_start).sum()) for b in batches)
    assert placed == int(docs.lengths.sum())
    assert len(np.unique(np.concatenate([b.doc_index for b in batches]))) == 400
    fill = placed / sum(b.input_ids.numel() for b in batches)
    assert fill > 0.97
    (flat,) = chitchat_batches(capacity=1024, batch_size=4, max_docs=50, layout="1d")[:1]
    assert flat.input_ids.shape == (4096,)


def test_package_exports_are_lazy():
    import subprocess
    import sys

    code = ("import sys, seqpack.data as d; assert 'torch' not in sys.modules and 'numba' not in sys.modules; "
            "assert d.PackedIterableDataset.__name__ == 'PackedIterableDataset'; print(sorted(d.__all__))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "pack_to_parquet" in r.stdout
