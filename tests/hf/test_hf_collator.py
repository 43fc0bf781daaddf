"""DataCollatorForPacking: every token once, documents apart, labels masked at boundaries, the
token count Trainer needs, and the pre-packed row formats of TRL and LLaMA-Factory."""

import numpy as np
import pytest
import torch

from seqpack.batch import IGNORE_INDEX
from seqpack.boundaries import DocBoundaries
from seqpack.integrations.hf_collator import DataCollatorForPacking


def examples(lengths, seed=0, vocab=1000):
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(3, vocab, n).tolist()} for n in lengths]


def documents(out):
    """(tokens, labels) of each non-padding document, from the collator's cu_seq_lens."""
    b = DocBoundaries.from_cu_seqlens(out["cu_seq_lens_q"], tuple(out["input_ids"].shape),
                                      max_seqlen=out["max_length_q"])
    cu = b.cu_seqlens.tolist()
    ids, lab = out["input_ids"].flatten().tolist(), out["labels"].flatten().tolist()
    pos = out["position_ids"].flatten().tolist()
    docs = []
    for s, e in zip(cu[:-1], cu[1:]):
        assert pos[s:e] == list(range(e - s))  # positions restart in every segment
        if e > s and set(ids[s:e]) != {0}:  # cu_seq_lens do not flag padding; its tokens are pad ids
            docs.append((ids[s:e], lab[s:e]))
        else:
            assert set(lab[s:e]) <= {IGNORE_INDEX}
    return docs


@pytest.mark.parametrize("lengths", [[5, 17, 3, 30, 12, 9, 1, 22], [32] * 3, [1]])
@pytest.mark.parametrize("pad_to_multiple_of", [None, 8])
def test_packs_every_token_once_with_labels_inside_documents(lengths, pad_to_multiple_of):
    feats = examples(lengths)
    out = DataCollatorForPacking(max_length=32, pad_to_multiple_of=pad_to_multiple_of)(feats)
    B, L = out["input_ids"].shape
    assert B == -(-sum(lengths) // 32) or B <= len(lengths)  # fewer rows than examples
    assert L <= 32 and (pad_to_multiple_of is None or L % pad_to_multiple_of == 0)
    got = sorted(documents(out))
    want = sorted((f["input_ids"], [IGNORE_INDEX] + f["input_ids"][1:]) for f in feats)
    assert got == want
    assert out["use_cache"] is False and "attention_mask" not in out
    assert out["cu_seq_lens_q"].dtype == torch.int32 and out["cu_seq_lens_q"] is out["cu_seq_lens_k"]
    assert out["max_length_q"] == out["max_length_k"] >= max(lengths)
    # The count Trainer takes for num_items_in_batch is exactly the predicted tokens (5.0 and 5.23 rules).
    predicted = sum(n - 1 for n in lengths)
    assert int((out["labels"] != IGNORE_INDEX).sum()) == predicted == int((out["labels"][:, 1:] != IGNORE_INDEX).sum())


def test_packing_uses_fewer_rows_than_padding():
    lengths = [5, 17, 3, 30, 12, 9, 1, 22, 14, 6]
    packed_rows = DataCollatorForPacking(max_length=32)(examples(lengths))["input_ids"].shape[0]
    padded = DataCollatorForPacking(max_length=32, pack=False)(examples(lengths))["input_ids"]
    assert padded.shape == (len(lengths), 30)
    assert packed_rows == -(-sum(lengths) // 32)  # best fit reaches the lower bound here


def test_prompt_masks_and_given_labels_are_kept():
    feats = [{"input_ids": [5, 6, 7, 8], "completion_mask": [0, 0, 1, 1]},
             {"input_ids": [9, 10, 11], "labels": [-100, 10, 11]},
             {"input_ids": [12, 13, 14], "assistant_masks": [1, 0, 1]}]
    docs = {tuple(t): tuple(lab) for t, lab in documents(DataCollatorForPacking(max_length=16)(feats))}
    assert docs[(5, 6, 7, 8)] == (-100, -100, 7, 8)
    assert docs[(9, 10, 11)] == (-100, 10, 11)
    assert docs[(12, 13, 14)] == (-100, -100, 14)


@pytest.mark.parametrize("form", ["seq_lengths", "position_ids", "attention_mask"])
def test_prepacked_rows_stay_rows(form):
    rows = [[4, 6], [3, 2, 5], [7]]
    rng = np.random.default_rng(0)
    feats = []
    for lens in rows:
        ids = rng.integers(3, 1000, sum(lens)).tolist()
        f = {"input_ids": ids}
        if form == "seq_lengths":  # TRL pack_dataset
            f["seq_lengths"] = lens
        elif form == "position_ids":
            f["position_ids"] = [p for n in lens for p in range(n)]
        else:  # LLaMA-Factory's integer-labelled mask
            f["attention_mask"] = [i + 1 for i, n in enumerate(lens) for _ in range(n)]
        feats.append(f)
    out = DataCollatorForPacking(max_length=16, return_packed_batch=True)(feats)
    assert out.input_ids.shape == (3, 10)
    assert out.boundaries.doc_seqlens().tolist() == [n for lens in rows for n in lens]
    for r, f in enumerate(feats):
        assert out.input_ids[r, :len(f["input_ids"])].tolist() == f["input_ids"]


def test_overflow():
    feats = examples([40, 10])
    split = DataCollatorForPacking(max_length=32, overflow="split")(feats)
    assert sum(len(t) for t, _ in documents(split)) == 50
    trunc = DataCollatorForPacking(max_length=32)(feats)  # default: truncate, as Trainer pipelines do
    assert sum(len(t) for t, _ in documents(trunc)) == 42
    with pytest.raises(ValueError, match="capacity"):
        DataCollatorForPacking(max_length=32, overflow="error")(feats)
    with pytest.raises(ValueError, match="max_length"):
        DataCollatorForPacking(max_length=8, pack=False)([{"input_ids": [1] * 6, "seq_lengths": [3, 3]}] * 2
                                                          + [{"input_ids": [1] * 9, "seq_lengths": [4, 5]}])


def test_static_shapes_for_compile():
    coll = DataCollatorForPacking(max_length=32, fixed_length=True, max_num_docs=12)
    for seed, lengths in enumerate([[5, 17, 3], [30, 2, 2, 2, 9, 11, 7]]):
        out = coll(examples(lengths, seed=seed))
        assert out["input_ids"].shape[1] == 32 and out["cu_seq_lens_q"].shape == (13,)
        assert out["max_length_q"] == 32


def test_formats():
    feats = examples([5, 9, 4])
    mask_out = DataCollatorForPacking(max_length=16, format="attention_mask")(feats)
    assert int(mask_out["attention_mask"].max()) >= 2 and "cu_seq_lens_q" not in mask_out
    pos_out = DataCollatorForPacking(max_length=16, format="position_ids")(feats)
    assert set(pos_out) == {"input_ids", "labels", "position_ids", "use_cache"}
    pb = DataCollatorForPacking(max_length=16, return_packed_batch=True)(feats)
    assert pb.boundaries.num_docs() == 3
    with pytest.raises(ValueError, match="format"):
        DataCollatorForPacking(format="4d")
