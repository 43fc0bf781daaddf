"""Tiny random hybrid/recurrent models (Qwen3.5, Qwen3-Next, LFM2, Mamba2 family, ...) for CPU tests.

Each family's defaults are a full-size model; these overrides shrink it to two or four layers
with several heads, so the packed tests run in seconds. Imported by name (`from hybrid_util import ...`).
"""

import pytest

pytest.importorskip("transformers")

from seqpack.integrations.hf_verify import tiny_config  # noqa: E402

_GDN = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
            linear_conv_kernel_dim=4, layer_types=["linear_attention", "full_attention"])
_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)

HYBRID_OVERRIDES = {
    "qwen3_5_text": _GDN,
    "qwen3_5_moe_text": {**_GDN, **_MOE},
    "qwen3_next": {**_GDN, **_MOE},
    "lfm2": dict(layer_types=["conv", "full_attention"], conv_L_cache=3),
}


def hybrid_config(family: str, **overrides):
    """A tiny config of a hybrid/recurrent ``family`` (its text model where the family is multimodal)."""
    return tiny_config(family, **{**HYBRID_OVERRIDES.get(family, {}), **overrides})
