"""compress(): the whole pipeline on a tiny random Whisper folder, reproducibility, the stats file, the CLI,
and bad inputs (each a named error that leaves no output folder behind)."""

import hashlib
import json

import numpy as np
import pytest
import soundfile
import torch
from compress_fixtures import write_clips, write_tiny_base

from lite_whisper_convert import cli, compress as compress_module
from lite_whisper_convert.audio import SAMPLING_RATE, AudioDataError
from lite_whisper_convert.calibration import CalibrationError, StatsMismatchError, load_stats
from lite_whisper_convert.checks import InputError
from lite_whisper_convert.compress import compress
from lite_whisper_convert.ranks import RankPolicyError, Thresholds

# The decomposition alone (recovery has its own tests); the byte-identity test runs the default pipeline.
FAST = dict(num_samples=4, batch_size=4, probe_clips=2, smoke_test=False, progress=False, recovery="none")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stock") / "tiny-random-whisper"
    write_tiny_base(folder)
    return folder


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_clips(folder, 10)
    return folder


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compress_lands_under_a_size_target_and_writes_the_stats_file(base, calibration, tmp_path):
    result = compress(str(base), tmp_path / "lite", str(calibration), target_encoder_params=0.8,
                      stats_path=tmp_path / "stats.safetensors", **FAST)
    assert result.encoder_params <= 0.8 * result.stock_encoder_params
    assert result.rank_policy["policy"] == "sensitivity" and result.low_rank_config != [{}, {}]
    assert (tmp_path / "lite" / "model.safetensors").is_file()
    stats = load_stats(tmp_path / "stats.safetensors")
    assert stats.utterances == 4 and stats.frames == "real"
    assert len(stats.explained_variance) == len(stats.sensitivity) == 12
    assert stats.sensitivity_probe["clips"] == 2
    recipe = json.loads((tmp_path / "lite" / "compression_recipe.json").read_text())
    assert recipe["rank_policy"]["target_encoder_params"] == int(0.8 * result.stock_encoder_params)
    assert recipe["num_utterances"] == 4 and recipe["calibration"] == calibration.name


def test_same_inputs_and_seed_give_byte_identical_weights(base, calibration, tmp_path):
    for name in ("one", "two"):
        compress(str(base), tmp_path / name, str(calibration), target_encoder_params=0.7, **dict(FAST, recovery="refit"))
    assert sha256(tmp_path / "one" / "model.safetensors") == sha256(tmp_path / "two" / "model.safetensors")


def test_a_stats_file_serves_every_later_run(base, calibration, tmp_path, monkeypatch):
    stats_path = tmp_path / "stats.safetensors"
    compress(str(base), tmp_path / "first", str(calibration), target_encoder_params=0.9, stats_path=stats_path, **FAST)

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration ran again although the stats file exists")

    monkeypatch.setattr(compress_module, "collect_stats", no_calibration)
    small = compress(str(base), tmp_path / "small", str(calibration), target_encoder_params=0.6,
                     stats_path=stats_path, **FAST)
    thresholds = compress(str(base), tmp_path / "thresholds", str(calibration), stats_path=stats_path,
                          thresholds=Thresholds(0.9, 0.95), **FAST)
    assert small.encoder_params <= 0.6 * small.stock_encoder_params
    assert thresholds.rank_policy == {"policy": "threshold", "thresholds": {"attention": 0.9, "mlp": 0.95},
                                      "encoder_params": thresholds.encoder_params}
    with pytest.raises(StatsMismatchError, match="'all' was asked for"):
        compress(str(base), tmp_path / "all", str(calibration), target_encoder_params=0.6, stats_path=stats_path,
                 frames="all", **FAST)


def test_threshold_policy_bisects_to_a_size_on_all_frames(base, calibration, tmp_path):
    result = compress(str(base), tmp_path / "lite", str(calibration), target_encoder_params=0.75, policy="threshold",
                      stats_path=tmp_path / "stats.safetensors", **FAST)
    assert result.encoder_params <= 0.75 * result.stock_encoder_params
    stats = load_stats(tmp_path / "stats.safetensors")
    assert stats.frames == "all" and not stats.sensitivity  # the threshold policy's default; no probe needed
    thresholds = result.rank_policy["thresholds"]
    assert thresholds["attention"] == thresholds["mlp"] and 0 < thresholds["attention"] < 1


def test_the_rank_request_must_be_exactly_one(base, calibration, tmp_path):
    with pytest.raises(RankPolicyError, match="exactly one"):
        compress(str(base), tmp_path / "lite", str(calibration), preset="fast", target_encoder_params=0.5, **FAST)
    with pytest.raises(RankPolicyError, match="no presets for a Whisper encoder with d_model=64"):
        compress(str(base), tmp_path / "lite", str(calibration), preset="fast", **FAST)
    assert not (tmp_path / "lite").exists()


def run_cli(*argv, capsys):
    code = cli.main(["compress", *map(str, argv)])
    return code, capsys.readouterr()


def test_cli_compresses_and_reports(base, calibration, tmp_path, capsys):
    code, output = run_cli(base, "--out", tmp_path / "lite", "--calibration", calibration, "--num-samples", 3,
                           "--batch-size", 3, "--target-encoder-params", "0.8", "--probe-clips", 1,
                           "--no-smoke-test", "--no-progress", "--recovery", "none", "--stats", tmp_path / "stats.safetensors",
                           capsys=capsys)
    assert code == 0, output.err
    assert "encoder parameters:" in output.out and f"wrote {tmp_path / 'lite'}" in output.out
    code, output = run_cli(base, "--out", tmp_path / "lite2", "--attention-threshold", "0.9", capsys=capsys)
    assert code == 2 and "give both --attention-threshold and --mlp-threshold" in output.err


def _bad_folder(kind, folder):
    folder.mkdir()
    if kind == "non-audio":
        write_clips(folder, 2)
        (folder / "notes.wav").write_text("this is not audio")
    elif kind == "silent":
        soundfile.write(folder / "silent.wav", np.zeros(8000), SAMPLING_RATE)
    elif kind == "empty audio":
        soundfile.write(folder / "empty.wav", np.zeros(0), SAMPLING_RATE)
    return folder


@pytest.mark.parametrize("kind, clips, message", [
    ("empty folder", 1, "no audio files found"),
    ("non-audio", 3, "not a readable audio file"),
    ("silent", 1, "silent"),
    ("empty audio", 1, "empty"),
])
def test_bad_calibration_audio_is_a_named_error_and_leaves_nothing(base, tmp_path, capsys, kind, clips, message):
    data = _bad_folder(kind, tmp_path / "data")
    with pytest.raises((AudioDataError, InputError), match=message):
        compress(str(base), tmp_path / "lite", str(data), target_encoder_params=0.8,
                 stats_path=tmp_path / "stats.safetensors", **dict(FAST, num_samples=clips))
    code, output = run_cli(base, "--out", tmp_path / "lite", "--calibration", data, "--target-encoder-params", "0.8",
                           "--num-samples", clips, "--stats", tmp_path / "stats.safetensors", "--no-progress",
                           capsys=capsys)
    assert code == 2 and message in output.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_non_finite_activations_are_a_named_error_and_leave_nothing(calibration, tmp_path):
    from transformers import WhisperForConditionalGeneration

    broken = tmp_path / "broken"
    write_tiny_base(broken)
    model = WhisperForConditionalGeneration.from_pretrained(broken)
    with torch.no_grad():
        model.model.encoder.layers[0].self_attn.v_proj.weight[0, 0] = float("inf")
    model.save_pretrained(broken)
    with pytest.raises(CalibrationError, match="non-finite activations .* layer 0 v_proj"):
        compress(str(broken), tmp_path / "lite", str(calibration), target_encoder_params=0.8,
                 stats_path=tmp_path / "stats.safetensors", **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def test_a_stats_file_from_another_model_is_a_named_error_and_leaves_nothing(base, calibration, tmp_path, capsys):
    other = tmp_path / "other"
    write_tiny_base(other, seed=1)
    stats_path = tmp_path / "stats.safetensors"
    compress(str(other), tmp_path / "from-other", str(calibration), target_encoder_params=0.8,
             stats_path=stats_path, **FAST)
    code, output = run_cli(base, "--out", tmp_path / "lite", "--calibration", calibration, "--target-encoder-params",
                           "0.8", "--stats", stats_path, "--no-progress", capsys=capsys)
    assert code == 2 and "weights differ" in output.err
    assert not (tmp_path / "lite").exists()


@pytest.mark.slow
def test_real_tiny_en_fast_preset_transcribes_like_the_stock_model(tiny_en_dir, tmp_path):
    """The whole CLI path on real weights: fast preset from 16 clips, smoke test next to the stock model."""
    import jiwer
    from conftest import speech_set

    from lite_whisper_convert.ranks import OFFICIAL_ENCODER_PARAMS

    calibration_set = speech_set("librispeech-train-clean-100-calib")
    result = compress(str(tiny_en_dir), tmp_path / "lite", str(calibration_set), preset="fast", num_samples=16,
                      probe_clips=8, recovery="none", progress=False)
    assert result.encoder_params <= OFFICIAL_ENCODER_PARAMS["tiny"]["fast"]
    assert jiwer.wer(result.smoke.stock_text.lower(), result.smoke.lite_text.lower()) < 0.3


STAGES_OF_A_FRESH_RUN = ("load model", "audio decoding", "calibration statistics", "spectra", "sensitivity",
                         "rank choice", "decomposition", "export")


def test_compress_reports_and_records_every_stage_and_the_stats_file_keeps_its_costs(base, calibration, tmp_path,
                                                                                      capsys):
    common = ("--calibration", calibration, "--num-samples", 4, "--batch-size", 4, "--probe-clips", 2,
              "--target-encoder-params", "0.8", "--no-smoke-test", "--no-progress", "--recovery", "none",
              "--stats", tmp_path / "stats.safetensors")
    code, output = run_cli(base, "--out", tmp_path / "fisher", "--sensitivity", "fisher", *common, capsys=capsys)
    assert code == 0, output.err
    printed = output.out[output.out.index("stage costs"):]
    recipe = json.loads((tmp_path / "fisher" / "compression_recipe.json").read_text())
    recorded = [record["stage"] for record in recipe["stages"]]
    for stage in STAGES_OF_A_FRESH_RUN:
        assert stage in printed and stage in recorded
    assert all(record["seconds"] >= 0 for record in recipe["stages"])
    assert "## Conversion cost" in (tmp_path / "fisher" / "README.md").read_text()
    assert recipe["rank_policy"]["sensitivity_probe"]["method"] == "fisher"
    stats = load_stats(tmp_path / "stats.safetensors")
    assert stats.sensitivity_probe["method"] == "fisher" and len(stats.sensitivity_curves) == 12
    assert set(stats.costs) == {"audio decoding", "calibration statistics", "spectra", "sensitivity"}

    # The same stats file, the other method: the sums are reused, the sensitivities measured again by the probe.
    code, output = run_cli(base, "--out", tmp_path / "probe", "--sensitivity", "probe", *common, capsys=capsys)
    assert code == 0, output.err
    recipe = json.loads((tmp_path / "probe" / "compression_recipe.json").read_text())
    recorded = [record["stage"] for record in recipe["stages"]]
    assert "calibration statistics" not in recorded and "sensitivity" in recorded
    assert recipe["rank_policy"]["sensitivity_probe"]["method"] == "probe"
    assert "calibration statistics" in recipe["extra"]["stats_file_costs"]  # what the reused sums cost then
    stats = load_stats(tmp_path / "stats.safetensors")
    assert stats.sensitivity_probe["method"] == "probe" and not stats.sensitivity_curves


def test_the_sensitivity_default_is_fisher_for_multilingual_models_and_the_probe_for_english_only_ones():
    """As measured: Fisher on 64 clips for multilingual base and for conversions that distil, the per-linear probe
    on 32 clips for the other tiny.en presets."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from lite_whisper_convert.compress import default_probe_clips, default_sensitivity_method

    multilingual = SimpleNamespace(generation_config=GenerationConfig(is_multilingual=True))
    english_only = SimpleNamespace(generation_config=GenerationConfig(is_multilingual=False))
    assert default_sensitivity_method(multilingual) == "fisher"
    assert default_sensitivity_method(english_only) == "probe"
    assert default_sensitivity_method(english_only, distils=True) == "fisher"  # tiny.en balanced
    assert default_probe_clips("fisher", 250) == 64 and default_probe_clips("fisher", 40) == 40
    assert default_probe_clips("probe", 250) == 32


@pytest.mark.parametrize("method", ["probe", "fisher"])
def test_the_sensitivity_stage_reuses_the_encoder_outputs_of_the_calibration_pass(base, calibration, method):
    """The probe clips are the first calibration clips: their transcripts (and the probe's reference log-probs) come
    from the encoder outputs calibration computed, and the sensitivities are those of a probe that reruns it."""
    from lite_whisper_convert.audio import iter_calibration
    from lite_whisper_convert.fisher import fisher_sensitivity
    from lite_whisper_convert.precision import autocast_dtype_for
    from lite_whisper_convert.sensitivity import measure_sensitivity, probe_set

    model, feature_extractor = compress_module.load_base(str(base))
    calls = []
    handle = model.get_encoder().register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        stats, by_slot, _ = compress_module.prepare_stats(model, feature_extractor, str(calibration), num_samples=4,
                                                          batch_size=2, probe_clips=4, sensitivity_method=method,
                                                          progress=False)
    finally:
        handle.remove()
    fisher_passes = 1 if method == "fisher" else 0  # its one forward (and backward) of the 4 probe clips
    assert len(calls) == 2 + fisher_passes  # the two calibration batches; no encoder pass to transcribe the probe clips
    clips = list(iter_calibration(str(calibration), limit=4))  # batched as calibration batched them: same rounding
    # in the precision compress chooses for the Fisher estimate on this machine (bfloat16 autocast where the CPU
    # computes it natively)
    reduced = autocast_dtype_for("cpu", torch.float32) if method == "fisher" else None
    states = None
    if reduced is not None:  # the transcribing copy is cast to it: give it the stock encoder's float32 outputs
        with torch.inference_mode():
            states = torch.cat([model.get_encoder()(feature_extractor([clip.audio for clip in clips[start : start + 2]],
                                                                      sampling_rate=16000, return_tensors="pt")
                                                    .input_features).last_hidden_state for start in (0, 2)])
    probes = probe_set(model, feature_extractor, clips, batch_size=2, reference=method == "probe",
                       encoder_states=states, transcribe_dtype=reduced)
    if method == "probe":
        expected = measure_sensitivity(model, probes, by_slot)
    else:
        expected, _ = fisher_sensitivity(model, probes, by_slot, autocast_dtype=reduced)
    assert stats.sensitivity == pytest.approx(expected, rel=1e-4, abs=1e-12)
