import pytest

from data_util import sft_lengths, token_docs


@pytest.fixture
def small_docs():
    lengths = sft_lengths(300, seed=3, median=120, max_len=1500)
    lengths[[5, 17]] = 0  # two empty documents
    return token_docs(lengths)
