"""seqpack.data.load: a --data spec -> documents (hf:NAME[:SPLIT[:COLUMN]] reads COLUMN)."""

import numpy as np
import pytest

from seqpack.data.load import load_documents
from seqpack.errors import InputError

datasets = pytest.importorskip("datasets")


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"a": [[1, 2, 3], [4, 5]], "b": [[7], [8, 9, 10, 11]]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hf_spec_reads_the_named_split_and_column(fake_hub):
    docs, vocab, plan = load_documents("hf:some/set:validation:b")
    assert fake_hub == [("some/set", "validation")] and plan is None
    assert docs.lengths.tolist() == [1, 4] and docs.tokens.tolist() == [7, 8, 9, 10, 11] and vocab == 12
    docs, _, _ = load_documents("hf:some/set::a")  # empty SPLIT: train
    assert fake_hub[-1] == ("some/set", "train") and docs.tokens.tolist() == [1, 2, 3, 4, 5]


def test_hf_spec_with_too_many_parts_is_refused(fake_hub):
    with pytest.raises(InputError, match=r"hf:NAME\[:SPLIT\[:COLUMN\]\]"):
        load_documents("hf:some/set:train:a:b")
    assert not fake_hub
