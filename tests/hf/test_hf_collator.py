"""DataCollatorForPacking: every token once, documents apart, labels masked at boundaries, the
token count Trainer needs, and the pre-packed row formats of TRL and LLaMA-Factory."""

import numpy as np
import pytest
import torch

from seqpack.batch import IGNORE_INDEX
from seqpack.boundaries import DocBoundaries
from seqpack.errors import InputError
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


# LLaMA-Factory's neat packing right-pads each packed row, with attention_mask 0 on the padding.
NEAT_ROWS = [({"input_ids": [5, 6, 7, 0], "attention_mask": [1, 2, 2, 0]}, [[5], [6, 7]]),
             ({"input_ids": [8, 9, 10, 11, 12, 0, 0], "attention_mask": [1, 1, 2, 3, 3, 0, 0]}, [[8, 9], [10], [11, 12]]),
             ({"input_ids": [13, 14, 15, 16], "attention_mask": [1, 1, 1, 2]}, [[13, 14, 15], [16]])]


def _unpadded(row):
    n = sum(1 for m in row["attention_mask"] if m)
    return {k: v[:n] for k, v in row.items()}


def _same_batch(a, b):
    assert a.input_ids.tolist() == b.input_ids.tolist()
    assert a.labels.tolist() == b.labels.tolist()
    assert a.position_ids.tolist() == b.position_ids.tolist()
    assert a.boundaries.cu_seqlens.tolist() == b.boundaries.cu_seqlens.tolist()
    assert a.boundaries.doc_seqlens().tolist() == b.boundaries.doc_seqlens().tolist()


@pytest.mark.parametrize("pack", [True, False])
def test_neat_packed_rows_with_right_padding(pack):
    """The padding of LLaMA-Factory's rows is dropped: the batch is what the rows give unpadded."""
    rows = [r for r, _ in NEAT_ROWS]
    coll = DataCollatorForPacking(max_length=8, pack=pack, return_packed_batch=True)
    got, want = coll(rows), coll([_unpadded(r) for r in rows])
    _same_batch(got, want)
    assert got.boundaries.doc_seqlens().tolist() == [len(d) for _, docs in NEAT_ROWS for d in docs]
    assert got.input_ids.shape == (3, 5)  # the longest row without its padding
    for (_, docs), ids, labels in zip(NEAT_ROWS, got.input_ids.tolist(), got.labels.tolist()):
        flat = [t for d in docs for t in d]
        assert ids[:len(flat)] == flat
        assert labels[:len(flat)] == [t for d in docs for t in [IGNORE_INDEX] + d[1:]]
        assert set(labels[len(flat):]) <= {IGNORE_INDEX}


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_plain_examples_lose_their_padding(side):
    """A tokenizer's 0/1 mask: padding at either end is not a token of the document."""
    def pad(ids, n):
        fill = [0] * (n - len(ids))
        return ({"input_ids": ids + fill, "attention_mask": [1] * len(ids) + fill} if side == "right"
                else {"input_ids": fill + ids, "attention_mask": fill + [1] * len(ids)})
    docs = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    coll = DataCollatorForPacking(max_length=16, return_packed_batch=True)
    _same_batch(coll([pad(d, 6) for d in docs]), coll([{"input_ids": d} for d in docs]))


def test_neat_packed_rows_compute_what_the_documents_compute_alone():
    pytest.importorskip("transformers")
    from hf_util import tiny
    from seqpack.integrations.hf_verify import compare_packed

    rng = np.random.default_rng(0)
    rows, docs = [], []
    for lens, pad in [((4, 6), 3), ((3, 2, 5), 0), ((7,), 5)]:
        ids, mask = [], []
        for i, n in enumerate(lens):
            doc = rng.integers(3, 128, n).tolist()
            docs.append(torch.tensor(doc))
            ids += doc
            mask += [i + 1] * n
        rows.append({"input_ids": ids + [0] * pad, "attention_mask": mask + [0] * pad})
    batch = DataCollatorForPacking(max_length=16, return_packed_batch=True)(rows)
    diff = compare_packed(tiny("llama", "sdpa"), docs, batch, form="collator")
    assert diff["logits"] < 1e-4 and diff["grads"] < 1e-4 and diff["loss"] < 1e-5


@pytest.mark.parametrize("mask, position", [([1, 0, 2, 2, 0], 1), ([1, 1, 0, 1, 0], 2), ([0, 1, 0, 2, 2], 2)])
def test_padding_between_documents_is_refused(mask, position):
    feats = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1]}, {"input_ids": [3, 4, 5, 6, 7], "attention_mask": mask}]
    with pytest.raises(InputError, match=rf"^row 1: attention_mask is 0 \(padding\) at position {position}, between"):
        DataCollatorForPacking(max_length=8)(feats)


def test_mask_of_another_length_is_refused():
    with pytest.raises(InputError, match="row 0: attention_mask has 2 entries but input_ids 3"):
        DataCollatorForPacking(max_length=8)([{"input_ids": [5, 6, 7], "attention_mask": [1, 1]}])


@pytest.mark.parametrize("kind", ["np", "tf", None])
def test_return_tensors_other_than_pt_is_refused_at_construction(kind):
    with pytest.raises(InputError, match=f"return_tensors={kind!r} is not supported"):
        DataCollatorForPacking(max_length=8, return_tensors=kind)
    assert isinstance(DataCollatorForPacking(max_length=8, return_tensors="pt")(examples([3]))["input_ids"], torch.Tensor)


def test_hf_module_imports_in_a_fresh_interpreter():
    """``seqpack.hf`` is a module of its own, not only a lazy attribute of ``seqpack``."""
    pytest.importorskip("transformers")
    import subprocess
    import sys

    code = ("import seqpack.hf\n"
            "from seqpack.hf import enable_packing, DataCollatorForPacking, PackingError\n"
            "import seqpack\n"
            "assert seqpack.hf.enable_packing is enable_packing\n"
            "from seqpack.integrations import hf\n"
            "assert DataCollatorForPacking is hf.DataCollatorForPacking and PackingError is hf.PackingError\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("key", ["labels", "completion_mask"])
def test_per_token_columns_of_another_length_are_refused(key):
    feats = [{"input_ids": [5, 6, 7]}, {"input_ids": [5, 6, 7], key: [1, 1]}]
    with pytest.raises(InputError, match=f"row 1: {key} ha(s|ve) 2 .* but input_ids 3"):
        DataCollatorForPacking(max_length=8)(feats)
