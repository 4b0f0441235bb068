"""Encoder size and FLOPs from a config: the published reference sizes, and low rank counted at its rank."""

import pytest
from transformers import WhisperConfig

from configuration_lite_whisper import LiteWhisperConfig
from lite_whisper_convert.measures import encoder_flops, encoder_parameters

# (d_model, layers, heads, ffn, mel bins) and the published encoder size without the position table.
SHAPES = {
    "tiny": ((384, 4, 6, 1536, 80), 7.63e6),
    "base": ((512, 6, 8, 2048, 80), 19.82e6),
    "small": ((768, 12, 12, 3072, 80), 87.0e6),
    "large-v3": ((1280, 32, 20, 5120, 128), 635e6),
}


def whisper_config(shape, **kwargs):
    d_model, layers, heads, ffn, mels = shape
    return dict(d_model=d_model, encoder_layers=layers, encoder_attention_heads=heads, encoder_ffn_dim=ffn,
                num_mel_bins=mels, **kwargs)


@pytest.mark.parametrize("family", SHAPES)
def test_stock_encoder_sizes_match_the_published_figures(family):
    shape, published = SHAPES[family]
    assert encoder_parameters(WhisperConfig(**whisper_config(shape))) == pytest.approx(published, rel=2e-3)


def test_low_rank_slots_count_their_factors_and_bias():
    shape, _ = SHAPES["tiny"]
    dense = WhisperConfig(**whisper_config(shape))
    ranks = [{"q_proj": 64, "k_proj": 64, "fc1": 128}] + [{}] * 3
    lite = LiteWhisperConfig(low_rank_config=ranks, **whisper_config(shape))
    saved = (384 * 384 + 384 - (64 * 768 + 384)) + (384 * 384 - (64 * 768 + 384)) + (384 * 1536 + 1536 - (128 * 1920 + 1536))
    assert encoder_parameters(dense) - encoder_parameters(lite) == saved
    saved_flops = 2 * 1500 * ((384 * 384 - 64 * 768) * 2 + 384 * 1536 - 128 * 1920)
    assert encoder_flops(dense) - encoder_flops(lite) == saved_flops


def test_reduced_attention_flops_count_scores_and_values_in_the_shared_rank():
    shape, _ = SHAPES["tiny"]  # head_dim 64
    ranks = [{"q_proj": 96, "k_proj": 32, "v_proj": 48}] + [{}] * 3
    lite = LiteWhisperConfig(low_rank_config=ranks, **whisper_config(shape))
    t, d, heads, shared = 1500, 384, 6, 48  # keys and values shared by all heads, in max(r_k, r_v) dimensions
    per_head = 2 * d * (96 + 32 + 48) + d * d + 2 * t * d
    reduced = d * (96 + 32 + 48) + heads * 96 * shared + 2 * t * heads * shared + heads * 48 * d
    assert encoder_flops(lite) - encoder_flops(lite, reduced_attention_threshold=0.9) == 2 * t * (per_head - reduced)
    wide_keys = LiteWhisperConfig(low_rank_config=[{"q_proj": 64, "k_proj": 80, "v_proj": 32}] + [{}] * 3,
                                  **whisper_config(shape))  # r_k above head_dim: per-head attention is cheaper
    assert encoder_flops(wide_keys, reduced_attention_threshold=0.9) == encoder_flops(wide_keys)
