"""Helpers shared by the compression-pipeline tests: a tiny random Whisper that takes 1 s windows, its
feature extractor, and synthetic clips."""

import numpy as np
import torch
from conftest import TINY_WHISPER
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from lite_whisper_convert.audio import SAMPLING_RATE, Utterance

# 1 s windows: 100 mel frames -> 50 encoder positions.
ONE_SECOND_WHISPER = dict(TINY_WHISPER, max_source_positions=50)


def tiny_model(seed: int = 0, **overrides) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(WhisperConfig(**dict(ONE_SECOND_WHISPER, **overrides))).eval()


def tiny_feature_extractor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=ONE_SECOND_WHISPER["num_mel_bins"], chunk_length=1)


def clips(count: int, seed: int = 0, seconds=(0.3, 0.9)) -> list:
    """Noise bursts with a few tones, of random lengths below the 1 s window."""
    rng = np.random.default_rng(seed)
    utterances = []
    for index in range(count):
        samples = int(SAMPLING_RATE * rng.uniform(*seconds))
        t = np.arange(samples) / SAMPLING_RATE
        audio = 0.05 * rng.standard_normal(samples) + 0.1 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
        utterances.append(Utterance(name=f"clip{index}.wav", audio=audio.astype(np.float32)))
    return utterances


def write_clips(folder, count: int, seed: int = 0) -> None:
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    for utterance in clips(count, seed):
        soundfile.write(folder / utterance.name, utterance.audio, SAMPLING_RATE)


def tiny_tokenizer(folder):
    """A 100-token Whisper tokenizer (printable ASCII and the special tokens) for the tiny random models."""
    import json

    from transformers import WhisperTokenizer

    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>", "<|nospeech|>"]
    ordinary = [chr(code) for code in range(33, 127)][: ONE_SECOND_WHISPER["vocab_size"] - len(specials)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(ordinary + specials)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    end = "<|endoftext|>"
    return WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=end, bos_token=end,
                            eos_token=end, pad_token=end)


def write_tiny_base(folder, seed: int = 0):
    """A complete stock-Whisper folder (weights, generation config, feature extractor, tokenizer) of a tiny
    random model: what `compress` reads as MODEL in the fast tests. Returns the model."""
    from transformers import GenerationConfig, WhisperProcessor

    model = tiny_model(seed)
    model.generation_config = GenerationConfig.from_model_config(model.config)
    model.save_pretrained(folder)
    processor = WhisperProcessor(tiny_feature_extractor(), tiny_tokenizer(folder / "tokenizer-sources"))
    processor.save_pretrained(folder)
    processor.feature_extractor.save_pretrained(folder)
    return model
