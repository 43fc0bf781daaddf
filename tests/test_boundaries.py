"""DocBoundaries: every constructor, every conversion, LLaMA-Factory's API, bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import seqpack
from seqpack.boundaries import DocBoundaries, get_seqlens_in_batch, get_unpad_data

# ----------------------------------------------------------------------------- references


def ref_seqlens(mask: torch.Tensor) -> list[int]:
    """LLaMA-Factory's semantics, written plainly: per row, count of each label 1..n."""
    out = []
    for row in mask.tolist():
        for label in range(1, max(row + [0]) + 1):
            out.append(row.count(label))
    return [x for x in out if x]


def ref_unpad(mask: torch.Tensor):
    flat = mask.flatten().tolist()
    indices = [i for i, v in enumerate(flat) if v != 0]
    lens = ref_seqlens(mask)
    return indices, list(np.cumsum([0] + lens)), max(lens, default=0)


def ref_dense(mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """Allowed pairs: same document; padding only sees padding of its own run."""
    B, L = mask.shape
    out = torch.zeros(B, 1, L, L, dtype=torch.bool)
    for b in range(B):
        run = [0] * L  # index of the run (maximal block of equal labels) each token is in
        for j in range(1, L):
            run[j] = run[j - 1] + (mask[b, j] != mask[b, j - 1])
        for q in range(L):
            for k in range(L):
                out[b, 0, q, k] = run[q] == run[k] and (not causal or k <= q)
    return out


@st.composite
def packed_masks(draw, max_rows=4, max_len=24):
    """Valid integer-labelled masks: documents 1..n in order, padding runs anywhere."""
    B = draw(st.integers(1, max_rows))
    L = draw(st.integers(1, max_len))
    rows = []
    for _ in range(B):
        row, label = [], 0
        while len(row) < L:
            n = draw(st.integers(1, L - len(row)))
            if draw(st.booleans()) and (not row or row[-1] != 0):
                row += [0] * n
            else:
                label += 1
                row += [label] * n
        rows.append(row)
    return torch.tensor(rows)


# ----------------------------------------------------------------------------- the seed example


def test_llamafactory_example_verbatim():
    attention_mask = torch.tensor([[1, 1, 2, 2, 2, 0],
                                   [1, 2, 2, 3, 3, 3]])
    assert seqpack.get_seqlens_in_batch(attention_mask).tolist() == [2, 3, 1, 2, 3]
    indices, cu_seqlens, max_seqlen = seqpack.get_unpad_data(attention_mask)
    assert indices.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert cu_seqlens.tolist() == [0, 2, 5, 6, 8, 11]
    assert cu_seqlens.dtype == torch.int32
    assert max_seqlen == 3 and isinstance(max_seqlen, int)


# ----------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(packed_masks())
def test_llamafactory_api_matches_reference(mask):
    assert get_seqlens_in_batch(mask).tolist() == ref_seqlens(mask)
    indices, cu, max_seqlen = get_unpad_data(mask)
    r_idx, r_cu, r_max = ref_unpad(mask)
    assert indices.tolist() == r_idx
    assert cu.tolist() == r_cu and cu.dtype == torch.int32
    assert max_seqlen == r_max


@settings(max_examples=150, deadline=None)
@given(packed_masks())
def test_mask_round_trips_through_every_format(mask):
    b = DocBoundaries.from_attention_mask(mask)
    assert torch.equal(b.attention_mask(), mask)
    # cu_seqlens (with padding flags) -> same boundaries
    assert DocBoundaries.from_cu_seqlens(b.cu_seqlens, b.shape, is_pad=b.is_pad).equals(b)
    # static padding changes no per-token format
    s = b.static(b.num_segments + 5)
    assert s.cu_seqlens.numel() == b.num_segments + 6
    assert torch.equal(s.attention_mask(), mask)
    assert torch.equal(s.position_ids(), b.position_ids())
    assert torch.equal(s.doc_ids(), b.doc_ids())
    # position ids restart at 0 in each run and count up inside it
    pos = b.position_ids()
    change = torch.ones_like(mask, dtype=torch.bool)
    change[:, 1:] = mask[:, 1:] != mask[:, :-1]
    assert torch.equal(pos == 0, change)
    # position ids -> the same segmentation (position ids cannot mark padding)
    assert torch.equal(DocBoundaries.from_position_ids(pos).cu_seqlens, b.cu_seqlens)
    # token mask and unpad indices agree
    assert torch.equal(b.token_mask(), mask != 0)


@settings(max_examples=60, deadline=None)
@given(packed_masks(max_rows=3, max_len=12), st.booleans())
def test_dense_mask_matches_reference(mask, causal):
    b = DocBoundaries.from_attention_mask(mask)
    assert torch.equal(b.dense_mask(causal=causal), ref_dense(mask, causal))


def test_dense_mask_window():
    b = DocBoundaries.from_row_lengths([[5, 3]], 8)
    m = b.dense_mask(causal=True, window=2)[0, 0]
    q, k = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    same = (q < 5) == (k < 5)
    assert torch.equal(m, same & (k <= q) & (q - k < 2))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), max_size=5), min_size=1, max_size=4), st.integers(0, 6))
def test_row_lengths(rows, slack):
    L = max(sum(r) for r in rows) + slack
    if L == 0:
        L = 1
    b = DocBoundaries.from_row_lengths(rows, L)
    assert b.shape == (len(rows), L) and b.layout == "rows"
    labels = b.attention_mask()
    for r, lens in enumerate(rows):
        nz = [x for x in lens if x > 0]
        expect = sum(([i + 1] * n for i, n in enumerate(nz)), []) + [0] * (L - sum(lens))
        assert labels[r].tolist() == expect
    assert b.doc_seqlens().tolist() == [x for r in rows for x in r if x > 0]
    assert b.max_seqlen == int(b.seqlens.max())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 20), max_size=8), st.integers(0, 30), st.integers(1, 25))
def test_1d_lengths_split_long_padding(lens, slack, max_seqlen):
    total = sum(lens) + slack
    if lens and max(lens) > max_seqlen:
        with pytest.raises(ValueError, match="max_seqlen"):
            DocBoundaries.from_lengths(lens, total, max_seqlen=max_seqlen)
        return
    b = DocBoundaries.from_lengths(lens, total, max_seqlen=max_seqlen)
    assert b.shape == (total,) and int(b.cu_seqlens[-1]) == total
    assert all(n <= max_seqlen for n in b.seqlens.tolist())
    assert b.seqlens[~b.is_pad].tolist() == lens  # documents kept in order, empty ones included
    assert int(b.seqlens[b.is_pad].sum()) == slack
    assert b.num_tokens() == sum(lens) and b.num_docs() == sum(1 for x in lens if x)


def test_unpad_data_gathers_real_tokens():
    b = DocBoundaries.from_row_lengths([[2, 1], [4]], 5)
    idx, cu, m = b.unpad_data()
    assert idx.tolist() == [0, 1, 2, 5, 6, 7, 8]
    assert cu.tolist() == [0, 2, 3, 7] and m == 4


def test_flatten_and_layouts():
    b = DocBoundaries.from_row_lengths([[2, 1], [4]], 5)
    f = b.flatten()
    assert f.layout == "1d" and f.shape == (10,)
    assert torch.equal(f.doc_ids(), b.doc_ids().flatten())
    assert f.attention_mask().tolist() == [1, 1, 2, 0, 0, 3, 3, 3, 3, 0]


def test_bool_mask_is_one_document_per_row():
    b = DocBoundaries.from_attention_mask(torch.tensor([[True, True, False], [True, True, True]]))
    assert b.doc_seqlens().tolist() == [2, 3]


def test_conversions_trace_without_graph_breaks():
    """No host sync in the per-token conversions: they compile with fullgraph=True."""
    b = DocBoundaries.from_row_lengths([[3, 2], [1, 1, 1]], 6).static(8, max_seqlen=6)

    def convert(cu, pad):
        x = DocBoundaries(cu, (2, 6), is_pad=pad, max_seqlen=6, validate=False)
        return x.position_ids(), x.attention_mask(), x.dense_mask(), x.token_mask()

    eager = convert(b.cu_seqlens, b.is_pad)
    compiled = torch.compile(convert, fullgraph=True, dynamic=False, backend="eager")(b.cu_seqlens, b.is_pad)
    for e, c in zip(eager, compiled):
        assert torch.equal(e, c)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("mask, match", [
    ([[1, 1, 0, 1]], r"row 0 position 3: document 1 starts again"),
    ([[1, 2], [1, 3]], r"row 1 position 1: label 3 where 2 was expected"),
    ([[2, 2, 0]], r"row 0 position 0: label 2 where 1 was expected"),
    ([[1, 2, 1]], r"row 0 position 2: document 1 starts again"),
    ([[0, 1], [1, -1]], r"row 1 position 1 holds -1"),
    ([1, 1, 2], r"must be 2D"),
    ([[[1]]], r"must be 2D"),
])
def test_bad_masks_name_row_and_position(mask, match):
    with pytest.raises(ValueError, match=match):
        get_unpad_data(torch.tensor(mask))


def test_float_mask_refused():
    with pytest.raises(ValueError, match="integers"):
        get_seqlens_in_batch(torch.tensor([[1.0, 1.0, 2.0]]))


@pytest.mark.parametrize("cu, shape, match", [
    ([0, 3, 5], (6,), "ends at 5 but the buffer has 6"),
    ([1, 3, 6], (6,), "must start at 0"),
    ([0, 4, 3, 6], (6,), "decreases at index 2"),
    ([0, 2, 4, 6], (2, 3), "crosses the end of row 0"),
    ([[0, 6]], (6,), "1D"),
])
def test_bad_cu_seqlens(cu, shape, match):
    with pytest.raises(ValueError, match=match):
        DocBoundaries.from_cu_seqlens(torch.tensor(cu), shape)


def test_document_longer_than_max_seqlen():
    with pytest.raises(ValueError, match="segment 1 has 5 tokens but max_seqlen is 4"):
        DocBoundaries.from_cu_seqlens(torch.tensor([0, 2, 7]), max_seqlen=4)
    with pytest.raises(ValueError, match="row 1 has a document of 5 tokens but max_seqlen is 4"):
        DocBoundaries.from_row_lengths([[2], [5]], 6, max_seqlen=4)


def test_static_refuses_too_many_segments():
    b = DocBoundaries.from_row_lengths([[1, 1, 1], [2]], 4)  # (3 docs + pad) + (1 doc + pad)
    assert b.num_segments == 6
    assert b.static(6).num_segments == 6
    with pytest.raises(ValueError, match="6 segments .* max_num_docs is 5"):
        b.static(5)


def test_row_overflow_and_negative_lengths():
    with pytest.raises(ValueError, match="row 1 holds 7 tokens but rows have 6"):
        DocBoundaries.from_row_lengths([[3], [4, 3]], 6)
    with pytest.raises(ValueError, match="negative length -1"):
        DocBoundaries.from_lengths([3, -1], 6)
    with pytest.raises(ValueError, match="hold 9 tokens but the buffer has 6"):
        DocBoundaries.from_lengths([4, 5], 6)


def test_from_row_lengths_row_len_is_a_deprecated_name_of_capacity():
    want = DocBoundaries.from_row_lengths([[2, 3], [4]], 6)
    with pytest.warns(DeprecationWarning, match="pass capacity="):
        got = DocBoundaries.from_row_lengths([[2, 3], [4]], row_len=6)
    assert got.equals(want) and got.shape == (2, 6)


@pytest.mark.parametrize("shape", [(2, 0), (0, 4)])
def test_empty_mask_is_refused_naming_its_shape(shape):
    mask = torch.zeros(shape, dtype=torch.long)
    for fn in (seqpack.get_seqlens_in_batch, seqpack.get_unpad_data, DocBoundaries.from_attention_mask):
        with pytest.raises(ValueError, match=rf"shape \({shape[0]}, {shape[1]}\): no tokens"):
            fn(mask)
