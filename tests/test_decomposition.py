"""Decomposition: PCA of a linear's outputs, exact at full rank, optimal at low rank, wired into a LiteWhisper."""

import pytest
import torch
from compress_fixtures import clips, tiny_feature_extractor, tiny_model

from lite_whisper_convert.calibration import CalibrationError, SlotStats, collect_stats, encoder_linear
from lite_whisper_convert.decomposition import decompose, low_rank_linear, spectra, spectrum
from modeling_lite_whisper import LowRankLinear


def sums_of(rows: torch.Tensor) -> SlotStats:
    sums = SlotStats.zeros(rows.shape[1])
    sums.add(rows)
    return sums


def linear_and_inputs(in_features=12, out_features=8, bias=True, rows=500, input_rank=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(in_features, out_features, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=generator, dtype=torch.float64))
        if bias:
            linear.bias.copy_(torch.randn(out_features, generator=generator, dtype=torch.float64))
    if input_rank is None:
        x = torch.randn(rows, in_features, generator=generator, dtype=torch.float64)
    else:  # inputs on an affine subspace of dimension input_rank, so the outputs are too
        z = torch.randn(rows, input_rank, generator=generator, dtype=torch.float64)
        x = z @ torch.randn(input_rank, in_features, generator=generator, dtype=torch.float64) + 3.0
    return linear, x


@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_reproduces_the_layer_exactly(bias):
    linear, x = linear_and_inputs(bias=bias)
    with torch.no_grad():
        y = linear(x)
        factors = low_rank_linear(linear, spectrum(sums_of(y)), rank=8)
        torch.testing.assert_close(factors(x), y, atol=1e-10, rtol=1e-10)
        fresh = torch.randn(7, 12, dtype=torch.float64)  # exact off the calibration data as well
        torch.testing.assert_close(factors(fresh), linear(fresh), atol=1e-10, rtol=1e-10)
    assert isinstance(factors, LowRankLinear) and factors.rank == 8 and factors.weight1.dtype == torch.float64


def test_outputs_on_a_low_rank_subspace_are_reproduced_at_that_rank():
    linear, x = linear_and_inputs(in_features=20, out_features=16, input_rank=3)
    with torch.no_grad():
        y = linear(x)
        found = spectrum(sums_of(y))
        assert found.explained_variance[2] == pytest.approx(1.0, abs=1e-12)
        assert found.explained_variance[1] < 0.999
        torch.testing.assert_close(low_rank_linear(linear, found, rank=3)(x), y, atol=1e-9, rtol=1e-9)


def test_low_rank_error_is_the_discarded_variance_and_bounded_by_the_noise():
    linear, x = linear_and_inputs(in_features=20, out_features=16, input_rank=4, rows=2000)
    noise = 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x + noise
    with torch.no_grad():
        y = linear(x)
        found = spectrum(sums_of(y))
        for rank in (2, 4, 8):
            error = ((low_rank_linear(linear, found, rank)(x) - y) ** 2).sum(dim=1).mean()
            # PCA: the mean squared error on the calibration rows is exactly the sum of the discarded eigenvalues.
            assert float(error) == pytest.approx(float(found.eigenvalues[rank:].sum()), rel=1e-8)
        noise_energy = (noise @ linear.weight.T).pow(2).sum(dim=1).mean()
        assert float(((low_rank_linear(linear, found, 4)(x) - y) ** 2).sum(dim=1).mean()) <= float(noise_energy)


def test_spectrum_is_sorted_normalised_and_sign_fixed():
    linear, x = linear_and_inputs()
    with torch.no_grad():
        found = spectrum(sums_of(linear(x)))
    assert torch.all(found.eigenvalues[:-1] >= found.eigenvalues[1:])
    curve = found.explained_variance
    assert torch.all(curve[1:] >= curve[:-1]) and curve[-1] == pytest.approx(1.0)
    largest = found.eigenvectors.abs().argmax(dim=0)
    assert torch.all(found.eigenvectors[largest, torch.arange(8)] > 0)
    torch.testing.assert_close(found.eigenvectors.T @ found.eigenvectors, torch.eye(8, dtype=torch.float64))


def test_constant_outputs_and_too_few_rows():
    constant = spectrum(sums_of(torch.ones(10, 4, dtype=torch.float64)))
    assert torch.equal(constant.explained_variance, torch.ones(4, dtype=torch.float64))
    with pytest.raises(CalibrationError, match="at least 2"):
        spectrum(sums_of(torch.ones(1, 4)))


def test_decompose_installs_the_projection_and_shares_everything_else():
    model = tiny_model()
    stats = collect_stats(model, tiny_feature_extractor(), clips(6), batch_size=3, frames="all", progress=False)
    by_slot = spectra(stats)
    ranks = [{"q_proj": 16, "k_proj": 32, "fc1": 48, "fc2": 32}, {"v_proj": 16, "out_proj": 48}]
    lite = decompose(model, by_slot, ranks)

    # The dense model with each replaced slot projected the same way computes what the LiteWhisper computes.
    projected = tiny_model()
    with torch.no_grad():
        for layer_index, layer_ranks in enumerate(ranks):
            for slot, rank in layer_ranks.items():
                dense = encoder_linear(projected.get_encoder(), layer_index, slot)
                found, basis = by_slot[(layer_index, slot)], by_slot[(layer_index, slot)].basis(rank)
                projector = basis @ basis.T  # [out, out]
                bias = dense.bias.double() if dense.bias is not None else torch.zeros(dense.out_features, dtype=torch.float64)
                dense.weight.copy_(projector @ dense.weight.double())
                if dense.bias is None:
                    dense.bias = torch.nn.Parameter(torch.zeros(dense.out_features))
                dense.bias.copy_(found.mean + (bias - found.mean) @ projector)
    features = tiny_feature_extractor()([c.audio for c in clips(2, seed=5)], sampling_rate=16_000, return_tensors="pt").input_features
    ids = torch.tensor([[3, 5, 7]] * 2)
    with torch.no_grad():
        expected = projected(input_features=features, decoder_input_ids=ids).logits
        got = lite(input_features=features, decoder_input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    layer = lite.model.encoder.layers[0]
    assert isinstance(layer.self_attn.q_proj, LowRankLinear) and layer.self_attn.q_proj.rank == 16
    assert isinstance(layer.self_attn.v_proj, torch.nn.Linear)
    assert layer.self_attn.v_proj.weight.data_ptr() == model.get_encoder().layers[0].self_attn.v_proj.weight.data_ptr()
    assert lite.proj_out.weight is lite.model.decoder.embed_tokens.weight
    assert lite.config.low_rank_config == ranks and type(lite.config).model_type == "lite-whisper"
    assert not any(t.is_meta for t in list(lite.parameters()) + list(lite.buffers()))


def test_decompose_without_statistics_for_a_slot_is_a_named_error():
    model = tiny_model()
    stats = collect_stats(model, tiny_feature_extractor(), clips(3), progress=False)
    by_slot = spectra(stats)
    del by_slot[(1, "fc2")]
    with pytest.raises(CalibrationError, match="layer 1 fc2"):
        decompose(model, by_slot, [{}, {"fc2": 16}])
