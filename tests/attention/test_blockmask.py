"""The BlockMask built from cu_seqlens, checked block by block against the dense mask."""

import torch
from attn_ref import boundaries
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpack.attention import build_block_mask
from seqpack.boundaries import DocBoundaries


def classify(dense: torch.Tensor, bs: int):
    """Per (row, q block, kv block): 0 = nothing allowed, 1 = some, 2 = all (the dense truth)."""
    B, _, N, _ = dense.shape
    nb = -(-N // bs)
    out = torch.zeros(B, nb, nb, dtype=torch.int64)
    for i in range(nb):
        for j in range(nb):
            blk = dense[:, 0, i * bs:(i + 1) * bs, j * bs:(j + 1) * bs].flatten(1)
            out[:, i, j] = torch.where(blk.all(1), 2, torch.where(blk.any(1), 1, 0))
    return out


def listed(num, idx, b, i):
    return idx[b, 0, i, :num[b, 0, i]].tolist()


@settings(max_examples=100, deadline=None)
@given(b=boundaries(max_len=48), causal=st.booleans(), window=st.one_of(st.none(), st.integers(1, 20)),
       bs=st.sampled_from([2, 3, 4, 8, 16]), narrow=st.booleans())
def test_block_tables_match_the_dense_mask(b, causal, window, bs, narrow):
    """Every block with an allowed pair is listed exactly once, nothing else is listed, and a
    block listed as full is entirely allowed; the same for the transposed (backward) tables."""
    B = b.shape[0] if b.layout == "rows" else 1
    bm = build_block_mask(b, causal=causal, window=window, block_size=bs, narrow=narrow)
    kv = (bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices)
    q = (bm.q_num_blocks, bm.q_indices, bm.full_q_num_blocks, bm.full_q_indices)
    truth = classify(b.dense_mask(causal=causal, window=window), bs)
    nb = truth.shape[1]
    for tables, transposed in ((kv, False), (q, True)):
        num, idx, full_num, full_idx = tables
        for r in range(B):
            for i in range(nb):
                part, full = listed(num, idx, r, i), listed(full_num, full_idx, r, i)
                assert len(set(part + full)) == len(part) + len(full)  # no duplicates, no overlap
                t = truth[r, :, i] if transposed else truth[r, i, :]
                assert sorted(part + full) == torch.nonzero(t).flatten().tolist()
                assert all(t[j] == 2 for j in full)
    # the mask_mod for partial blocks is exactly the dense mask
    N = bm.seq_lengths[0]
    qi, ki = torch.arange(N)[:, None], torch.arange(N)[None, :]
    for r in range(B):
        got = bm.mask_mod(torch.tensor(r), torch.tensor(0), qi, ki)
        assert torch.equal(got, b.dense_mask(causal=causal, window=window)[r, 0])


def test_full_blocks_are_used_where_documents_are_long():
    """One 64-token document, block 8, causal: the 28 blocks strictly below the diagonal are full."""
    b = DocBoundaries.from_lengths([64])
    bm = build_block_mask(b, causal=True, block_size=8)
    assert int(bm.full_kv_num_blocks.sum()) == 28 and int(bm.kv_num_blocks.sum()) == 8
    assert bm.kv_indices.shape == (1, 1, 8, 8) and bm.seq_lengths == (64, 64)


def test_width_is_bounded_by_max_seqlen_not_row_length():
    b = DocBoundaries.from_lengths([100] * 40, 4096, max_seqlen=128)
    bm = build_block_mask(b, block_size=128, narrow=True)
    # a block reaches at most 127 tokens either side of itself: 3 blocks, not 32
    assert bm.kv_indices.shape[-1] == 3 and bm.q_indices.shape[-1] == 3
    full = build_block_mask(b, block_size=128)
    assert full.kv_indices.shape[-1] == 32
    for name in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
        assert torch.equal(getattr(bm, name), getattr(full, name))
