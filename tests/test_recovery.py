"""Recovery: the least-squares refit and the distillation bring a decomposed encoder back towards the stock one,
deterministically, training only the factors, biases and layer norms; steps=0 without refit is the recipe."""

import pytest
import torch
from compress_fixtures import clips, tiny_feature_extractor, tiny_model

from lite_whisper_convert.calibration import collect_stats, encoder_of
from lite_whisper_convert.decomposition import decompose, spectra
from lite_whisper_convert.recovery import (
    RecoverySettings,
    encode,
    holdout_error,
    log_mel_features,
    recover,
    refit_least_squares,
    split_clips,
    trainable_parameters,
)
from modeling_lite_whisper import LowRankLinear

RANKS = [{"q_proj": 16, "k_proj": 16, "v_proj": 16, "out_proj": 16, "fc1": 16, "fc2": 16}] * 2


def compressed(seed=0, ranks=RANKS):
    stock = tiny_model(seed, init_std=0.5)  # layers that matter next to the residual stream
    extractor = tiny_feature_extractor()
    calibration = clips(16, seed=1)
    stats = collect_stats(stock, extractor, calibration, progress=False, frames="all")
    return stock, decompose(stock, spectra(stats), ranks), extractor, calibration


def state_of(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_encode_matches_the_stock_encoder_forward():
    stock, lite, extractor, calibration = compressed()
    features = log_mel_features(extractor, calibration[:3])
    with torch.no_grad():
        for model in (stock, lite):
            expected = encoder_of(model)(features).last_hidden_state
            torch.testing.assert_close(encode(encoder_of(model), features), expected)


def test_refit_lowers_the_output_error_on_the_clips_it_fits():
    # (on real speech it generalises: 64 clips x 1500 positions per rank-<=384 fit; these 16 clips x 50 do not)
    stock, lite, extractor, calibration = compressed()
    features = log_mel_features(extractor, calibration)
    before = holdout_error(lite, stock, features)
    refit_least_squares(lite, stock, features)
    assert not lite.training
    after = holdout_error(lite, stock, features)
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("autocast_dtype", [None, "bfloat16"])
def test_distillation_lowers_the_held_out_error_and_trains_only_factors_biases_and_norms(autocast_dtype):
    """Also under bfloat16 autocast (compress's choice where the CPU or GPU computes it natively): the same
    training, the factors and the model stay float32."""
    stock, lite, extractor, calibration = compressed()
    stock_state = state_of(stock)
    flags = [parameter.requires_grad for parameter in list(lite.parameters()) + list(stock.parameters())]
    untouched = {name: tensor.clone() for name, tensor in lite.state_dict().items()
                 if not any(name.endswith(part) for part in ("weight1", "weight2", "bias"))
                 and "layer_norm" not in name and name.startswith("model.encoder")}
    settings = RecoverySettings(steps=30, refit=False, holdout=8, batch_size=4, learning_rate=3e-3, eval_every=10,
                                autocast_dtype=autocast_dtype)
    report = recover(lite, stock, extractor, calibration, settings, progress=False)
    assert {parameter.dtype for parameter in lite.parameters()} == {torch.float32}
    # early stopping keeps the best held-out state; the toy clips (noise and tones) barely generalise, so only
    # the training loss must fall clearly
    assert report.holdout_error_after <= report.holdout_error_before
    losses = [entry["train_loss"] for entry in report.history]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    assert report.steps_run == 30 and report.train_clips == 8 and report.holdout_clips == 8
    for name, tensor in stock.state_dict().items():  # the teacher is untouched
        torch.testing.assert_close(tensor, stock_state[name])
    for name, tensor in lite.state_dict().items():
        if name in untouched:
            torch.testing.assert_close(tensor, untouched[name])
    assert not lite.training
    assert flags == [parameter.requires_grad for parameter in list(lite.parameters()) + list(stock.parameters())]


@pytest.mark.parametrize("layer_loss_weight", [0.0, 0.5])
def test_distillation_trains_alike_on_kept_and_recomputed_stock_outputs(monkeypatch, layer_loss_weight):
    """The stock encoder's outputs are computed once and kept (not once per step); where they do not fit the
    budget they are recomputed, and training is the same either way."""
    from lite_whisper_convert import recovery

    settings = RecoverySettings(steps=8, refit=False, holdout=4, batch_size=4, learning_rate=3e-3, eval_every=4,
                                layer_loss_weight=layer_loss_weight)
    runs = []
    for budget in (recovery.TARGET_CACHE_BYTES, 0):
        monkeypatch.setattr(recovery, "TARGET_CACHE_BYTES", budget)
        stock, lite, extractor, calibration = compressed()
        report = recover(lite, stock, extractor, calibration, settings, progress=False)
        runs.append((report, state_of(lite)))
    (kept, kept_state), (recomputed, recomputed_state) = runs
    assert kept.targets_kept and not recomputed.targets_kept
    assert [entry["train_loss"] for entry in kept.history] == pytest.approx(
        [entry["train_loss"] for entry in recomputed.history], rel=1e-4)
    for name in kept_state:
        torch.testing.assert_close(kept_state[name], recomputed_state[name], atol=1e-5, rtol=1e-4)


def test_distillation_towards_the_calibration_pass_outputs_runs_no_stock_pass():
    """compress hands recovery the stock encoder's outputs that calibration computed: the stock encoder then never
    runs to its final layer norm (no target pass), and training is the same as with targets recomputed."""
    settings = RecoverySettings(steps=8, refit=True, holdout=4, batch_size=4, learning_rate=3e-3, eval_every=4)
    stock, lite, extractor, calibration = compressed()
    outputs = []
    collect_stats(stock, extractor, calibration, progress=False, frames="all",
                  on_batch=lambda _, states: outputs.append(states.detach().clone()))
    calls = []
    handle = encoder_of(stock).layer_norm.register_forward_hook(lambda *_: calls.append(1))
    try:
        given = recover(lite, stock, extractor, calibration, settings, progress=False, stock_outputs=torch.cat(outputs))
    finally:
        handle.remove()
    assert calls == [] and given.targets_from_calibration
    stock, other, extractor, calibration = compressed()
    computed = recover(other, stock, extractor, calibration, settings, progress=False)
    assert not computed.targets_from_calibration
    assert [entry["train_loss"] for entry in given.history] == pytest.approx(
        [entry["train_loss"] for entry in computed.history], rel=1e-4)
    assert given.holdout_error_after == pytest.approx(computed.holdout_error_after, rel=1e-4)
    with pytest.raises(ValueError, match="15 stock encoder outputs for 16 clips"):
        recover(other, stock, extractor, calibration, settings, progress=False, stock_outputs=torch.cat(outputs)[:15])


def test_training_the_layer_norms_leaves_the_teacher_alone():
    stock, lite, extractor, calibration = compressed()  # decompose shares the layer norms with the stock model
    stock_state = state_of(stock)
    report = recover(lite, stock, extractor, calibration, RecoverySettings(steps=5, refit=False, holdout=0,
                     learning_rate=1e-2), progress=False)
    assert report.best_step == 5  # no held-out clips: the last state is kept
    moved = lite.model.encoder.layers[0].final_layer_norm.weight
    assert not torch.equal(moved, stock_state["model.encoder.layers.0.final_layer_norm.weight"])
    for name, tensor in stock.state_dict().items():
        torch.testing.assert_close(tensor, stock_state[name], atol=0, rtol=0)


def test_recovery_is_deterministic_with_a_seed():
    results = []
    for _ in range(2):
        stock, lite, extractor, calibration = compressed()
        recover(lite, stock, extractor, calibration, RecoverySettings(steps=6, holdout=8, eval_every=3, seed=7),
                progress=False)
        results.append(state_of(lite))
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=0, rtol=0)


def test_no_steps_and_no_refit_is_the_recipe():
    stock, lite, extractor, calibration = compressed()
    before = state_of(lite)
    report = recover(lite, stock, extractor, calibration, RecoverySettings(steps=0, refit=False, holdout=4), progress=False)
    for name, tensor in lite.state_dict().items():
        torch.testing.assert_close(tensor, before[name], atol=0, rtol=0)
    assert report.holdout_error_after == report.holdout_error_before


def test_the_inference_layout_is_rebuilt_from_the_recovered_factors():
    stock, lite, extractor, calibration = compressed()
    recover(lite, stock, extractor, calibration, RecoverySettings(steps=3, holdout=4, eval_every=3), progress=False)
    for module in lite.modules():
        if isinstance(module, LowRankLinear) and module.merged_weight is not None:
            torch.testing.assert_close(module.merged_weight, module.dense_weight())


def test_trainable_parameters_are_the_factors_and_norms():
    _, lite, _, _ = compressed()
    names = trainable_parameters(lite)
    assert any(name.endswith("weight1") for name in names) and any("layer_norm" in name for name in names)
    assert not any("conv" in name or "embed_positions" in name for name in names)
    assert not any("layer_norm" in name for name in trainable_parameters(lite, train_layer_norms=False))


def test_split_keeps_at_least_half_for_training():
    assert split_clips(list(range(10)), 3) == (list(range(7)), [7, 8, 9])
    assert split_clips(list(range(10)), 50) == (list(range(5)), list(range(5, 10)))


def test_presets_and_flags_resolve_to_settings():
    from lite_whisper_convert.recovery import RecoveryError, resolve_recovery

    for preset in ("acc", "balanced", "fast", None):  # no family given, or one never measured: the paper's recipe
        assert resolve_recovery(preset) is None
        assert resolve_recovery(preset, family="large-v3") is None
    assert resolve_recovery("acc", family="tiny") is None
    tiny_balanced = resolve_recovery("balanced", family="tiny", seed=3)  # measured: distillation wins there
    assert tiny_balanced.refit and tiny_balanced.steps == 100 and tiny_balanced.seed == 3
    assert resolve_recovery("balanced", mode="none", family="tiny") is None
    fast = resolve_recovery("fast", mode="refit")
    assert fast.refit and fast.steps == 0
    assert resolve_recovery("fast", steps=0) is None  # --recover-steps 0: the paper's recipe
    distill = resolve_recovery(None, steps=50, holdout=10)
    assert distill.refit and distill.steps == 50 and distill.holdout == 10
    assert resolve_recovery("acc", mode="refit").refit
    with pytest.raises(RecoveryError):
        resolve_recovery("fast", steps=-1)
    with pytest.raises(RecoveryError):
        resolve_recovery("fast", mode="magic")


def test_the_recipe_records_how_a_model_was_recovered():
    from lite_whisper_convert.recovery import RecoveryReport, recovery_recipe

    assert recovery_recipe(None)["method"] == "none"
    report = RecoveryReport(RecoverySettings(steps=0).as_dict(), train_clips=168, holdout_clips=32,
                            holdout_error_before=0.2, holdout_error_after_refit=0.05, holdout_error_after=0.05)
    entry = recovery_recipe(report, "librispeech-train-clean-100-calib")
    assert entry["method"] == "least-squares refit" and entry["refit_clips"] == 32 and not entry["labels_used"]
    assert entry["holdout_relative_error"] == {"before": 0.2, "after_refit": 0.05, "after": 0.05}


def test_compress_recovers_and_the_repo_records_it(tmp_path):
    import json

    from compress_fixtures import write_clips, write_tiny_base

    from lite_whisper_convert.compress import compress
    from lite_whisper_convert.ranks import Thresholds

    write_tiny_base(tmp_path / "base")
    write_clips(tmp_path / "clips", 12)
    result = compress(str(tmp_path / "base"), tmp_path / "out", calibration=str(tmp_path / "clips"),
                      thresholds=Thresholds(0.9, 0.9), num_samples=12, smoke_test=False, progress=False,
                      recovery="refit")
    recipe = json.loads((result.out_dir / "compression_recipe.json").read_text())
    recovery = recipe["extra"]["recovery"]
    assert recovery["method"] == "least-squares refit" and recovery["labels_used"] is False
    distilled = compress(str(tmp_path / "base"), tmp_path / "distilled", calibration=str(tmp_path / "clips"),
                         thresholds=Thresholds(0.9, 0.9), num_samples=12, smoke_test=False, progress=False,
                         recovery="distill", recover_steps=2)
    recovery = json.loads((distilled.out_dir / "compression_recipe.json").read_text())["extra"]["recovery"]
    assert recovery["distillation_steps"] == 2 and recovery["stock_outputs"] == "calibration pass"
    assert "- recovery: least-squares refit towards the stock encoder" in (result.out_dir / "README.md").read_text()
    plain = compress(str(tmp_path / "base"), tmp_path / "plain", calibration=str(tmp_path / "clips"),
                     thresholds=Thresholds(0.9, 0.9), num_samples=12, smoke_test=False, progress=False,
                     recover_steps=0)
    assert "- recovery: none (LiteASR recipe only)" in (plain.out_dir / "README.md").read_text()
