"""The Fisher sensitivity estimate (fisher.py) on a tiny random Whisper whose decoder reads its encoder strongly."""

import pytest
import torch
from compress_fixtures import clips, tiny_feature_extractor, tiny_model
from conftest import assert_probe_sequences_are_generates_own

from configuration_lite_whisper import slot_shape

from lite_whisper_convert.calibration import collect_stats
from lite_whisper_convert.decomposition import attach_explained_variance, decompose, spectra
from lite_whisper_convert.fisher import fisher_probe_vectors, fisher_sensitivity
from lite_whisper_convert.ranks import ranks_for_budget
from lite_whisper_convert.sensitivity import measure_sensitivity, probe_loss, probe_rank, probe_set

LOW_RANK_SLOT = (0, "fc2")  # its weight is cut to rank 8: its centred outputs span 8 directions


@pytest.fixture(scope="module")
def setup():
    """A random tiny Whisper made sensitive to its encoder (cross-attention values and output logits scaled up,
    so that cutting an encoder linear moves the decoder far above float noise), with one slot whose outputs
    vary in 8 directions only (around a mean outside them)."""
    model = tiny_model()
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.encoder_attn.v_proj.weight.mul_(20.0)
        model.model.decoder.layer_norm.weight.mul_(5.0)
        fc2 = model.model.encoder.layers[LOW_RANK_SLOT[0]].fc2
        basis, _ = torch.linalg.qr(torch.randn(fc2.out_features, 8, generator=torch.Generator().manual_seed(1)))
        fc2.weight.copy_(basis @ basis.T @ fc2.weight)
        fc2.bias.copy_(0.05 * torch.randn(fc2.out_features, generator=torch.Generator().manual_seed(2)))  # outside it
    feature_extractor = tiny_feature_extractor()
    utterances = clips(16)
    stats = collect_stats(model, feature_extractor, utterances, frames="real", progress=False)
    by_slot = spectra(stats, model.config)
    attach_explained_variance(stats, by_slot)
    probes = probe_set(model, feature_extractor, utterances[:8])
    return model, stats, by_slot, probes


def test_the_probe_sequences_are_generates_own_on_a_bare_generation_config(setup):
    """A random model's generation config has no no-timestamps token: the probe's prompt has none either."""
    model, _, _, probes = setup
    assert not hasattr(model.generation_config, "no_timestamps_token_id")
    assert_probe_sequences_are_generates_own(model, tiny_feature_extractor(), clips(16)[:8], probes)


def test_probe_vectors_have_the_softmax_fisher_as_covariance():
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    samples = torch.cat([fisher_probe_vectors(logits, generator) for _ in range(20000)])  # [n, 4]
    p = torch.softmax(logits[0], dim=-1)
    expected = torch.diag(p) - torch.outer(p, p)
    assert torch.allclose(samples.T @ samples / len(samples), expected, atol=0.01)
    assert samples.sum(dim=-1).abs().max() < 1e-5  # a shift of every logit changes nothing: no mass along it


def test_a_slot_whose_discarded_directions_carry_no_variance_costs_nothing(setup):
    model, _, by_slot, probes = setup
    _, curves = fisher_sensitivity(model, probes, by_slot)
    curve = curves[LOW_RANK_SLOT]
    assert curve[0] > 0  # rank 1 discards 7 of the 8 directions the outputs use
    assert curve[7:].abs().max() <= 1e-6 * curve[0]  # rank 8 and above keep them all (float32 rounding aside)
    other = curves[(0, "fc1")]
    assert other[15] > 1e-6 * other[0]  # a full-rank slot still loses something at rank 16


def kl_at_probe_rank(sensitivity, by_slot, config):
    """The KL per token each slot's cut to the probe's rank causes (sensitivity x discarded variance there): what
    both methods measure, without the ratio that makes noise large where a slot discards almost nothing."""
    result = {}
    for key, value in sensitivity.items():
        curve = by_slot[key].explained_variance
        rank = probe_rank(curve, 0.99, *slot_shape(config, key[1]))
        result[key] = value * (1.0 - float(curve[rank - 1])) if rank else 0.0
    return result


def test_estimate_ranks_slots_as_the_exact_probe_does(setup):
    """Slots whose cut the one-pass-per-slot probe measures well above its float noise (about 1e-8 KL per token
    here) get a far larger estimate than those it measures as costing nothing."""
    model, _, by_slot, probes = setup
    exact = kl_at_probe_rank(measure_sensitivity(model, probes, by_slot), by_slot, model.config)
    estimate = kl_at_probe_rank(fisher_sensitivity(model, probes, by_slot)[0], by_slot, model.config)
    sensitive = [key for key, value in exact.items() if value > 5e-8]
    insensitive = [key for key, value in exact.items() if value < 2e-9 and key != LOW_RANK_SLOT]
    assert len(sensitive) >= 3 and len(insensitive) >= 2
    assert min(estimate[key] for key in sensitive) > 100 * max(estimate[key] for key in insensitive)


def test_the_estimate_is_deterministic_and_the_budget_follows_its_curves(setup):
    model, stats, by_slot, probes = setup
    first = fisher_sensitivity(model, probes, by_slot, seed=3)
    second = fisher_sensitivity(model, probes, by_slot, seed=3)
    assert first[0] == second[0]
    sensitivity, curves = first
    stock = sum(p.numel() for name, p in model.model.encoder.named_parameters() if "embed_positions" not in name)
    low_rank_config = ranks_for_budget(stats.explained_variance, sensitivity, model.config, 0.8 * stock,
                                       cost_curves=curves)
    ranks = {(layer, slot): rank for layer, row in enumerate(low_rank_config) for slot, rank in row.items()}
    # the rank-8 slot costs nothing at rank 16, the smallest step: it is cut there before anything else is cut
    assert ranks.get(LOW_RANK_SLOT) == 16


def test_the_probe_from_cached_layer_inputs_measures_what_a_whole_model_pass_does(setup):
    """measure_sensitivity starts each slot's probe from its layer's cached input; a LiteWhisper with that one
    slot factored, run whole, gives the same KL."""
    model, _, by_slot, probes = setup
    sensitivity = measure_sensitivity(model, probes, by_slot)
    for layer_index, slot in [(0, "v_proj"), (1, "fc1"), (1, "out_proj")]:
        curve = by_slot[(layer_index, slot)].explained_variance
        rank = probe_rank(curve, 0.99, *slot_shape(model.config, slot))
        low_rank_config = [{} for _ in range(model.config.encoder_layers)]
        low_rank_config[layer_index][slot] = rank
        whole = probe_loss(decompose(model, by_slot, low_rank_config), probes) / (1.0 - float(curve[rank - 1]))
        assert sensitivity[(layer_index, slot)] == pytest.approx(whole, rel=1e-3, abs=1e-6)


def test_bfloat16_autocast_gives_the_float32_estimate(setup):
    """compress runs the estimate under bfloat16 autocast where the CPU or GPU computes it natively: the slots
    whose cut matters keep their estimate within 20 %, and bfloat16's noise stays at a few % of the largest."""
    model, _, by_slot, probes = setup
    full = kl_at_probe_rank(fisher_sensitivity(model, probes, by_slot, seed=3)[0], by_slot, model.config)
    reduced = kl_at_probe_rank(fisher_sensitivity(model, probes, by_slot, seed=3, autocast_dtype=torch.bfloat16)[0],
                               by_slot, model.config)
    largest = max(full.values())
    sensitive = [key for key, value in full.items() if value > 0.1 * largest]
    negligible = [key for key, value in full.items() if value < 1e-3 * largest]
    assert len(sensitive) >= 3 and len(negligible) >= 4
    for key in sensitive:
        assert reduced[key] == pytest.approx(full[key], rel=0.2)
    assert max(reduced[key] for key in negligible) < 0.03 * largest
    assert next(model.parameters()).dtype == torch.float32  # the model itself is untouched


def test_the_transcribing_copy_is_cast_and_the_model_is_left_alone():
    """The Fisher estimate's probe clips are transcribed by a bfloat16 copy (precision.cast_copy): every tensor of
    the copy is bfloat16, tied weights stay tied, it computes what the model computes, and the model itself keeps
    its float32 weights."""
    from lite_whisper_convert.precision import cast_copy

    model = tiny_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    copy = cast_copy(model, torch.bfloat16)
    assert {parameter.dtype for parameter in copy.parameters()} == {torch.bfloat16}
    assert copy.proj_out.weight is copy.model.decoder.embed_tokens.weight
    assert copy.proj_out.weight is not model.proj_out.weight
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, before[name])
    features = torch.randn(2, model.config.num_mel_bins, 2 * model.config.max_source_positions)
    ids = torch.tensor([[model.config.decoder_start_token_id, 5, 6]] * 2)
    with torch.inference_mode():
        full = model(input_features=features, decoder_input_ids=ids).logits
        reduced = copy(input_features=features.bfloat16(), decoder_input_ids=ids).logits.float()
    assert (reduced - full).abs().max() < 0.05 * full.abs().max()
