"""Size and cost of a (Lite)Whisper encoder, computed from its config alone.

Encoder parameters exclude the sinusoidal position table (fixed, not learned), as the published LiteWhisper
figures do: tiny 7.63M, base 19.82M, small 87.0M, large-v3 635M. Encoder FLOPs are for one 30 s window
(3000 mel frames in, 1500 positions out) and count multiply-adds as 2 FLOPs: the conv stem, every linear at
its rank, and attention scores plus weighted sum (2 · 2 · T² · d per layer). Norms, GELU and softmax are
left out: they are a few percent of the total at every size. With `reduced_attention_threshold`, attention is
counted as the inference layout runs it: in the reduced dimension where that needs at most that fraction of
the per-head FLOPs (modeling_lite_whisper.attention_macs).
"""

from configuration_lite_whisper import ATTENTION_SLOTS, LOW_RANK_SLOTS, MLP_SLOTS, slot_shape
from modeling_lite_whisper import attention_macs, uses_reduced_attention

WINDOW_FRAMES = 3000  # mel frames in a 30 s window; the encoder halves them in conv2
KEY_HAS_NO_BIAS = "k_proj"


def _ranks(config, layer_index: int) -> dict:
    low_rank_config = getattr(config, "low_rank_config", None)
    return dict(low_rank_config[layer_index]) if low_rank_config else {}


def slot_parameters(config, slot: str, rank=None) -> int:
    """Parameters of one encoder linear: dense (`rank=None`) or factored with a bias."""
    in_features, out_features = slot_shape(config, slot)
    if rank is None:
        return in_features * out_features + (0 if slot == KEY_HAS_NO_BIAS else out_features)
    return rank * (in_features + out_features) + out_features


def encoder_parameters(config) -> int:
    """Learned encoder parameters of a WhisperConfig or LiteWhisperConfig (no sinusoidal position table)."""
    d_model = config.d_model
    stem = config.num_mel_bins * d_model * 3 + d_model + d_model * d_model * 3 + d_model
    layer_norms = 2 * 2 * d_model
    total = stem + 2 * d_model  # final layer norm
    for layer_index in range(config.encoder_layers):
        ranks = _ranks(config, layer_index)
        total += layer_norms + sum(slot_parameters(config, slot, ranks.get(slot)) for slot in LOW_RANK_SLOTS)
    return total


def slot_flops(config, slot: str, rank=None, positions: int = WINDOW_FRAMES // 2) -> int:
    in_features, out_features = slot_shape(config, slot)
    if rank is None:
        return 2 * positions * in_features * out_features
    return 2 * positions * rank * (in_features + out_features)


def encoder_flops(config, frames: int = WINDOW_FRAMES, reduced_attention_threshold: float = None) -> int:
    """FLOPs of one encoder forward over `frames` mel frames (default: a 30 s window).

    `reduced_attention_threshold`: None counts per-head attention everywhere; a fraction (the inference layout's
    REDUCED_ATTENTION_BELOW_FLOP_RATIO for a device) counts reduced attention where the layout would use it.
    """
    d_model = config.d_model
    positions = frames // 2
    stem = 2 * frames * config.num_mel_bins * d_model * 3 + 2 * positions * d_model * d_model * 3
    total = stem
    for layer_index in range(config.encoder_layers):
        ranks = _ranks(config, layer_index)
        total += sum(slot_flops(config, slot, ranks.get(slot), positions) for slot in MLP_SLOTS)
        attention_ranks = {slot: ranks[slot] for slot in ATTENTION_SLOTS if slot in ranks}
        heads = config.encoder_attention_heads
        per_head, reduced = attention_macs(attention_ranks, d_model, heads, positions)
        reduced_runs = reduced_attention_threshold is not None and uses_reduced_attention(
            attention_ranks, d_model, heads, positions, reduced_attention_threshold
        )
        total += 2 * positions * (reduced if reduced_runs else per_head)
    return total
