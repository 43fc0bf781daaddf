"""The label rules every road to a batch shares (seqpack.labels) and PackPlan.from_rows."""

import numpy as np
import pytest
import torch

from seqpack import PackPlan
from seqpack.batch import Documents, collate_packed
from seqpack.errors import InputError
from seqpack.labels import (IGNORE_INDEX, check_label_shift, exclusive_cumsum, piece_labels, segment_of,
                            to_aligned, to_next_token)

I = IGNORE_INDEX


def test_exclusive_cumsum_and_segment_of():
    off = exclusive_cumsum([3, 0, 2])
    assert off.tolist() == [0, 3, 3, 5] and off.dtype == np.int64
    assert segment_of(off, [0, 2, 3, 4]).tolist() == [0, 0, 2, 2]  # the empty segment 1 holds nothing


def test_piece_labels_both_conventions():
    src = np.array([10, 11, 12, 20, 21], np.int64)
    first, lens = np.array([0, 3]), np.array([3, 2])
    assert piece_labels(src, first, lens, "model").tolist() == [I, 11, 12, I, 21]
    assert piece_labels(src, first, lens, "collator").tolist() == [11, 12, I, 21, I]
    assert src.tolist() == [10, 11, 12, 20, 21]  # copied by default
    with pytest.raises(InputError, match="label_shift must be"):
        check_label_shift("hf")


def test_to_next_token_numpy_and_torch_agree():
    aligned = np.array([I, 11, 12, I, 21])
    want = [11, 12, I, 21, I]
    assert to_next_token(aligned).tolist() == want
    assert to_next_token(torch.tensor(aligned).reshape(1, -1)).tolist() == want


def test_to_aligned_undoes_the_collator_shift_inside_documents():
    nxt = np.array([11, 12, I, 21, I])
    assert to_aligned(nxt, exclusive_cumsum([3, 2])).tolist() == [I, 11, 12, I, 21]


def test_from_rows_matches_a_hand_packed_batch():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    plan = PackPlan.from_rows([3, 2, 4], [2, 1], 6)
    assert plan.num_bins == 2 and plan.bin_offsets.tolist() == [0, 2, 3] and plan.doc_lengths.tolist() == [3, 2, 4]
    b = collate_packed(plan, Documents.from_lists(docs), label_shift="collator")
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0]]
    assert b.labels.tolist() == [[2, 3, I, 5, I, I], [7, 8, 9, I, I, I]]
    with pytest.raises(InputError, match="row 0 holds 7 tokens but rows have 6"):
        PackPlan.from_rows([3, 4], [2], 6)
    with pytest.raises(InputError, match="of another length|tokens but the plan was made for"):
        collate_packed(plan, [[1, 2, 3], [4, 5, 6], [6, 7, 8, 9]])


def test_collate_keeps_final_labels_when_told():
    docs = Documents(np.array([1, 2, 3, 4]), np.array([0, 2, 4]), np.array([2, 77, 4, I]))
    plan = PackPlan.from_rows([2, 2], [2], 5)
    b = collate_packed(plan, docs, label_shift="collator", shift_labels=False)
    assert b.labels.tolist() == [[2, 77, 4, I, I]]  # a split piece's last target (77) kept
