"""Training batches in three modes, the loader's state, the FLOP counts behind MFU."""

import numpy as np
import pytest
import torch

from seqpack.batch import Documents
from seqpack.train.data import PackedLoader, bucket_length, compact_vocab
from seqpack.train.metrics import attention_flops, step_flops, visible_pairs
from seqpack.model import gpt_config


def docs_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return Documents.from_lists([rng.integers(0, 100, n).tolist() for n in lengths])


LENGTHS = [5, 60, 17, 33, 2, 64, 41, 8, 25, 12, 50, 3, 19, 30, 44, 7]


def real_tokens(step):
    """Multiset of (token, label) pairs a step shows the model, padding removed."""
    pairs = []
    for mb in step.micro:
        ids, lab = mb.input_ids.reshape(-1), mb.labels.reshape(-1)
        keep = lab != -100
        pairs += list(zip(ids[keep].tolist(), lab[keep].tolist()))
    return sorted(pairs)


def test_modes_show_the_same_tokens_and_labels():
    docs = docs_of(LENGTHS)
    steps = {m: PackedLoader(docs, capacity=64, rows_per_step=4, mode=m, pad_batch=3).make_step(0, 0)
             for m in ("packed", "naive", "padded")}
    p, n, d = steps["packed"], steps["naive"], steps["padded"]
    assert real_tokens(p) == real_tokens(n) == real_tokens(d)
    assert p.useful_tokens == n.useful_tokens == d.useful_tokens and p.label_tokens == d.label_tokens
    assert p.slots == n.slots == 4 * 64 and d.slots >= d.useful_tokens
    assert p.micro[0].input_ids.shape == (256,) and n.micro[0].input_ids.shape == (4, 64)
    # padded: one piece per row, pad_batch rows per micro-batch, power-of-two lengths
    assert all(mb.input_ids.shape[0] == 3 and mb.input_ids.shape[1] in (16, 32, 64) for mb in d.micro)
    assert sum(int((mb.labels != -100).any(dim=1).sum()) for mb in d.micro) == d.docs
    # packed: static cu_seqlens, positions restart per document
    b = p.micro[0].boundaries
    assert b.num_segments == PackedLoader(docs, capacity=64, rows_per_step=4).max_num_docs
    assert torch.equal(p.micro[0].position_ids, b.position_ids())


def test_ranks_split_each_step_and_resume_state():
    docs = docs_of(LENGTHS * 4)
    one = PackedLoader(docs, capacity=64, rows_per_step=4)
    ranks = [PackedLoader(docs, capacity=64, rows_per_step=4, rank=r, world=2) for r in range(2)]
    for step in (0, 3):
        both = np.concatenate([r.step_bins(1, step) for r in ranks])
        assert both.tolist() == one.step_bins(1, step).tolist()
    assert not np.array_equal(one.epoch_order(1), one.epoch_order(2))
    for _ in range(one.steps_per_epoch + 2):
        next(one)
    state = one.state_dict()
    assert (state["epoch"], state["step"]) == (1, 2)
    again = PackedLoader(docs, capacity=64, rows_per_step=4)
    again.load_state_dict(state)
    assert real_tokens(next(again)) == real_tokens(next(one))
    with pytest.raises(ValueError, match="multiple of the world size"):
        PackedLoader(docs, capacity=64, rows_per_step=3, world=2)


def test_max_num_docs_grows_with_a_warning():
    docs = docs_of(LENGTHS)
    loader = PackedLoader(docs, capacity=64, rows_per_step=4, max_num_docs=2)
    with pytest.warns(UserWarning, match="growing"):
        step = next(loader)
    assert loader.max_num_docs > 2 and step.micro[0].boundaries.num_segments == loader.max_num_docs


def test_bucket_length():
    assert [bucket_length(n, 1000) for n in (1, 16, 17, 100, 600, 1000)] == [16, 16, 32, 128, 1000, 1000]


def test_compact_vocab_keeps_frequent_ids():
    docs = Documents.from_lists([[7, 7, 7, 3, 3, 9], [3, 7, 1]])
    small, table = compact_vocab(docs, 3)
    assert small.tokens.tolist() == [0, 0, 0, 1, 1, 2, 1, 0, 2] and table[7] == 0 and table[9] == 2


def test_flop_counts():
    assert visible_pairs([4]) == 10 and visible_pairs([4], window=2) == 1 + 2 + 2 + 2
    assert visible_pairs([3, 1]) == 7
    cfg = gpt_config("tiny", vocab_size=64, n_layer=2, window=2, window_pattern="SG")
    # layer 0 window 2, layer 1 global: 12 * H * D * pairs each
    assert attention_flops([4], n_head=2, head_dim=32, layer_windows=cfg.layer_windows()) == 12 * 64 * (7 + 10)
    assert step_flops(1000, 4, [4], cfg) == 6 * 1000 * 4 + 12 * 64 * 17


def test_seqpack_pack_output_trains_row_for_row(tmp_path):
    """A `seqpack pack` Parquet output is read back as its stored rows, labels included."""
    from seqpack import cli
    from seqpack.batch import collate_packed
    from seqpack.data.pack import read_packed
    from seqpack.data.load import load_documents

    out = tmp_path / "packed.parquet"
    assert cli.main(["pack", "chitchat", "-o", str(out), "--capacity", "256", "--overflow", "split",
                     "--label-shift", "collator", "--no-report", "--no-progress"]) == 0
    docs, vocab, plan = load_documents(str(out))
    assert vocab == 50257 and plan.capacity == 256
    stored = next(read_packed(out, batch_size=4, layout="rows"))
    mine = collate_packed(plan, docs, np.arange(4), layout="rows", label_shift="collator")
    assert torch.equal(mine.input_ids, stored.input_ids)
    assert mine.boundaries.equals(stored.boundaries)
    keep = mine.labels != -100
    assert torch.equal(mine.labels[keep], stored.labels[keep])
    # only the last token of a split piece loses its target (the next piece's first token)
    assert int((~keep & (stored.labels != -100)).sum()) <= int(mine.boundaries.num_segments)
