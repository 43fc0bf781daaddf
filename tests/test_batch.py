"""collate_packed: tokens placed once, labels never cross a document, both layouts."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpack.batch import IGNORE_INDEX, Documents, collate_packed
from seqpack.errors import InputError
from seqpack.plan import plan_packing


def make_docs(lengths, seed=0, vocab=1000):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, n).tolist() for n in lengths]


def segments(batch):
    """(tokens, labels) of every non-padding segment, in order, from the flat buffer."""
    b = batch.boundaries
    cu = b.cu_seqlens.tolist()
    ids, lab = batch.input_ids.flatten().tolist(), batch.labels.flatten().tolist()
    return [(ids[s:e], lab[s:e]) for s, e, pad in zip(cu[:-1], cu[1:], b.is_pad.tolist()) if not pad and e > s]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=30), st.integers(8, 32),
       st.sampled_from(["rows", "1d"]), st.sampled_from(["model", "collator"]))
def test_every_token_once_and_labels_inside_documents(lengths, capacity, layout, shift):
    docs = make_docs(lengths)
    plan = plan_packing(lengths, capacity, overflow="split")
    batch = collate_packed(plan, docs, layout=layout, label_shift=shift, pad_token_id=0)
    B = plan.num_bins
    assert batch.input_ids.shape == ((B, capacity) if layout == "rows" else (B * capacity,))
    segs = segments(batch)
    assert len(segs) == plan.doc.size
    seen = {}
    for (tok, lab), d, s, e in zip(segs, batch.doc_index, batch.doc_start, batch.doc_stop):
        doc = docs[d]
        assert tok == doc[s:e]
        seen.setdefault(d, []).append((s, e))
        if shift == "model":
            assert lab == [IGNORE_INDEX] + doc[s + 1:e]
        else:  # next token of the same document; none after its last token
            assert lab == doc[s + 1:e + 1] + ([IGNORE_INDEX] if e == len(doc) else [])
    # every token of every non-empty document exactly once
    for d, n in enumerate(lengths):
        spans = sorted(seen.get(d, []))
        covered = sum(e - s for s, e in spans)
        assert covered == n and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # padding: pad id, no label, position ids restart per segment
    pad = ~batch.boundaries.token_mask()
    assert (batch.input_ids[pad] == 0).all() and (batch.labels[pad] == IGNORE_INDEX).all()
    assert torch.equal(batch.position_ids, batch.boundaries.position_ids())


def test_rows_and_1d_hold_the_same_documents():
    lengths = [5, 9, 3, 12, 7, 1, 4]
    docs = make_docs(lengths)
    plan = plan_packing(lengths, 16, overflow="split")
    rows = collate_packed(plan, docs, layout="rows")
    flat = collate_packed(plan, docs, layout="1d")
    assert segments(rows) == segments(flat)
    assert flat.boundaries.max_seqlen == 16
    # 1D: all padding at the end, split into runs no longer than max_seqlen
    mask = flat.boundaries.token_mask()
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any()
    assert (flat.boundaries.seqlens <= 16).all()


def test_documents_store_matches_lists_and_keeps_prompt_masking():
    lengths = [6, 4, 9]
    docs = make_docs(lengths, seed=3)
    labels = [list(d) for d in docs]
    labels[0][:3] = [IGNORE_INDEX] * 3  # a prompt
    store = Documents.from_lists(docs, labels)
    as_dicts = [{"input_ids": d, "labels": l} for d, l in zip(docs, labels)]
    plan = plan_packing(lengths, 10, overflow="split")
    for shift in ("model", "collator"):
        a = collate_packed(plan, store, label_shift=shift)
        b = collate_packed(plan, as_dicts, label_shift=shift)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    batch = collate_packed(plan, store, label_shift="model")
    seg = dict(zip(batch.doc_index.tolist(), segments(batch)))
    assert seg[0][1][:3] == [IGNORE_INDEX] * 3 and seg[0][1][3:] == docs[0][3:]


def test_split_piece_keeps_its_target_under_collator_shift():
    docs = [list(range(1, 11))]  # one document of 10 tokens, capacity 4 -> pieces of 4, 4, 2
    plan = plan_packing([10], 4, overflow="split")
    batch = collate_packed(plan, docs, label_shift="collator")
    by_start = {int(s): lab for s, (_, lab) in zip(batch.doc_start, segments(batch))}
    assert by_start[0] == [2, 3, 4, 5]  # the last token of a piece predicts the next piece's first
    assert by_start[8] == [10, IGNORE_INDEX]


def test_static_segments_and_label_count():
    lengths = [3, 3, 3, 3, 10]
    docs = make_docs(lengths)
    plan = plan_packing(lengths, 12, overflow="split", max_docs_per_bin=4)
    batch = collate_packed(plan, docs, layout="1d", max_num_docs=8, label_shift="model")
    assert batch.boundaries.cu_seqlens.numel() == 9
    # model shift: each document's first token carries no label
    assert int(batch.num_label_tokens()) == sum(n - 1 for n in lengths)
    collator = collate_packed(plan, docs, layout="1d", label_shift="collator")
    assert int(collator.num_label_tokens()) == sum(n - 1 for n in lengths)


def test_subset_of_bins_and_bad_arguments():
    lengths = [4, 4, 4, 4]
    plan = plan_packing(lengths, 8, overflow="split")
    docs = make_docs(lengths)
    one = collate_packed(plan, docs, bins=[1])
    assert one.input_ids.shape == (1, 8)
    with pytest.raises(ValueError, match="layout"):
        collate_packed(plan, docs, layout="2d")
    with pytest.raises(ValueError, match="label_shift"):
        collate_packed(plan, docs, label_shift="left")
    with pytest.raises(ValueError, match=r"bins must be in \[0, 2\)"):
        collate_packed(plan, docs, bins=[2])


# ---------------------------------------------------------------------------------------
# documents that do not match the plan are refused, naming the document, bin and lengths

def _plan_of(docs, capacity=16):
    return plan_packing([len(d) for d in docs], capacity, overflow="split")


@pytest.mark.parametrize("store", [False, True])
def test_longer_or_shorter_document_than_planned_is_refused(store):
    docs = make_docs([5, 9, 3])
    plan = _plan_of(docs)
    b = int(plan.bin[np.flatnonzero(plan.doc == 1)[0]])
    for changed, word in ((docs[1] + [7, 7], "longer"), (docs[1][:4], "shorter")):
        given = [docs[0], changed, docs[2]]
        given = Documents.from_lists(given) if store else given
        msg = rf"document 1 \(bin {b}\) has {len(changed)} tokens but the plan was made for 9 \({word} than planned\)"
        with pytest.raises(InputError, match=msg):
            collate_packed(plan, given)


def test_fewer_documents_than_the_plan_references_is_refused():
    docs = make_docs([5, 9, 3])
    plan = _plan_of(docs)
    b = int(plan.bin[np.flatnonzero(plan.doc == 2)[0]])
    for given in (docs[:2], Documents.from_lists(docs[:2])):
        with pytest.raises(InputError, match=rf"places document 2 in bin {b} but only 2 documents were given"):
            collate_packed(plan, given)


def test_labels_of_another_length_and_float_ids_are_refused():
    docs = make_docs([5, 9])
    plan = _plan_of(docs)
    short = [{"input_ids": docs[0], "labels": docs[0][:3]}, {"input_ids": docs[1]}]
    with pytest.raises(InputError, match=r"document 0 \(bin \d+\): labels has 3 entries but input_ids has 5"):
        collate_packed(plan, short)
    floats = [docs[0], [float(x) + 0.5 for x in docs[1]]]
    with pytest.raises(InputError, match=r"document 1 \(bin \d+\): input_ids must be a flat list of integers, "
                                         r"got dtype float64"):
        collate_packed(plan, floats)
    with pytest.raises(InputError, match="dtype float64"):
        Documents(np.array([1.5, 2.0]), np.array([0, 2]))
    with pytest.raises(InputError, match="token id -3"):
        collate_packed(plan, [docs[0], [-3] * 9])


def test_hand_built_plan_without_lengths_still_refuses_a_short_document():
    from seqpack.plan import PackPlan

    plan = PackPlan(doc=np.array([0, 1]), start=np.zeros(2, np.int64), stop=np.array([4, 6]),
                    bin=np.array([0, 0]), bin_offsets=np.array([0, 2]), num_bins=1, capacity=16, num_docs=2,
                    strategy="manual", placed_tokens=10)
    with pytest.raises(InputError, match=r"document 1 \(bin 0\) has 5 tokens but the plan takes tokens 0..6"):
        collate_packed(plan, [[1] * 4, [2] * 5])


def test_ids_keep_int64():
    big = [[1, 2**31, 2**32 + 5, 2**62]]
    plan = _plan_of(big)
    for given in (big, Documents.from_lists(big), [np.array(big[0], np.uint64)]):
        assert collate_packed(plan, given).input_ids[0, :4].tolist() == big[0]
    with pytest.raises(InputError, match=r"token id 2,147,483,648 does not fit int32"):
        Documents.from_lists(big, dtype=np.int32)
    with pytest.raises(InputError, match="does not fit int64"):
        collate_packed(plan, [np.array([1, 2**63 + 7, 3, 4], np.uint64)])
