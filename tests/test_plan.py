"""Tests for seqpack.plan: properties over random inputs, hand examples, input errors."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpack.errors import InputError
from seqpack.plan import OVERFLOWS, STRATEGIES, PackPlan, plan_packing

# ----------------------------------------------------------------------------------------
# the invariants every plan must satisfy


def check_plan(plan, lengths, capacity, strategy, overflow, max_docs=None, window=None):
    lengths = np.asarray(lengths, dtype=np.int64)
    doc, start, stop, bin_ = plan.doc, plan.start, plan.stop, plan.bin
    num_pieces = len(doc)
    for a in (doc, start, stop, bin_, plan.bin_offsets):
        assert a.dtype == np.int64
    assert len(start) == len(stop) == len(bin_) == num_pieces
    assert plan.num_docs == len(lengths) and plan.capacity == capacity
    assert plan.strategy == strategy

    # bins: numbered 0..num_bins-1, none empty, arrays sorted by bin, offsets consistent
    assert np.all(np.diff(bin_) >= 0)
    assert np.array_equal(np.unique(bin_), np.arange(plan.num_bins))
    assert plan.bin_offsets[0] == 0 and plan.bin_offsets[-1] == num_pieces
    assert np.array_equal(np.repeat(np.arange(plan.num_bins), plan.docs_per_bin()), bin_)

    # pieces: non-empty ranges inside their document; bins within capacity and max_docs
    piece_len = stop - start
    assert np.all(piece_len >= 1) and np.all(start >= 0)
    assert np.all(stop <= lengths[doc])
    bin_len = np.bincount(bin_, weights=piece_len, minlength=plan.num_bins).astype(np.int64)
    assert np.array_equal(plan.bin_lengths(), bin_len)
    assert np.all(bin_len <= capacity)
    if max_docs is not None:
        assert np.all(plan.docs_per_bin() <= max_docs)

    # every token placed exactly once, or counted: pieces of a document tile [0, kept)
    long = lengths > capacity
    kept = lengths.copy()
    if overflow == "truncate":  # every strategy honours the overflow policy, wrapped included
        kept[long] = capacity
    elif overflow == "drop":
        kept[long] = 0
    by_doc = np.lexsort((start, doc))
    d, s, e = doc[by_doc], start[by_doc], stop[by_doc]
    first = np.r_[True, d[1:] != d[:-1]][:num_pieces]
    last = np.r_[d[1:] != d[:-1], True][:num_pieces]
    assert np.all(s[first] == 0)
    assert np.all(s[~first] == e[np.flatnonzero(~first) - 1])  # contiguous, no overlap
    assert np.array_equal(d[last], np.flatnonzero(kept > 0))
    assert np.array_equal(e[last], kept[kept > 0])

    # counters
    assert plan.placed_tokens == piece_len.sum() == kept.sum()
    assert plan.placed_tokens + plan.dropped_tokens == lengths.sum()
    assert plan.empty_docs == np.count_nonzero(lengths == 0)
    expected_eff = plan.placed_tokens / (plan.num_bins * capacity) if plan.num_bins else 1.0
    assert plan.efficiency == pytest.approx(expected_eff, rel=1e-12)
    if strategy != "wrapped":
        assert plan.split_docs == (np.count_nonzero(long) if overflow == "split" else 0)
        assert plan.truncated_docs == (np.count_nonzero(long) if overflow == "truncate" else 0)
        assert plan.dropped_docs == (np.count_nonzero(long) if overflow == "drop" else 0)
        # only split documents have several pieces, cut at multiples of capacity
        assert np.all(s % capacity == 0)
        assert np.all((e - s)[~last] == capacity)
    else:
        # wrapped: every bin but the last is full unless max_docs closed it
        if max_docs is None and plan.num_bins:
            assert np.all(bin_len[:-1] == capacity)
        assert plan.split_docs == np.count_nonzero(np.bincount(doc, minlength=len(lengths)) > 1)
        assert plan.truncated_docs == (np.count_nonzero(long) if overflow == "truncate" else 0)
        assert plan.dropped_docs == (np.count_nonzero(long) if overflow == "drop" else 0)

    # data order kept by nextfit and wrapped
    if strategy in ("nextfit", "wrapped"):
        assert np.array_equal(by_doc, np.arange(num_pieces))

    # windows never share bins
    if window is not None:
        w = doc // window
        if num_pieces:
            lo = np.minimum.reduceat(w, plan.bin_offsets[:-1])
            hi = np.maximum.reduceat(w, plan.bin_offsets[:-1])
            assert np.array_equal(lo, hi)


@st.composite
def packing_problems(draw):
    capacity = draw(st.one_of(st.integers(1, 12), st.integers(1, 5000)))
    length = st.one_of(st.just(0), st.just(1), st.integers(0, capacity),
                       st.integers(capacity, 3 * capacity + 1), st.integers(0, 10))
    lengths = draw(st.lists(length, max_size=80))
    strategy = draw(st.sampled_from(STRATEGIES))
    overflow = draw(st.sampled_from(OVERFLOWS))
    max_docs = draw(st.one_of(st.none(), st.integers(1, 6)))
    window = draw(st.one_of(st.none(), st.integers(1, 12))) if strategy in ("bfd", "ffd") else None
    seed = draw(st.one_of(st.none(), st.integers(0, 3)))
    return lengths, capacity, strategy, overflow, max_docs, window, seed


@settings(max_examples=200, deadline=None)
@given(packing_problems())
def test_plan_properties(problem):
    lengths, capacity, strategy, overflow, max_docs, window, seed = problem
    kwargs = dict(strategy=strategy, overflow=overflow, max_docs_per_bin=max_docs,
                  window=window, seed=seed)
    if overflow == "error" and any(x > capacity for x in lengths):
        with pytest.raises(ValueError, match="capacity"):
            plan_packing(lengths, capacity, **kwargs)
        return
    plan = plan_packing(lengths, capacity, **kwargs)
    check_plan(plan, lengths, capacity, strategy, overflow, max_docs, window)
    # deterministic, byte for byte
    again = plan_packing(np.array(lengths, dtype=np.int64), capacity, **kwargs)
    for name in ("doc", "start", "stop", "bin", "bin_offsets"):
        assert getattr(plan, name).tobytes() == getattr(again, name).tobytes()


def reference_fit(lengths, capacity, best):
    """Plain O(n * bins) best/first fit decreasing over whole documents: bin loads."""
    loads = []
    for length in sorted((x for x in lengths if x > 0), reverse=True):
        fits = [b for b, load in enumerate(loads) if load + length <= capacity]
        if not fits:
            loads.append(length)
            continue
        b = max(fits, key=lambda b: (loads[b], -b)) if best else fits[0]
        loads[b] += length
    return loads


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 60).flatmap(
    lambda cap: st.tuples(st.just(cap), st.lists(st.integers(0, cap), max_size=60))))
def test_matches_reference_fit(problem):
    capacity, lengths = problem
    ffd = plan_packing(lengths, capacity, strategy="ffd", seed=None)
    # first fit has no ties: bins in opening order match the reference exactly
    assert ffd.bin_lengths().tolist() == reference_fit(lengths, capacity, best=False)
    # best fit's ties (equal free room) leave the same loads whichever bin is taken
    bfd = plan_packing(lengths, capacity, strategy="bfd", seed=None)
    assert sorted(bfd.bin_lengths().tolist()) == sorted(reference_fit(lengths, capacity, best=True))


# ----------------------------------------------------------------------------------------
# hand examples


def test_small_bfd_exact():
    plan = plan_packing([5, 3, 0, 9, 2, 7, 1], 10, seed=None)
    # longest first: 9 -> bin 0, 7 -> bin 1, 5 -> bin 2, 3 -> bin 1 (exact fit), 2 -> bin 2,
    # 1 -> bin 0 (exact fit)
    assert plan.bin.tolist() == [0, 0, 1, 1, 2, 2]
    assert plan.doc.tolist() == [3, 6, 5, 1, 0, 4]
    assert plan.stop.tolist() == [9, 1, 7, 3, 5, 2]
    assert plan.bin_offsets.tolist() == [0, 2, 4, 6]
    assert plan.bin_lengths().tolist() == [10, 10, 7]
    assert plan.empty_docs == 1 and plan.num_bins == 3
    assert plan.efficiency == pytest.approx(27 / 30)


def test_best_fit_beats_first_fit():
    # capacity 22: ffd puts 4 with 17 and ends with 2 alone; bfd fills 12+6+4 and 17+3+2
    lengths = [17, 12, 6, 4, 3, 2]
    bfd = plan_packing(lengths, 22)
    ffd = plan_packing(lengths, 22, strategy="ffd")
    assert (bfd.num_bins, ffd.num_bins) == (2, 3)
    assert bfd.efficiency == 1.0


def test_bfd_fill_on_sft_like_lengths():
    rng = np.random.default_rng(0)
    lengths = np.maximum(1, np.rint(rng.lognormal(np.log(400), 1.03, 20_000))).astype(np.int64)
    plan = plan_packing(lengths, 4096, overflow="split")
    assert plan.efficiency >= 0.99
    check_plan(plan, lengths, 4096, "bfd", "split")
    assert plan.split_docs == np.count_nonzero(lengths > 4096) > 0


def test_split_truncate_drop():
    lengths = [10, 3, 25, 0]
    split = plan_packing(lengths, 10, overflow="split", seed=None)
    assert sorted(zip(split.doc.tolist(), split.start.tolist(), split.stop.tolist())) == [
        (0, 0, 10), (1, 0, 3), (2, 0, 10), (2, 10, 20), (2, 20, 25)]
    assert split.split_docs == 1 and split.dropped_tokens == 0 and split.num_bins == 4
    trunc = plan_packing(lengths, 10, overflow="truncate")
    assert trunc.truncated_docs == 1 and trunc.dropped_tokens == 15 and trunc.placed_tokens == 23
    drop = plan_packing(lengths, 10, overflow="drop")
    assert drop.dropped_docs == 1 and drop.dropped_tokens == 25 and 2 not in drop.doc


def test_nextfit_and_wrapped_keep_order():
    lengths = [6, 6, 3, 3, 5]
    nf = plan_packing(lengths, 10, strategy="nextfit")
    assert nf.doc.tolist() == [0, 1, 2, 3, 4] and nf.bin.tolist() == [0, 1, 1, 2, 2]
    wr = plan_packing(lengths, 10, strategy="wrapped")
    assert wr.doc.tolist() == [0, 1, 1, 2, 3, 4, 4]
    assert wr.start.tolist() == [0, 0, 4, 0, 0, 0, 2]
    assert wr.bin.tolist() == [0, 0, 1, 1, 1, 1, 2]
    assert wr.bin_lengths().tolist() == [10, 10, 3] and wr.split_docs == 2



def test_wrapped_honours_overflow():
    """wrapped applies the overflow policy to documents longer than capacity, then wraps."""
    lengths = [4, 25, 3]
    with pytest.raises(InputError, match="document 1 has 25 tokens but capacity is 10"):
        plan_packing(lengths, 10, strategy="wrapped")  # overflow="error", the default
    split = plan_packing(lengths, 10, strategy="wrapped", overflow="split")
    assert split.placed_tokens == 32 and split.bin_lengths().tolist() == [10, 10, 10, 2]
    trunc = plan_packing(lengths, 10, strategy="wrapped", overflow="truncate")
    assert (trunc.truncated_docs, trunc.dropped_tokens, trunc.placed_tokens) == (1, 15, 17)
    assert trunc.bin_lengths().tolist() == [10, 7]
    assert trunc.stop[trunc.doc == 1].max() == 10  # only the first capacity tokens of doc 1
    drop = plan_packing(lengths, 10, strategy="wrapped", overflow="drop")
    assert (drop.dropped_docs, drop.dropped_tokens, drop.placed_tokens) == (1, 25, 7)
    assert 1 not in drop.doc.tolist() and drop.empty_docs == 0


def test_max_docs_per_bin():
    plan = plan_packing([1] * 10, 100, max_docs_per_bin=3)
    assert sorted(plan.docs_per_bin().tolist()) == [1, 3, 3, 3]
    assert plan_packing([1] * 5, 100, max_docs_per_bin=1).num_bins == 5
    assert plan_packing([1] * 5, 100, strategy="wrapped", max_docs_per_bin=2).num_bins == 3


def test_window_keeps_documents_apart():
    # globally 8+2 and 5+5; windows of 2 documents cannot pair 5 with 5 nor 8 with 2
    lengths = [5, 8, 5, 2]
    assert plan_packing(lengths, 10).num_bins == 2
    plan = plan_packing(lengths, 10, window=2)
    assert plan.num_bins == 3
    check_plan(plan, lengths, 10, "bfd", "error", window=2)
    # window w's bins come before window w+1's, even when shuffled
    assert (plan.doc // 2).tolist() == sorted((plan.doc // 2).tolist())


def test_seed_shuffles_bin_order_only():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 100, 500)
    ordered = plan_packing(lengths, 128, seed=None)
    shuffled = plan_packing(lengths, 128, seed=0)
    assert ordered.doc[0] == np.argmax(lengths)  # packing order: longest document first
    assert not np.array_equal(ordered.doc, shuffled.doc)
    assert ordered.num_bins == shuffled.num_bins
    assert sorted(ordered.bin_lengths()) == sorted(shuffled.bin_lengths())
    assert not np.array_equal(plan_packing(lengths, 128, seed=1).doc, shuffled.doc)


def test_select_returns_the_pieces_of_those_bins():
    plan = plan_packing(np.arange(1, 40), 50)
    sub = plan.select([3, 0])
    assert isinstance(sub, PackPlan) and sub.num_bins == 2 and sub.num_docs == plan.num_docs
    b3 = slice(plan.bin_offsets[3], plan.bin_offsets[4])
    b0 = slice(plan.bin_offsets[0], plan.bin_offsets[1])
    assert sub.doc.tolist() == plan.doc[b3].tolist() + plan.doc[b0].tolist()
    assert sub.bin_lengths().tolist() == [plan.bin_lengths()[3], plan.bin_lengths()[0]]
    assert np.array_equal(plan.select(slice(None)).doc, plan.doc)
    assert plan.select(slice(2, 4)).num_bins == 2 and plan.select(-1).num_bins == 1
    with pytest.raises(IndexError):
        plan.select([plan.num_bins])


def test_inputs_empty_torch_and_numpy():
    torch = pytest.importorskip("torch")
    empty = plan_packing([], 8)
    assert empty.num_bins == 0 and empty.efficiency == 1.0 and len(empty.doc) == 0
    assert plan_packing([0, 0], 8).empty_docs == 2
    a = plan_packing(torch.tensor([3, 5, 2], dtype=torch.int32), 8)
    b = plan_packing(np.array([3, 5, 2], dtype=np.uint16), 8)
    assert np.array_equal(a.doc, b.doc) and a.num_bins == 2


def test_plan_is_frozen_and_readable():
    plan = plan_packing([3, 5, 2, 9], 10, overflow="split")
    with pytest.raises(ValueError):
        plan.doc[0] = 1
    with pytest.raises(AttributeError):
        plan.num_bins = 3
    text = plan.summary()
    for word in ("bfd", "4 documents", "fill", "split 0", "empty 0"):
        assert word in text
    assert repr(plan).startswith("PackPlan(strategy='bfd'") and "\n" not in repr(plan)


# ----------------------------------------------------------------------------------------
# input errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(lengths=[3, -2, 1]), r"document 1 has length -2"),
    (dict(lengths=[[1, 2], [3, 4]]), r"1D.*\(2, 2\)"),
    (dict(lengths=[1.0, 2.5]), r"integers.*lengths\[1\] = .*2\.5"),
    (dict(lengths=np.array([1.0, 2.0])), r"integers.*float64"),
    (dict(capacity=0), r"capacity must be >= 1, got 0"),
    (dict(capacity=8.0), r"capacity must be a positive int"),
    (dict(strategy="best"), r"unknown strategy 'best'.*'bfd', 'ffd', 'nextfit', 'wrapped'"),
    (dict(overflow="wrap"), r"unknown overflow 'wrap'.*'error', 'split', 'truncate', 'drop'"),
    (dict(max_docs_per_bin=0), r"max_docs_per_bin must be >= 1, got 0"),
    (dict(strategy="nextfit", window=4), r"window applies to 'bfd' and 'ffd' only"),
    (dict(strategy="wrapped", window=4), r"window"),
    (dict(window=0), r"window must be >= 1"),
])
def test_bad_inputs(kwargs, match):
    args = dict(lengths=[3, 4, 1], capacity=8) | kwargs
    with pytest.raises(ValueError, match=match):
        plan_packing(args.pop("lengths"), args.pop("capacity"), **args)


def test_long_document_error_names_it():
    lengths = np.full(20, 100)
    lengths[17] = 9000
    with pytest.raises(ValueError, match=r"document 17 has 9,000 tokens but capacity is 4,096: "
                                         r"pass overflow='split', 'truncate' or 'drop'"):
        plan_packing(lengths, 4096)
    for strategy in ("ffd", "nextfit"):
        with pytest.raises(ValueError, match="document 17"):
            plan_packing(lengths, 4096, strategy=strategy)


def test_import_does_not_load_numba():
    code = "import sys, seqpack.plan; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
