"""Shared pieces of the Hugging Face tests: tiny random models of each family, packed layouts.

Imported by name (`from hf_util import ...`): `conftest` is ambiguous across test folders."""

import pytest

pytest.importorskip("transformers")

from seqpack.integrations import hf  # noqa: E402
from seqpack.integrations.hf_verify import load_model, make_rows  # noqa: E402

FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma", "phi3"]
LENGTHS = (5, 11, 3, 8, 6, 9, 4)
# name -> (rows of document indices, row length); padding = row length minus the row's tokens
LAYOUTS = {
    "bsz1": (((0, 1, 2, 3, 4, 5, 6),), 46),
    "bsz1_padded": (((0, 1, 2, 3),), 30),
    "bsz2_full": (((3, 5, 4), (0, 1, 2, 6)), 23),
    "bsz3_padded": (((0, 1), (2, 3, 4), (5, 6)), 18),
}


def tiny(family="llama", impl="eager", *, packing=True, grad=True):
    """A fresh tiny random model (same weights for the same family), packing enabled."""
    model = load_model(family, attn_implementation=impl, seed=0)
    model.requires_grad_(grad)
    return hf.enable_packing(model) if packing else model


def packed(layout="bsz3_padded", vocab=128, seed=0):
    """(docs, PackedBatch) of LENGTHS arranged as LAYOUTS[layout]."""
    rows, row_len = LAYOUTS[layout]
    return make_rows(LENGTHS, rows, vocab, capacity=row_len, seed=seed)
