"""Fixtures of the Hugging Face tests; shared helpers live in hf_util.py."""

import pytest
import torch

pytest.importorskip("transformers")


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Tiny models run faster on one thread, and pytest-xdist runs one worker per core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
