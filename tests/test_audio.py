"""Audio sources: local folders in the audiofolder layout, resampling, and named errors for bad audio."""

import numpy as np
import pytest
import soundfile
from conftest import speech_set

from lite_whisper_convert.audio import (
    SAMPLING_RATE,
    AudioDataError,
    iter_audio_folder,
    iter_utterances,
    parse_hub_spec,
)


def write_tone(path, seconds=0.5, sampling_rate=SAMPLING_RATE):
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    soundfile.write(path, 0.1 * np.sin(2 * np.pi * 440 * t), sampling_rate)


def test_any_sampling_rate_is_resampled_to_16k(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=0.5, sampling_rate=44_100)
    write_tone(tmp_path / "b.flac", seconds=0.25, sampling_rate=8_000)
    utterances = list(iter_audio_folder(tmp_path))
    assert [u.name for u in utterances] == ["a.wav", "b.flac"]
    assert [len(u.audio) for u in utterances] == [8_000, 4_000]
    assert all(u.audio.dtype == np.float32 and u.text is None for u in utterances)


def test_metadata_csv_gives_order_and_references(tmp_path):
    write_tone(tmp_path / "x.wav")
    write_tone(tmp_path / "y.wav")
    (tmp_path / "metadata.csv").write_text("file_name,text\ny.wav,HELLO\nx.wav,WORLD\n")
    assert [(u.name, u.text) for u in iter_audio_folder(tmp_path)] == [("y.wav", "HELLO"), ("x.wav", "WORLD")]


def test_shards_partition_the_utterances(tmp_path):
    for index in range(5):
        write_tone(tmp_path / f"{index}.wav")
    shards = [[u.name for u in iter_audio_folder(tmp_path, shard=(i, 2))] for i in range(2)]
    assert shards == [["0.wav", "2.wav", "4.wav"], ["1.wav", "3.wav"]]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "no audio files found"),
        (lambda d: (d / "notes.wav").write_text("not audio"), "not a readable audio file"),
        (lambda d: soundfile.write(d / "silent.wav", np.zeros(1600), SAMPLING_RATE), "silent"),
        (lambda d: soundfile.write(d / "empty.wav", np.zeros(0), SAMPLING_RATE), "empty"),
        (lambda d: (d / "metadata.csv").write_text("file_name,text\nmissing.wav,HI\n"), "audio file not found"),
    ],
)
def test_bad_audio_raises_a_named_error(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(AudioDataError, match=message):
        list(iter_audio_folder(tmp_path))


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(AudioDataError, match="audio folder not found"):
        list(iter_utterances(str(tmp_path / "nope")))


def test_hub_specs_parse():
    assert parse_hub_spec("hf://openslr/librispeech_asr:clean/train.100") == ("openslr/librispeech_asr", "clean", "train.100")
    assert parse_hub_spec("hf://edinburghcstr/ami/test") == ("edinburghcstr/ami", None, "test")
    with pytest.raises(AudioDataError, match="hf://OWNER/NAME"):
        parse_hub_spec("hf://librispeech")


def test_the_shared_speech_sets_load_with_references():
    utterances = list(iter_audio_folder(speech_set("librispeech-test-clean-mini")))
    assert len(utterances) == 4
    assert all(u.text and 1.0 < u.seconds < 30.0 for u in utterances)
