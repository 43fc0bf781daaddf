"""The GPT trained on packed batches: config, presets, model and fused head."""

from seqpack.model.gpt import GPT, PRESETS, GPTConfig, gpt_config

__all__ = ["GPT", "GPTConfig", "PRESETS", "gpt_config"]
