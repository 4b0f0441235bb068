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
