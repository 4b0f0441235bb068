"""LiteWhisperConfig: the published JSON schema, and a named error for every invalid rank table."""

import json

import pytest
from conftest import TINY_WHISPER

from configuration_lite_whisper import LiteWhisperConfig, LowRankConfigError

RANKS = [{"q_proj": 16, "k_proj": 16, "fc1": 32}, {"fc2": 48}]


def test_serialised_config_keeps_the_published_schema(tmp_path):
    config = LiteWhisperConfig(low_rank_config=RANKS, **TINY_WHISPER)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "lite-whisper"
    assert saved["low_rank_config"] == RANKS
    reloaded = LiteWhisperConfig.from_pretrained(tmp_path)
    assert reloaded.low_rank_config == RANKS
    assert reloaded.layer_ranks(1) == {"fc2": 48}


def test_runtime_model_type_is_whisper_so_transformers_uses_its_whisper_paths():
    config = LiteWhisperConfig(low_rank_config=RANKS, **TINY_WHISPER)
    assert config.model_type == "whisper"
    assert LiteWhisperConfig.model_type == "lite-whisper"
    assert config.to_dict()["model_type"] == "lite-whisper"


@pytest.mark.parametrize("empty", [None, []])
def test_no_ranks_means_a_dense_encoder(empty):
    config = LiteWhisperConfig(low_rank_config=empty, **TINY_WHISPER)
    assert all(config.layer_ranks(i) == {} for i in range(config.encoder_layers))


@pytest.mark.parametrize(
    "low_rank_config, message",
    [
        ([{"q_proj": 16}], "has 1 entries but the encoder has 2 layers"),
        ([{"q_proj": 16}, {"gate_proj": 8}], "unknown slot 'gate_proj'"),
        ([{"q_proj": 16}, {"fc1": 8.0}], "must be a positive int"),
        ([{"q_proj": 16}, {"fc1": True}], "must be a positive int"),
        ([{"q_proj": 0}, {}], "must be a positive int"),
        ([{"q_proj": -4}, {}], "must be a positive int"),
        ([{"q_proj": 64}, {}], "rank must be below min(in, out) = 64"),
        ([{"fc2": 100}, {}], "rank must be below min(in, out) = 64 for a 128x64 layer"),
        ({"q_proj": 16}, "must be a list with one dict per encoder layer"),
        ([{"q_proj": 16}, ["fc1"]], "must be a dict of slot -> rank"),
    ],
)
def test_invalid_rank_tables_raise_a_named_error(low_rank_config, message):
    with pytest.raises(LowRankConfigError) as error:
        LiteWhisperConfig(low_rank_config=low_rank_config, **TINY_WHISPER)
    assert message in str(error.value)


def test_whisper_preprocessing_is_registered_for_the_auto_classes():
    """transformers 4.x's ASR pipeline only loads a feature extractor and tokenizer for registered configs."""
    from transformers import WhisperFeatureExtractor, WhisperTokenizer
    from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    assert FEATURE_EXTRACTOR_MAPPING[LiteWhisperConfig] is WhisperFeatureExtractor
    tokenizers = TOKENIZER_MAPPING[LiteWhisperConfig]  # a class in 5.x, a (slow, fast) pair in 4.x
    assert tokenizers is WhisperTokenizer or WhisperTokenizer in tokenizers
