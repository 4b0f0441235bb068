"""Rank policy: thresholds to ranks, its edge cases, families and presets, and landing on a size target."""

import pytest
import torch
from transformers import WhisperConfig

from lite_whisper_convert import ranks
from lite_whisper_convert.ranks import (
    OFFICIAL_ENCODER_PARAMS,
    RankPolicyError,
    Thresholds,
    choose_rank,
    model_family,
    parameters_with_ranks,
    parse_size,
    plan_ranks,
    preset_for,
    ranks_for_budget,
    ranks_for_thresholds,
    thresholds_for_budget,
)

TINY = dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80)


def curve_reaching(values_at: dict, size: int) -> torch.Tensor:
    """An explained-variance curve [size] that is 0 before each given rank and then the given value."""
    curve = torch.zeros(size, dtype=torch.float64)
    for rank, value in sorted(values_at.items()):
        curve[rank - 1 :] = value
    curve[-1] = 1.0
    return curve


def test_smallest_multiple_of_16_reaching_the_threshold():
    curve = curve_reaching({20: 0.5, 40: 0.9, 70: 0.99}, 384)
    assert choose_rank(curve, 0.5, 384, 384) == 32  # reached at 20: the next multiple of 16
    assert choose_rank(curve, 0.9, 384, 384) == 48
    assert choose_rank(curve, 0.95, 384, 384) == 80
    assert choose_rank(curve, 0.4, 384, 384) == 32
    assert choose_rank(torch.ones(384, dtype=torch.float64), 0.999, 384, 384) == 16  # reached at once


def test_dense_when_low_rank_would_not_save_parameters():
    # 384x384: k(384+384) < 384*384 only for k < 192, so 192 and above stay dense.
    assert choose_rank(curve_reaching({176: 0.99}, 384), 0.99, 384, 384) == 176
    assert choose_rank(curve_reaching({177: 0.99}, 384), 0.99, 384, 384) is None
    # fc1 384 -> 1536: break-even at 307.2, so 304 is the largest rank kept.
    assert choose_rank(curve_reaching({300: 0.99}, 1536), 0.99, 384, 1536) == 304
    assert choose_rank(curve_reaching({310: 0.99}, 1536), 0.99, 384, 1536) is None


def test_dense_when_the_threshold_is_only_reached_at_full_rank():
    curve = curve_reaching({8: 0.5}, 48)  # 1.0 only at rank 48 = full rank
    assert choose_rank(curve, 1.0, 48, 200) is None  # 16 and 32 fall short, 48 is full rank
    assert choose_rank(curve, 0.5, 48, 200) == 16


def test_ranks_for_thresholds_uses_one_threshold_per_slot_kind():
    config = WhisperConfig(**TINY)
    attention_curve = curve_reaching({30: 0.9, 100: 0.99}, 384)
    mlp_curve = curve_reaching({60: 0.9, 200: 0.99}, 1536)
    curves = {(layer, slot): attention_curve if slot.endswith("proj") else mlp_curve
              for layer in range(4) for slot in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1")}
    curves.update({(layer, "fc2"): curve_reaching({60: 0.9, 200: 0.99}, 384) for layer in range(4)})
    low_rank_config = ranks_for_thresholds(curves, config, Thresholds(attention=0.9, mlp=0.99))
    assert low_rank_config[0] == {"q_proj": 32, "k_proj": 32, "v_proj": 32, "out_proj": 32, "fc1": 208, "fc2": 208}
    assert len(low_rank_config) == 4


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, "0.9"])
def test_thresholds_must_be_fractions(value):
    with pytest.raises(RankPolicyError, match="threshold must be in"):
        Thresholds(attention=value, mlp=0.9)


@pytest.mark.parametrize(
    "shape, family",
    [
        (dict(d_model=384, encoder_layers=4), "tiny"),
        (dict(d_model=512, encoder_layers=6), "base"),
        (dict(d_model=768, encoder_layers=12), "small"),
        (dict(d_model=1024, encoder_layers=24), "medium"),
        (dict(d_model=1280, encoder_layers=32, decoder_layers=32, num_mel_bins=128), "large-v3"),
        (dict(d_model=1280, encoder_layers=32, decoder_layers=4, num_mel_bins=128), "large-v3-turbo"),
    ],
)
def test_families_from_shapes(shape, family):
    assert model_family(WhisperConfig(**shape)) == family


def test_unknown_family_and_preset_are_named_errors():
    with pytest.raises(RankPolicyError, match="d_model=64"):
        model_family(WhisperConfig(d_model=64, encoder_layers=2))
    with pytest.raises(RankPolicyError, match="unknown preset"):
        preset_for(WhisperConfig(**TINY), "fastest")


@pytest.mark.parametrize("family", ["tiny", "base", "small", "medium", "large-v3", "large-v3-turbo"])
def test_every_family_has_every_preset_ordered_by_size(family):
    presets = ranks.PRESETS[family]
    assert list(presets) == list(ranks.PRESET_NAMES) and family in ranks.PRESET_NOTES
    sizes = [presets[name].encoder_params for name in ranks.PRESET_NAMES]
    thresholds = [presets[name].thresholds.attention for name in ranks.PRESET_NAMES]
    assert sizes == sorted(sizes, reverse=True) and thresholds == sorted(thresholds, reverse=True)
    if family in OFFICIAL_ENCODER_PARAMS:  # never larger than the official release
        assert all(presets[name].encoder_params <= OFFICIAL_ENCODER_PARAMS[family][name] for name in presets)
    if family not in ("tiny", "base"):
        assert "UNVERIFIED" in ranks.PRESET_NOTES[family]


def synthetic_curves(config, seed=0):
    """Power-law spectra, steeper in some slots than others: {(layer, slot): explained-variance curve}."""
    from configuration_lite_whisper import LOW_RANK_SLOTS, slot_shape

    generator = torch.Generator().manual_seed(seed)
    curves = {}
    for layer in range(config.encoder_layers):
        for slot in LOW_RANK_SLOTS:
            out = slot_shape(config, slot)[1]
            decay = 0.5 + 1.5 * torch.rand(1, generator=generator).item()
            eigenvalues = torch.arange(1, out + 1, dtype=torch.float64) ** -decay
            curves[(layer, slot)] = torch.cumsum(eigenvalues, 0) / eigenvalues.sum()
    return curves


def test_threshold_bisection_lands_at_or_under_the_size():
    config = WhisperConfig(**TINY)
    curves = synthetic_curves(config)
    for target in (7.0e6, 6.0e6, 5.0e6):
        thresholds = thresholds_for_budget(curves, config, target)
        size = parameters_with_ranks(config, ranks_for_thresholds(curves, config, thresholds))
        assert size <= target
        nudged = Thresholds(min(1.0, thresholds.attention + 1e-6), min(1.0, thresholds.mlp + 1e-6))
        assert parameters_with_ranks(config, ranks_for_thresholds(curves, config, nudged)) > target - 20_000
    with pytest.raises(RankPolicyError, match="smallest reachable"):
        thresholds_for_budget(curves, config, 0.5e6)


def test_budget_allocation_fills_the_size_and_favours_insensitive_slots():
    config = WhisperConfig(**TINY)
    curves = synthetic_curves(config)
    sensitivity = {key: 1.0 for key in curves}
    sensitivity[(0, "q_proj")] = 1e6  # very sensitive: should stay dense or nearly so
    low_rank_config = ranks_for_budget(curves, sensitivity, config, 6.0e6)
    size = parameters_with_ranks(config, low_rank_config)
    assert 6.0e6 - 2 * 16 * (384 + 1536) < size <= 6.0e6  # filled to within a rank step or two
    assert "q_proj" not in low_rank_config[0] or low_rank_config[0]["q_proj"] >= 176
    assert all(rank % 16 == 0 for ranks_ in low_rank_config for rank in ranks_.values())
    # A larger budget never costs more (allocations are nested in size).
    assert parameters_with_ranks(config, ranks_for_budget(curves, sensitivity, config, 7.0e6)) > size
    with pytest.raises(RankPolicyError, match="below the smallest reachable size"):
        ranks_for_budget(curves, sensitivity, config, 0.5e6)
    with pytest.raises(RankPolicyError, match="no sensitivity"):
        ranks_for_budget(curves, {}, config, 6.0e6)


def test_size_targets_parse_as_ratios_or_counts():
    config = WhisperConfig(**TINY)
    stock = parameters_with_ranks(config, [])
    assert parse_size("0.85", config) == int(0.85 * stock)
    assert parse_size("6.48M", config) == parse_size("6480000", config) == parse_size(6.48e6, config) == 6_480_000
    for bad in ("big", "0", "1e9", "-3"):
        with pytest.raises(RankPolicyError, match="size target"):
            parse_size(bad, config)


def test_plan_ranks_resolves_presets_and_records_the_request():
    from types import SimpleNamespace

    config = WhisperConfig(**TINY)
    curves = synthetic_curves(config)
    stats = SimpleNamespace(explained_variance=curves, sensitivity={key: 1.0 for key in curves},
                            sensitivity_probe={"clips": 2})
    low_rank_config, description = plan_ranks(stats, config, preset="fast")
    assert description["policy"] == "sensitivity" and description["preset"] == "fast"
    assert description["encoder_params"] == parameters_with_ranks(config, low_rank_config) <= 6.48e6
    _, description = plan_ranks(stats, config, preset="fast", policy="threshold")
    assert description["thresholds"] == {"attention": 0.9951, "mlp": 0.9951}
    _, description = plan_ranks(stats, config, thresholds=Thresholds(0.9, 0.95))
    assert description["policy"] == "threshold"
    with pytest.raises(RankPolicyError, match="exactly one"):
        plan_ranks(stats, config)
    with pytest.raises(RankPolicyError, match="unknown rank policy"):
        plan_ranks(stats, config, preset="fast", policy="magic")


def test_the_sensitivity_probe_scores_the_transcript_after_the_real_decoder_prompt(tiny_en_dir, monkeypatch):
    """Teacher forcing starts from Whisper's prompt (start of transcript, no timestamps), and every transcript
    token plus the eos is scored exactly once, however the clips are batched."""
    from conftest import assert_probe_sequences_are_generates_own, speech_set

    from lite_whisper_convert.audio import iter_utterances
    from lite_whisper_convert.compress import load_base
    from lite_whisper_convert import sensitivity
    from lite_whisper_convert.sensitivity import probe_loss, probe_set

    model, feature_extractor = load_base(str(tiny_en_dir))
    clips = list(iter_utterances(str(speech_set("librispeech-test-clean-mini")), limit=3))
    together = probe_set(model, feature_extractor, clips, batch_size=3)
    config = model.generation_config
    assert together.decoder_ids[:, 0].tolist() == [config.decoder_start_token_id] * 3
    assert (together.decoder_ids[:, 1] == config.no_timestamps_token_id).all()
    for row, scored in zip(together.decoder_ids, together.mask):
        transcript = row[2:]
        first_eos = int((transcript == config.eos_token_id).nonzero()[0])
        assert int(scored.sum()) == first_eos + 1  # the text tokens and the eos
        assert not scored[0]  # position 0 would predict the forced no-timestamps token
    one_by_one = [probe_set(model, feature_extractor, [clip], batch_size=1) for clip in clips]
    assert together.tokens == sum(probe.tokens for probe in one_by_one)
    # transcribed in order of duration, returned in the order given
    backwards = probe_set(model, feature_extractor, clips[::-1], batch_size=3)
    width = min(backwards.decoder_ids.shape[1], together.decoder_ids.shape[1])
    assert torch.equal(backwards.decoder_ids.flip(0)[:, :width], together.decoder_ids[:, :width])
    assert torch.equal(backwards.mask.flip(0)[:, : width - 1], together.mask[:, : width - 1])
    assert probe_loss(model, together) == pytest.approx(0.0, abs=1e-6)  # the stock model against itself
    assert_probe_sequences_are_generates_own(model, feature_extractor, clips, together)
    # a transcript cut by the length limit has no eos, as generate returns it, and its last token is scored
    monkeypatch.setattr(sensitivity, "MAX_LENGTH", 5)
    cut = probe_set(model, feature_extractor, clips, batch_size=3)
    assert_probe_sequences_are_generates_own(model, feature_extractor, clips, cut)
    assert cut.mask.sum(dim=1).tolist() == [min(5, int(n)) for n in together.mask.sum(dim=1)]
