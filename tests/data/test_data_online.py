"""Online packing: every document once, deterministic, exact resume, balanced ranks."""

import json

import numpy as np
import pytest
import torch
from data_util import sft_lengths, token_docs, write_parquet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from seqpack.batch import Documents
from seqpack.data.online import LoaderState, PackedIterableDataset, state_to_json
from seqpack.errors import InputError


@pytest.fixture(scope="module")
def docs():
    lengths = sft_lengths(1500, seed=7, median=150, max_len=2000)
    lengths[[3, 99]] = 0
    return Documents.from_lists(token_docs(lengths, seed=8), dtype=np.int32)


def pieces(batches):
    return sorted((int(d), int(s), int(e)) for b in batches
                  for d, s, e in zip(b.doc_index, b.doc_start, b.doc_stop))


def covers_every_token_once(batches, docs):
    by_doc = {}
    for d, s, e in pieces(batches):
        by_doc.setdefault(d, []).append((s, e))
    for d in range(len(docs)):
        spans = by_doc.get(d, [])
        assert sum(e - s for s, e in spans) == docs.lengths[d], d
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def mk(docs, **kw):
    kw = {"capacity": 512, "batch_size": 4, "buffer_size": 128, **kw}
    return PackedIterableDataset(docs, **kw)


@pytest.mark.parametrize("layout", ["rows", "1d"])
@pytest.mark.parametrize("label_shift", ["model", "collator"])
def test_every_token_once_with_correct_labels(docs, layout, label_shift):
    batches = list(mk(docs, layout=layout, label_shift=label_shift, max_num_docs=96))
    covers_every_token_once(batches, docs)
    shape = (4, 512) if layout == "rows" else (2048,)
    for b in batches:
        assert b.input_ids.shape == shape and b.boundaries.cu_seqlens.shape == (97,)
        assert torch.equal(b.position_ids, b.boundaries.position_ids())
        ids, lab = b.input_ids.flatten(), b.labels.flatten()
        seg = b.boundaries.seqlens[~b.boundaries.is_pad].tolist()
        cu = b.boundaries.cu_seqlens[:-1][~b.boundaries.is_pad].tolist()
        for (start, n), d, s in zip(zip(cu, seg), b.doc_index, b.doc_start):
            src = docs[int(d)]
            assert ids[start:start + n].tolist() == src[s:s + n].tolist()
            if label_shift == "model":
                assert lab[start] == -100 and lab[start + 1:start + n].tolist() == src[s + 1:s + n].tolist()
            else:
                want = src[s + 1:s + n + 1].tolist()  # a split piece keeps its last target
                got = lab[start:start + n].tolist()
                assert got[:len(want)] == want and (len(want) == n or got[-1] == -100)


def test_deterministic_per_seed_and_epoch(docs):
    a = [b.doc_index.tolist() for b in mk(docs, seed=1)]
    assert a == [b.doc_index.tolist() for b in mk(docs, seed=1)]
    assert a != [b.doc_index.tolist() for b in mk(docs, seed=2)]
    ds = mk(docs, seed=1)
    ds.set_epoch(1)
    assert a != [b.doc_index.tolist() for b in ds]


def test_fill_and_doc_budget(docs):
    batches = list(mk(docs, capacity=1024, batch_size=8, buffer_size=512))
    body = batches[:-3]
    fill = sum(b.boundaries.num_tokens() for b in body) / (len(body) * 8 * 1024)
    assert fill > 0.95
    budget = list(mk(docs, capacity=1024, batch_size=8, buffer_size=512, max_num_docs=40))
    assert max(int((~b.boundaries.is_pad).sum()) for b in budget) <= 40 - 8  # 8 padding runs
    covers_every_token_once(budget, docs)


def test_resume_in_process_is_exact(docs):
    full = [b.doc_index.tolist() for b in mk(docs)]
    ds = mk(docs)
    it = iter(ds)
    head = [next(it).doc_index.tolist() for _ in range(7)]
    state = ds.state_dict()
    ds2 = mk(docs)
    ds2.load_state_dict(state)
    assert head + [b.doc_index.tolist() for b in ds2] == full


def test_resume_stream_source_is_exact(tmp_path, docs):
    src = str(write_parquet(tmp_path / "s.parquet", [docs[i] for i in range(len(docs))], rows_per_group=100))
    full = [b.doc_index.tolist() for b in mk(src)]
    ds = mk(src)
    it = iter(ds)
    head = [next(it).doc_index.tolist() for _ in range(5)]
    state = ds.state_dict()
    assert "tokens" in state["buffer"]  # a stream keeps its buffered tokens in the state
    ds2 = mk(src)
    ds2.load_state_dict(state)
    assert head + [b.doc_index.tolist() for b in ds2] == full


def order(batches):
    return [(b.step, b.doc_index.tolist(), b.doc_start.tolist()) for b in batches]


@pytest.mark.parametrize("stop_at,workers_after", [(8, 2), (5, 2), (6, 3)])
def test_dataloader_workers_resume_with_loader_state(docs, stop_at, workers_after):
    """A resumed plain DataLoader yields the uninterrupted run's batches in its order
    (not 10, 9, 12, 11, ...), also when the last consumed batch came from worker 1 and
    with another number of workers."""
    full = order(DataLoader(mk(docs), batch_size=None, num_workers=2))
    tracker, got = LoaderState(), []
    for k, b in enumerate(DataLoader(mk(docs, attach_state=True), batch_size=None, num_workers=2)):
        got.append(b)
        tracker.update(b)
        if k == stop_at:
            break
    saved = json.loads(state_to_json(tracker.state_dict()))  # as stored beside a checkpoint
    ds = mk(docs, attach_state=True)
    ds.load_state_dict(saved)
    got += list(DataLoader(ds, batch_size=None, num_workers=workers_after))
    assert order(got) == full  # nothing lost, nothing twice, same order


def test_stateful_dataloader_resume(docs):
    sdl = pytest.importorskip("torchdata.stateful_dataloader")
    full = [b.doc_index.tolist() for b in sdl.StatefulDataLoader(mk(docs), batch_size=None, num_workers=2)]
    dl = sdl.StatefulDataLoader(mk(docs), batch_size=None, num_workers=2)
    got = []
    for k, b in enumerate(dl):
        got.append(b.doc_index.tolist())
        if k == 6:
            state = dl.state_dict()
            break
    dl2 = sdl.StatefulDataLoader(mk(docs), batch_size=None, num_workers=2)
    dl2.load_state_dict(state)
    got += [b.doc_index.tolist() for b in dl2]
    assert got == full


def test_refuses_a_state_from_other_data_or_options(docs):
    ds = mk(docs)
    next(iter(ds))
    state = ds.state_dict()
    with pytest.raises(ValueError, match=r"capacity: saved 512, now 1024"):
        mk(docs, capacity=1024).load_state_dict(state)
    other = Documents.from_lists([np.arange(5)] * 10)
    with pytest.raises(ValueError, match=r"different dataset or options \(source: saved"):
        mk(other).load_state_dict(state)
    with pytest.raises(ValueError, match="not a seqpack packing state"):
        mk(docs).load_state_dict({"step": 3})
    other_workers = mk(docs)
    other_workers.load_state_dict({**state, "worker": 1, "workers_total": 2})
    with pytest.raises(ValueError, match="the state is for worker 1 of 2 but this is worker 0 of 1"):
        iter(other_workers)


def test_overflow_and_empty_documents(docs):
    ds = mk(docs, capacity=256, overflow="truncate")
    it = iter(ds)
    batches = list(it)
    c = ds._live.counters
    assert c["empty_docs"] == 2 and c["truncated_docs"] == int((docs.lengths > 256).sum())
    assert max(int((b.doc_stop - b.doc_start).max()) for b in batches) <= 256
    with pytest.raises(ValueError, match="has .* tokens but rows hold 256"):
        list(mk(docs, capacity=256, overflow="error"))


def test_chats_stream_masked_and_split_between_turns():
    conv = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 30}
            for i in range(10)]
    ds = PackedIterableDataset([conv, conv[:2]], capacity=100, batch_size=2, buffer_size=8)
    batches = list(ds)
    from seqpack.data.tokenize import encode_chat, load_tokenizer

    (ids, _), (labels, _), (turns, _) = encode_chat(load_tokenizer(), [conv, conv[:2]])
    starts = sorted(int(s) for b in batches for d, s in zip(b.doc_index, b.doc_start) if d == 0)
    assert len(starts) > 1 and set(starts) <= set(turns.tolist())
    for b in batches:  # labels follow the mask: user turns never carry a loss
        for k, (d, s, e) in enumerate(zip(b.doc_index, b.doc_start, b.doc_stop)):
            if d == 0:
                lab = b.labels.flatten()[b.boundaries.cu_seqlens[:-1][~b.boundaries.is_pad][k]:][:e - s]
                assert lab[1:].tolist() == labels[s + 1:e].tolist()
    with pytest.raises(ValueError, match="document 1: input_ids must be a flat list of integer"):
        PackedIterableDataset([[1, 2], [0.5, 1.5]], capacity=8)


def step_balance(ranks, **kw):
    per = [[(int((b.doc_stop - b.doc_start).sum()), float(((b.doc_stop - b.doc_start) ** 2).sum()))
            for b in PackedIterableDataset(**kw, rank=r, world_size=ranks)] for r in range(ranks)]
    assert len({len(p) for p in per}) == 1  # same number of batches on every rank
    a = np.array(per)  # (ranks, steps, 2)
    spread = (a.max(0) - a.min(0)) / a.mean(0)
    return spread, a


@pytest.mark.parametrize("layout,batch_size,capacity", [("rows", 8, 4096), ("1d", 1, 32768)])
def test_ranks_balanced_in_tokens_and_attention_cost(layout, batch_size, capacity):
    L = sft_lengths(6000, seed=11)
    docs = Documents(np.zeros(int(L.sum()), np.int32), np.concatenate([[0], np.cumsum(L)]))
    spread, a = step_balance(2, source=docs, capacity=capacity, batch_size=batch_size, layout=layout,
                             max_seqlen=4096, buffer_size=1024)
    body = spread[:-3]  # the last steps drain what is left of the stream
    assert body[:, 0].max() <= 0.02 and body[:, 1].max() <= 0.02, body.max(0)
    assert a[..., 0].sum() == int(np.minimum(L, 4096).sum() + np.maximum(L - 4096, 0).sum())


@pytest.mark.parametrize("kw,msg", [
    (dict(max_seqlen=0), "max_seqlen must be >= 1, got 0"),
    (dict(max_seqlen=-3, layout="1d"), "max_seqlen must be >= 1, got -3"),
    (dict(max_seqlen=0, layout="1d"), "max_seqlen must be >= 1, got 0"),
    (dict(capacity=4096.5), "capacity must be an integer >= 1, got 4096.5"),
    (dict(capacity=0), "capacity must be >= 1, got 0"),
    (dict(batch_size=2.0), "batch_size must be an integer >= 1, got 2.0"),
    (dict(max_num_docs=0), "max_num_docs must be >= 1, got 0"),
    (dict(max_wait=-1), "max_wait must be >= 0"),
    (dict(balance=float("nan")), "balance must be a finite number >= 0, got nan"),
    (dict(rank=2, world_size=2), r"rank must be in \[0, world_size=2\); got 2"),
])
def test_impossible_options_are_refused_naming_the_value(docs, kw, msg):
    with pytest.raises(InputError, match=msg):
        mk(docs, **kw)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _sources(tmp_path, docs):
    """Every source type docs/data.md lists, each built afresh by a call (as after a restart)."""
    datasets = pytest.importorskip("datasets")
    n = 400
    lists = [docs[i].tolist() for i in range(n)]
    labels = [[-100] * min(3, len(x)) + x[3:] for x in lists]
    jsonl = _jsonl(tmp_path / "d.jsonl", [{"input_ids": x, "labels": y} for x, y in zip(lists, labels)])
    parquet = str(write_parquet(tmp_path / "d.parquet", lists, labels=labels, rows_per_group=64))
    texts = _jsonl(tmp_path / "t.jsonl", [{"text": f"document {i} " + "word " * (i % 37)} for i in range(n)])
    table = {"input_ids": lists, "labels": labels}
    return {
        "parquet": lambda: parquet,
        "jsonl": lambda: jsonl,
        "jsonl-text": lambda: texts,
        "hf-map": lambda: datasets.Dataset.from_dict(table),
        "hf-streaming": lambda: datasets.Dataset.from_dict(table).to_iterable_dataset(num_shards=2),
        "documents": lambda: Documents.from_lists(lists),
        "token-lists": lambda: [np.asarray(x) for x in lists],
        "dicts": lambda: [{"input_ids": x, "labels": y} for x, y in zip(lists, labels)],
        "callable": lambda: (lambda: iter([{"text": f"line {i} " + "a " * (i % 50)} for i in range(n)])),
        "generator": lambda: ({"input_ids": x} for x in lists),
        "chitchat": lambda: "chitchat",
        "chats": lambda: [[{"role": "user", "content": f"question {i} " + "why " * (i % 20)},
                           {"role": "assistant", "content": "because " * (i % 90)}] for i in range(n)],
    }


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "jsonl-text", "hf-map", "hf-streaming", "documents",
                                  "token-lists", "dicts", "callable", "generator", "chitchat", "chats"])
def test_resume_works_for_every_source_type(tmp_path, docs, kind):
    make = _sources(tmp_path, docs)[kind]
    kw = dict(capacity=256, batch_size=2, buffer_size=32)

    def batches(it, n):
        return [(b.step, b.doc_index.tolist(), b.input_ids.tolist(), b.labels.tolist()) for _, b in zip(range(n), it)]

    full = batches(iter(PackedIterableDataset(make(), **kw)), 7)
    ds = PackedIterableDataset(make(), **kw)
    it = iter(ds)
    head = batches(it, 3)
    saved = json.loads(state_to_json(ds.state_dict()))
    again = PackedIterableDataset(make(), **kw)  # a new object, as in a new process
    again.load_state_dict(saved)
    assert head + batches(iter(again), 4) == full


# ---------------------------------------------------------------------------------------
# property test: random documents, every option; accounting, capacity, reruns, resume


def _run(make, n=None, state=None):
    """(batches as comparable tuples, counters) of rank 0 and 1 of a fresh dataset."""
    out, counters = [], None
    for ds in make():
        if state is not None:
            ds.load_state_dict(state[ds.rank])
        it = iter(ds)
        got = [b for _, b in zip(range(n if n is not None else 1 << 30), it)]
        out.append(got)
        counters = dict(it.counters)
    return out, counters


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(lengths=st.lists(st.integers(0, 90), min_size=0, max_size=24),
       capacity=st.integers(4, 48), batch_size=st.integers(1, 3), layout=st.sampled_from(["rows", "1d"]),
       overflow=st.sampled_from(["split", "truncate", "drop", "error"]), buffer_size=st.integers(1, 12),
       world=st.sampled_from([1, 2]), streamed=st.booleans(), with_labels=st.booleans(),
       shift=st.sampled_from(["model", "collator"]), seqlen_cut=st.integers(0, 3), cut=st.integers(0, 12),
       budget=st.sampled_from([None, 64]))
def test_fuzz_online_packer(lengths, capacity, batch_size, layout, overflow, buffer_size, world, streamed,
                            with_labels, shift, seqlen_cut, cut, budget):
    rng = np.random.default_rng(len(lengths) * 1000 + capacity)
    toks = [rng.integers(0, 2**40, n).astype(np.int64) for n in lengths]  # ids beyond int32 stay intact
    labs = [np.where(rng.random(n) < 0.3, -100, t) for n, t in zip(lengths, toks)]
    max_seqlen = max(1, capacity - seqlen_cut) if layout == "1d" else None
    limit = min(capacity, max_seqlen or capacity)
    budget = None if budget is None else budget + (batch_size if layout == "rows" else -(-batch_size * capacity // limit))

    def source():
        if streamed:
            return [{"input_ids": t.tolist(), **({"labels": y.tolist()} if with_labels else {})}
                    for t, y in zip(toks, labs)] or [{"input_ids": []}]
        return Documents.from_lists(toks or [[]], labs or [[]] if with_labels else None)

    def make():
        return [PackedIterableDataset(source(), capacity=capacity, batch_size=batch_size, layout=layout,
                                      overflow=overflow, buffer_size=buffer_size, max_seqlen=max_seqlen,
                                      max_num_docs=budget, label_shift=shift, rank=r, world_size=world,
                                      shuffle=not streamed, seed=3)
                for r in range(world)]

    if overflow == "error" and any(n > limit for n in lengths):
        with pytest.raises(InputError, match=rf"has \d+ tokens but rows hold {limit}: pass overflow="):
            _run(make)
        return
    runs, counters = _run(make)
    again, _ = _run(make)
    assert [[(b.step, b.input_ids.tolist(), b.labels.tolist()) for b in r] for r in runs] == \
        [[(b.step, b.input_ids.tolist(), b.labels.tolist()) for b in r] for r in again]  # reruns identical
    assert len({len(r) for r in runs}) == 1  # every rank the same number of batches

    out = 0
    for rank_batches in runs:
        for b in rank_batches:
            seg = (b.doc_stop - b.doc_start)
            out += int(seg.sum())
            assert (seg >= 1).all() and (seg <= limit).all()
            bounds = b.boundaries
            assert int(bounds.num_tokens()) == int(seg.sum())
            if layout == "rows":  # every row within capacity
                assert b.input_ids.shape == (batch_size, capacity)
            else:
                assert b.input_ids.shape == (batch_size * capacity,)
            real = ~bounds.is_pad
            starts = bounds.cu_seqlens[:-1][real].tolist()
            ids = b.input_ids.flatten()
            for s0, d, a, e in zip(starts, b.doc_index.tolist(), b.doc_start.tolist(), b.doc_stop.tolist()):
                assert ids[s0:s0 + e - a].tolist() == toks[d][a:e].tolist()
            if budget is not None:
                assert bounds.cu_seqlens.numel() == budget + 1
    total = sum(lengths)
    assert out + counters["dropped_tokens"] == total  # tokens in = tokens out + counted as dropped
    assert counters["empty_docs"] == sum(n == 0 for n in lengths) + (0 if lengths else 1)

    # resume at a point: the rest equals the uninterrupted stream
    steps = len(runs[0])
    k = min(cut, steps)
    heads, states = [], []
    for ds in make():
        it = iter(ds)
        heads.append([b for _, b in zip(range(k), it)])
        states.append(json.loads(state_to_json(ds.state_dict())))
    tails, _ = _run(make, state=states)
    for r in range(world):
        assert [b.input_ids.tolist() for b in heads[r] + tails[r]] == [b.input_ids.tolist() for b in runs[r]]
        assert [b.labels.tolist() for b in heads[r] + tails[r]] == [b.labels.tolist() for b in runs[r]]
