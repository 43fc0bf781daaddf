"""packed_cross_entropy equals the losses of the same documents run one by one."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqpack.batch import collate_packed
from seqpack.loss import packed_cross_entropy
from seqpack.plan import plan_packing

V = 17


def setup(shift, seed=0):
    rng = np.random.default_rng(seed)
    lengths = [7, 1, 12, 5, 9, 3]
    docs = [rng.integers(0, V, n).tolist() for n in lengths]
    plan = plan_packing(lengths, 16, overflow="split")
    batch = collate_packed(plan, docs, label_shift=shift)
    # Logits that depend on each token's document and position only: what an isolated
    # model would produce, so the packed loss must equal the one-by-one loss.
    torch.manual_seed(seed)
    table = torch.randn(len(docs), 16, V, dtype=torch.float64)
    logits = torch.zeros(*batch.input_ids.shape, V, dtype=torch.float64)
    for d, s, e, (row, col) in zip(batch.doc_index, batch.doc_start, batch.doc_stop, _starts(batch)):
        logits[row, col:col + e - s] = table[d, s:e]
    per_doc = []
    for d, tokens in enumerate(docs):
        t = torch.tensor(tokens)
        per_doc.append(F.cross_entropy(table[d, :len(tokens) - 1], t[1:], reduction="none"))
    return batch, logits, per_doc


def _starts(batch):
    b = batch.boundaries
    L = b.shape[-1]
    cu, pad = b.cu_seqlens.tolist(), b.is_pad.tolist()
    return [(s // L, s % L) for s, e, p in zip(cu[:-1], cu[1:], pad) if not p and e > s]


@pytest.mark.parametrize("shift", ["model", "collator"])
def test_token_mean_doc_mean_and_sum(shift):
    batch, logits, per_doc = setup(shift)
    kw = dict(label_shift=shift)
    all_tok = torch.cat(per_doc)
    mean = packed_cross_entropy(logits, batch.labels, reduction="mean", **kw)
    torch.testing.assert_close(mean, all_tok.mean())
    total, count = packed_cross_entropy(logits, batch.labels, reduction="sum", **kw)
    torch.testing.assert_close(total, all_tok.sum())
    assert int(count) == all_tok.numel() == int(batch.num_label_tokens())
    doc_mean = packed_cross_entropy(logits, batch.labels, batch.boundaries, reduction="doc_mean", **kw)
    expect = torch.stack([x.mean() for x in per_doc if x.numel()]).mean()
    torch.testing.assert_close(doc_mean, expect)
    assert not torch.isclose(doc_mean, mean)  # the two normalisations really differ here


def test_gradient_flows_only_through_labelled_positions():
    batch, logits, _ = setup("model")
    logits = logits.clone().requires_grad_(True)
    packed_cross_entropy(logits, batch.labels).backward()
    predicts = torch.zeros_like(batch.labels, dtype=torch.bool)
    predicts[..., :-1] = batch.labels[..., 1:] != -100
    touched = logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, predicts)


def test_errors():
    batch, logits, _ = setup("model")
    with pytest.raises(ValueError, match="reduction"):
        packed_cross_entropy(logits, batch.labels, reduction="avg")
    with pytest.raises(ValueError, match="boundaries"):
        packed_cross_entropy(logits, batch.labels, reduction="doc_mean")
    with pytest.raises(ValueError, match="disagree"):
        packed_cross_entropy(logits[:, :-1], batch.labels)


def test_shifted_is_a_deprecated_spelling_of_label_shift():
    batch, logits, _ = setup("collator")
    want = packed_cross_entropy(logits, batch.labels, label_shift="collator")
    with pytest.warns(DeprecationWarning, match="label_shift='collator'"):
        got = packed_cross_entropy(logits, batch.labels, shifted=True)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="label_shift must be"):
        packed_cross_entropy(logits, batch.labels, label_shift="hf")
