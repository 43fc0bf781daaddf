"""Tiny random hybrid/recurrent models (Qwen3.5, Qwen3-Next, LFM2, Mamba2 family, ...) for CPU tests.

Each family's defaults are a full-size model; `hf_verify.FAMILY_OVERRIDES` (the one place the sweep,
these tests and ``seqpack verify`` take them from) shrinks it to two or four layers with several
heads, so the packed tests run in seconds. Imported by name (`from hybrid_util import ...`).
"""

import pytest

pytest.importorskip("transformers")

from seqpack.integrations.hf_verify import FAMILY_OVERRIDES, tiny_config  # noqa: E402

# The hybrid/recurrent families seqpack makes exact (seqpack.integrations.hf_hybrid).
HYBRID_FAMILIES = (
    "qwen3_5_text", "qwen3_5_moe_text", "qwen3_next", "lfm2", "mamba2", "bamba", "granitemoehybrid", "falcon_h1",
    "nemotron_h", "zamba2", "mamba", "falcon_mamba", "jamba", "olmo_hybrid", "minimax", "lfm2_moe",
    "recurrent_gemma", "zamba", "kimi_linear", "bailing_hybrid",
)
HYBRID_OVERRIDES = {f: FAMILY_OVERRIDES[f] for f in HYBRID_FAMILIES}
# Families without attention: the attention implementation is irrelevant, eager is what they build with.
NO_ATTENTION = {"mamba", "mamba2", "falcon_mamba"}


def hybrid_config(family: str, **overrides):
    """A tiny config of a hybrid/recurrent ``family`` (its text model where the family is multimodal)."""
    return tiny_config(family, **overrides)
