"""Calibration statistics: exact streaming sums, the frames policy, merging shards, files and named errors."""

import pytest
import torch
from compress_fixtures import clips, tiny_feature_extractor, tiny_model

from configuration_lite_whisper import LOW_RANK_SLOTS
from lite_whisper_convert.calibration import (
    CalibrationError,
    StatsFileError,
    StatsMismatchError,
    collect_stats,
    encoder_linear,
    load_stats,
    merge_stats,
    model_identity,
    real_positions,
    reduce_stats,
    save_stats,
)


def stats_of(model, utterances, **kwargs):
    kwargs.setdefault("batch_size", 3)
    return collect_stats(model, tiny_feature_extractor(), utterances, progress=False, **kwargs)


def captured_outputs(model, utterances, frames):
    """Every output row of every slot, captured the naive way: [(layer, slot)] -> [rows, out]."""
    feature_extractor = tiny_feature_extractor()
    inputs = feature_extractor([u.audio for u in utterances], sampling_rate=16_000, return_tensors="pt",
                               return_attention_mask=True)
    mask = real_positions(inputs.attention_mask, model.config.max_source_positions)
    outputs, handles = {}, []
    encoder = model.get_encoder()
    for layer_index in range(model.config.encoder_layers):
        for slot in LOW_RANK_SLOTS:
            def keep(module, args, output, key=(layer_index, slot)):
                outputs[key] = output[mask] if frames == "real" else output.reshape(-1, output.shape[-1])
            handles.append(encoder_linear(encoder, layer_index, slot).register_forward_hook(keep))
    with torch.no_grad():
        encoder(inputs.input_features)
    for handle in handles:
        handle.remove()
    return outputs, mask


@pytest.mark.parametrize("frames", ["real", "all"])
def test_sums_equal_those_of_the_captured_outputs(frames):
    model, utterances = tiny_model(), clips(7)
    stats = stats_of(model, utterances, frames=frames)
    outputs, mask = captured_outputs(model, utterances, frames)
    expected_rows = int(mask.sum()) if frames == "real" else 7 * model.config.max_source_positions
    assert stats.utterances == 7 and stats.frames == frames and stats.frames_seen == expected_rows
    assert len(stats.slots) == 6 * model.config.encoder_layers
    for key, rows in outputs.items():
        rows = rows.double()
        assert stats.slots[key].count == rows.shape[0]
        torch.testing.assert_close(stats.slots[key].total, rows.sum(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats.slots[key].outer, rows.T @ rows, rtol=1e-5, atol=1e-5)


def test_real_frames_are_the_positions_covering_audio():
    mask = torch.zeros(2, 100, dtype=torch.int32)
    mask[0, :7] = 1  # 7 mel frames -> positions 0..3 (the fourth covers frame 6 only)
    mask[1, :] = 1
    positions = real_positions(mask, 50)
    assert positions.shape == (2, 50)
    assert positions[0].sum() == 4 and positions[1].all()


def test_batch_size_does_not_change_the_sums():
    model, utterances = tiny_model(), clips(5)
    one, many = stats_of(model, utterances, batch_size=1), stats_of(model, utterances, batch_size=4)
    for key in one.slots:
        torch.testing.assert_close(one.slots[key].outer, many.slots[key].outer, rtol=1e-5, atol=1e-5)


def test_shards_merge_and_reduce_to_the_whole():
    model, utterances = tiny_model(), clips(6)
    whole = stats_of(model, utterances)
    shards = [stats_of(model, utterances[index::2]) for index in range(2)]
    merged = merge_stats(shards)
    assert merged.utterances == 6
    for key in whole.slots:
        assert merged.slots[key].count == whole.slots[key].count
        torch.testing.assert_close(merged.slots[key].outer, whole.slots[key].outer)

    # Two processes holding these shards, each summing the other's tensors into its own (what all_reduce does).
    partner = {id(tensor): other for mine, theirs in zip(shards[0].slots.values(), shards[1].slots.values())
               for tensor, other in ((mine.total, theirs.total), (mine.outer, theirs.outer))}
    counts_of_partner = torch.tensor([shards[1].utterances] + [shards[1].slots[key].count for key in sorted(shards[1].slots)]
                                     + [shards[1].real_positions, round(shards[1].seconds * 1000)])

    def fake_all_reduce(tensor):
        tensor += partner[id(tensor)] if id(tensor) in partner else counts_of_partner

    reduced = reduce_stats(shards[0], fake_all_reduce)
    assert reduced.utterances == 6
    assert reduced.real_positions == whole.real_positions and abs(reduced.seconds - whole.seconds) < 1e-2
    for key in whole.slots:
        assert reduced.slots[key].count == whole.slots[key].count
        torch.testing.assert_close(reduced.slots[key].total, whole.slots[key].total)


def test_merging_shards_of_different_models_is_refused():
    utterances = clips(2)
    with pytest.raises(StatsMismatchError, match="weights differ"):
        merge_stats([stats_of(tiny_model(seed=0), utterances), stats_of(tiny_model(seed=1), utterances)])
    with pytest.raises(StatsMismatchError, match="frames"):
        merge_stats([stats_of(tiny_model(), utterances), stats_of(tiny_model(), utterances, frames="all")])


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model()
    stats = stats_of(model, clips(4), name="tiny-random", calibration="clips")
    stats.explained_variance = {(0, "fc1"): torch.linspace(0.1, 1.0, 128, dtype=torch.float64)}
    path = save_stats(stats, tmp_path / "sub" / "stats.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["stats.safetensors"]
    loaded = load_stats(path, model_identity(model))
    assert (loaded.identity, loaded.frames, loaded.utterances, loaded.calibration) == (
        stats.identity, "real", 4, "clips")
    assert list(loaded.slots) == list(stats.slots)
    for key in stats.slots:
        assert loaded.slots[key].count == stats.slots[key].count
        assert torch.equal(loaded.slots[key].outer, stats.slots[key].outer)
    assert torch.equal(loaded.explained_variance[(0, "fc1")], stats.explained_variance[(0, "fc1")])


def test_identity_ignores_the_loading_dtype_but_not_the_weights():
    model = tiny_model()
    assert model_identity(model) == model_identity(tiny_model().to(torch.float16))
    assert model_identity(model)["encoder_sha256"] != model_identity(tiny_model(seed=1))["encoder_sha256"]


def test_a_stats_file_from_another_model_is_a_named_error(tmp_path):
    path = save_stats(stats_of(tiny_model(), clips(2)), tmp_path / "stats.safetensors")
    with pytest.raises(StatsMismatchError, match="weights differ"):
        load_stats(path, model_identity(tiny_model(seed=1)))
    with pytest.raises(StatsMismatchError, match="encoder shapes"):
        load_stats(path, model_identity(tiny_model(encoder_ffn_dim=96)))


def test_unreadable_stats_files_are_named_errors(tmp_path):
    with pytest.raises(StatsFileError, match="not found"):
        load_stats(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StatsFileError, match="not a statistics file"):
        load_stats(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(StatsFileError, match="not a LiteWhisper calibration statistics file"):
        load_stats(tmp_path / "other.safetensors")


def test_non_finite_activations_are_a_named_error():
    model = tiny_model()
    with torch.no_grad():
        model.get_encoder().layers[1].fc1.weight[3, 5] = float("nan")
    with pytest.raises(CalibrationError, match="layer 1 fc1"):
        stats_of(model, clips(2))


def test_no_audio_and_bad_settings_are_named_errors():
    with pytest.raises(CalibrationError, match="no calibration audio"):
        stats_of(tiny_model(), [])
    with pytest.raises(CalibrationError, match="frames must be one of"):
        stats_of(tiny_model(), clips(1), frames="speech")
    with pytest.raises(CalibrationError, match="batch size"):
        stats_of(tiny_model(), clips(1), batch_size=0)
