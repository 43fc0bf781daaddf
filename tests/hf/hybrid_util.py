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
    # Mamba2 family: 4 heads of 8 over 2 groups, state 8, chunk 8 (documents span chunks)
    "mamba2": dict(num_heads=8, head_dim=16, state_size=8, n_groups=2, expand=2, conv_kernel=4, chunk_size=8),
    "bamba": dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=2, mamba_expand=2,
                  mamba_chunk_size=8, attn_layer_indices=[1]),
    "granitemoehybrid": dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=2, mamba_expand=2,
                             mamba_chunk_size=8, layer_types=["mamba", "attention"], num_local_experts=4,
                             shared_intermediate_size=64),
    "falcon_h1": dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=2, mamba_expand=2,
                      mamba_d_ssm=128, mamba_chunk_size=8),
    "nemotron_h": dict(mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=8, n_groups=2, expand=2, chunk_size=8,
                       layers_block_type=["mamba", "attention", "mlp"], n_routed_experts=4,
                       moe_intermediate_size=32, moe_shared_expert_intermediate_size=32),
    "zamba2": dict(n_mamba_heads=8, mamba_headdim=16, mamba_d_state=8, mamba_ngroups=2, mamba_expand=2,
                   chunk_size=8, attention_hidden_size=128, attention_head_dim=32, num_query_groups=4,
                   hybrid_layer_ids=[1], layers_block_type=["mamba", "hybrid"], use_mem_eff_path=False),
    # Mamba1 family
    "mamba": dict(state_size=8, expand=2, conv_kernel=4, time_step_rank=8),
    "falcon_mamba": dict(state_size=8, expand=2, conv_kernel=4, time_step_rank=8),
    "jamba": dict(mamba_d_state=8, mamba_expand=2, mamba_dt_rank=8, attn_layer_period=2, attn_layer_offset=1,
                  expert_layer_period=2, expert_layer_offset=1, num_experts=4),
    "olmo_hybrid": _GDN,
    "minimax": dict(layer_types=["linear_attention", "full_attention"], block_size=8, num_local_experts=4,
                    num_experts_per_tok=2),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], conv_L_cache=3, num_experts=4,
                     num_experts_per_tok=2, moe_intermediate_size=32, num_dense_layers=1),
    "recurrent_gemma": dict(lru_width=64, block_types=["recurrent", "attention"], attention_window_size=8,
                            num_key_value_heads=4),
    "zamba": dict(n_mamba_heads=2, mamba_d_state=8, mamba_expand=2, mamba_dt_rank=8, attention_hidden_size=128,
                  attention_head_dim=32, layer_types=["mamba", "hybrid"]),
    # Kimi delta attention (decay per key channel) + MLA attention
    "kimi_linear": dict(linear_num_heads=4, linear_head_dim=16, layer_types=["linear_attention", "full_attention"],
                        mlp_layer_types=["dense", "sparse"], num_experts=4, num_experts_per_token=2,
                        moe_intermediate_size=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
                        v_head_dim=16, head_dim=16, num_key_value_heads=4),
    "bailing_hybrid": dict(layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "sparse"],
                           num_experts=4, num_experts_per_token=2, moe_intermediate_size=32, kv_lora_rank=16,
                           qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, head_dim=16, layer_group_size=2, num_key_value_heads=4,
                           num_nextn_predict_layers=0, num_expert_group=1, topk_group=1),
}
# Families without attention: the attention implementation is irrelevant, eager is what they build with.
NO_ATTENTION = {"mamba", "mamba2", "falcon_mamba"}


def hybrid_config(family: str, **overrides):
    """A tiny config of a hybrid/recurrent ``family`` (its text model where the family is multimodal)."""
    return tiny_config(family, **{**HYBRID_OVERRIDES.get(family, {}), **overrides})
